"""concat_forward / concat_backward (the word-features concatenation, issue 10): the spec,
float64 finite differences on reference and cpu, cpu == reference, and (slow) the CUDA
kernels in the simulator and as sm_90 PTX. The bad-input cases live in tests/ops/cases.py,
so tests/ops/test_interface.py feeds them to every backend."""
from pathlib import Path

import numpy as np
import pytest

from tagger.ops import get_ops
from tests.gradcheck import assert_grad_close, numeric_grad
from tests.ops.cuda_subprocess import assert_cases_pass
from tests.ops.concat_cases import SHAPES, pieces

REF, CPU = get_ops("reference"), get_ops("cpu")


@pytest.mark.parametrize("lead,widths", SHAPES)
def test_reference_concatenates_in_list_order(lead, widths):
    Ys = pieces(lead, widths)
    Y = REF.concat_forward(Ys)
    assert Y.shape == lead + (sum(widths),)
    off = 0
    for y, w in zip(Ys, widths):
        np.testing.assert_array_equal(Y[..., off : off + w], y)
        off += w
    back = REF.concat_backward(Y, list(widths))
    assert [b.shape for b in back] == [y.shape for y in Ys]
    for b, y in zip(back, Ys):
        np.testing.assert_array_equal(b, y)
        assert b.flags.c_contiguous


@pytest.mark.parametrize("ops", [REF, CPU], ids=["reference", "cpu"])
def test_backward_matches_finite_differences(ops):
    Ys = pieces((2, 3), (4, 1, 3), seed=3)
    R = np.random.default_rng(4).normal(size=(2, 3, 8))

    def loss():
        return float((ops.concat_forward(Ys) * R).sum())

    for k, (dy, y) in enumerate(zip(ops.concat_backward(R, [4, 1, 3]), Ys)):
        assert_grad_close(dy, numeric_grad(loss, y), f"dY_{k}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("lead,widths", SHAPES)
def test_cpu_matches_reference(lead, widths, dtype):
    Ys = pieces(lead, widths, dtype)
    np.testing.assert_array_equal(CPU.concat_forward(Ys), REF.concat_forward(Ys))
    dY = REF.concat_forward(pieces(lead, widths, dtype, seed=5))
    for got, want in zip(CPU.concat_backward(dY, list(widths)), REF.concat_backward(dY, list(widths))):
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_cuda_concat_matches_reference_on_simulator():
    """tests/ops/cuda_concat_cases.py under NUMBA_ENABLE_CUDASIM=1 (a fresh interpreter)."""
    assert_cases_pass(Path(__file__).with_name("cuda_concat_cases.py"), timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cols_put", "cols_take"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_concat_kernels_compile_to_sm90_ptx_without_spills(name, dtype):
    """(test_ptx.py compiles every registered kernel too; this names the two concat ones.)"""
    from tagger.ops import _cuda_ptxas as P

    ptx = P.compile_kernel(name, dtype, cc=(9, 0))
    assert ".target sm_90" in ptx and ".entry" in ptx
    if P.assembler() is not None:
        info = P.ptxas_info(ptx, "sm_90")
        assert info["spill_stores"] == 0 and info["spill_loads"] == 0, info
