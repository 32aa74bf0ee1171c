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
back (softmax_xent's loss, sum_of_squares) plus the lengths/ids the host already has;
integer arrays handed in as device arrays (ids, labels, masks, rows, argmax) are copied
back for the bounds checks, so pass them from the host.

Every op checks its arguments first (tagger/ops/_checks.py, the same checks and messages
as the other backends): no span, id, label, row or argmax that could index out of bounds
reaches a kernel. Integer index arrays are read on the host for that (they are small and
the host has them anyway); float arrays only have their shapes and dtypes looked at.

Capabilities (tagger.ops.CAPABILITIES): CONCURRENT_PAIR False (the pair ops are two
calls in a row on one stream), PROJECTED_INFERENCE False (lstm_forward_ids exists for the
interface, but the input GEMM is cheap on a GPU: the plain path is the fast one).

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

import numpy as np

from tagger.errors import TaggerError
from tagger.ops import _checks as chk
from tagger.ops import _cuda_kernels as K
from tagger.ops import _crf_cuda_kernels  # noqa: F401  (registers the CRF kernels in the kernel registry)
from tagger.ops._crf_reference import check_crf
from tagger.ops._common import dropout_key
from tagger.ops.reference import lstm_act_codes

PROJECTED_INFERENCE = False
CONCURRENT_PAIR = False

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
                 starts_h, lengths_h, codes, c0):
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
        self.Hp = Hp  # (B, T, H) h_prev * rec_mask entering each step (h0 * rec_mask or 0 at the first; 0 at padding)
        self.starts_h = starts_h  # host copies: the step loop bounds
        self.lengths_h = lengths_h
        self.codes = codes  # (cell_code, gate_code): activation, recurrent_activation
        self.c0 = c0  # (B, H) initial cell state, or None (h0 is in Hp at each first step)


def lstm_forward(X, W, U, b, starts, lengths, reverse=False, in_mask=None, rec_mask=None,
                 activation="tanh", recurrent_activation="sigmoid", h0=None, c0=None, for_backward=True):
    """One LSTM direction over a padded batch (see reference.lstm_forward).

    X (B, T, I), W (I, G), U (H, G), b (G,), starts/lengths (B,) int (host or device),
    in_mask (B, I) or None, rec_mask (B, H) or None, h0/c0 (B, H) or None;
    activation, recurrent_activation: reference.LSTM_ACTIVATIONS.
    Returns Y (B, T, H), h_last (B, H), c_last (B, H), cache; with for_backward False
    (inference: no lstm_backward will follow) the cache is None.
    """
    cell_code, gate_code = lstm_act_codes(activation, recurrent_activation)
    starts_h, lengths_h = chk.check_lstm_forward(X, W, U, b, starts, lengths, in_mask, rec_mask, h0=h0, c0=c0)
    X, W, U, b = _dev(X), _dev(W), _dev(U), _dev(b)
    dt = X.dtype
    B, T, I = X.shape
    H = U.shape[0]
    G = 4 * H
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
    # the initial state in X's dtype, so the kernels keep one specialisation per dtype
    state0 = (asarray(h0, dt) if h0 is not None else _dummy(dt, 2), int(h0 is not None),
              asarray(c0, dt) if c0 is not None else _dummy(dt, 2), int(c0 is not None))
    max_len = int(lengths_h.max()) if B else 0
    if _recurrence() == "sequence":
        if max_len:
            _kernel("lstm_seq", dt)[_seq_grid(B), _seq_block(H)](
                XW, U, Y, C, acts, Hp, rm, int(rec_mask is not None), *state0, gate_code, cell_code,
                starts_d, lengths_d, int(bool(reverse)))
    else:
        for s in range(max_len):
            _launch1d("lstm_step", dt, B * H, XW, U, Y, C, acts, Hp, rm, int(rec_mask is not None), *state0,
                      gate_code, cell_code, starts_d, lengths_d, s, int(bool(reverse)))
    # 3. final state at each row's last real step (the initial state for length-0 rows)
    h, c = _empty((B, H), dt), _empty((B, H), dt)
    _launch1d("lstm_last", dt, B * H, Y, C, h, c, *state0, starts_d, lengths_d, int(bool(reverse)))
    cache = CudaLSTMCache(Xm, W, U, starts_d, lengths_d, reverse, in_mask,
                          rm if rec_mask is not None else None, acts, C, Y, Hp, starts_h, lengths_h,
                          (cell_code, gate_code), state0[2] if c0 is not None else None)
    return Y, h, c, (cache if for_backward else None)


def lstm_backward(cache, dY, dh_last, dc_last, dW, dU, db, dh0=None, dc0=None):
    """Backward of lstm_forward. dY (B, T, H) or None; dh_last, dc_last (B, H) or None.

    Accumulates into dW (I, G), dU (H, G), db (G,), and into dh0, dc0 (B, H) when given
    (gradient w.r.t. the initial state) (device arrays); returns dX (B, T, I).
    """
    chk.check_cache("lstm_backward", cache, CudaLSTMCache)
    chk.check_lstm_backward(tuple(cache.X.shape) + (cache.U.shape[0],), cache.X.dtype, dY, dh_last, dc_last, dW, dU, db,
                            dh0=dh0, dc0=dc0)
    _check_on_device("lstm_backward", dW=dW, dU=dU, db=db, dh0=dh0, dc0=dc0)
    X, W, U = cache.X, cache.W, cache.U
    dt = X.dtype
    B, T, I = X.shape
    H = U.shape[0]
    G = 4 * H
    # 1. per step (last to first): dZ for every real step, dh carried through dZ @ U^T
    dZ = zeros((B, T, G), dt)
    dc_carry = zeros((B, H), dt)
    dYd = _dev(dY) if dY is not None else _dummy(dt, 3)
    dhd = _dev(dh_last) if dh_last is not None else _dummy(dt, 2)
    dcd = _dev(dc_last) if dc_last is not None else _dummy(dt, 2)
    rm = cache.rec_mask if cache.rec_mask is not None else _dummy(dt, 2)
    max_len = int(cache.lengths_h.max()) if B else 0
    flags = (int(dY is not None), int(dh_last is not None), int(dc_last is not None))
    opts = (cache.c0 if cache.c0 is not None else _dummy(dt, 2), int(cache.c0 is not None),
            cache.codes[1], cache.codes[0])
    if _recurrence() == "sequence":
        if max_len:
            _kernel("lstm_bseq", dt)[_seq_grid(B), _seq_block(H)](
                dZ, cache.acts, cache.C, U, rm, int(cache.rec_mask is not None), dYd, flags[0], dhd, flags[1],
                dc_carry, dcd, flags[2], *opts, cache.starts, cache.lengths, int(cache.reverse))
    else:
        for s in range(max_len - 1, -1, -1):
            _launch1d("lstm_bstep", dt, B * H, dZ, cache.acts, cache.C, U, rm, int(cache.rec_mask is not None),
                      dYd, flags[0], dhd, flags[1], dc_carry, dcd, flags[2], *opts, cache.starts, cache.lengths, s,
                      int(cache.reverse))
    if dh0 is not None or dc0 is not None:  # the gradient w.r.t. the initial state
        _launch1d("lstm_dstate0", dt, B * H, dZ, U, rm, int(cache.rec_mask is not None), dc_carry, dhd, flags[1],
                  dcd, flags[2], dh0 if dh0 is not None else _dummy(dt, 2), int(dh0 is not None),
                  dc0 if dc0 is not None else _dummy(dt, 2), int(dc0 is not None), cache.starts, cache.lengths,
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
# LSTM: both directions (pair ops) and inference from token ids


def lstm_input_table(table, W):
    """P (V, G) = table (V, E) @ W (E, G) on the device: every vocabulary row's projection."""
    chk.check_lstm_input_table(table, W)
    table, W = _dev(table), _dev(W)
    out = _empty((table.shape[0], W.shape[1]), table.dtype)
    _gemm(table, W, out)
    return out


def lstm_forward_ids(P, ids, U, b, starts, lengths, reverse=False, activation="tanh",
                     recurrent_activation="sigmoid", h0=None, c0=None):
    """lstm_forward(embedding_forward(table, ids), W, U, b, ...) for P = lstm_input_table(
    table, W): the projections are gathered from P. Inference only; the cache is None.
    Returns Y (B, T, H), h_last (B, H), c_last (B, H), None."""
    ids_h, starts_h, lengths_h = chk.check_lstm_forward_ids(P, ids, U, b, starts, lengths)
    XW = embedding_forward(P, ids_h)
    # lstm_forward's recurrence, handed the looked-up projections through an identity kernel
    # (x @ I == x exactly): one recurrence to maintain; PROJECTED_INFERENCE stays False
    eye = _cuda().to_device(np.eye(P.shape[1], dtype=P.dtype))
    Y, h, c, _ = lstm_forward(XW, eye, U, b, starts_h, lengths_h, reverse, None, None, activation,
                              recurrent_activation, h0, c0)
    return Y, h, c, None


# the directions one after the other (CONCURRENT_PAIR False), through this module's own ops
lstm_forward_pair, lstm_backward_pair, lstm_forward_ids_pair = chk.sequential_pair_ops(
    lstm_forward, lstm_backward, lstm_forward_ids)


# ----------------------------------------------------------------------------------------
# Embedding


def embedding_forward(table, ids):
    """table (V, E), ids (B, T) int -> (B, T, E)."""
    ids_h = chk.check_embedding_forward(table, ids)
    table = _dev(table)
    ids_d = _cuda().to_device(ids_h)
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
    ids_h, mask = chk.check_embedding_backward(dtable, dE, ids, mask)
    _check_on_device("embedding_backward", dtable=dtable)
    ids_h = ids_h.reshape(-1)
    if mask is None:
        sel = np.arange(ids_h.size, dtype=np.int64)
    else:
        sel = np.nonzero(mask.reshape(-1))[0].astype(np.int64)
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
    """X (..., I) @ W (I, K) + b (K,) -> (..., K); b None: no bias."""
    chk.check_dense_forward(X, W, b)
    X, W = _dev(X), _dev(W)
    b = None if b is None else _dev(b)
    I, Kd = W.shape
    lead = tuple(X.shape)[:-1]
    n = int(np.prod(lead)) if lead else 1
    out = _empty((n, Kd), X.dtype)
    _gemm(X.reshape(n, I), W, out, bias=b)
    return out.reshape(lead + (Kd,))


def dense_backward(dY, X, W, dW, db):
    """Accumulates dW (I, K) and db (K,) (db None: no bias); returns dX shaped like X."""
    chk.check_dense_backward(dY, X, W, dW, db)
    _check_on_device("dense_backward", dW=dW, db=db)
    dY, X, W = _dev(dY), _dev(X), _dev(W)
    I, Kd = W.shape
    n = X.size // I
    X2, dY2 = X.reshape(n, I), dY.reshape(n, Kd)
    _gemm(X2, dY2, dW, trans_a=True, accumulate=True)
    if db is not None:
        _colsum_into(dY2, db)
    dX = _empty((n, I), X.dtype)
    _gemm(dY2, W, dX, trans_b=True)
    return dX.reshape(X.shape)


def activation_forward(X, name):
    chk.check_activation_forward(X, name)
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
    chk.check_activation_backward(dY, Y, name)
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
    chk.check_softmax(logits)
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
    labels, mask = chk.check_softmax_xent(logits, labels, mask)
    logits = _dev(logits)
    dt = logits.dtype
    Kd = tuple(logits.shape)[-1]
    n = logits.size // Kd
    labels_d = _dev_int(labels).reshape(-1)
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


def merge_forward(Yf, Yb, mode):
    """(..., H) x 2 -> (..., 2H) for concat, else (..., H)."""
    chk.check_merge_forward(Yf, Yb, mode)
    Yf, Yb = _dev(Yf), _dev(Yb)
    H = tuple(Yf.shape)[-1]
    n = Yf.size // H
    W = 2 * H if mode == "concat" else H
    out = _empty((n, W), Yf.dtype)
    _launch1d("merge_fwd", Yf.dtype, n * W, Yf.reshape(n, H), Yb.reshape(n, H), out, K.MERGE_CODES[mode])
    return out.reshape(tuple(Yf.shape)[:-1] + (W,))


def merge_backward(dY, Yf, Yb, mode):
    """Returns (dYf, dYb), fresh device arrays."""
    chk.check_merge_backward(dY, Yf, Yb, mode)
    dY, Yf, Yb = _dev(dY), _dev(Yf), _dev(Yb)
    H = tuple(Yf.shape)[-1]
    n = Yf.size // H
    dYf, dYb = _empty((n, H), Yf.dtype), _empty((n, H), Yf.dtype)
    _launch1d("merge_bwd", Yf.dtype, n * H, dY.reshape(n, tuple(dY.shape)[-1]), Yf.reshape(n, H), Yb.reshape(n, H),
              dYf, dYb, K.MERGE_CODES[mode])
    return dYf.reshape(Yf.shape), dYb.reshape(Yf.shape)


# ----------------------------------------------------------------------------------------
# Concatenation along the last axis, unequal widths


def concat_forward(Ys):
    """[(..., W_k)] -> (..., sum W_k), a fresh device array; one column-copy launch per piece."""
    widths = chk.check_concat_forward(Ys)
    Ys = [_dev(y) for y in Ys]
    lead = tuple(Ys[0].shape)[:-1]
    n = int(np.prod(lead, dtype=np.int64))
    out = _empty((n, sum(widths)), Ys[0].dtype)
    off = 0
    for y, w in zip(Ys, widths):
        _launch1d("cols_put", y.dtype, n * w, y.reshape(n, w), out, off)
        off += w
    return out.reshape(lead + (sum(widths),))


def concat_backward(dY, widths):
    """dY (..., sum widths) -> [dY_k (..., W_k)], fresh device arrays."""
    widths = chk.check_concat_backward(dY, widths)
    dY = _dev(dY)
    lead = tuple(dY.shape)[:-1]
    n = int(np.prod(lead, dtype=np.int64))
    flat, out, off = dY.reshape(n, sum(widths)), [], 0
    for w in widths:
        piece = _empty((n, w), dY.dtype)
        _launch1d("cols_take", dY.dtype, n * w, flat, piece, off)
        out.append(piece.reshape(lead + (w,)))
        off += w
    return out


# ----------------------------------------------------------------------------------------
# Global pooling over time


def pool_forward(X, starts, lengths, mode):
    """X (B, T, F) -> (Y (B, F), argmax (B, F) int64 device array, or None for mean);
    see reference.pool_forward. starts/lengths host or device."""
    starts_h, lengths_h = chk.check_pool_forward(X, starts, lengths, mode)
    X = _dev(X)
    B, T, F = tuple(X.shape)
    is_max = mode == "max"
    Y = _empty((B, F), X.dtype)
    argmax = _empty((B, F), np.int64) if is_max else None
    _launch1d("pool_fwd", X.dtype, B * F, X, _dev_int(starts_h), _dev_int(lengths_h), Y,
              argmax if is_max else _dummy(np.int64, 2), int(is_max))
    return Y, argmax


def pool_backward(dY, argmax, starts, lengths, T, mode):
    """dY (B, F) -> dX (B, T, F), 0 at padding; see reference.pool_backward."""
    argmax_h, starts_h, lengths_h = chk.check_pool_backward(dY, argmax, starts, lengths, T, mode)
    dY = _dev(dY)
    B, F = tuple(dY.shape)
    T = int(T)
    is_max = mode == "max"
    if is_max:
        argmax = _dev_int(argmax if _is_device(argmax) and argmax.dtype == np.int64 else argmax_h)
    dX = _empty((B, T, F), dY.dtype)
    _launch1d("pool_bwd", dY.dtype, B * T * F, dY, argmax if is_max else _dummy(np.int64, 2),
              _dev_int(starts_h), _dev_int(lengths_h), dX, int(is_max))
    return dX


# ----------------------------------------------------------------------------------------
# Dropout


def dropout_mask(shape, rate, seed, dtype=np.float32):
    """Inverted-dropout scale, bit-identical to reference.dropout_mask (splitmix64 of
    (seed, element index) drawn on the device)."""
    shape = chk.check_dropout_mask(shape, rate, seed, dtype)
    n = int(np.prod(shape)) if shape else 1
    key = dropout_key(seed)
    out = _empty((n,), dtype)
    _launch1d("dropout", dtype, n, out, np.uint64(key), float(rate), float(1.0 / (1.0 - rate)))
    return out.reshape(shape)


def mul(X, M):
    """Elementwise X * M; M broadcasts against X (NumPy rules, M.ndim <= X.ndim <= 4)."""
    chk.check_mul(X, M)
    if len(X.shape) > 4:
        raise TaggerError(f"mul: X has {len(X.shape)} axes; this backend multiplies at most 4-D arrays")
    X, M = _dev(X), _dev(M)
    xs = (1,) * (4 - X.ndim) + tuple(X.shape)
    ms = (1,) * (4 - M.ndim) + tuple(M.shape)
    strides, acc = [0] * 4, 1
    for ax in range(3, -1, -1):
        if ms[ax] == xs[ax]:
            strides[ax] = acc if ms[ax] > 1 else 0
        else:  # ms[ax] == 1 (check_mul refused anything else)
            strides[ax] = 0
        acc *= ms[ax]
    out = _empty(X.shape, X.dtype)
    _launch1d("mul_bcast", X.dtype, X.size, _flat(X), _flat(M), _flat(out), xs[1], xs[2], xs[3], *strides)
    return out


# ----------------------------------------------------------------------------------------
# Optimiser updates (in place on device arrays); `rows` host or device int


def _rows_arg(rows):
    """rows (checked: an int64 host array, or None) as (device rows, has_rows, count)."""
    if rows is None:
        return _cuda().to_device(np.zeros(1, dtype=np.int64)), 0, None
    return _cuda().to_device(rows), 1, rows.shape[0]


def _check_on_device(where, **arrays):
    """Arrays updated in place must already live on the device (a host array would be
    copied in, updated there and lost)."""
    for name, a in arrays.items():
        if a is not None and not _is_device(a):
            raise TaggerError(f"{where}: {name} must be a device array (it is updated in place); make it with ops.asarray or ops.zeros")


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step, rows=None):
    """AdamW (see reference.adam_update); lazy over `rows` when given."""
    chk.check_step("adam_update", step)
    rows = chk.check_update("adam_update", rows, param=param, grad=grad, m=m, v=v)
    _check_on_device("adam_update", param=param, m=m, v=v)
    dt = param.dtype
    p2, g2, m2, v2 = _rows2d(param), _rows2d(_dev(grad)), _rows2d(m), _rows2d(v)
    rows_d, has_rows, nr = _rows_arg(rows)
    n = (nr if has_rows else p2.shape[0]) * p2.shape[1]
    s = lambda x: _scalar(x, dt)  # noqa: E731
    _launch1d("adam", dt, n, p2, g2, m2, v2, rows_d, has_rows, s(lr), s(beta1), s(1 - beta1), s(beta2),
              s(1 - beta2), s(1 - beta1**step), s(1 - beta2**step), s(eps), s(weight_decay))


def sgd_update(param, grad, velocity, lr, momentum, weight_decay, rows=None):
    """SGD with heavy-ball momentum and decoupled weight decay; lazy over `rows`."""
    rows = chk.check_update("sgd_update", rows, param=param, grad=grad, velocity=velocity)
    _check_on_device("sgd_update", param=param, velocity=velocity)
    dt = param.dtype
    p2, g2, v2 = _rows2d(param), _rows2d(_dev(grad)), _rows2d(velocity)
    rows_d, has_rows, nr = _rows_arg(rows)
    n = (nr if has_rows else p2.shape[0]) * p2.shape[1]
    _launch1d("sgd", dt, n, p2, g2, v2, rows_d, has_rows, _scalar(lr, dt), _scalar(momentum, dt),
              _scalar(weight_decay, dt))


def ema_update(average, param, momentum):
    """In place: average = momentum * average + (1 - momentum) * param (reference.ema_update)."""
    chk.check_ema_update(average, param, momentum)
    _check_on_device("ema_update", average=average)
    dt = average.dtype
    _launch1d("ema", dt, average.size, _flat(average), _flat(_dev(param)), _scalar(momentum, dt),
              _scalar(1 - momentum, dt))


def sum_of_squares(grad, rows=None):
    """float(sum(grad[rows]**2)) in float64, reduced on the device in a fixed order."""
    rows = chk.check_update("sum_of_squares", rows, grad=grad)
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
    rows = chk.check_buffer("scale_", arr, rows)
    _check_on_device("scale_", arr=arr)
    if rows is None:
        _launch1d("scale", arr.dtype, arr.size, _flat(arr), _scalar(factor, arr.dtype))
    else:
        rows_d, _, nr = _rows_arg(rows)
        a2 = _rows2d(arr)
        _launch1d("scale_rows", arr.dtype, nr * a2.shape[1], a2, rows_d, _scalar(factor, arr.dtype))


def fill_(arr, value, rows=None):
    """In-place fill (on rows only, if given)."""
    rows = chk.check_buffer("fill_", arr, rows)
    _check_on_device("fill_", arr=arr)
    if rows is None:
        _launch1d("fill", arr.dtype, arr.size, _flat(arr), _scalar(value, arr.dtype))
    else:
        rows_d, _, nr = _rows_arg(rows)
        a2 = _rows2d(arr)
        _launch1d("fill_rows", arr.dtype, nr * a2.shape[1], a2, rows_d, _scalar(value, arr.dtype))


# ----------------------------------------------------------------------------------------
# The linear-chain CRF
#
# Linear-chain CRF ops on numba.cuda (re-exported by tagger/ops/cuda.py).
#
# Legend, the score, the loss, its gradient and the op signatures: tagger/ops/_crf_reference.py;
# kernel bodies and their launch layout: tagger/ops/_crf_cuda_kernels.py.
#
# Emissions, weights, gradient buffers, dE and P stay on the device (host inputs are copied
# in). What comes back to the host: crf_nll's B per-row losses (summed there in a fixed
# order: one float per sentence, like softmax_xent's scalar) and crf_viterbi's paths and
# scores (B x T ints: decoding continues on the host). The checks (tagger/ops/_crf_reference.
# check_crf) read only shapes and dtypes of the float arrays, and host copies of the small
# integer arrays (starts, lengths, labels), before any kernel runs.
#
# Launch shapes, module constants the tests patch down so tiny inputs still span several
# blocks and every thread owns more than one tag:
#     CRF_THREADS     threads per block of the per-sentence kernels (they loop over tags)
#     CRF_MAX_BLOCKS  cap on their grid (rows are grid-strided over blocks)
# The elementwise kernels (crf_marg, crf_reduce) use cuda.py's THREADS_PER_BLOCK/MAX_BLOCKS.

CRF_THREADS = 32  # one warp: the tag sets of a tagger (K <= ~50) need no more
CRF_MAX_BLOCKS = 1024


def _rows(name, dtype, B, *args):
    """Launch per-sentence kernel `name`: one block per row (grid-strided)."""
    if B > 0:
        _kernel(name, dtype)[max(1, min(B, CRF_MAX_BLOCKS)), CRF_THREADS](*args)


def _prepare(where, E, starts, lengths, A, s, e, y=None, grads=None):
    """Checked inputs: device E, A, s, e; host and device int64 starts, lengths (and y)."""
    host = [None if a is None else to_numpy(a) for a in (starts, lengths, y)]  # dtypes kept for the checks
    starts_h, lengths_h, y_h = check_crf(where, E, host[0], host[1], A, s, e, y=host[2], grads=grads)
    dev = [_dev(a) for a in (E, A, s, e)]
    ints = [_dev_int(a) for a in (starts_h, lengths_h) + (() if y_h is None else (y_h,))]
    return dev, ints, lengths_h


def _forward_backward(E, A, s, e, starts, lengths):
    """alpha, beta (B, T, K) and logZ (B,) device arrays (crf_fb)."""
    B = E.shape[0]
    alpha, beta = _empty(E.shape, E.dtype), _empty(E.shape, E.dtype)
    logZ = _empty((B,), E.dtype)
    _rows("crf_fb", E.dtype, B, E, starts, lengths, A, s, e, alpha, beta, logZ)
    return alpha, beta, logZ


def crf_nll(E, y, starts, lengths, A, s, e, dA, ds, de):
    """Mean NLL per real token; accumulates into dA, ds, de; returns (loss, dE device)."""
    (E, A, s, e), (starts, lengths, y), lengths_h = _prepare("crf_nll", E, starts, lengths, A, s, e, y=y,
                                                            grads=(dA, ds, de))
    B, T, K = tuple(E.shape)
    dt = E.dtype
    if not lengths_h.any():
        return 0.0, zeros((B, T, K), dt)
    inv_n = dt.type(1.0 / int(lengths_h.sum()))
    alpha, beta, logZ = _forward_backward(E, A, s, e, starts, lengths)
    dE, rowA = _empty((B, T, K), dt), _empty((B, K, K), dt)
    rowloss = _empty((B,), np.float64)
    _rows("crf_grad", dt, B, dE, rowA, rowloss, E, y, starts, lengths, A, s, e, alpha, beta, logZ, inv_n)
    bufs = [_dev(g) for g in (dA, ds, de)]  # host buffers: accumulate on a copy, copy back
    _launch1d("crf_reduce", dt, K * K + 2 * K, *bufs, rowA, dE, starts, lengths)
    for g, d in zip((dA, ds, de), bufs):
        if d is not g:
            g[...] = d.copy_to_host()
    return float(rowloss.copy_to_host().sum()) * float(inv_n), dE


def crf_marginals(E, starts, lengths, A, s, e):
    """P (B, T, K) device array: tag marginals, 0 at padded steps."""
    (E, A, s, e), (starts, lengths), lengths_h = _prepare("crf_marginals", E, starts, lengths, A, s, e)
    if not lengths_h.any():
        return zeros(tuple(E.shape), E.dtype)
    alpha, beta, logZ = _forward_backward(E, A, s, e, starts, lengths)
    P = _empty(tuple(E.shape), E.dtype)
    _launch1d("crf_marg", E.dtype, int(np.prod(tuple(E.shape))), P, alpha, beta, logZ, starts, lengths)
    return P


def crf_viterbi(E, starts, lengths, A, s, e):
    """(paths (B, T) int64, 0 at padded steps; scores (B,)) as host NumPy arrays."""
    (E, A, s, e), (starts, lengths), lengths_h = _prepare("crf_viterbi", E, starts, lengths, A, s, e)
    B, T, K = tuple(E.shape)
    if not lengths_h.any():
        return np.zeros((B, T), dtype=np.int64), np.zeros(B, dtype=E.dtype)
    delta, back = _empty((B, T, K), E.dtype), _empty((B, T, K), np.int64)
    paths, scores = _empty((B, T), np.int64), _empty((B,), E.dtype)
    _rows("crf_viterbi", E.dtype, B, E, starts, lengths, A, s, e, delta, back, paths, scores)
    return paths.copy_to_host(), scores.copy_to_host()


def crf_nbest(E, starts, lengths, A, s, e, k):
    """(paths (B, k, T), scores (B, k), logZ (B,)) host NumPy: on the host, by the cpu
    kernel over host copies of E and the weights. n-best lists are a prediction-time extra
    whose B x T x K x k work is small next to the network's; its sort-heavy selection would
    gain little from one block per sentence."""
    from tagger.ops import _crf_cpu

    return _crf_cpu.crf_nbest(*(to_numpy(a) for a in (E, starts, lengths, A, s, e)), k)


# Bound last, on purpose: tagger/ops/cuda.py re-exports the ops above, so the two modules
# import each other; importing cuda here, at the end, lets either be imported first (the
# ops only look C up when called).

from tagger.ops._conv_cuda import conv1d_backward, conv1d_forward  # noqa: E402,F401  (issue 10: the char CNN)
