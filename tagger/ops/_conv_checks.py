"""Validation at the entry of conv1d_forward / conv1d_backward, shared by every backend.

Legend as in tagger/ops/_conv_reference.py: X (B, T, I), W (Kw, I, F), b (F,) or None,
dY (B, To, F), starts/lengths (B,). Every check raises a one-line TaggerError that starts
with the op's name and names the argument, the same on every backend. Only shapes and
dtypes of float arrays are read; the spans (which the kernels index with) are checked
against their bounds. Arrays may be host NumPy arrays or numba device arrays.
"""
from __future__ import annotations

import numpy as np

from tagger.errors import TaggerError
from tagger.spans import check_spans

PADDINGS = ("same", "valid")


def _host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def _shape(a):
    return tuple(int(n) for n in a.shape)


def _floats(where, **arrays):
    """The given arrays (None skipped) are float arrays of one dtype."""
    dtype = first = None
    for name, a in arrays.items():
        if a is None:
            continue
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise TaggerError(f"{where}: {name} must be an array, got {type(a).__name__}")
        dt = np.dtype(a.dtype)
        if dt.kind != "f":
            raise TaggerError(f"{where}: {name} must be a float array, got {dt}")
        if dtype is None:
            dtype, first = dt, name
        elif dt != dtype:
            raise TaggerError(f"{where}: {name} is {dt} but {first} is {dtype}; pass the float arrays of one call in one dtype")


def _expect(where, name, a, shape, legend):
    if a is not None and _shape(a) != tuple(shape):
        raise TaggerError(f"{where}: {name} has shape {_shape(a)}, expected {legend} = {tuple(shape)}")


def _check_common(where, X, W, b, starts, lengths, padding):
    """Shapes of X, W, b and the spans; returns (starts, lengths) int64 host arrays."""
    if padding not in PADDINGS:
        raise TaggerError(f"{where}: unknown padding {padding!r}; choose one of {', '.join(PADDINGS)}")
    for name, a, legend in (("X", X, "(B, T, I)"), ("W", W, "(Kw, I, F)")):
        if not hasattr(a, "shape") or len(a.shape) != 3:
            raise TaggerError(f"{where}: {name} must be 3-D {legend}, got shape {_shape(a) if hasattr(a, 'shape') else None}")
    B, T, I = _shape(X)
    Kw, _, F = _shape(W)
    if Kw < 1:
        raise TaggerError(f"{where}: W must have a kernel width Kw >= 1, got shape {_shape(W)}")
    _expect(where, "W", W, (Kw, I, F), "(Kw, I, F) with I = X's channels")
    _expect(where, "b", b, (F,), "(F,)")
    starts, lengths = _host(starts), _host(lengths)
    check_spans(starts, lengths, B, T, where)
    return np.ascontiguousarray(starts, dtype=np.int64), np.ascontiguousarray(lengths, dtype=np.int64)


def check_conv1d_forward(X, W, b, starts, lengths, padding, where="conv1d_forward"):
    _floats(where, X=X, W=W, b=b)
    return _check_common(where, X, W, b, starts, lengths, padding)


def check_conv1d_backward(dY, X, W, starts, lengths, padding, dW, db, where="conv1d_backward"):
    if dW is None:
        raise TaggerError(f"{where}: dW must be the kernel's gradient buffer (Kw, I, F), got None")
    _floats(where, X=X, W=W, dY=dY, dW=dW, db=db)
    starts, lengths = _check_common(where, X, W, None, starts, lengths, padding)
    B, T, _ = _shape(X)
    Kw, _, F = _shape(W)
    To = T if padding == "same" else max(T - Kw + 1, 0)
    if not hasattr(dY, "shape"):
        raise TaggerError(f"{where}: dY must be an array, got {type(dY).__name__}")
    _expect(where, "dY", dY, (B, To, F), "(B, To, F)")
    _expect(where, "dW", dW, _shape(W), "W.shape")
    _expect(where, "db", db, (F,), "(F,)")
    return starts, lengths
