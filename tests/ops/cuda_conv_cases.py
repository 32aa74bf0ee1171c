"""CUDA conv1d_forward / conv1d_backward vs the NumPy reference, on a device (the CUDA
simulator or a real GPU).

Not collected by a plain `pytest` run (the name does not match test_*.py):
tests/ops/test_conv.py runs it in a subprocess with NUMBA_ENABLE_CUDASIM=1, which must be
set before numba is imported. Direct use:

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q -p no:cacheprovider tests/ops/cuda_conv_cases.py

Shapes are tiny (the simulator runs one Python thread per CUDA thread) and the launch
constants are patched down so every grid-stride loop goes round more than once.
"""
import numpy as np
import pytest

from tagger.errors import TaggerError
from tagger.ops import cuda as C
from tagger.ops import reference as R
from tests.gradcheck import assert_grad_close, numeric_grad
from tests.ops.cuda_device_cases import small_launches  # noqa: F401  (autouse: tiny launch shapes)
from tests.ops.conv_cases import case, spans, with_nan_padding

if not C.is_available():
    pytest.skip("no CUDA device and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-6)}


def run(ops, X, W, b, starts, lengths, padding, dY, dW0, db0):
    """(Y, dX, dW, db) as host arrays; the gradients accumulate onto dW0, db0."""
    Y = ops.conv1d_forward(ops.asarray(X), ops.asarray(W), None if b is None else ops.asarray(b), starts, lengths, padding)
    dW = ops.asarray(dW0.copy())
    db = None if db0 is None else ops.asarray(db0.copy())
    dX = ops.conv1d_backward(ops.asarray(dY), ops.asarray(X), ops.asarray(W), starts, lengths, padding, dW, db)
    return [None if a is None else np.array(ops.to_numpy(a)) for a in (Y, dX, dW, db)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("layout", ["post", "pre", "mixed"])
@pytest.mark.parametrize("width,bias", [(3, True), (2, False), (1, True)])
def test_conv_matches_reference(width, bias, layout, padding, dtype):
    X, W, b = case(width, dtype=dtype, seed=width, bias=bias)
    starts, lengths = spans(layout)
    Yr = R.conv1d_forward(X, W, b, starts, lengths, padding)
    dY = np.random.default_rng(2).normal(size=Yr.shape).astype(dtype)
    dW0, db0 = np.full_like(W, 0.5), None if b is None else np.full_like(b, 0.25)
    ref = run(R, X, W, b, starts, lengths, padding, dY, dW0, db0)
    dev = run(C, X, W, b, starts, lengths, padding, dY, dW0, db0)
    for what, got, want in zip(("Y", "dX", "dW", "db"), dev, ref):
        if want is None:
            assert got is None
            continue
        assert got.dtype == np.dtype(dtype), what
        np.testing.assert_allclose(got, want, err_msg=what, **TOL[dtype])


def test_padding_never_leaks_and_results_repeat_bit_for_bit():
    X, W, b = case(3)
    starts, lengths = spans("mixed")
    Xn = with_nan_padding(X, starts, lengths)
    Yr = R.conv1d_forward(X, W, b, starts, lengths, "same")
    dY = np.random.default_rng(4).normal(size=Yr.shape)
    first = run(C, Xn, W, b, starts, lengths, "same", dY, np.zeros_like(W), np.zeros_like(b))
    second = run(C, Xn, W, b, starts, lengths, "same", dY, np.zeros_like(W), np.zeros_like(b))
    for got in first:
        assert np.isfinite(got).all()
    for a, c in zip(first, second):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_allclose(first[0], Yr, **TOL[np.float64])


def test_backward_finite_differences_on_device():
    X, W, b = case(3, seed=9)
    starts, lengths = spans("pre")
    Rw = np.random.default_rng(6).normal(size=(X.shape[0], X.shape[1] - 2, W.shape[2]))

    def loss():
        return float((C.to_numpy(C.conv1d_forward(X, W, b, starts, lengths, "valid")) * Rw).sum())

    _, dX, dW, db = run(C, X, W, b, starts, lengths, "valid", Rw, np.zeros_like(W), np.zeros_like(b))
    assert_grad_close(dX, numeric_grad(loss, X), "dX")
    assert_grad_close(dW, numeric_grad(loss, W), "dW")
    assert_grad_close(db, numeric_grad(loss, b), "db")


def test_host_gradient_buffers_are_refused():
    X, W, b = case(3)
    starts, lengths = spans("post")
    Y = R.conv1d_forward(X, W, b, starts, lengths, "same")
    with pytest.raises(TaggerError, match="conv1d_backward: dW must be a device array"):
        C.conv1d_backward(Y, X, W, starts, lengths, "same", np.zeros_like(W), None)


@pytest.mark.parametrize("kind", ["lstm", "cnn"])
def test_char_encoder_on_cuda_matches_reference(kind):
    """The whole CharEncoder with ops='cuda' (conv1d, pooling, the LSTM, the row gather and
    scatter-add on the device) against ops='reference': outputs and every gradient."""
    from tagger.layers.chars import CharEncoder
    from tagger.spans import Spans

    ids = np.array([[[3, 1, 4, 0], [2, 0, 0, 0], [5, 5, 0, 0]], [[6, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]])
    words = Spans.from_lengths([3, 1], 3)
    out = {}
    for backend in ("reference", "cuda"):
        enc = CharEncoder(kind, char_vocab_size=7, char_dim=2, units=2, filters=3, width=3, ops=backend,
                          dtype=np.float64, seed=4)
        y, backprop = enc.forward(ids, words, train=True)
        R = np.random.default_rng(0).normal(size=tuple(y.shape))
        backprop(enc.ops.asarray(R))
        out[backend] = (np.array(enc.ops.to_numpy(y)), [np.array(enc.ops.to_numpy(g)) for g in enc.grads])
    np.testing.assert_allclose(out["cuda"][0], out["reference"][0], **TOL[np.float64])
    for k, (a, b) in enumerate(zip(out["cuda"][1], out["reference"][1])):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=f"grad {k}")
