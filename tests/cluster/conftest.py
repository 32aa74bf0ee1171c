"""Helpers for the tests that run real MPI worlds and a real (local, single-node) Slurm.

MPI comes from the environment's own wheels (`pip install tagger[mpi]`: mpi4py + MPICH),
so `mpiexec` sits beside the Python running the tests. Slurm is the one that
../shared/cluster/start_local_slurm.sh starts (.ci/run does, with
LOCAL_SLURM_MPI_DEFAULT=pmi2); these tests never start or stop it themselves, and fail
with a message saying so when it is not up.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
START_SCRIPT = REPO.parent / "shared" / "cluster" / "start_local_slurm.sh"


def run_env(**extra) -> dict:
    """The environment for child processes: this checkout first on PYTHONPATH, one thread."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    return env


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture(scope="session")
def mpiexec() -> Path:
    exe = BIN / "mpiexec"
    assert exe.exists(), f"{exe} missing: pip install -e '.[mpi]' (mpi4py + the MPICH wheel) in this environment"
    return exe


@pytest.fixture(scope="session")
def slurm():
    """Fails (never skips) unless the local Slurm answers: CI starts it before the tests."""
    hint = f"start it with LOCAL_SLURM_MPI_DEFAULT=pmi2 {START_SCRIPT} (.ci/run does)"
    assert shutil.which("sinfo") and shutil.which("sbatch"), f"Slurm is not installed: {hint}"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    assert "UP" in ping.stdout, f"slurmctld is not answering ({ping.stdout.strip()} {ping.stderr.strip()}): {hint}"
    state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30).stdout
    assert any(s.startswith(("idle", "mix", "alloc")) for s in state.split()), f"no usable Slurm node ({state!r}): {hint}"
    return Slurm()


class Slurm:
    """sbatch and polling (squeue, not sbatch --wait, which polls every 10 s)."""

    def submit(self, script, *args, sbatch=(), array=None, cwd, env=None, timeout=60) -> str:
        """sbatch [sbatch options] SCRIPT ARGS...; returns the job id."""
        cmd = ["sbatch", "--parsable", f"--chdir={cwd}", "--export=ALL", *sbatch]
        if array is not None:
            cmd.append(f"--array={array}")
        out = subprocess.run([*cmd, str(script), *map(str, args)], capture_output=True, text=True,
                             env=env or run_env(), timeout=timeout)
        assert out.returncode == 0, f"sbatch failed: {out.stderr.strip()}"
        return out.stdout.strip().split(";")[0]

    def queued(self, job: str) -> list[str]:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i %T"], capture_output=True, text=True, timeout=30)
        return out.stdout.split("\n") if out.stdout.strip() else []

    def wait(self, job: str, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while self.queued(job):
            if time.monotonic() > end:
                subprocess.run(["scancel", job], timeout=30)
                raise AssertionError(f"job {job} still queued after {timeout} s: {self.queued(job)}")
            time.sleep(0.2)

    def states(self, job: str) -> dict[str, str]:
        """Final state per array task ('JOB_TASK' -> COMPLETED/CANCELLED/FAILED) from jobcomp.log."""
        found = {}
        log = Path("/var/log/slurm/jobcomp.log")
        for line in log.read_text().splitlines() if log.exists() else []:
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if fields.get("ArrayJobId") == job or fields.get("JobId") == job:
                found[f"{job}_{fields.get('ArrayTaskId', '')}"] = fields.get("JobState", "")
        return found
