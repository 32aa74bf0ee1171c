"""1-D convolution over spans on the CPU (numba.njit): conv1d_forward / conv1d_backward.

Re-exported by tagger/ops/cpu.py. Semantics, legend and the padding rule: the spec in
tagger/ops/_conv_reference.py. Additional notation:

    N      sum of the output lengths: the real output steps of the whole batch
    off    (B + 1,) int64  row r's outputs are rows off[r] .. off[r+1]-1 of a packed array
    P      (N, Kw * I)     im2col patches: P[off[r] + j, k*I : (k+1)*I] = x_r[j + k - pl]
                           (0 where that step lies outside row r's real steps)
    W2     (Kw * I, F)     W viewed as a matrix (Keras layout is (Kw, I, F), C order)

Shape of the computation (the fast shape of DESIGN.md: a few large GEMMs, small njit
kernels around them):
    forward   P = im2col(X)   Z = P @ W2 + b  (N, F)   Y = unpack(Z), 0 elsewhere
    backward  dZ = pack(dY)   dW2 += P^T dZ   db += sum_rows dZ
              dP = dZ @ W2^T  dX = col2im(dP)  (scatter-add, only onto real steps)
Only real steps are ever read, so padding never reaches an output or a gradient.
The kernel bodies are plain functions (the *_py names), compiled below.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from tagger.ops._conv_checks import check_conv1d_backward, check_conv1d_forward
from tagger.ops._conv_reference import conv1d_output_length, conv1d_output_spans, left_pad

# cached (a second process compiles nothing), GIL released, and error_model="numpy" so no
# exception paths stay in the inner loops (see tagger/ops/cpu.py's _JIT)
_JIT = dict(cache=True, nogil=True, error_model="numpy")


def _im2col_py(X, starts, lengths, ostarts, olengths, off, pl, Kw, P):
    """P (N, Kw*I), zero on entry: each real output step's Kw input steps, side by side."""
    I = X.shape[2]
    for r in range(X.shape[0]):
        s = starts[r]
        n = lengths[r]
        for j in range(olengths[r]):
            row = P[off[r] + j]
            for k in range(Kw):
                p = j + k - pl
                if p >= 0 and p < n:
                    x = X[r, s + p]
                    for i in range(I):
                        row[k * I + i] = x[i]


def _col2im_py(dP, starts, lengths, ostarts, olengths, off, pl, Kw, dX):
    """dX (B, T, I), zero on entry: += every patch gradient, onto the real steps it came from."""
    I = dX.shape[2]
    for r in range(dX.shape[0]):
        s = starts[r]
        n = lengths[r]
        for j in range(olengths[r]):
            row = dP[off[r] + j]
            for k in range(Kw):
                p = j + k - pl
                if p >= 0 and p < n:
                    d = dX[r, s + p]
                    for i in range(I):
                        d[i] += row[k * I + i]


def _unpack_py(Z, ostarts, olengths, off, Y):
    """Y (B, To, F), zero on entry: Y[r, ostarts[r] + j] = Z[off[r] + j]."""
    for r in range(Y.shape[0]):
        for j in range(olengths[r]):
            Y[r, ostarts[r] + j] = Z[off[r] + j]


def _pack_py(dY, ostarts, olengths, off, dZ):
    """dZ (N, F): the inverse of _unpack (the real output steps of dY, packed)."""
    for r in range(dY.shape[0]):
        for j in range(olengths[r]):
            dZ[off[r] + j] = dY[r, ostarts[r] + j]


_im2col = njit(**_JIT)(_im2col_py)
_col2im = njit(**_JIT)(_col2im_py)
_unpack = njit(**_JIT)(_unpack_py)
_pack = njit(**_JIT)(_pack_py)


def _layout(X, W, starts, lengths, padding):
    """Output spans, packed offsets and the patches P of one call."""
    B, T, I = X.shape
    Kw = W.shape[0]
    ostarts, olengths = conv1d_output_spans(starts, lengths, T, Kw, padding)
    off = np.zeros(B + 1, dtype=np.int64)
    np.cumsum(olengths, out=off[1:])
    pl = left_pad(Kw, padding)
    P = np.zeros((int(off[-1]), Kw * I), dtype=X.dtype)
    _im2col(X, starts, lengths, ostarts, olengths, off, pl, Kw, P)
    return ostarts, olengths, off, pl, P


def conv1d_forward(X, W, b, starts, lengths, padding="same"):
    """Y (B, To, F); see tagger/ops/_conv_reference.conv1d_forward."""
    starts, lengths = check_conv1d_forward(X, W, b, starts, lengths, padding)
    X, W = np.ascontiguousarray(X), np.ascontiguousarray(W)
    B, T, _ = X.shape
    Kw, I, F = W.shape
    ostarts, olengths, off, _, P = _layout(X, W, starts, lengths, padding)
    Z = P @ W.reshape(Kw * I, F)  # (N, F): the one GEMM
    if b is not None:
        Z += b
    Y = np.zeros((B, conv1d_output_length(T, Kw, padding), F), dtype=X.dtype)
    _unpack(Z, ostarts, olengths, off, Y)
    return Y


def conv1d_backward(dY, X, W, starts, lengths, padding, dW, db):
    """dX (B, T, I); dW += , db += (unless None); see tagger/ops/_conv_reference.conv1d_backward."""
    starts, lengths = check_conv1d_backward(dY, X, W, starts, lengths, padding, dW, db)
    X, W, dY = np.ascontiguousarray(X), np.ascontiguousarray(W), np.ascontiguousarray(dY)
    Kw, I, F = W.shape
    ostarts, olengths, off, pl, P = _layout(X, W, starts, lengths, padding)  # recomputed, not cached
    dZ = np.empty((int(off[-1]), F), dtype=dY.dtype)
    _pack(dY, ostarts, olengths, off, dZ)
    # 1. dW2 += P^T dZ     2. db += column sums of dZ     3. dP = dZ W2^T -> dX
    dW += (P.T @ dZ).reshape(dW.shape)
    if db is not None:
        db += dZ.sum(axis=0)
    dP = dZ @ W.reshape(Kw * I, F).T
    dX = np.zeros_like(X)
    _col2im(dP, starts, lengths, ostarts, olengths, off, pl, Kw, dX)
    return dX
