"""The sbatch scripts without a scheduler: syntax, commented #SBATCH lines, the guard."""
import re
import subprocess

import pytest

from .conftest import REPO

SCRIPTS = sorted((REPO / "cluster").glob("*.sbatch"))
CLEAN_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}


def test_both_scripts_exist():
    assert [p.name for p in SCRIPTS] == ["predict-array.sbatch", "train-mpi.sbatch"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_syntax_and_a_comment_on_every_sbatch_line(script):
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    lines = [line for line in script.read_text().splitlines() if line.startswith("#SBATCH")]
    assert len(lines) >= 6
    for line in lines:
        assert re.match(r"^#SBATCH --[a-z-]+(=\S+)?\s+# \w", line), f"{script.name}: {line!r} needs --name[=value]  # why"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_refuses_to_run_outside_slurm(script, tmp_path):
    out = subprocess.run(["bash", str(script), "--output", str(tmp_path / "out")], capture_output=True, text=True,
                         env=CLEAN_ENV, cwd=tmp_path)
    assert out.returncode == 2
    assert "not inside a Slurm" in out.stderr and "sbatch" in out.stderr and len(out.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # it did nothing


def test_predict_array_needs_an_array_task(tmp_path):
    env = dict(CLEAN_ENV, SLURM_JOB_ID="5")  # a plain sbatch job, not an array
    out = subprocess.run(["bash", str(REPO / "cluster" / "predict-array.sbatch")], capture_output=True, text=True,
                         env=env, cwd=tmp_path)
    assert out.returncode == 2 and "--array" in out.stderr


@pytest.mark.parametrize("args, words", [
    (["--output", "o", "--", "in"], "--model"),
    (["--model", "m", "--", "in"], "--output"),
    (["--model", "m", "--output", "o"], "no inputs"),
    (["--model", "m", "--output", "o", "--shards", "x", "--", "in"], "whole number"),
    (["--color", "red"], "unknown option --color"),
])
def test_predict_array_option_errors(tmp_path, args, words):
    env = dict(CLEAN_ENV, SLURM_JOB_ID="5", SLURM_ARRAY_TASK_ID="0")
    out = subprocess.run(["bash", str(REPO / "cluster" / "predict-array.sbatch"), *args], capture_output=True,
                         text=True, env=env, cwd=tmp_path)
    assert out.returncode == 2 and words in out.stderr, out.stderr
