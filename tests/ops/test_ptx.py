"""Every CUDA kernel compiles to real sm_90 PTX (no GPU needed, no simulator). The
compilations are marked slow.

A kernel that only works in the simulator (a non-constant shared-array shape, an
untyped literal, a call numba.cuda cannot lower) fails here. When an assembler is
installed the PTX is also assembled (nvJitLink from numba-cuda[cu13], else the
toolkit's ptxas), and must not spill.
"""
import os

import numpy as np
import pytest

from tagger.ops import _cuda_kernels as K
from tagger.ops import _cuda_ptxas as P
from tagger.ops import cuda as C

VARIANTS = P.all_variants()


def test_not_under_the_simulator():
    assert os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0"), "PTX tests need the real numba.cuda target"


def test_every_launched_kernel_is_registered():
    # the wrappers launch kernels only through K.KERNELS by name; check each name exists
    import inspect
    import re

    src = inspect.getsource(C)
    used = set(re.findall(r'_launch1d\("(\w+)"', src)) | set(re.findall(r'_kernel\("(\w+)"', src))
    assert used, "no kernel launches found"
    assert used <= set(K.KERNELS), used - set(K.KERNELS)
    assert {"gemm", "lstm_step", "lstm_bstep", "pool_fwd", "pool_bwd"} <= set(K.KERNELS)
    # so the parametrised tests below compile every one of them in both float dtypes
    assert {("pool_fwd", "float32"), ("pool_fwd", "float64"), ("pool_bwd", "float32"),
            ("pool_bwd", "float64")} <= set(VARIANTS)


@pytest.mark.slow
@pytest.mark.parametrize("name,dtype", VARIANTS, ids=[f"{n}-{d}" for n, d in VARIANTS])
def test_kernel_compiles_to_sm90_ptx(name, dtype):
    ptx = P.compile_kernel(name, dtype, cc=(9, 0))
    assert ".target sm_90" in ptx
    assert ".entry" in ptx


@pytest.mark.slow
@pytest.mark.skipif(P.assembler() is None, reason="neither nvJitLink nor ptxas installed")
@pytest.mark.parametrize("name,dtype", VARIANTS, ids=[f"{n}-{d}" for n, d in VARIANTS])
def test_kernel_assembles_without_spills(name, dtype):
    info = P.ptxas_info(P.compile_kernel(name, dtype, cc=(9, 0)), "sm_90")
    assert info["spill_stores"] == 0 and info["spill_loads"] == 0, info
    assert info["registers"] <= 255


@pytest.mark.slow
def test_gemm_shared_memory_matches_tile():
    if P.assembler() is None:
        pytest.skip("neither nvJitLink nor ptxas installed")
    info = P.ptxas_info(P.compile_kernel("gemm", "float32"), "sm_90")
    assert info["smem"] == 2 * C.TILE * (C.TILE + 1) * np.dtype(np.float32).itemsize, info
