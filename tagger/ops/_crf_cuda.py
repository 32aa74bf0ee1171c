"""Linear-chain CRF ops on numba.cuda (re-exported by tagger/ops/cuda.py).

Legend, the score, the loss, its gradient and the op signatures: tagger/ops/_crf_reference.py;
kernel bodies and their launch layout: tagger/ops/_crf_cuda_kernels.py.

Emissions, weights, gradient buffers, dE and P stay on the device (host inputs are copied
in). What comes back to the host: crf_nll's B per-row losses (summed there in a fixed
order: one float per sentence, like softmax_xent's scalar) and crf_viterbi's paths and
scores (B x T ints: decoding continues on the host). The checks (tagger/ops/_crf_reference.
check_crf) read only shapes and dtypes of the float arrays, and host copies of the small
integer arrays (starts, lengths, labels), before any kernel runs.

Launch shapes, module constants the tests patch down so tiny inputs still span several
blocks and every thread owns more than one tag:
    CRF_THREADS     threads per block of the per-sentence kernels (they loop over tags)
    CRF_MAX_BLOCKS  cap on their grid (rows are grid-strided over blocks)
The elementwise kernels (crf_marg, crf_reduce) use cuda.py's THREADS_PER_BLOCK/MAX_BLOCKS.
"""
from __future__ import annotations

import numpy as np

from tagger.ops import _crf_cuda_kernels  # noqa: F401  (registers the CRF kernels in KERNELS)
from tagger.ops._crf_reference import check_crf

CRF_THREADS = 32  # one warp: the tag sets of a tagger (K <= ~50) need no more
CRF_MAX_BLOCKS = 1024


def _rows(name, dtype, B, *args):
    """Launch per-sentence kernel `name`: one block per row (grid-strided)."""
    if B > 0:
        C._kernel(name, dtype)[max(1, min(B, CRF_MAX_BLOCKS)), CRF_THREADS](*args)


def _prepare(where, E, starts, lengths, A, s, e, y=None, grads=None):
    """Checked inputs: device E, A, s, e; host and device int64 starts, lengths (and y)."""
    host = [None if a is None else C.to_numpy(a) for a in (starts, lengths, y)]  # dtypes kept for the checks
    starts_h, lengths_h, y_h = check_crf(where, E, host[0], host[1], A, s, e, y=host[2], grads=grads)
    dev = [C._dev(a) for a in (E, A, s, e)]
    ints = [C._dev_int(a) for a in (starts_h, lengths_h) + (() if y_h is None else (y_h,))]
    return dev, ints, lengths_h


def _forward_backward(E, A, s, e, starts, lengths):
    """alpha, beta (B, T, K) and logZ (B,) device arrays (crf_fb)."""
    B = E.shape[0]
    alpha, beta = C._empty(E.shape, E.dtype), C._empty(E.shape, E.dtype)
    logZ = C._empty((B,), E.dtype)
    _rows("crf_fb", E.dtype, B, E, starts, lengths, A, s, e, alpha, beta, logZ)
    return alpha, beta, logZ


def crf_nll(E, y, starts, lengths, A, s, e, dA, ds, de):
    """Mean NLL per real token; accumulates into dA, ds, de; returns (loss, dE device)."""
    (E, A, s, e), (starts, lengths, y), lengths_h = _prepare("crf_nll", E, starts, lengths, A, s, e, y=y,
                                                            grads=(dA, ds, de))
    B, T, K = tuple(E.shape)
    dt = E.dtype
    if not lengths_h.any():
        return 0.0, C.zeros((B, T, K), dt)
    inv_n = dt.type(1.0 / int(lengths_h.sum()))
    alpha, beta, logZ = _forward_backward(E, A, s, e, starts, lengths)
    dE, rowA = C._empty((B, T, K), dt), C._empty((B, K, K), dt)
    rowloss = C._empty((B,), np.float64)
    _rows("crf_grad", dt, B, dE, rowA, rowloss, E, y, starts, lengths, A, s, e, alpha, beta, logZ, inv_n)
    bufs = [C._dev(g) for g in (dA, ds, de)]  # host buffers: accumulate on a copy, copy back
    C._launch1d("crf_reduce", dt, K * K + 2 * K, *bufs, rowA, dE, starts, lengths)
    for g, d in zip((dA, ds, de), bufs):
        if d is not g:
            g[...] = d.copy_to_host()
    return float(rowloss.copy_to_host().sum()) * float(inv_n), dE


def crf_marginals(E, starts, lengths, A, s, e):
    """P (B, T, K) device array: tag marginals, 0 at padded steps."""
    (E, A, s, e), (starts, lengths), lengths_h = _prepare("crf_marginals", E, starts, lengths, A, s, e)
    if not lengths_h.any():
        return C.zeros(tuple(E.shape), E.dtype)
    alpha, beta, logZ = _forward_backward(E, A, s, e, starts, lengths)
    P = C._empty(tuple(E.shape), E.dtype)
    C._launch1d("crf_marg", E.dtype, int(np.prod(tuple(E.shape))), P, alpha, beta, logZ, starts, lengths)
    return P


def crf_viterbi(E, starts, lengths, A, s, e):
    """(paths (B, T) int64, 0 at padded steps; scores (B,)) as host NumPy arrays."""
    (E, A, s, e), (starts, lengths), lengths_h = _prepare("crf_viterbi", E, starts, lengths, A, s, e)
    B, T, K = tuple(E.shape)
    if not lengths_h.any():
        return np.zeros((B, T), dtype=np.int64), np.zeros(B, dtype=E.dtype)
    delta, back = C._empty((B, T, K), E.dtype), C._empty((B, T, K), np.int64)
    paths, scores = C._empty((B, T), np.int64), C._empty((B,), E.dtype)
    _rows("crf_viterbi", E.dtype, B, E, starts, lengths, A, s, e, delta, back, paths, scores)
    return paths.copy_to_host(), scores.copy_to_host()


# Bound last, on purpose: tagger/ops/cuda.py re-exports the ops above, so the two modules
# import each other; importing cuda here, at the end, lets either be imported first (the
# ops only look C up when called).
from tagger.ops import cuda as C  # noqa: E402
