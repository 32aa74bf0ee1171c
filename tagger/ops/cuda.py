"""numba.cuda backend: the ops of tagger/ops/reference.py with arrays on the device.

Legend, gate order and the one masking rule: reference.py's docstring (shared by every
backend). Kernel bodies: tagger/ops/_cuda_kernels.py. Design notes and the ptxas report:
docs/cuda.md.

Importing this module never touches the CUDA driver: kernels are wrapped with
``cuda.jit`` on their first launch. Use :func:`is_available` to ask whether a GPU (or the
CUDA simulator, ``NUMBA_ENABLE_CUDASIM=1``) can run them.

Arrays are numba device arrays. Every op also accepts host NumPy arrays and copies them
in; small integer arrays (starts, lengths, ids, labels, rows, masks) may be host or
device. The only device-to-host copies of a training step are the scalars that must come
back (softmax_xent's loss, sum_of_squares) plus the lengths/ids the host already has.

Launch shapes are chosen here from module constants, which the tests patch down so that
tiny inputs still span several blocks and grid-stride loops go round more than once:
    THREADS_PER_BLOCK  1-D kernels (elementwise, rows, LSTM steps)
    MAX_BLOCKS         cap on the 1-D grid (the kernels are grid-stride)
    TILE               GEMM tile edge: blocks of TILE x TILE threads
    MAX_GRID_2D        cap on each GEMM grid dimension
    REDUCE_THREADS     block size of the deterministic reductions (a power of two)
    REDUCE_BLOCKS      fixed number of partial sums of those reductions
"""
from __future__ import annotations

import math

import numpy as np

from tagger.ops import _cuda_kernels as K
from tagger.ops.reference import ACTIVATIONS, MERGE_MODES, _check_pool, _splitmix64, check_spans

THREADS_PER_BLOCK = 256
MAX_BLOCKS = 1024
TILE = 16
MAX_GRID_2D = 1024
REDUCE_THREADS = 256
REDUCE_BLOCKS = 64
# LSTM recurrence: "sequence" = one persistent launch per direction, block b owns row b
# for all its steps (block barrier between steps); "step" = one launch per time step.
RECURRENCE = "sequence"
RECURRENT_THREADS = 256  # block size of the "sequence" kernels (threads loop over units)

_JITTED: dict = {}


def _cuda():
    from numba import cuda

    return cuda


def is_available() -> bool:
    """True when kernels can run: a usable CUDA GPU and driver, or the CUDA simulator.

    Never raises; the CLI can call it to decide whether `--device cuda` is possible.
    """
    try:
        return bool(_cuda().is_available())
    except Exception:  # no driver, broken toolkit, numba-cuda missing ...
        return False


def is_simulator() -> bool:
    """True under NUMBA_ENABLE_CUDASIM=1 (kernels run as Python threads)."""
    try:
        from numba import config

        return bool(config.ENABLE_CUDASIM)
    except Exception:
        return False


def device_name() -> str:
    """Name of the current device ('' when none is usable)."""
    if not is_available():
        return ""
    try:
        name = _cuda().get_current_device().name
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return ""


# ----------------------------------------------------------------------------------------
# launching


def _kernel(name, dtype):
    """The jitted kernel `name` for float dtype, built with the current constants."""
    dtype = np.dtype(dtype)
    key = (name, dtype.str, TILE, REDUCE_THREADS)
    fn = _JITTED.get(key)
    if fn is None:
        spec = K.KERNELS[name]
        fn = _cuda().jit(spec.build(dtype.type, TILE, REDUCE_THREADS))
        _JITTED[key] = fn
    return fn


def _launch1d(name, dtype, n, *args):
    if n <= 0:
        return
    blocks = max(1, min(-(-n // THREADS_PER_BLOCK), MAX_BLOCKS))
    _kernel(name, dtype)[blocks, THREADS_PER_BLOCK](*args)


def _gemm(A, B, out, *, trans_a=False, trans_b=False, accumulate=False, bias=None):
    """out (M, N) [+]= op(A) @ op(B) [+ bias]; all 2-D C-contiguous device arrays."""
    M, N = out.shape
    Kd = A.shape[0] if trans_a else A.shape[1]
    if M == 0 or N == 0:
        return out
    dtype = out.dtype
    grid = (max(1, min(-(-N // TILE), MAX_GRID_2D)), max(1, min(-(-M // TILE), MAX_GRID_2D)))
    has_bias = bias is not None
    b = bias if has_bias else _dummy(dtype, 1)
    _kernel("gemm", dtype)[grid, (TILE, TILE)](
        A, B, out, b, M, N, Kd, int(trans_a), int(trans_b), int(accumulate), int(has_bias)
    )
    return out


def _colsum_into(A, out):
    """out (N,) += A.sum(axis=0) for A (M, N)."""
    if A.shape[0] > 0:
        _launch1d("colsum", out.dtype, A.shape[1], A, out)


def _reduce_cols(x):
    """Deterministic float64 sums of the columns of x (n, m): a (1, m) device array."""
    n, m = x.shape
    partial = _empty((REDUCE_BLOCKS, m), np.float64)
    total = _empty((1, m), np.float64)
    part = _kernel("sum_partial", np.float64)
    for col in range(m):
        part[REDUCE_BLOCKS, REDUCE_THREADS](x, col, partial)
        part[1, REDUCE_THREADS](partial, col, total)
    return total


# ----------------------------------------------------------------------------------------
# memory


def _is_device(a):
    return hasattr(a, "copy_to_host")


def _empty(shape, dtype):
    return _cuda().device_array(shape, dtype=np.dtype(dtype))


_DUMMIES: dict = {}


def _dummy(dtype, ndim):
    key = (np.dtype(dtype).str, ndim)
    if key not in _DUMMIES:
        _DUMMIES[key] = _cuda().to_device(np.zeros((1,) * ndim, dtype=dtype))
    return _DUMMIES[key]


def asarray(a, dtype=None):
    """Device array of `a` (host arrays copied in; device arrays returned as they are)."""
    if _is_device(a):
        if dtype is None or np.dtype(dtype) == a.dtype:
            return a
        a = a.copy_to_host()
    return _cuda().to_device(np.ascontiguousarray(a, dtype=dtype))


def to_numpy(a):
    """Host NumPy copy of a device array (host arrays pass through)."""
    if _is_device(a):
        return a.copy_to_host()
    return np.asarray(a)


def zeros(shape, dtype=np.float32):
    out = _empty(shape, dtype)
    fill_(out, 0.0)
    return out


def _dev(a):
    return a if _is_device(a) else _cuda().to_device(np.ascontiguousarray(a))


def _host_int(a):
    return np.ascontiguousarray(to_numpy(a), dtype=np.int64)


def _dev_int(a):
    """int64 device array (host ints copied in, device int64 passed through)."""
    if _is_device(a) and a.dtype == np.int64:
        return a
    return _cuda().to_device(_host_int(a))


def _dev_mask(mask):
    """uint8 device view of a bool/int mask (host or device), flattened."""
    if _is_device(mask):
        if mask.dtype.itemsize == 1:
            return mask.reshape(-1).view(np.uint8)
        mask = mask.copy_to_host()
    return _cuda().to_device(np.ascontiguousarray(np.asarray(mask).reshape(-1) != 0, dtype=np.uint8))


def _flat(a):
    return a.reshape(-1)


def _rows2d(a):
    """(R, C) view: 2-D arrays as they are, 1-D as (n, 1), higher as (shape[0], -1)."""
    if a.ndim == 2:
        return a
    if a.ndim == 1:
        return a.reshape(a.shape[0], 1)
    return a.reshape(a.shape[0], int(np.prod(tuple(a.shape)[1:])))


def _scalar(x, dtype):
    return np.dtype(dtype).type(x)


# ----------------------------------------------------------------------------------------
# LSTM


def _recurrence():
    if RECURRENCE not in ("sequence", "step"):
        raise ValueError(f"tagger.ops.cuda.RECURRENCE must be 'sequence' or 'step', not {RECURRENCE!r}")
    return RECURRENCE


def _seq_grid(B):
    return max(1, min(B, MAX_BLOCKS))


def _seq_block(H):
    # whole warps, no more threads than units (rounded up to a warp) or RECURRENT_THREADS
    return max(1, min(RECURRENT_THREADS, -(-H // 32) * 32))


class CudaLSTMCache:
    """What lstm_backward needs: device arrays from the forward plus host starts/lengths."""

    def __init__(self, X, W, U, starts, lengths, reverse, in_mask, rec_mask, acts, C, Y, Hp,
                 starts_h, lengths_h):
        self.X = X  # (B, T, I) input after in_mask
        self.W = W  # (I, G)
        self.U = U  # (H, G)
        self.starts = starts  # (B,) int64 device
        self.lengths = lengths  # (B,) int64 device
        self.reverse = bool(reverse)
        self.in_mask = in_mask  # (B, I) or None
        self.rec_mask = rec_mask  # (B, H) or None
        self.acts = acts  # (B, T, G) gate activations i, f, g, o
        self.C = C  # (B, T, H) cell state after each step
        self.Y = Y  # (B, T, H) hidden state after each step
        self.Hp = Hp  # (B, T, H) h_prev * rec_mask entering each step (0 at the first/padding)
        self.starts_h = starts_h  # host copies: the step loop bounds
        self.lengths_h = lengths_h


def lstm_forward(X, W, U, b, starts, lengths, reverse=False, in_mask=None, rec_mask=None):
    """One LSTM direction over a padded batch (see reference.lstm_forward).

    X (B, T, I), W (I, G), U (H, G), b (G,), starts/lengths (B,) int (host or device),
    in_mask (B, I) or None, rec_mask (B, H) or None.
    Returns Y (B, T, H), h_last (B, H), c_last (B, H), cache.
    """
    X, W, U, b = _dev(X), _dev(W), _dev(U), _dev(b)
    dt = X.dtype
    B, T, I = X.shape
    H = U.shape[0]
    G = 4 * H
    if tuple(W.shape) != (I, G) or tuple(U.shape) != (H, G) or tuple(b.shape) != (G,):
        raise ValueError(f"lstm_forward: W {W.shape}, U {U.shape}, b {b.shape} do not fit X {X.shape}, H={H}")
    starts_h, lengths_h = _host_int(starts), _host_int(lengths)
    if starts_h.shape != (B,) or lengths_h.shape != (B,):
        raise ValueError("lstm_forward: starts and lengths must have shape (B,)")
    if B and ((starts_h < 0).any() or (starts_h + lengths_h > T).any() or (lengths_h < 0).any()):
        raise ValueError("lstm_forward: every sequence must lie inside [0, T)")
    starts_d, lengths_d = _cuda().to_device(starts_h), _cuda().to_device(lengths_h)
    # 0. input dropout on X, before the projection
    if in_mask is not None:
        in_mask = _dev(in_mask)
        Xm = _empty((B, T, I), dt)
        _launch1d("scale_bt", dt, B * T * I, X, in_mask, Xm)
    else:
        Xm = X
    # 1. input projection for every step: (B*T, I) @ (I, G) + b, one GEMM
    XW = _empty((B, T, G), dt)
    _gemm(Xm.reshape(B * T, I), W, XW.reshape(B * T, G), bias=b)
    # 2. the recurrence, one launch per step (asynchronous; no copies, no syncs)
    Y, C, Hp = zeros((B, T, H), dt), zeros((B, T, H), dt), zeros((B, T, H), dt)
    acts = zeros((B, T, G), dt)
    rm = _dev(rec_mask) if rec_mask is not None else _dummy(dt, 2)
    max_len = int(lengths_h.max()) if B else 0
    if _recurrence() == "sequence":
        if max_len:
            _kernel("lstm_seq", dt)[_seq_grid(B), _seq_block(H)](
                XW, U, Y, C, acts, Hp, rm, int(rec_mask is not None), starts_d, lengths_d, int(bool(reverse)))
    else:
        for s in range(max_len):
            _launch1d("lstm_step", dt, B * H, XW, U, Y, C, acts, Hp, rm, int(rec_mask is not None),
                      starts_d, lengths_d, s, int(bool(reverse)))
    # 3. final state at each row's last real step
    h, c = _empty((B, H), dt), _empty((B, H), dt)
    _launch1d("lstm_last", dt, B * H, Y, C, h, c, starts_d, lengths_d, int(bool(reverse)))
    cache = CudaLSTMCache(Xm, W, U, starts_d, lengths_d, reverse, in_mask,
                          rm if rec_mask is not None else None, acts, C, Y, Hp, starts_h, lengths_h)
    return Y, h, c, cache


def lstm_backward(cache, dY, dh_last, dc_last, dW, dU, db):
    """Backward of lstm_forward. dY (B, T, H) or None; dh_last, dc_last (B, H) or None.

    Accumulates into dW (I, G), dU (H, G), db (G,) (device arrays); returns dX (B, T, I).
    """
    X, W, U = cache.X, cache.W, cache.U
    dt = X.dtype
    B, T, I = X.shape
    H = U.shape[0]
    G = 4 * H
    for name, arr, shape in (("dW", dW, (I, G)), ("dU", dU, (H, G)), ("db", db, (G,))):
        if not _is_device(arr):
            raise TypeError(f"lstm_backward: {name} must be a device array (it is accumulated in place)")
        if tuple(arr.shape) != shape:
            raise ValueError(f"lstm_backward: {name} has shape {arr.shape}, expected {shape}")
    # 1. per step (last to first): dZ for every real step, dh carried through dZ @ U^T
    dZ = zeros((B, T, G), dt)
    dc_carry = zeros((B, H), dt)
    dYd = _dev(dY) if dY is not None else _dummy(dt, 3)
    dhd = _dev(dh_last) if dh_last is not None else _dummy(dt, 2)
    dcd = _dev(dc_last) if dc_last is not None else _dummy(dt, 2)
    rm = cache.rec_mask if cache.rec_mask is not None else _dummy(dt, 2)
    max_len = int(cache.lengths_h.max()) if B else 0
    flags = (int(dY is not None), int(dh_last is not None), int(dc_last is not None))
    if _recurrence() == "sequence":
        if max_len:
            _kernel("lstm_bseq", dt)[_seq_grid(B), _seq_block(H)](
                dZ, cache.acts, cache.C, U, rm, int(cache.rec_mask is not None), dYd, flags[0], dhd, flags[1],
                dc_carry, dcd, flags[2], cache.starts, cache.lengths, int(cache.reverse))
    else:
        for s in range(max_len - 1, -1, -1):
            _launch1d("lstm_bstep", dt, B * H, dZ, cache.acts, cache.C, U, rm, int(cache.rec_mask is not None),
                      dYd, flags[0], dhd, flags[1], dc_carry, dcd, flags[2], cache.starts, cache.lengths, s,
                      int(cache.reverse))
    # 2. the weight gradients as a few large GEMMs over all B*T rows (dZ is 0 at padding)
    dZ2 = dZ.reshape(B * T, G)
    _gemm(X.reshape(B * T, I), dZ2, dW, trans_a=True, accumulate=True)
    _gemm(cache.Hp.reshape(B * T, H), dZ2, dU, trans_a=True, accumulate=True)
    _colsum_into(dZ2, db)
    # 3. dX = dZ W^T, then through the input dropout mask
    dX = _empty((B, T, I), dt)
    _gemm(dZ2, W, dX.reshape(B * T, I), trans_b=True)
    if cache.in_mask is not None:
        _launch1d("scale_bt", dt, B * T * I, dX, cache.in_mask, dX)
    return dX


# ----------------------------------------------------------------------------------------
# Embedding


def embedding_forward(table, ids):
    """table (V, E), ids (B, T) int -> (B, T, E)."""
    table = _dev(table)
    ids_d = _dev_int(ids)
    shape = tuple(ids_d.shape)
    E = table.shape[1]
    n = int(np.prod(shape)) if shape else 1
    out = _empty((n, E), table.dtype)
    _launch1d("gather", table.dtype, n * E, table, ids_d.reshape(n), out)
    return out.reshape(shape + (E,))


def embedding_backward(dtable, dE, ids, mask=None):
    """dtable (V, E) += scatter of dE (B, T, E) at ids where mask; deterministic.

    The positions are sorted stably by id on the host (ids come from the host batch), so
    one thread per (touched row, e) adds its positions in input order: the same sums, in
    the same order, as the reference's np.add.at. Returns the sorted unique rows (host
    int64 array).
    """
    ids_h = _host_int(ids).reshape(-1)
    if mask is None:
        sel = np.arange(ids_h.size, dtype=np.int64)
    else:
        sel = np.nonzero(np.asarray(to_numpy(mask)).reshape(-1))[0].astype(np.int64)
    sel_ids = ids_h[sel]
    order = np.argsort(sel_ids, kind="stable")
    pos = sel[order]
    uniq, counts = np.unique(sel_ids[order], return_counts=True)
    uniq = uniq.astype(np.int64)
    if uniq.size == 0:
        return uniq
    offsets = np.zeros(uniq.size + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    dE = _dev(dE)
    E = tuple(dE.shape)[-1]
    cu = _cuda()
    _launch1d("embed_bwd", dtable.dtype, uniq.size * E, dtable, dE.reshape(ids_h.size, E),
              cu.to_device(pos), cu.to_device(offsets), cu.to_device(uniq))
    return uniq


# ----------------------------------------------------------------------------------------
# Dense and activations


def dense_forward(X, W, b):
    """X (..., I) @ W (I, K) + b (K,) -> (..., K)."""
    X, W, b = _dev(X), _dev(W), _dev(b)
    I, Kd = W.shape
    lead = tuple(X.shape)[:-1]
    n = int(np.prod(lead)) if lead else 1
    out = _empty((n, Kd), X.dtype)
    _gemm(X.reshape(n, I), W, out, bias=b)
    return out.reshape(lead + (Kd,))


def dense_backward(dY, X, W, dW, db):
    """Accumulates dW (I, K) and db (K,); returns dX shaped like X."""
    dY, X, W = _dev(dY), _dev(X), _dev(W)
    I, Kd = W.shape
    n = X.size // I
    X2, dY2 = X.reshape(n, I), dY.reshape(n, Kd)
    _gemm(X2, dY2, dW, trans_a=True, accumulate=True)
    _colsum_into(dY2, db)
    dX = _empty((n, I), X.dtype)
    _gemm(dY2, W, dX, trans_b=True)
    return dX.reshape(X.shape)


def _check_activation(name):
    if name not in K.ACT_CODES:
        raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")


def activation_forward(X, name):
    _check_activation(name)
    X = _dev(X)
    code = K.ACT_CODES[name]
    if code == 0:
        return X
    if code == 4:
        return softmax(X)
    out = _empty(X.shape, X.dtype)
    _launch1d("act_fwd", X.dtype, X.size, _flat(X), _flat(out), code)
    return out


def activation_backward(dY, Y, name):
    """Gradient through the activation, from its output Y."""
    _check_activation(name)
    dY, Y = _dev(dY), _dev(Y)
    code = K.ACT_CODES[name]
    if code == 0:
        return dY
    out = _empty(Y.shape, Y.dtype)
    if code == 4:
        Kd = tuple(Y.shape)[-1]
        n = Y.size // Kd
        _launch1d("softmax_bwd_rows", Y.dtype, n, dY.reshape(n, Kd), Y.reshape(n, Kd), out.reshape(n, Kd))
        return out
    _launch1d("act_bwd", Y.dtype, Y.size, _flat(dY), _flat(Y), _flat(out), code)
    return out


# ----------------------------------------------------------------------------------------
# Loss


def softmax(logits):
    logits = _dev(logits)
    Kd = tuple(logits.shape)[-1]
    n = logits.size // Kd
    out = _empty(logits.shape, logits.dtype)
    _launch1d("softmax_rows", logits.dtype, n, logits.reshape(n, Kd), out.reshape(n, Kd))
    return out


def softmax_xent(logits, labels, mask=None):
    """Mean softmax cross-entropy over counted items (see reference.softmax_xent).

    Returns (loss: float, dlogits: device array). The loss is reduced on the device in a
    fixed order (deterministic) and is the one value copied back to the host.
    """
    logits = _dev(logits)
    dt = logits.dtype
    Kd = tuple(logits.shape)[-1]
    n = logits.size // Kd
    labels_d = _dev_int(labels).reshape(-1)
    if labels_d.shape[0] != n:
        raise ValueError(f"softmax_xent: {labels_d.shape[0]} labels for {n} rows of logits")
    has_mask = mask is not None
    mask_d = _dev_mask(mask) if has_mask else _cuda().to_device(np.zeros(1, dtype=np.uint8))
    d = _empty((n, Kd), dt)
    terms = _empty((max(n, 1), 2), np.float64)
    if n == 0:
        fill_(terms, 0.0)
    _launch1d("xent_rows", dt, n, logits.reshape(n, Kd), labels_d, mask_d, int(has_mask), d, terms)
    total = _reduce_cols(terms)
    _launch1d("xent_scale", dt, n * Kd, d, mask_d, int(has_mask), total)
    tot = total.copy_to_host()
    loss = float(tot[0, 0] / max(tot[0, 1], 1.0))
    return loss, d.reshape(logits.shape)


# ----------------------------------------------------------------------------------------
# Bidirectional merge


def _check_merge(mode):
    if mode not in MERGE_MODES:
        raise ValueError(f"unknown merge_mode {mode!r}; choose one of {MERGE_MODES}")


def merge_forward(Yf, Yb, mode):
    """(..., H) x 2 -> (..., 2H) for concat, else (..., H)."""
    _check_merge(mode)
    Yf, Yb = _dev(Yf), _dev(Yb)
    H = tuple(Yf.shape)[-1]
    n = Yf.size // H
    W = 2 * H if mode == "concat" else H
    out = _empty((n, W), Yf.dtype)
    _launch1d("merge_fwd", Yf.dtype, n * W, Yf.reshape(n, H), Yb.reshape(n, H), out, K.MERGE_CODES[mode])
    return out.reshape(tuple(Yf.shape)[:-1] + (W,))


def merge_backward(dY, Yf, Yb, mode):
    """Returns (dYf, dYb), fresh device arrays."""
    _check_merge(mode)
    dY, Yf, Yb = _dev(dY), _dev(Yf), _dev(Yb)
    H = tuple(Yf.shape)[-1]
    n = Yf.size // H
    dYf, dYb = _empty((n, H), Yf.dtype), _empty((n, H), Yf.dtype)
    _launch1d("merge_bwd", Yf.dtype, n * H, dY.reshape(n, tuple(dY.shape)[-1]), Yf.reshape(n, H), Yb.reshape(n, H),
              dYf, dYb, K.MERGE_CODES[mode])
    return dYf.reshape(Yf.shape), dYb.reshape(Yf.shape)


# ----------------------------------------------------------------------------------------
# Global pooling over time


def pool_forward(X, starts, lengths, mode):
    """X (B, T, F) -> (Y (B, F), argmax (B, F) int64 device array, or None for mean);
    see reference.pool_forward. starts/lengths host or device."""
    _check_pool(mode)
    X = _dev(X)
    B, T, F = tuple(X.shape)
    starts_h, lengths_h = check_spans(to_numpy(starts), to_numpy(lengths), B, T, "pool_forward")
    is_max = mode == "max"
    Y = _empty((B, F), X.dtype)
    argmax = _empty((B, F), np.int64) if is_max else None
    _launch1d("pool_fwd", X.dtype, B * F, X, _dev_int(starts_h), _dev_int(lengths_h), Y,
              argmax if is_max else _dummy(np.int64, 2), int(is_max))
    return Y, argmax


def pool_backward(dY, argmax, starts, lengths, T, mode):
    """dY (B, F) -> dX (B, T, F), 0 at padding; see reference.pool_backward."""
    _check_pool(mode)
    dY = _dev(dY)
    B, F = tuple(dY.shape)
    T = int(T)
    starts_h, lengths_h = check_spans(to_numpy(starts), to_numpy(lengths), B, T, "pool_backward")
    is_max = mode == "max"
    if is_max:
        argmax = _dev_int(argmax)
        if tuple(argmax.shape) != (B, F):
            raise ValueError(f"pool_backward: argmax has shape {tuple(argmax.shape)}, expected {(B, F)}")
    dX = _empty((B, T, F), dY.dtype)
    _launch1d("pool_bwd", dY.dtype, B * T * F, dY, argmax if is_max else _dummy(np.int64, 2),
              _dev_int(starts_h), _dev_int(lengths_h), dX, int(is_max))
    return dX


# ----------------------------------------------------------------------------------------
# Dropout


def dropout_mask(shape, rate, seed, dtype=np.float32):
    """Inverted-dropout scale, bit-identical to reference.dropout_mask (splitmix64 of
    (seed, element index) drawn on the device)."""
    shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    n = int(np.prod(shape)) if shape else 1
    with np.errstate(over="ignore"):
        key = _splitmix64(np.uint64(seed) * np.uint64(0x100000001B3))
    out = _empty((n,), dtype)
    _launch1d("dropout", dtype, n, out, np.uint64(key), float(rate), float(1.0 / (1.0 - rate)))
    return out.reshape(shape)


def mul(X, M):
    """Elementwise X * M; M broadcasts against X (NumPy rules, M.ndim <= X.ndim <= 4)."""
    X, M = _dev(X), _dev(M)
    if X.ndim > 4 or M.ndim > X.ndim:
        raise ValueError(f"mul: unsupported shapes {X.shape} * {M.shape}")
    xs = (1,) * (4 - X.ndim) + tuple(X.shape)
    ms = (1,) * (4 - M.ndim) + tuple(M.shape)
    strides, acc = [0] * 4, 1
    for ax in range(3, -1, -1):
        if ms[ax] == xs[ax]:
            strides[ax] = acc if ms[ax] > 1 else 0
        elif ms[ax] == 1:
            strides[ax] = 0
        else:
            raise ValueError(f"mul: cannot broadcast {M.shape} to {X.shape}")
        acc *= ms[ax]
    out = _empty(X.shape, X.dtype)
    _launch1d("mul_bcast", X.dtype, X.size, _flat(X), _flat(M), _flat(out), xs[1], xs[2], xs[3], *strides)
    return out


# ----------------------------------------------------------------------------------------
# Optimiser updates (in place on device arrays); `rows` host or device int


def _rows_arg(rows):
    if rows is None:
        return _cuda().to_device(np.zeros(1, dtype=np.int64)), 0, None
    r = _dev_int(rows).reshape(-1)
    return r, 1, r.shape[0]


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step, rows=None):
    """AdamW (see reference.adam_update); lazy over `rows` when given."""
    dt = param.dtype
    p2, g2, m2, v2 = _rows2d(param), _rows2d(_dev(grad)), _rows2d(m), _rows2d(v)
    rows_d, has_rows, nr = _rows_arg(rows)
    n = (nr if has_rows else p2.shape[0]) * p2.shape[1]
    s = lambda x: _scalar(x, dt)  # noqa: E731
    _launch1d("adam", dt, n, p2, g2, m2, v2, rows_d, has_rows, s(lr), s(beta1), s(1 - beta1), s(beta2),
              s(1 - beta2), s(1 - beta1**step), s(1 - beta2**step), s(eps), s(weight_decay))


def sgd_update(param, grad, velocity, lr, momentum, weight_decay, rows=None):
    """SGD with heavy-ball momentum and decoupled weight decay; lazy over `rows`."""
    dt = param.dtype
    p2, g2, v2 = _rows2d(param), _rows2d(_dev(grad)), _rows2d(velocity)
    rows_d, has_rows, nr = _rows_arg(rows)
    n = (nr if has_rows else p2.shape[0]) * p2.shape[1]
    _launch1d("sgd", dt, n, p2, g2, v2, rows_d, has_rows, _scalar(lr, dt), _scalar(momentum, dt),
              _scalar(weight_decay, dt))


def sum_of_squares(grad, rows=None):
    """float(sum(grad[rows]**2)) in float64, reduced on the device in a fixed order."""
    g2 = _rows2d(_dev(grad))
    rows_d, has_rows, _ = _rows_arg(rows)
    partial = _empty((REDUCE_BLOCKS,), np.float64)
    _kernel("sumsq_partial", g2.dtype)[REDUCE_BLOCKS, REDUCE_THREADS](g2, rows_d, has_rows, partial)
    total = _empty((1, 1), np.float64)
    part = _kernel("sum_partial", np.float64)
    part[1, REDUCE_THREADS](partial.reshape(REDUCE_BLOCKS, 1), 0, total)
    return float(total.copy_to_host()[0, 0])


def scale_(arr, factor, rows=None):
    """In-place arr *= factor (on rows only, if given)."""
    if rows is None:
        _launch1d("scale", arr.dtype, arr.size, _flat(arr), _scalar(factor, arr.dtype))
    else:
        rows_d, _, nr = _rows_arg(rows)
        a2 = _rows2d(arr)
        _launch1d("scale_rows", arr.dtype, nr * a2.shape[1], a2, rows_d, _scalar(factor, arr.dtype))


def fill_(arr, value, rows=None):
    """In-place fill (on rows only, if given)."""
    if rows is None:
        _launch1d("fill", arr.dtype, arr.size, _flat(arr), _scalar(value, arr.dtype))
    else:
        rows_d, _, nr = _rows_arg(rows)
        a2 = _rows2d(arr)
        _launch1d("fill_rows", arr.dtype, nr * a2.shape[1], a2, rows_d, _scalar(value, arr.dtype))

from tagger.ops._conv_cuda import conv1d_backward, conv1d_forward  # noqa: E402,F401  (issue 10: the char CNN)
