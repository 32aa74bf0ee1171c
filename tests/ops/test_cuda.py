"""The CUDA backend: numeric checks on a device in a subprocess (the signatures and the
bad-input messages of every backend: test_interface.py).

The numeric cases live in tests/ops/cuda_device_cases.py and run in a fresh interpreter
(tests/ops/cuda_subprocess.py says why).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tagger.ops import cuda as C
from tests.ops.cuda_subprocess import assert_cases_pass

ROOT = Path(__file__).resolve().parents[2]
CASES = Path(__file__).with_name("cuda_device_cases.py")


def test_import_touches_no_driver():
    """Importing the module (and asking about the GPU) works on a machine without one."""
    code = (
        "import tagger.ops.cuda as c, sys; a = c.is_available(); n = c.device_name();"
        "print(type(a).__name__, type(n).__name__, bool(c._JITTED))"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["bool", "str", "False"]


@pytest.mark.slow
def test_cuda_ops_match_reference_on_simulator():
    """Every CUDA op vs the reference, gradients, determinism and a whole training step,
    under NUMBA_ENABLE_CUDASIM=1 (about a minute on 2 cores)."""
    assert_cases_pass(CASES)


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(C.is_simulator() or not C.is_available(), reason="needs a real CUDA GPU")
def test_cuda_ops_match_reference_on_gpu():
    """The same cases on real hardware (runs wherever a GPU is present)."""
    assert_cases_pass(CASES, simulator=False)


def test_launch_constants_are_module_level():
    for name in ("THREADS_PER_BLOCK", "MAX_BLOCKS", "TILE", "MAX_GRID_2D", "REDUCE_THREADS", "REDUCE_BLOCKS"):
        assert isinstance(getattr(C, name), int)
    assert C.REDUCE_THREADS & (C.REDUCE_THREADS - 1) == 0, "tree reduction needs a power of two"

