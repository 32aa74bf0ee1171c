"""Run a file of CUDA cases in a fresh interpreter: on the simulator or on a real GPU.

NUMBA_ENABLE_CUDASIM must be set before numba is first imported, and other test modules
import numba earlier in the same pytest process, so every CUDA case file (tests/ops/
cuda_*_cases.py, tests/cuda_streaming_cases.py) runs in a pytest subprocess with the
variable set. A failure there fails the calling test, with the subprocess's report in
the message; a skip fails it too (a skipped test is a failing test).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_cases(cases: Path, simulator: bool = True, timeout: float = 1800) -> tuple[int, str]:
    """(return code, the tail of its output) of pytest over `cases`. The timeout guards
    against a hung simulator; it is no speed target (on a loaded shared machine the
    device cases, ~3 CPU-minutes, have taken over 10 minutes of wall time)."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1" if simulator else "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::RuntimeWarning",
           "-rfEs", str(cases)]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return out.returncode, out.stdout[-6000:] + out.stderr[-2000:]


def assert_cases_pass(cases: Path, simulator: bool = True, timeout: float = 1800) -> None:
    """Every case of `cases` passed, and none was skipped."""
    rc, report = run_cases(cases, simulator, timeout)
    assert rc == 0, report
    assert " passed" in report and "skipped" not in report, report
