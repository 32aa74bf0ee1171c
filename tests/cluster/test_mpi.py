"""tagger.distributed in a real 2-rank MPI world (mpiexec from the environment's MPICH wheel)."""
import subprocess
import sys

import pytest

from .conftest import REPO, json_lines, run_env

pytestmark = [pytest.mark.mpi, pytest.mark.slow]
RANKS = 2
CASES = ["world_size", "sparse_equals_dense", "data_parallel_step", "data_parallel_models", "checksum_mismatch",
         "root_only_writes", "timing"]


@pytest.fixture(scope="module")
def results(mpiexec):
    """One mpiexec run of every case (startup is most of the cost); case -> its JSON line."""
    cmd = [str(mpiexec), "-n", str(RANKS), sys.executable, str(REPO / "tests" / "cluster" / "mpi_cases.py"),
           "--expect-size", str(RANKS), "--time"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=run_env(), timeout=300)
    lines = {r["case"]: r for r in json_lines(out.stdout)}
    assert set(lines) == set(CASES), f"rc {out.returncode}\n{out.stdout}\n{out.stderr}"
    return lines


@pytest.mark.parametrize("name", CASES)
def test_case(results, name):
    r = results[name]
    assert r["size"] == RANKS, "MPI started singletons, not one world"
    assert r["ok"], r.get("errors")


def test_timing_is_reported(results, capsys):
    r = results["timing"]
    with capsys.disabled():
        print("\n  MPI 2 ranks (min, median ms): " + ", ".join(f"{k} {v}" for k, v in r.items() if k.endswith("_ms")))
    assert all(v[0] > 0 for k, v in r.items() if k.endswith("_ms"))
