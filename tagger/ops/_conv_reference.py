"""1-D convolution over spans, NumPy reference: the executable spec of conv1d_forward/backward.

Re-exported by tagger/ops/reference.py; tagger/ops/_conv_cpu.py and _conv_cuda.py implement
the same two ops and are tested against these (tests/ops/test_conv.py).

Legend
------
    B  rows (sequences; for the character CNN: words)      T  timesteps (padded)
    I  input channels        F  filters                     Kw kernel width
    To output timesteps: T ('same') or max(T - Kw + 1, 0) ('valid')
    X  (B, T, I)    input           W (Kw, I, F)  kernel (Keras Conv1D layout)
    b  (F,)         bias, or None (use_bias=False)
    Y  (B, To, F)   output
    starts, lengths (B,) int: row b's real steps are X[b, starts[b] : starts[b] + lengths[b]]
    `d`-prefix: gradient of the loss w.r.t. that array.

Padding (stride 1, dilation 1; Keras' Conv1D 'same' and 'valid'; 'causal' is not supported)
--------------------------------------------------------------------------------------------
Each row's real steps x = X[b, s : s + n] are convolved as if they were the whole sequence;
whatever the padded steps hold (NaN included) is never read:
    'same'   pl = (Kw - 1) // 2 zeros before x, Kw - 1 - pl after (Keras/TensorFlow puts the
             extra zero of an even Kw on the right); n outputs, at Y[b, s : s + n]
    'valid'  no zeros; max(n - Kw + 1, 0) outputs, at Y[b, s' : s' + n - Kw + 1] with
             s' = min(s, To)  (post-padding keeps s' = 0, pre-padding stays right-aligned)
    output j of row b:  Y[b, s' + j, f] = b[f] + sum_k sum_i x[j + k - pl, i] W[k, i, f]
                        (x outside 0..n-1 reads as 0)
This equals Keras on post-padded rows whose padding holds zeros. Y is exactly 0 outside
the output spans (conv1d_output_spans), which are what the next op must read.

conv1d_backward accumulates into dW (and db unless it is None) and returns dX (B, T, I),
exactly 0 at padded steps; dY is read only inside the output spans.
"""
from __future__ import annotations

import numpy as np

from tagger.ops._conv_checks import check_conv1d_backward, check_conv1d_forward

PADDINGS = ("same", "valid")


def conv1d_output_length(T, width, padding):
    """To: the output timesteps of a (B, T, I) input."""
    return int(T) if padding == "same" else max(int(T) - int(width) + 1, 0)


def conv1d_output_spans(starts, lengths, T, width, padding):
    """(starts', lengths') int64 (B,): where each row's outputs lie in 0..To (see legend)."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if padding == "same":
        return starts.copy(), lengths.copy()
    To = conv1d_output_length(T, width, padding)
    return np.minimum(starts, To), np.maximum(lengths - int(width) + 1, 0)


def left_pad(width, padding):
    """pl: the zeros before each row's first real step."""
    return (int(width) - 1) // 2 if padding == "same" else 0


def _row_padded(x, width, padding):
    """The real steps x (n, I) with the 'same' zeros around them: (n + Kw - 1, I) or (n, I)."""
    pl = left_pad(width, padding)
    pr = int(width) - 1 - pl if padding == "same" else 0
    xp = np.zeros((x.shape[0] + pl + pr, x.shape[1]), dtype=x.dtype)
    xp[pl : pl + x.shape[0]] = x
    return xp


def conv1d_forward(X, W, b, starts, lengths, padding="same"):
    """Y (B, To, F) of X (B, T, I), W (Kw, I, F), b (F,) or None; see the module legend."""
    starts, lengths = check_conv1d_forward(X, W, b, starts, lengths, padding)
    B, T, _ = X.shape
    Kw, _, F = W.shape
    To = conv1d_output_length(T, Kw, padding)
    ostarts, olengths = conv1d_output_spans(starts, lengths, T, Kw, padding)
    Y = np.zeros((B, To, F), dtype=X.dtype)
    for r in range(B):
        s, n = int(starts[r]), int(lengths[r])
        xp = _row_padded(X[r, s : s + n], Kw, padding)  # (n + Kw - 1, I) or (n, I)
        for j in range(int(olengths[r])):
            out = np.zeros(F, dtype=X.dtype) if b is None else b.copy()
            for k in range(Kw):
                out += xp[j + k] @ W[k]  # (I,) @ (I, F)
            Y[r, ostarts[r] + j] = out
    return Y


def conv1d_backward(dY, X, W, starts, lengths, padding, dW, db):
    """dX (B, T, I); dW (Kw, I, F) += and db (F,) += (db None: no bias). See the legend."""
    starts, lengths = check_conv1d_backward(dY, X, W, starts, lengths, padding, dW, db)
    B, T, _ = X.shape
    Kw = W.shape[0]
    ostarts, olengths = conv1d_output_spans(starts, lengths, T, Kw, padding)
    pl = left_pad(Kw, padding)
    dX = np.zeros_like(X)
    for r in range(B):
        s, n = int(starts[r]), int(lengths[r])
        xp = _row_padded(X[r, s : s + n], Kw, padding)
        dxp = np.zeros_like(xp)
        for j in range(int(olengths[r])):
            g = dY[r, ostarts[r] + j]  # (F,)
            if db is not None:
                db += g
            for k in range(Kw):
                # 1. dW[k] += x_{j+k}^T g     2. dx_{j+k} += g W[k]^T
                dW[k] += np.outer(xp[j + k], g)
                dxp[j + k] += W[k] @ g
        dX[r, s : s + n] = dxp[pl : pl + n]
    return dX
