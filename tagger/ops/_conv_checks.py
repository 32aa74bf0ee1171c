"""Validation at the entry of conv1d_forward / conv1d_backward, shared by every backend.

Legend as in tagger/ops/_conv_reference.py: X (B, T, I), W (Kw, I, F), b (F,) or None,
dY (B, To, F), starts/lengths (B,). Every check raises a one-line TaggerError that starts
with the op's name and names the argument, the same on every backend. Only shapes and
dtypes of float arrays are read; the spans (which the kernels index with) are checked
against their bounds. Arrays may be host NumPy arrays or numba device arrays. Built from
the shared blocks of tagger/ops/_checks.py, so the messages read like every other op's.
"""
from __future__ import annotations

from tagger.errors import TaggerError
from tagger.ops._checks import check_choice, check_floats, check_ndim, check_shape, check_spans_at, shape_of

PADDINGS = ("same", "valid")


def _check_common(where, X, W, b, starts, lengths, padding):
    """Shapes of X, W, b and the spans; returns (starts, lengths) int64 host arrays."""
    check_choice(where, "padding", padding, PADDINGS)
    check_ndim(where, "X", X, 3, "(B, T, I)")
    check_ndim(where, "W", W, 3, "(Kw, I, F)")
    B, T, I = shape_of(X)
    Kw, _, F = shape_of(W)
    if Kw < 1:
        raise TaggerError(f"{where}: W must have a kernel width Kw >= 1, got shape {shape_of(W)}")
    check_shape(where, "W", W, (Kw, I, F), "(Kw, I, F) with I = X's channels")
    check_shape(where, "b", b, (F,), "(F,)")
    return check_spans_at(where, starts, lengths, B, T)


def check_conv1d_forward(X, W, b, starts, lengths, padding, where="conv1d_forward"):
    check_floats(where, X=X, W=W, b=b)
    return _check_common(where, X, W, b, starts, lengths, padding)


def check_conv1d_backward(dY, X, W, starts, lengths, padding, dW, db, where="conv1d_backward"):
    if dW is None:
        raise TaggerError(f"{where}: dW must be the kernel's gradient buffer (Kw, I, F), got None")
    check_floats(where, X=X, W=W, dY=dY, dW=dW, db=db)
    starts, lengths = _check_common(where, X, W, None, starts, lengths, padding)
    B, T, _ = shape_of(X)
    Kw, _, F = shape_of(W)
    To = T if padding == "same" else max(T - Kw + 1, 0)
    check_shape(where, "dY", dY, (B, To, F), "(B, To, F)")
    check_shape(where, "dW", dW, shape_of(W), "W.shape")
    check_shape(where, "db", db, (F,), "(F,)")
    return starts, lengths
