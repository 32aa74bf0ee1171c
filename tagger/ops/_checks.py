"""Validation at the op boundary: the one checker every backend calls at the entry of every op.

Legend: as in tagger/ops/reference.py (B batch, T timesteps, I input, H units, G = 4H,
V vocabulary rows, E embedding width, K dense units / classes, F pooled features).

Every function raises a one-line tagger.errors.TaggerError that starts with the op's
name and names the argument, so the same bad input gives the same message on every
backend. The checks read shapes and dtypes only (cheap: no pass over a float array);
integer index arrays that a kernel writes through (starts/lengths, ids, labels, rows,
argmax) are checked against their bounds, a pass over B..B*T small integers. After a
check passes no kernel can read or write out of bounds.

Arrays may be NumPy arrays or device arrays (anything with .shape and .dtype; integer
arrays are copied to the host with .copy_to_host() when they are on the device).
"""
from __future__ import annotations

import numpy as np

from tagger.errors import TaggerError
from tagger.ops._common import ACTIVATIONS, GATES, MERGE_MODES, POOL_MODES
from tagger.spans import check_spans


# ----------------------------------------------------------------------------------------
# building blocks


def host(a):
    """A host NumPy view of a (host or device) array or array-like."""
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def shape_of(a):
    return tuple(int(n) for n in a.shape)


def check_floats(where, **arrays):
    """The given arrays (None skipped) are float arrays of one dtype; returns that dtype."""
    dtype = first = None
    for name, a in arrays.items():
        if a is None:
            continue
        dt = getattr(a, "dtype", None)
        if dt is None or not hasattr(a, "shape"):
            raise TaggerError(f"{where}: {name} must be an array, got {type(a).__name__}")
        dt = np.dtype(dt)
        if dt.kind != "f":
            raise TaggerError(f"{where}: {name} must be a float array, got {dt}")
        if dtype is None:
            dtype, first = dt, name
        elif dt != dtype:
            raise TaggerError(f"{where}: {name} is {dt} but {first} is {dtype}; pass the float arrays of one call in one dtype")
    return dtype


def check_ndim(where, name, a, ndim, legend):
    if len(a.shape) != ndim:
        raise TaggerError(f"{where}: {name} must be {ndim}-D {legend}, got shape {shape_of(a)}")


def check_shape(where, name, a, expected, legend):
    """a.shape == expected (skipped for a = None); legend names the dims, e.g. '(B, T, H)'."""
    if a is not None and shape_of(a) != tuple(expected):
        raise TaggerError(f"{where}: {name} has shape {shape_of(a)}, expected {legend} = {tuple(expected)}")


def check_last_axis(where, name, a, n, legend, what):
    if len(shape_of(a)) < 1 or shape_of(a)[-1] != n:
        raise TaggerError(f"{where}: {name} has shape {shape_of(a)}, expected {legend}, {what} = {n}")


def check_ints(where, name, a):
    """a as a host integer array (an empty array of any dtype passes)."""
    a = host(a)
    if a.size and a.dtype.kind not in "iu":
        raise TaggerError(f"{where}: {name} must be integers, got {a.dtype}")
    return a


def check_range(where, name, a, n, what):
    """Every element of the integer array a lies in 0..n-1."""
    if a.size and (a.min() < 0 or a.max() >= n):
        raise TaggerError(f"{where}: {name} out of range 0..{n - 1} ({what})")


def check_choice(where, name, value, choices):
    if value not in choices:
        raise TaggerError(f"{where}: unknown {name} {value!r}; choose one of {', '.join(map(str, choices))}")


def check_spans_at(where, starts, lengths, B, T):
    """(starts, lengths) as int64 host arrays of B spans inside 0..T (tagger.spans.check_spans)."""
    starts, lengths = host(starts), host(lengths)
    check_spans(starts, lengths, B, T, where)
    return np.ascontiguousarray(starts, dtype=np.int64), np.ascontiguousarray(lengths, dtype=np.int64)


def check_mask(where, name, mask, shape, legend):
    """None or a bool/int mask of the given shape, as a host array."""
    if mask is None:
        return None
    mask = host(mask)
    if mask.dtype.kind not in "biu":
        raise TaggerError(f"{where}: {name} must be bool, got {mask.dtype}")
    check_shape(where, name, mask, shape, legend)
    return mask


def check_rows(where, rows, n):
    """None or 1-D int row indices into the first axis (n rows), as an int64 host array."""
    if rows is None:
        return None
    rows = check_ints(where, "rows", rows)
    if rows.ndim != 1:
        raise TaggerError(f"{where}: rows must be 1-D, got shape {rows.shape}")
    check_range(where, "rows", rows, n, "the parameter's first axis")
    return np.ascontiguousarray(rows, dtype=np.int64)


# ----------------------------------------------------------------------------------------
# LSTM


def check_lstm_weights(where, U, b, inputs, in_name, in_legend):
    """U (H, G), b (G,), the input table/kernel (in_rows, G); returns H."""
    check_ndim(where, "U", U, 2, "(H, 4H)")
    H = int(U.shape[0])
    G = GATES * H
    check_shape(where, "U", U, (H, G), "(H, 4H)")
    check_ndim(where, in_name, inputs, 2, in_legend)
    check_shape(where, in_name, inputs, (inputs.shape[0], G), in_legend)
    check_shape(where, "b", b, (G,), "(4H,)")
    return H


def check_lstm_forward(X, W, U, b, starts, lengths, in_mask=None, rec_mask=None, where="lstm_forward",
                       h0=None, c0=None):
    """X (B, T, I), W (I, G), U (H, G), b (G,), one float dtype; masks (B, I), (B, H) or
    None; the initial state h0, c0 (B, H) or None; B spans inside 0..T. Returns (starts,
    lengths) as int64 host arrays."""
    check_floats(where, X=X, W=W, U=U, b=b, in_mask=in_mask, rec_mask=rec_mask, h0=h0, c0=c0)
    check_ndim(where, "X", X, 3, "(B, T, I)")
    B, T, I = shape_of(X)
    H = check_lstm_weights(where, U, b, W, "W", "(I, 4H)")
    check_shape(where, "W", W, (I, GATES * H), "(I, 4H)")
    check_shape(where, "in_mask", in_mask, (B, I), "(B, I)")
    check_shape(where, "rec_mask", rec_mask, (B, H), "(B, H)")
    check_shape(where, "h0", h0, (B, H), "(B, H)")
    check_shape(where, "c0", c0, (B, H), "(B, H)")
    return check_spans_at(where, starts, lengths, B, T)


def check_lstm_backward(dims, dtype, dY, dh_last, dc_last, dW, dU, db, where="lstm_backward", dh0=None, dc0=None):
    """After check_cache: dims = (B, T, I, H) and dtype of the forward call; dY (B, T, H),
    dh_last, dc_last (B, H) or None; dW (I, G), dU (H, G), db (G,); dh0, dc0 (B, H) or None."""
    B, T, I, H = (int(n) for n in dims)
    dt = check_floats(where, dW=dW, dU=dU, db=db, dY=dY, dh_last=dh_last, dc_last=dc_last, dh0=dh0, dc0=dc0)
    if dt != np.dtype(dtype):
        raise TaggerError(f"{where}: gradients are {dt} but the forward ran in {np.dtype(dtype)}")
    check_shape(where, "dY", dY, (B, T, H), "(B, T, H)")
    check_shape(where, "dh_last", dh_last, (B, H), "(B, H)")
    check_shape(where, "dc_last", dc_last, (B, H), "(B, H)")
    check_shape(where, "dW", dW, (I, GATES * H), "(I, 4H)")
    check_shape(where, "dU", dU, (H, GATES * H), "(H, 4H)")
    check_shape(where, "db", db, (GATES * H,), "(4H,)")
    check_shape(where, "dh0", dh0, (B, H), "(B, H)")
    check_shape(where, "dc0", dc0, (B, H), "(B, H)")


def check_cache(where, cache, cache_type):
    """cache must be what this backend's lstm_forward returned (each backend keeps its own)."""
    if not isinstance(cache, cache_type):
        raise TaggerError(f"{where}: cache must be what this backend's lstm_forward returned, got {type(cache).__name__}")


def check_lstm_input_table(table, W, where="lstm_input_table"):
    """table (V, E), W (E, G), one float dtype."""
    check_floats(where, table=table, W=W)
    check_ndim(where, "table", table, 2, "(V, E)")
    check_ndim(where, "W", W, 2, "(E, 4H)")
    check_shape(where, "W", W, (table.shape[1], W.shape[1]), "(E, 4H)")


def check_lstm_forward_ids(P, ids, U, b, starts, lengths, where="lstm_forward_ids"):
    """P (V, G), ids (B, T) int in 0..V-1, U (H, G), b (G,); returns (ids, starts, lengths)
    as int64 host arrays."""
    check_floats(where, P=P, U=U, b=b)
    check_lstm_weights(where, U, b, P, "P", "(V, 4H)")
    ids = check_ids(where, ids, int(P.shape[0]), ndim=2)
    B, T = ids.shape
    starts, lengths = check_spans_at(where, starts, lengths, B, T)
    return ids, starts, lengths


def check_pair(where, args_fwd, args_bwd, accumulates=False):
    """Two argument tuples of one LSTM op; backward pairs must not share gradient buffers
    (the two calls may run at the same time)."""
    for name, args in (("args_fwd", args_fwd), ("args_bwd", args_bwd)):
        if not isinstance(args, (tuple, list)):
            raise TaggerError(f"{where}: {name} must be a tuple of the single op's arguments, got {type(args).__name__}")
    if accumulates:
        shared = [n for n, a, c in zip(("dW", "dU", "db"), args_fwd[4:7], args_bwd[4:7]) if a is c]
        if shared:
            raise TaggerError(f"{where}: both directions accumulate into the same {shared[0]}; give each its own buffers")


# ----------------------------------------------------------------------------------------
# embedding, dense, activations, loss, merge, pooling


def check_ids(where, ids, V, ndim=None, name="ids"):
    """ids: integers in 0..V-1 (the table's rows), as an int64 host array."""
    ids = check_ints(where, name, ids)
    if ndim is not None and ids.ndim != ndim:
        raise TaggerError(f"{where}: {name} must be {ndim}-D (B, T), got shape {ids.shape}")
    check_range(where, name, ids, V, "the table's rows")
    return np.ascontiguousarray(ids, dtype=np.int64)


def check_embedding_forward(table, ids, where="embedding_forward"):
    """table (V, E) float, ids int in 0..V-1; returns ids as an int64 host array."""
    check_floats(where, table=table)
    check_ndim(where, "table", table, 2, "(V, E)")
    return check_ids(where, ids, int(table.shape[0]))


def check_embedding_backward(dtable, dE, ids, mask, where="embedding_backward"):
    """dtable (V, E), dE ids.shape + (E,), mask None or ids.shape; returns (ids, mask) host."""
    check_floats(where, dtable=dtable, dE=dE)
    check_ndim(where, "dtable", dtable, 2, "(V, E)")
    ids = check_ids(where, ids, int(dtable.shape[0]))
    check_shape(where, "dE", dE, ids.shape + (int(dtable.shape[1]),), "ids.shape + (E,)")
    return ids, check_mask(where, "mask", mask, ids.shape, "ids.shape")


def check_dense_forward(X, W, b, where="dense_forward"):
    """X (..., I), W (I, K), b (K,) or None; one float dtype."""
    check_floats(where, X=X, W=W, b=b)
    check_ndim(where, "W", W, 2, "(I, K)")
    I, K = shape_of(W)
    check_last_axis(where, "X", X, I, "(..., I)", "I = W's rows")
    check_shape(where, "b", b, (K,), "(K,)")


def check_dense_backward(dY, X, W, dW, db, where="dense_backward"):
    """dY (..., K) like X (..., I); dW (I, K); db (K,) or None."""
    check_floats(where, X=X, W=W, dY=dY, dW=dW, db=db)
    check_ndim(where, "W", W, 2, "(I, K)")
    I, K = shape_of(W)
    check_last_axis(where, "X", X, I, "(..., I)", "I = W's rows")
    check_shape(where, "db", db, (K,), "(K,)")
    check_shape(where, "dY", dY, shape_of(X)[:-1] + (K,), "X.shape[:-1] + (K,)")
    check_shape(where, "dW", dW, (I, K), "(I, K)")


def check_activation(where, name):
    check_choice(where, "activation", name, (None, *ACTIVATIONS))


def check_activation_forward(X, name, where="activation_forward"):
    check_activation(where, name)
    check_floats(where, X=X)


def check_activation_backward(dY, Y, name, where="activation_backward"):
    check_activation(where, name)
    check_floats(where, dY=dY, Y=Y)
    check_shape(where, "dY", dY, shape_of(Y), "Y.shape")


def check_softmax(logits, where="softmax"):
    check_floats(where, logits=logits)
    if len(shape_of(logits)) < 1 or shape_of(logits)[-1] < 1:
        raise TaggerError(f"{where}: logits must have a last axis of K >= 1 classes, got shape {shape_of(logits)}")


def check_softmax_xent(logits, labels, mask, where="softmax_xent"):
    """logits (..., K), labels (...) int in 0..K-1 where counted, mask None or labels' shape.
    Returns (labels, mask) as host arrays."""
    check_softmax(logits, where)
    lead = shape_of(logits)[:-1]
    labels = check_ints(where, "labels", labels)
    check_shape(where, "labels", labels, lead, "logits.shape[:-1]")
    mask = check_mask(where, "mask", mask, lead, "logits.shape[:-1]")
    counted = labels if mask is None else labels[mask.astype(bool)]
    check_range(where, "labels", counted, shape_of(logits)[-1], "the classes of logits")
    return labels, mask


def check_merge_forward(Yf, Yb, mode, where="merge_forward"):
    check_choice(where, "merge_mode", mode, MERGE_MODES)
    check_floats(where, Yf=Yf, Yb=Yb)
    check_shape(where, "Yb", Yb, shape_of(Yf), "Yf.shape")


def check_merge_backward(dY, Yf, Yb, mode, where="merge_backward"):
    check_merge_forward(Yf, Yb, mode, where)
    check_floats(where, Yf=Yf, dY=dY)
    lead, H = shape_of(Yf)[:-1], shape_of(Yf)[-1]
    if mode == "concat":
        check_shape(where, "dY", dY, lead + (2 * H,), "Yf.shape[:-1] + (2H,)")
    else:
        check_shape(where, "dY", dY, shape_of(Yf), "Yf.shape")


def check_concat_forward(Ys, where="concat_forward"):
    """Ys: a non-empty list of float arrays of one dtype, equal in every axis but the last
    (widths may differ); returns the widths."""
    if isinstance(Ys, (str, bytes)) or not isinstance(Ys, (list, tuple)) or not Ys:
        raise TaggerError(f"{where}: Ys must be a non-empty list of arrays (..., W_k), got {type(Ys).__name__}")
    check_floats(where, **{f"Ys[{k}]": y for k, y in enumerate(Ys)})
    lead = shape_of(Ys[0])[:-1]
    for k, y in enumerate(Ys):
        if len(y.shape) < 1 or shape_of(y)[:-1] != lead:
            raise TaggerError(
                f"{where}: Ys[{k}] has shape {shape_of(y)}, expected Ys[0].shape[:-1] + (W,) = {lead} + (W,)"
            )
    return [int(y.shape[-1]) for y in Ys]


def check_concat_backward(dY, widths, where="concat_backward"):
    """dY (..., sum(widths)) float; widths: a non-empty list of ints >= 0. Returns the widths."""
    check_floats(where, dY=dY)
    ok = isinstance(widths, (list, tuple)) and len(widths) > 0 and all(
        isinstance(w, (int, np.integer)) and not isinstance(w, bool) and w >= 0 for w in widths)
    if not ok:
        raise TaggerError(f"{where}: widths must be a non-empty list of ints >= 0 (the W_k of concat_forward's Ys), got {widths!r}")
    widths = [int(w) for w in widths]
    if len(dY.shape) < 1:
        raise TaggerError(f"{where}: dY must be an array (..., sum(widths)), got shape {shape_of(dY)}")
    check_last_axis(where, "dY", dY, sum(widths), "(..., sum(widths))", "sum(widths)")
    return widths


def check_pool_forward(X, starts, lengths, mode, where="pool_forward"):
    """X (B, T, F) float; returns (starts, lengths) as int64 host arrays."""
    check_choice(where, "pooling mode", mode, POOL_MODES)
    check_floats(where, X=X)
    check_ndim(where, "X", X, 3, "(B, T, F)")
    B, T, _ = shape_of(X)
    return check_spans_at(where, starts, lengths, B, T)


def check_pool_backward(dY, argmax, starts, lengths, T, mode, where="pool_backward"):
    """dY (B, F); argmax (B, F) int inside each row's span (mode max); T int >= 0.
    Returns (argmax as an int64 host array or None, starts, lengths)."""
    check_choice(where, "pooling mode", mode, POOL_MODES)
    check_floats(where, dY=dY)
    check_ndim(where, "dY", dY, 2, "(B, F)")
    if not isinstance(T, (int, np.integer)) or T < 0:
        raise TaggerError(f"{where}: T must be an int >= 0 (the padded timesteps), got {T!r}")
    B, F = shape_of(dY)
    starts, lengths = check_spans_at(where, starts, lengths, B, int(T))
    if mode != "max":
        return None, starts, lengths
    if argmax is None:
        raise TaggerError(f"{where}: mode 'max' needs the argmax that pool_forward returned")
    argmax = check_ints(where, "argmax", argmax)
    check_shape(where, "argmax", argmax, (B, F), "(B, F)")
    real = lengths > 0  # the kernels write dX at these steps: each must lie in its row's span
    a, s, n = argmax[real], starts[real, None], lengths[real, None]
    if a.size and ((a < s) | (a >= s + n)).any():
        raise TaggerError(f"{where}: argmax outside its row's real steps; pass the argmax that pool_forward returned")
    return np.ascontiguousarray(argmax, dtype=np.int64), starts, lengths


# ----------------------------------------------------------------------------------------
# dropout, mul, optimisers, buffers


def check_dropout_mask(shape, rate, seed, dtype, where="dropout_mask"):
    """Returns shape as a tuple of ints."""
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    if not all(isinstance(n, (int, np.integer)) and n >= 0 for n in shape):
        raise TaggerError(f"{where}: shape must be ints >= 0, got {shape!r}")
    if not 0.0 <= float(rate) < 1.0:
        raise TaggerError(f"{where}: rate must lie in [0, 1), got {rate!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TaggerError(f"{where}: seed must be an int >= 0, got {seed!r}")
    if np.dtype(dtype).kind != "f":
        raise TaggerError(f"{where}: dtype must be a float dtype, got {np.dtype(dtype)}")
    return tuple(int(n) for n in shape)


def check_mul(X, M, where="mul"):
    """M broadcasts against X without growing it (NumPy rules, right-aligned)."""
    check_floats(where, X=X, M=M)
    xs, ms = shape_of(X), shape_of(M)
    if len(ms) > len(xs) or any(m not in (1, x) for m, x in zip(ms[::-1], xs[::-1])):
        raise TaggerError(f"{where}: M of shape {ms} does not broadcast to X of shape {xs}")


def check_update(where, rows, **arrays):
    """Optimiser arrays: floats of one dtype and one shape; rows into their first axis.
    Returns rows as an int64 host array or None."""
    # the common case first, with nothing built: NumPy arrays whose shapes and dtypes agree
    # (the general path below costs ~4 us, and a training step makes ~20 of these calls)
    first = next(iter(arrays.values()), None)
    if (type(first) is np.ndarray and first.dtype.kind == "f" and first.ndim
            and all(type(a) is np.ndarray and a.shape == first.shape and a.dtype == first.dtype for a in arrays.values())):
        return check_rows(where, rows, first.shape[0])
    check_floats(where, **arrays)
    (first, a0), *rest = arrays.items()
    for name, a in rest:
        check_shape(where, name, a, shape_of(a0), f"{first}.shape")
    if len(a0.shape) == 0:
        raise TaggerError(f"{where}: {first} must have at least one axis")
    return check_rows(where, rows, int(a0.shape[0]))


def check_ema_update(average, param, momentum):
    """ema_update: two float arrays of one dtype and shape, momentum a number in [0, 1)."""
    check_update("ema_update", None, average=average, param=param)
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float, np.floating)) or not 0 <= momentum < 1:
        raise TaggerError(f"ema_update: momentum must be a number in [0, 1), got {momentum!r}")


def check_step(where, step):
    if not isinstance(step, (int, np.integer)) or step < 1:
        raise TaggerError(f"{where}: step must be an int >= 1 (it counts from 1), got {step!r}")


def check_buffer(where, arr, rows, name="arr"):
    """In-place buffer ops: an array, rows into its first axis."""
    if not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
        raise TaggerError(f"{where}: {name} must be an array, got {type(arr).__name__}")
    if rows is not None and len(arr.shape) == 0:
        raise TaggerError(f"{where}: {name} has no rows to select")
    return check_rows(where, rows, int(arr.shape[0]) if len(arr.shape) else 0)


# ----------------------------------------------------------------------------------------
# the pair ops: both directions' calls, after one check of the pair


def run_pair(where, op, args_fwd, args_bwd, accumulates=False, submit=None):
    """(op(*args_fwd), op(*args_bwd)): sequential, or with the second call handed to
    submit (an executor's submit) so the two directions run at the same time.
    accumulates: a backward op, whose two calls must not share gradient buffers."""
    check_pair(where, args_fwd, args_bwd, accumulates)
    if submit is None:
        return op(*args_fwd), op(*args_bwd)
    second = submit(op, *args_bwd)
    first = op(*args_fwd)
    return first, second.result()


def sequential_pair_ops(lstm_forward, lstm_backward, lstm_forward_ids):
    """The three pair ops of a backend that runs the two directions one after the other
    (CONCURRENT_PAIR False: reference, cuda), bound to that backend's own single ops."""

    def lstm_forward_pair(args_fwd, args_bwd, threads=None):
        """(lstm_forward(*args_fwd), lstm_forward(*args_bwd)): the two directions of a
        Bidirectional layer, one after the other (threads is ignored)."""
        return run_pair("lstm_forward_pair", lstm_forward, args_fwd, args_bwd)

    def lstm_backward_pair(args_fwd, args_bwd, threads=None):
        """(lstm_backward(*args_fwd), lstm_backward(*args_bwd)); each args tuple is (cache, dY,
        dh_last, dc_last, dW, dU, db), and the two accumulate into different buffers."""
        return run_pair("lstm_backward_pair", lstm_backward, args_fwd, args_bwd, accumulates=True)

    def lstm_forward_ids_pair(args_fwd, args_bwd, threads=None):
        """(lstm_forward_ids(*args_fwd), lstm_forward_ids(*args_bwd)), one after the other."""
        return run_pair("lstm_forward_ids_pair", lstm_forward_ids, args_fwd, args_bwd)

    return lstm_forward_pair, lstm_backward_pair, lstm_forward_ids_pair
