"""Shared cases of the conv1d op tests: ragged spans, random arrays, a Keras Conv1D written
independently, and one bad call per argument.

Used by tests/ops/test_conv.py, by cuda_conv_cases.py (the simulator subprocess) and by
tests/ops/cases.bad_calls. Legend as in tagger/ops/_conv_reference.py.
"""
from __future__ import annotations

import numpy as np

from tagger.ops import reference as REF

B, T, I, F = 5, 6, 2, 3
LENGTHS = np.array([3, 6, 1, 0, 2])  # ragged: full, one step, empty, shorter than Kw = 3


def spans(padding, lengths=LENGTHS):
    if padding == "post":
        return np.zeros_like(lengths), lengths
    if padding == "pre":
        return T - lengths, lengths
    return np.minimum(np.array([1, 0, 3, 2, 2]), T - lengths), lengths  # mixed


def case(width=3, dtype=np.float64, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(B, T, I)).astype(dtype)
    W = rng.normal(scale=0.5, size=(width, I, F)).astype(dtype)
    b = rng.normal(size=F).astype(dtype) if bias else None
    return X, W, b


def keras_conv1d(X, W, b, padding):
    """Keras/TensorFlow Conv1D (stride 1) on the whole padded tensor, written independently:
    'same' pads (Kw-1)//2 zeros on the left and the rest on the right."""
    Kw = W.shape[0]
    if padding == "same":
        pl = (Kw - 1) // 2
        X = np.pad(X, ((0, 0), (pl, Kw - 1 - pl), (0, 0)))
    To = X.shape[1] - Kw + 1
    Y = sum(np.einsum("bti,if->btf", X[:, k : k + To], W[k]) for k in range(Kw))
    return Y + (0 if b is None else b)


def with_nan_padding(X, starts, lengths):
    t = np.arange(X.shape[1])[None, :]
    real = (t >= starts[:, None]) & (t < (starts + lengths)[:, None])
    X = X.copy()
    X[~real] = np.nan
    return X


def bad_calls(ops):
    """{label: (expected message start, thunk)}, the format of tests/ops/cases.bad_calls
    (which includes these, so tests/ops/test_interface.py feeds them to every backend)."""
    X, W, b = case()
    st, ln = spans("post")
    Y = REF.conv1d_forward(X, W, b, st, ln, "same")
    dW, db = np.zeros_like(W), np.zeros_like(b)
    return {
        "conv1d_forward padding": ("conv1d_forward: unknown padding 'causal'", lambda: ops.conv1d_forward(X, W, b, st, ln, "causal")),
        "conv1d_forward 2-D X": ("conv1d_forward: X must be 3-D (B, T, I)", lambda: ops.conv1d_forward(X[0], W, b, st, ln)),
        "conv1d_forward W channels": ("conv1d_forward: W has shape (3, 3, 3), expected (Kw, I, F)", lambda: ops.conv1d_forward(X, np.zeros((3, 3, 3)), b, st, ln)),
        "conv1d_forward empty kernel": ("conv1d_forward: W must have a kernel width Kw >= 1", lambda: ops.conv1d_forward(X, W[:0], b, st, ln)),
        "conv1d_forward b": ("conv1d_forward: b has shape (2,)", lambda: ops.conv1d_forward(X, W, b[:2], st, ln)),
        "conv1d_forward mixed dtypes": ("conv1d_forward: W is float32 but X is float64", lambda: ops.conv1d_forward(X, W.astype(np.float32), b, st, ln)),
        "conv1d_forward int X": ("conv1d_forward: X must be a float array", lambda: ops.conv1d_forward(X.astype(np.int64), W, b, st, ln)),
        "conv1d_forward span past T": ("conv1d_forward: a span runs past the 6 padded", lambda: ops.conv1d_forward(X, W, b, st + 1, ln)),
        "conv1d_forward float starts": ("conv1d_forward: starts and lengths must be integers", lambda: ops.conv1d_forward(X, W, b, st.astype(float), ln)),
        "conv1d_backward dY": ("conv1d_backward: dY has shape (5, 4, 3), expected (B, To, F)", lambda: ops.conv1d_backward(Y[:, :4], X, W, st, ln, "same", dW, db)),
        "conv1d_backward dW shape": ("conv1d_backward: dW has shape (3, 1, 3)", lambda: ops.conv1d_backward(Y, X, W, st, ln, "same", dW[:, :1], db)),
        "conv1d_backward dW None": ("conv1d_backward: dW must be the kernel's gradient buffer", lambda: ops.conv1d_backward(Y, X, W, st, ln, "same", None, db)),
        "conv1d_backward db": ("conv1d_backward: db has shape (1,)", lambda: ops.conv1d_backward(Y, X, W, st, ln, "same", dW, db[:1])),
        "conv1d_backward negative start": ("conv1d_backward: starts and lengths must be >= 0", lambda: ops.conv1d_backward(Y, X, W, st - 1, ln, "same", dW, db)),
    }
