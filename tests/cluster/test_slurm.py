"""The cluster scripts on a real (local, single-node) Slurm: arrays, cancel, resubmit, srun + MPI.

Most cases run tests/cluster/fake_tagger.py in place of `tagger` (the real sharding and
distributed code, an echo model), so these test the scripts, the shard plan and resume,
Slurm's signals and srun's MPI plugin, not the network. The last case runs the real
`tagger predict --shard auto/N` over 200 files, and the train-mpi cases the real `tagger train`.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tagger.sharding import manifest_path, plan_shards

from .conftest import REPO, run_env

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
FAKE = f"{sys.executable} {REPO / 'tests' / 'cluster' / 'fake_tagger.py'}"
PREDICT = REPO / "cluster" / "predict-array.sbatch"
TRAIN = REPO / "cluster" / "train-mpi.sbatch"
SHARDS = 4
MIN_PART = 800
TWO_RANKS = ["--ntasks=2", "--mem-per-cpu=200M"]


def make_inputs(root: Path) -> Path:
    lines = [f"line {k} of the big file with some words {'x' * (k % 7)}" for k in range(100)]
    (root / "in").mkdir(parents=True)
    (root / "in" / "big.txt").write_text("\n".join(lines) + "\n")
    for k in range(8):
        (root / "in" / f"doc{k}.txt").write_text("".join(f"doc {k} sentence {j}\n\n" for j in range(20)))
    (root / "model").mkdir()
    (root / "model" / "config.yaml").write_text("task: tag\n")
    (root / "model" / "weights.safetensors").write_bytes(b"\0" * 64)
    return root / "in"


def echo_output(path: Path) -> str:
    """What an unsharded fake run writes for one input."""
    out = []
    for k, line in enumerate(path.read_text().split("\n")[:-1], 1):
        if line.strip():
            out.append(json.dumps({"line": k, "text": line}) + "\n")
    return "".join(out)


def wait_for(condition, timeout, what):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def manifest_outputs(out: Path, shard: int) -> dict:
    path = manifest_path(out, shard, SHARDS)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def test_predict_array_cancel_one_task_and_resubmit_it(slurm, tmp_path):
    inputs = make_inputs(tmp_path)
    out = tmp_path / "out"
    plans = [plan_shards([inputs], SHARDS, i, out, min_part_bytes=MIN_PART) for i in range(SHARDS)]
    # cancel a task with two outputs or more, once it has finished its first one
    victim = next(i for i in range(SHARDS) if len(plans[i]) >= 2)
    env = run_env(FAKE_SLEEP="0.05", FAKE_MIN_PART_BYTES=str(MIN_PART), FAKE_LOG=str(tmp_path / "written.log"))
    args = ["--model", tmp_path / "model", "--output", out, "--tagger", FAKE, "--", inputs]
    job = slurm.submit(PREDICT, *args, sbatch=["--mem=200M"], array=f"0-{SHARDS - 1}", cwd=tmp_path, env=env)
    wait_for(lambda: len(manifest_outputs(out, victim).get("outputs", {})) >= 1, 60, f"task {victim}'s first output")
    subprocess.run(["scancel", f"{job}_{victim}"], check=True, timeout=30)
    slurm.wait(job)
    states = slurm.states(job)
    assert states.get(f"{job}_{victim}") == "CANCELLED", states
    assert all(states.get(f"{job}_{i}") == "COMPLETED" for i in range(SHARDS) if i != victim), states
    cancelled = manifest_outputs(out, victim)
    assert not cancelled["complete"] and 1 <= len(cancelled["outputs"]) < len(plans[victim])

    again = slurm.submit(PREDICT, "--shards", SHARDS, *args, sbatch=["--mem=200M"], array=str(victim),
                         cwd=tmp_path, env=env)
    slurm.wait(again)
    assert slurm.states(again).get(f"{again}_{victim}") == "COMPLETED", slurm.states(again)

    expected = {u.output.as_posix() for p in plans for u in p}
    written = (tmp_path / "written.log").read_text().split("\n")[:-1]
    assert sorted(line.split(" ", 1)[1] for line in written) == sorted(expected)  # each output written once
    for i in range(SHARDS):
        m = manifest_outputs(out, i)
        assert m["complete"] and set(m["outputs"]) == {u.output.as_posix() for u in plans[i]}
    found = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and ".tagger-shards" not in p.parts}
    assert found == expected  # no temp files left, nothing extra
    for doc in sorted(inputs.iterdir()):
        parts = sorted(out.glob(f"{doc.name}.part-*")) or [out / f"{doc.name}.jsonl"]
        assert "".join(p.read_text() for p in parts) == echo_output(doc), doc.name
    assert len(sorted(out.glob("big.txt.part-*"))) >= 3  # the big file really was split
    log = (tmp_path / f"slurm-tagger-predict-{again}_{victim}.out").read_text()
    assert "skip " in log and "complete=True" in log


def test_train_mpi_ranks_resume_and_requeue_on_the_time_limit_signal(slurm, tmp_path):
    out = tmp_path / "run"
    (tmp_path / "c.yaml").write_text("task: tag\n")
    args = ["--config", tmp_path / "c.yaml", "--output", out, "--tagger", FAKE]
    state = out / "checkpoint" / "state.json"
    for expect_resume in (False, True):  # a fresh run, then a resubmission that resumes
        job = slurm.submit(TRAIN, *args, sbatch=TWO_RANKS, cwd=tmp_path)
        slurm.wait(job)
        log = (tmp_path / f"slurm-tagger-train-{job}.out").read_text()
        assert "trained" in log, log
        run = json.loads(state.read_text())["runs"][-1]
        assert run["size"] == 2 and run["resume"] is expect_resume, run

    env = run_env(FAKE_TRAIN_SECONDS="60")
    job = slurm.submit(TRAIN, *args, sbatch=TWO_RANKS, cwd=tmp_path, env=env)
    log = tmp_path / f"slurm-tagger-train-{job}.out"
    wait_for(lambda: log.exists() and "2 ranks" in log.read_text(), 60, "the job to start")
    time.sleep(2)  # let srun start the ranks
    # what Slurm sends at --signal=B:USR1@120 before the time limit
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=30)
    try:
        wait_for(lambda: len(json.loads(state.read_text())["runs"]) == 3, 60, "the checkpoint on SIGTERM")
        wait_for(lambda: "PENDING" in " ".join(slurm.queued(job)), 60, "the requeue")
    finally:
        subprocess.run(["scancel", job], timeout=30)
    run = json.loads(state.read_text())["runs"][-1]
    assert run == {"size": 2, "resume": True, "restart": None, "terminated": True}
    assert "then requeue" in log.read_text()


def test_train_mpi_refuses_a_wrong_mpi_plugin(slurm, tmp_path):
    """srun --mpi=none starts two worlds of size 1: tagger.distributed refuses instead of training twice."""
    (tmp_path / "c.yaml").write_text("task: tag\n")
    job = slurm.submit(TRAIN, "--config", tmp_path / "c.yaml", "--output", tmp_path / "run", "--mpi", "none",
                       "--tagger", FAKE, sbatch=TWO_RANKS, cwd=tmp_path)
    slurm.wait(job)
    log = (tmp_path / f"slurm-tagger-train-{job}.out").read_text()
    assert "wrong MPI plugin" in log and "--mpi=pmi2" in log, log
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_distributed_cases_under_srun_pmi2(slurm, tmp_path):
    """The same MPI cases as test_mpi.py, but started by srun with the pmi2 plugin (as the sbatch script does)."""
    cmd = ["srun", "--mpi=pmi2", "-n", "2", "--mem-per-cpu=200M", sys.executable,
           str(REPO / "tests" / "cluster" / "mpi_cases.py"), "--expect-size", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=run_env(), cwd=tmp_path, timeout=120)
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert out.returncode == 0 and len(results) == 7, f"{out.stdout}\n{out.stderr}"
    assert all(r["ok"] and r["size"] == 2 for r in results), results


def test_real_training_under_srun_pmi2_is_byte_for_byte_the_mpiexec_run(slurm, mpiexec, tmp_path):
    """`srun --mpi=pmi2 -n 2 tagger train` (what train-mpi.sbatch runs) against `mpiexec -n 2`:
    the same world size and arithmetic, so the same model bytes."""
    args = ["train", str(REPO / "configs" / "sample_pos.yaml"), "--no-progress", "--training.max_steps", "12",
            "--training.eval_every", "6"]
    tagger = str(Path(sys.executable).parent / "tagger")
    runs = {
        "srun": ["srun", "--mpi=pmi2", "-n", "2", "--mem-per-cpu=400M", tagger, *args, "-o", str(tmp_path / "srun")],
        "mpiexec": [str(mpiexec), "-n", "2", tagger, *args, "-o", str(tmp_path / "mpiexec")],
    }
    for name, cmd in runs.items():
        out = subprocess.run(cmd, capture_output=True, text=True, env=run_env(), cwd=tmp_path, timeout=300)
        assert out.returncode == 0, f"{name}: {out.stderr}"
        assert "2 MPI ranks" in out.stderr, f"{name} did not start one 2-rank world: {out.stderr}"
        assert len([line for line in out.stdout.splitlines() if line.startswith("{")]) == 1  # rank 0 alone reports
    for name in ("model-best", "model-last"):
        assert (tmp_path / "srun" / name / "weights.safetensors").read_bytes() == \
            (tmp_path / "mpiexec" / name / "weights.safetensors").read_bytes(), name
    assert (tmp_path / "srun" / "checkpoint" / "arrays.safetensors").read_bytes() == \
        (tmp_path / "mpiexec" / "checkpoint" / "arrays.safetensors").read_bytes()


def test_train_mpi_sbatch_with_the_real_tagger_checkpoints_on_the_time_limit_and_resumes_bitwise(slurm, mpiexec, tmp_path):
    """The time-limit path for real: USR1 to the script -> SIGTERM to both ranks -> checkpoint
    after the same step, exit 143 -> requeue; a resubmission resumes and ends with the bytes
    of an uninterrupted 2-rank run."""
    overrides = ["--training.max_steps", "300", "--training.epochs", "100", "--training.eval_every", "50",
                 "--training.patience", "null"]
    cfg, tagger = REPO / "configs" / "sample_pos.yaml", str(Path(sys.executable).parent / "tagger")
    ref = subprocess.run([str(mpiexec), "-n", "2", tagger, "train", str(cfg), "-o", str(tmp_path / "ref"), "--no-progress",
                          *overrides], capture_output=True, text=True, env=run_env(), timeout=300)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "run"
    args = ["--config", cfg, "--output", out, "--tagger", tagger, "--", "--no-progress", *overrides]
    state = out / "checkpoint" / "state.json"

    def step():
        try:
            return json.loads(state.read_text())["step"]
        except (OSError, ValueError):
            return 0

    job = slurm.submit(TRAIN, *args, sbatch=TWO_RANKS, cwd=tmp_path)
    try:
        wait_for(lambda: step() >= 50, 120, "the first checkpoint")
        subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=30)
        wait_for(lambda: "PENDING" in " ".join(slurm.queued(job)), 60, "the requeue")
    finally:
        subprocess.run(["scancel", job], timeout=30)
    slurm.wait(job)
    log = (tmp_path / f"slurm-tagger-train-{job}.out").read_text()
    stopped = step()
    assert "then requeue" in log and "resume with: srun --mpi=pmi2 -n 2 tagger train" in log, log
    assert 50 <= stopped < 300, log
    again = slurm.submit(TRAIN, *args, sbatch=TWO_RANKS, cwd=tmp_path)
    slurm.wait(again, timeout=240)
    log = (tmp_path / f"slurm-tagger-train-{again}.out").read_text()
    assert f"resuming from {out / 'checkpoint'}: step {stopped}" in log and "training finished" in log, log
    for name in ("model-best", "model-last"):
        assert (out / name / "weights.safetensors").read_bytes() == (tmp_path / "ref" / name / "weights.safetensors").read_bytes()


def test_predict_array_with_the_real_tagger_over_200_files(slurm, tmp_path):
    """The issue's case with the real `tagger predict --shard auto/N`: 200 files, one array
    task cancelled mid-run and only it resubmitted; every output complete, none written
    twice, and the outputs byte-identical to an unsharded run."""
    from tagger.config import load_config
    from tagger.data.prepare import build_vocabularies, load_splits
    from tagger.io import save_model
    from tagger.models import Model, build_network

    cfg = load_config(REPO / "configs" / "sample_pos.yaml")
    words, labels = build_vocabularies(cfg, load_splits(cfg).train)
    save_model(Model(cfg, words, labels, build_network(cfg.model, len(words), len(labels), seed=3)), tmp_path / "model")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for k in range(200):  # enough lines that a task runs for seconds, not milliseconds
        (inputs / f"doc{k:03d}.txt").write_text("".join(f"document {k} says the dog saw cat {j}\n" for j in range(150)))
    tagger = str(Path(sys.executable).parent / "tagger")
    whole = subprocess.run([tagger, "predict", str(tmp_path / "model"), str(inputs), "-o", str(tmp_path / "whole")],
                           capture_output=True, text=True, env=run_env(), timeout=600)
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "out"
    args = ["--model", tmp_path / "model", "--output", out, "--tagger", tagger, "--", inputs]
    job = slurm.submit(PREDICT, *args, sbatch=["--mem=600M"], array=f"0-{SHARDS - 1}", cwd=tmp_path)
    victim = 1

    def written():  # the victim's outputs recorded so far
        return len(manifest_outputs(out, victim).get("outputs", {}))

    wait_for(lambda: written() >= 1, 300, f"task {victim}'s first output")
    subprocess.run(["scancel", f"{job}_{victim}"], check=True, timeout=30)
    slurm.wait(job, timeout=600)
    states = slurm.states(job)
    assert states.get(f"{job}_{victim}") == "CANCELLED", states
    cancelled = manifest_outputs(out, victim)
    assert not cancelled["complete"] and 1 <= len(cancelled["outputs"]) < 200 // SHARDS + 1
    done_before = set(cancelled["outputs"])

    again = slurm.submit(PREDICT, "--shards", SHARDS, *args, sbatch=["--mem=600M"], array=str(victim), cwd=tmp_path)
    slurm.wait(again, timeout=600)
    assert slurm.states(again).get(f"{again}_{victim}") == "COMPLETED", slurm.states(again)
    log = (tmp_path / f"slurm-tagger-predict-{again}_{victim}.out").read_text()
    assert log.count("already complete") == len(done_before)  # what the cancelled task finished is not redone
    for i in range(SHARDS):
        assert manifest_outputs(out, i)["complete"], i
    found = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and ".tagger-shards" not in p.parts)
    assert found == [f"doc{k:03d}.txt.jsonl" for k in range(200)]  # every input once, no temporaries
    for name in found:
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
