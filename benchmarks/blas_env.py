"""Which OpenBLAS kernel a speed benchmark runs: OpenBLAS's own choice, unless --blas env.

Some machines set OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE (tagger.threads.BLAS_PINS) for
old OpenBLAS builds that miscompute or crash on new CPUs. NumPy's current OpenBLAS needs
neither, and the pin can cost half its GEMM rate: on this Zen 5 VM, OPENBLAS_CORETYPE=
Haswell selects the AVX2 kernel (128 GFLOP/s a core) instead of the AVX-512 SkylakeX
kernel OpenBLAS picks itself (230-246). PyTorch's MKL and oneDNN ignore both variables, so
a comparison under the pin measures our GEMMs at half speed against theirs at full.

Each speed benchmark calls choose() before NumPy is imported. By default (`--blas native`)
it drops the pins for its own process, and the processes it starts; `--blas env` keeps
them, to measure what such an environment gives. describe() names the kernel that ran,
for the benchmark's header. Tests and CI never go through here: they keep the environment.
"""
from __future__ import annotations

import os
import sys

from tagger.threads import BLAS_PINS  # loads no NumPy (choose() checks that it is not loaded)

_DROPPED: dict[str, str] = {}


def add_argument(parser) -> None:
    parser.add_argument("--blas", choices=["native", "env"], default="native",
                        help="native (default): drop OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE for this run, so "
                             "OpenBLAS picks its kernel; env: keep the environment's")


def _wanted(argv) -> str:
    for i, arg in enumerate(argv):
        if arg == "--blas" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--blas="):
            return arg.partition("=")[2]
    return "native"


def choose(argv=None) -> None:
    """Apply --blas from argv (default sys.argv) to os.environ; before NumPy is imported."""
    if "numpy" in sys.modules:
        raise RuntimeError("blas_env.choose() must run before numpy is imported")
    if _wanted(sys.argv[1:] if argv is None else argv) == "env":
        return
    for var in BLAS_PINS:
        if var in os.environ:
            _DROPPED[var] = os.environ.pop(var)


def describe() -> str:
    """The BLAS and kernel that ran, and what choose() dropped."""
    from tagger.threads import blas_description

    text = blas_description()
    if _DROPPED:
        dropped = ", ".join(f"{k}={v}" for k, v in _DROPPED.items())
        text += f"; the environment's {dropped} dropped for this run (--blas env keeps it)"
    return text
