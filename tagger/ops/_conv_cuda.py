"""1-D convolution over spans on the GPU (numba.cuda): conv1d_forward / conv1d_backward.

Re-exported by tagger/ops/cuda.py. Semantics, legend and the padding rule: the spec in
tagger/ops/_conv_reference.py (pl = zeros before a row's first real step; s', n' = a row's
output span).

Like tagger/ops/cuda.py, importing this module touches no driver: the kernel bodies below
are plain Python factories, wrapped with ``cuda.jit`` on their first launch; KERNELS lists
them with their launch signatures, so tests/ops/test_conv.py compiles each to sm_90 PTX.
Launch shapes come from tagger.ops.cuda's THREADS_PER_BLOCK and MAX_BLOCKS (read at each
launch, so the tests' patched-down values apply). Every kernel is a grid-stride loop in
which one thread produces one output element, summing in a fixed order: no atomics, so
results are bitwise reproducible.

    conv_fwd    thread (r, t, f):  Y[r, t, f] = b[f] + sum_k sum_i x_r[j + k - pl, i] W[k, i, f]
                                   (j = t - s'), 0 outside the output span
    conv_bwd_x  thread (r, t, i):  dX[r, t, i] = sum_k sum_f dY[r, s' + p - k + pl, f] W[k, i, f]
                                   (p = t - s, the terms inside the output span), 0 at padding
    conv_bwd_w  thread (k, i, f):  dW[k, i, f] += sum_r sum_j x_r[j + k - pl, i] dY[r, s' + j, f]
    conv_bwd_b  thread f:          db[f] += sum_r sum_j dY[r, s' + j, f]
"""
from __future__ import annotations

import importlib

import numpy as np
from numba import cuda, types

from tagger.errors import TaggerError
from tagger.ops._conv_checks import check_conv1d_backward, check_conv1d_forward
from tagger.ops._conv_reference import conv1d_output_length, conv1d_output_spans, left_pad

_JITTED: dict = {}


def _backend():
    # the launch constants live in tagger.ops.cuda (which re-exports this module's ops)
    return importlib.import_module("tagger.ops.cuda")


# ----------------------------------------------------------------------------------------
# kernel bodies (factories: the float type of the literals is a compile-time constant)


def make_conv_fwd(dtype):
    zero = np.dtype(dtype).type(0)

    def k_conv_fwd(X, W, b, starts, lengths, ostarts, olengths, Y, pl, has_bias):
        To = Y.shape[1]
        F = Y.shape[2]
        Kw = W.shape[0]
        I = W.shape[1]
        for q in range(cuda.grid(1), Y.shape[0] * To * F, cuda.gridsize(1)):
            f = q % F
            rt = q // F
            r = rt // To
            j = rt % To - ostarts[r]
            acc = zero
            if j >= 0 and j < olengths[r]:
                if has_bias:
                    acc = b[f]
                s = starts[r]
                n = lengths[r]
                for k in range(Kw):
                    p = j + k - pl
                    if p >= 0 and p < n:
                        part = zero
                        for i in range(I):
                            part += X[r, s + p, i] * W[k, i, f]
                        acc += part
            Y[r, rt % To, f] = acc

    return k_conv_fwd


def make_conv_bwd_x(dtype):
    zero = np.dtype(dtype).type(0)

    def k_conv_bwd_x(dY, W, starts, lengths, ostarts, olengths, dX, pl):
        T = dX.shape[1]
        I = dX.shape[2]
        Kw = W.shape[0]
        F = W.shape[2]
        for q in range(cuda.grid(1), dX.shape[0] * T * I, cuda.gridsize(1)):
            i = q % I
            rt = q // I
            r = rt // T
            p = rt % T - starts[r]
            acc = zero
            if p >= 0 and p < lengths[r]:
                for k in range(Kw):
                    j = p - k + pl
                    if j >= 0 and j < olengths[r]:
                        for f in range(F):
                            acc += dY[r, ostarts[r] + j, f] * W[k, i, f]
            dX[r, rt % T, i] = acc

    return k_conv_bwd_x


def make_conv_bwd_w(dtype):
    zero = np.dtype(dtype).type(0)

    def k_conv_bwd_w(dY, X, starts, lengths, ostarts, olengths, dW, pl):
        Kw = dW.shape[0]
        I = dW.shape[1]
        F = dW.shape[2]
        for q in range(cuda.grid(1), Kw * I * F, cuda.gridsize(1)):
            f = q % F
            ki = q // F
            i = ki % I
            k = ki // I
            acc = zero
            for r in range(X.shape[0]):
                s = starts[r]
                n = lengths[r]
                for j in range(olengths[r]):
                    p = j + k - pl
                    if p >= 0 and p < n:
                        acc += X[r, s + p, i] * dY[r, ostarts[r] + j, f]
            dW[k, i, f] += acc

    return k_conv_bwd_w


def make_conv_bwd_b(dtype):
    zero = np.dtype(dtype).type(0)

    def k_conv_bwd_b(dY, ostarts, olengths, db):
        for f in range(cuda.grid(1), db.shape[0], cuda.gridsize(1)):
            acc = zero
            for r in range(dY.shape[0]):
                for j in range(olengths[r]):
                    acc += dY[r, ostarts[r] + j, f]
            db[f] += acc

    return k_conv_bwd_b


# ----------------------------------------------------------------------------------------
# registry: name -> (factory, launch signature)


def _f(dtype, ndim):
    return types.Array(types.float32 if np.dtype(dtype) == np.float32 else types.float64, ndim, "C")


_I1 = types.Array(types.int64, 1, "C")
_I = types.int64

KERNELS = {
    "conv_fwd": (make_conv_fwd, lambda d: (_f(d, 3), _f(d, 3), _f(d, 1), _I1, _I1, _I1, _I1, _f(d, 3), _I, _I)),
    "conv_bwd_x": (make_conv_bwd_x, lambda d: (_f(d, 3), _f(d, 3), _I1, _I1, _I1, _I1, _f(d, 3), _I)),
    "conv_bwd_w": (make_conv_bwd_w, lambda d: (_f(d, 3), _f(d, 3), _I1, _I1, _I1, _I1, _f(d, 3), _I)),
    "conv_bwd_b": (make_conv_bwd_b, lambda d: (_f(d, 3), _I1, _I1, _f(d, 1))),
}
DTYPES = (np.float32, np.float64)


def compile_ptx(name, dtype, cc=(9, 0)):
    """PTX text of kernel `name` for `dtype` (no GPU needed)."""
    build, signature = KERNELS[name]
    ptx, _ = cuda.compile_ptx(build(np.dtype(dtype).type), signature(dtype), cc=cc)
    return ptx


# ----------------------------------------------------------------------------------------
# launching and memory


def _kernel(name, dtype):
    key = (name, np.dtype(dtype).str)
    fn = _JITTED.get(key)
    if fn is None:
        fn = _JITTED[key] = cuda.jit(KERNELS[name][0](np.dtype(dtype).type))
    return fn


def _launch(name, dtype, n, *args):
    if n <= 0:
        return
    C = _backend()
    blocks = max(1, min(-(-n // C.THREADS_PER_BLOCK), C.MAX_BLOCKS))
    _kernel(name, dtype)[blocks, C.THREADS_PER_BLOCK](*args)


def _dev(a):
    return a if hasattr(a, "copy_to_host") else cuda.to_device(np.ascontiguousarray(a))


def _ints(a):
    return cuda.to_device(np.ascontiguousarray(a, dtype=np.int64))


def _spans_on_device(X, W, starts, lengths, padding):
    T, Kw = int(X.shape[1]), int(W.shape[0])
    ostarts, olengths = conv1d_output_spans(starts, lengths, T, Kw, padding)
    return [_ints(a) for a in (starts, lengths, ostarts, olengths)]


def _accumulator(where, name, a):
    """A gradient buffer must live on the device: a host copy would drop the += ."""
    if a is not None and not hasattr(a, "copy_to_host"):
        raise TaggerError(f"{where}: {name} must be a device array (ops.zeros) so the gradient accumulates into it")
    return a


# ----------------------------------------------------------------------------------------
# the ops


def conv1d_forward(X, W, b, starts, lengths, padding="same"):
    """Y (B, To, F) device array; see tagger/ops/_conv_reference.conv1d_forward."""
    starts, lengths = check_conv1d_forward(X, W, b, starts, lengths, padding)
    X, W = _dev(X), _dev(W)
    B, T, _ = (int(n) for n in X.shape)
    Kw, _, F = (int(n) for n in W.shape)
    To = conv1d_output_length(T, Kw, padding)
    bias = _dev(b) if b is not None else cuda.to_device(np.zeros(1, dtype=X.dtype))
    Y = cuda.device_array((B, To, F), dtype=X.dtype)
    _launch("conv_fwd", X.dtype, B * To * F, X, W, bias, *_spans_on_device(X, W, starts, lengths, padding), Y,
            left_pad(Kw, padding), int(b is not None))
    return Y


def conv1d_backward(dY, X, W, starts, lengths, padding, dW, db):
    """dX (B, T, I) device array; dW += and db += on the device (db None: no bias)."""
    where = "conv1d_backward"
    starts, lengths = check_conv1d_backward(dY, X, W, starts, lengths, padding, dW, db)
    _accumulator(where, "dW", dW)
    _accumulator(where, "db", db)
    dY, X, W = _dev(dY), _dev(X), _dev(W)
    B, T, I = (int(n) for n in X.shape)
    Kw, _, F = (int(n) for n in W.shape)
    pl = left_pad(Kw, padding)
    st, ln, ost, oln = _spans_on_device(X, W, starts, lengths, padding)
    dX = cuda.device_array((B, T, I), dtype=X.dtype)
    _launch("conv_bwd_x", X.dtype, B * T * I, dY, W, st, ln, ost, oln, dX, pl)
    _launch("conv_bwd_w", X.dtype, Kw * I * F, dY, X, st, ln, ost, oln, dW, pl)
    if db is not None:
        _launch("conv_bwd_b", X.dtype, F, dY, ost, oln, db)
    return dX
