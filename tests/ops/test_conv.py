"""conv1d_forward / conv1d_backward (tagger/ops/_conv_*.py): the spec against Keras' Conv1D,
padding that never leaks, float64 finite differences on reference and cpu, cpu == reference,
one-line errors on every backend, and (slow) the CUDA kernels in the simulator and as PTX.

Legend as in tagger/ops/_conv_reference.py: X (B, T, I), W (Kw, I, F), b (F,), Y (B, To, F).
"""
import os
from pathlib import Path

import numpy as np
import pytest

from tagger.errors import TaggerError
from tagger.ops import get_ops
from tagger.ops._conv_reference import conv1d_output_length, conv1d_output_spans
from tests.gradcheck import assert_grad_close, numeric_grad
from tests.ops.cuda_subprocess import assert_cases_pass
from tests.ops.conv_cases import B, F, T, bad_calls, case, keras_conv1d, spans, with_nan_padding

REF, CPU = get_ops("reference"), get_ops("cpu")

# ----------------------------------------------------------------------------------------
# semantics


@pytest.mark.parametrize("width", [1, 2, 3, 4])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_reference_is_keras_conv1d_on_post_padded_zeros(padding, width):
    X, W, b = case(width)
    starts, lengths = spans("post")
    X[np.arange(T)[None, :] >= lengths[:, None]] = 0.0  # Keras reads the padding: make it 0
    Y = REF.conv1d_forward(X, W, b, starts, lengths, padding)
    K = keras_conv1d(X, W, b, padding)
    assert Y.shape == K.shape == (B, conv1d_output_length(T, width, padding), F)
    ost, oln = conv1d_output_spans(starts, lengths, T, width, padding)
    for r in range(B):
        real = slice(ost[r], ost[r] + oln[r])
        np.testing.assert_allclose(Y[r, real], K[r, real], rtol=1e-12, atol=1e-12)
        outside = np.ones(Y.shape[1], bool)
        outside[real] = False
        assert (Y[r, outside] == 0).all()


@pytest.mark.parametrize("ops", [REF, CPU], ids=["reference", "cpu"])
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("layout", ["pre", "mixed"])
def test_any_padding_layout_gives_the_post_padded_result_and_nan_never_leaks(ops, layout, padding):
    X, W, b = case()
    ps, pl = spans("post")
    qs, ql = spans(layout)
    Xq = np.zeros_like(X)
    for r in range(B):
        Xq[r, qs[r] : qs[r] + ql[r]] = X[r, : pl[r]]
    Xq = with_nan_padding(Xq, qs, ql)
    Yp = ops.conv1d_forward(X, W, b, ps, pl, padding)
    Yq = ops.conv1d_forward(Xq, W, b, qs, ql, padding)
    R = np.random.default_rng(1).normal(size=Yp.shape)
    pos, pol = conv1d_output_spans(ps, pl, T, W.shape[0], padding)
    qos, qol = conv1d_output_spans(qs, ql, T, W.shape[0], padding)
    Rq = np.full_like(R, np.nan)  # dY outside the output spans must never be read
    for r in range(B):
        assert pol[r] == qol[r]
        np.testing.assert_array_equal(Yq[r, qos[r] : qos[r] + qol[r]], Yp[r, : pol[r]])
        Rq[r, qos[r] : qos[r] + qol[r]] = R[r, : pol[r]]
    assert np.isfinite(Yq).all()
    dWp, dbp, dWq, dbq = np.zeros_like(W), np.zeros_like(b), np.zeros_like(W), np.zeros_like(b)
    dXp = ops.conv1d_backward(R, X, W, ps, pl, padding, dWp, dbp)
    dXq = ops.conv1d_backward(Rq, Xq, W, qs, ql, padding, dWq, dbq)
    assert np.isfinite(dXq).all()
    np.testing.assert_allclose(dWq, dWp, rtol=1e-12)
    np.testing.assert_allclose(dbq, dbp, rtol=1e-12)
    for r in range(B):
        np.testing.assert_allclose(dXq[r, qs[r] : qs[r] + ql[r]], dXp[r, : pl[r]], rtol=1e-12)
        assert (dXq[r, : qs[r]] == 0).all() and (dXq[r, qs[r] + ql[r] :] == 0).all()


def test_valid_output_spans_stay_inside_the_output():
    starts, lengths = spans("pre")
    ost, oln = conv1d_output_spans(starts, lengths, T, 3, "valid")
    np.testing.assert_array_equal(oln, [1, 4, 0, 0, 0])
    assert ((ost >= 0) & (ost + oln <= T - 2)).all()
    assert conv1d_output_length(2, 3, "valid") == 0


# ----------------------------------------------------------------------------------------
# gradients: float64 finite differences through every argument


@pytest.mark.parametrize("ops", [REF, CPU], ids=["reference", "cpu"])
@pytest.mark.parametrize("width", [2, 3])
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("layout", ["post", "mixed"])
def test_backward_matches_finite_differences(ops, layout, padding, width):
    X, W, b = case(width, seed=width)
    starts, lengths = spans(layout)
    R = np.random.default_rng(7).normal(size=(B, conv1d_output_length(T, width, padding), F))

    def loss():
        return float((ops.conv1d_forward(X, W, b, starts, lengths, padding) * R).sum())

    dW, db = np.zeros_like(W), np.zeros_like(b)
    dX = ops.conv1d_backward(R, X, W, starts, lengths, padding, dW, db)
    assert_grad_close(dX, numeric_grad(loss, X), "dX")
    assert_grad_close(dW, numeric_grad(loss, W), "dW")
    assert_grad_close(db, numeric_grad(loss, b), "db")


@pytest.mark.parametrize("ops", [REF, CPU], ids=["reference", "cpu"])
def test_backward_accumulates_and_runs_without_bias(ops):
    X, W, _ = case(bias=False)
    starts, lengths = spans("mixed")
    Y = ops.conv1d_forward(X, W, None, starts, lengths, "same")
    R = np.random.default_rng(3).normal(size=Y.shape)
    dW1 = np.zeros_like(W)
    ops.conv1d_backward(R, X, W, starts, lengths, "same", dW1, None)
    dW2 = dW1.copy()
    ops.conv1d_backward(R, X, W, starts, lengths, "same", dW2, None)
    np.testing.assert_allclose(dW2, 2 * dW1, rtol=1e-14)
    assert np.abs(dW1).max() > 0


# ----------------------------------------------------------------------------------------
# cpu == reference


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("layout", ["post", "pre", "mixed"])
@pytest.mark.parametrize("width", [1, 3, 4])
def test_cpu_matches_reference(width, layout, padding, dtype, tol):
    X, W, b = case(width, dtype=dtype, seed=11)
    starts, lengths = spans(layout)
    out = {}
    for name, ops in (("ref", REF), ("cpu", CPU)):
        Y = ops.conv1d_forward(X, W, b, starts, lengths, padding)
        R = np.random.default_rng(5).normal(size=Y.shape).astype(dtype)
        dW, db = np.full_like(W, 0.5), np.full_like(b, 0.25)  # accumulates onto what is there
        dX = ops.conv1d_backward(R, X, W, starts, lengths, padding, dW, db)
        out[name] = (Y, dX, dW, db)
    for k, what in enumerate(("Y", "dX", "dW", "db")):
        got, want = out["cpu"][k], out["ref"][k]
        assert got.dtype == np.dtype(dtype), what
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=what)


# ----------------------------------------------------------------------------------------
# bad input: one line, naming the argument, the same on every backend (the checks run before
# anything reaches a device, so the cuda backend is covered without one)


@pytest.mark.parametrize("backend", ["reference", "cpu", "cuda"])
def test_bad_input_is_one_tagger_error_naming_the_argument(backend):
    for label, (expect, call) in bad_calls(get_ops(backend)).items():
        with pytest.raises(TaggerError) as err:
            call()
        assert str(err.value).startswith(expect), (label, str(err.value))
        assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------
# CUDA: simulator cases in a subprocess, and sm_90 PTX


@pytest.mark.slow
def test_cuda_conv_matches_reference_on_simulator():
    """tests/ops/cuda_conv_cases.py under NUMBA_ENABLE_CUDASIM=1 (set before numba is
    imported, hence a fresh interpreter)."""
    assert_cases_pass(Path(__file__).with_name("cuda_conv_cases.py"), timeout=900)


def _ptx_variants():
    from tagger.ops import _conv_cuda

    return [(n, np.dtype(d).name) for n in _conv_cuda.KERNELS for d in _conv_cuda.DTYPES]


@pytest.mark.slow
@pytest.mark.parametrize("name,dtype", _ptx_variants())
def test_conv_kernel_compiles_to_sm90_ptx_without_spills(name, dtype):
    assert os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0"), "PTX needs the real numba.cuda target"
    from tagger.ops import _conv_cuda
    from tagger.ops import _cuda_ptxas as P

    ptx = _conv_cuda.compile_ptx(name, dtype, cc=(9, 0))
    assert ".target sm_90" in ptx and ".entry" in ptx
    if P.assembler() is not None:  # nvJitLink ships with numba-cuda[cu13]
        info = P.ptxas_info(ptx, "sm_90")
        assert info["spill_stores"] == 0 and info["spill_loads"] == 0, info
