"""`tagger train` data-parallel over a real MPI world (the venv's mpiexec, MPICH wheel).

Tolerance of 2 ranks against 1 with the same global batch: each rank's share loss is a mean
over its own tokens, rescaled and summed over the ranks, so the gradient is the same sum
in another float32 order (about 1e-7 relative per step); after 20 Adam steps at lr 0.005
the weights measured here differ by at most 9e-7, asserted below as atol 1e-5. Dropout
is off in that comparison: its masks are drawn per rank for the rank's share, so with
dropout the two runs are different (equally valid) samples.
"""
import json
import subprocess
import sys

import numpy as np
import pytest

from .conftest import BIN, REPO, run_env

pytestmark = [pytest.mark.mpi, pytest.mark.slow]
SAMPLE = REPO / "configs" / "sample_pos.yaml"
SHORT = ["--training.max_steps", "20", "--training.eval_every", "10", "--no-progress"]
CASES = REPO / "tests" / "cluster" / "train_cases.py"


def tagger_train(out, *extra, ranks=None, mpiexec=None):
    cmd = [str(BIN / "tagger"), "train", str(SAMPLE), "-o", str(out), *SHORT, *extra]
    if ranks is not None:
        cmd = [str(mpiexec), "-n", str(ranks), *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, env=run_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def reports(out):
    """Each rank's line (train_cases.py writes OUT.rank-R.json), in rank order."""
    return [json.loads(p.read_text()) for p in sorted(out.parent.glob(f"{out.name}.rank-*.json"))]


def load(out):
    from safetensors.numpy import load_file

    return load_file(str(out / "model-last" / "weights.safetensors"))


def test_one_rank_under_mpiexec_is_the_plain_run(mpiexec, tmp_path):
    tagger_train(tmp_path / "plain")
    tagger_train(tmp_path / "mpi", ranks=1, mpiexec=mpiexec)
    for name in ("model-last", "model-best"):
        assert (tmp_path / "mpi" / name / "weights.safetensors").read_bytes() == \
            (tmp_path / "plain" / name / "weights.safetensors").read_bytes()


@pytest.mark.parametrize("ema", [False, True], ids=["weights", "moving-average"])
def test_two_ranks_hold_identical_weights_equal_to_one_rank_up_to_summation_order(mpiexec, tmp_path, ema):
    """With training.use_ema the saved model is the average: every rank keeps the same one
    (its updates are the same), and it matches one rank's as the weights do."""
    extra = ["training.use_ema=true", "training.ema_momentum=0.9"] if ema else []
    cmd = [str(mpiexec), "-n", "2", sys.executable, str(CASES), "train", str(tmp_path / "two"),
           "--override", "training.max_steps=20", "--override", "training.eval_every=10", "--override", "model.dropout=0"]
    cmd += [arg for item in extra for arg in ("--override", item)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=run_env(), timeout=300)
    ranks = reports(tmp_path / "two")
    assert done.returncode == 0 and len(ranks) == 2, done.stderr
    assert [r["size"] for r in ranks] == [2, 2], "MPI started singletons, not one world"
    assert ranks[0]["weights"] == ranks[1]["weights"]  # bitwise, every rank
    tagger_train(tmp_path / "one", "--model.dropout", "0",
                 *[arg for item in extra for arg in ("--" + item.partition("=")[0], item.partition("=")[2])])
    two, one = load(tmp_path / "two"), load(tmp_path / "one")
    assert set(two) == set(one)
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=0, atol=1e-5, err_msg=name)
    logged = [json.loads(x)["step"] for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [10, 20]  # rank 0 alone logs: one line per evaluation, not one per rank


def test_a_rank_whose_weights_drift_stops_every_rank_with_one_message(mpiexec, tmp_path):
    cmd = [str(mpiexec), "-n", "2", sys.executable, str(CASES), "drift", str(tmp_path / "d"),
           "--override", "training.max_steps=6"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=run_env(), timeout=300)
    errors = {r["rank"]: r["error"] for r in reports(tmp_path / "d")}
    assert sorted(errors) == [0, 1], done.stdout + done.stderr
    assert all(e.startswith("weights differ across ranks: rank(s) 1 differ from rank 0") for e in errors.values())
    assert not (tmp_path / "d" / "model-last").exists()  # stopped at step 1, before any write


def test_two_ranks_resume_bitwise_after_a_stop(mpiexec, tmp_path):
    """Stopped at step 8 (a finished shorter run), resumed on 2 ranks: the same bytes as one 2-rank run."""
    tagger_train(tmp_path / "whole", ranks=2, mpiexec=mpiexec)
    tagger_train(tmp_path / "part", "--training.max_steps", "8", ranks=2, mpiexec=mpiexec)
    state = json.loads((tmp_path / "part" / "checkpoint" / "state.json").read_text())
    assert state["world_size"] == 2 and len(state["calls"]) == 2
    tagger_train(tmp_path / "part", "--resume", ranks=2, mpiexec=mpiexec)
    assert (tmp_path / "part" / "model-last" / "weights.safetensors").read_bytes() == \
        (tmp_path / "whole" / "model-last" / "weights.safetensors").read_bytes()


def test_two_ranks_report_where_a_step_went(mpiexec, tmp_path):
    """report_timing: compute, communication and waiting per step, on stderr and in a file;
    the parts are non-negative and fit in the step (times are real, so only bounds)."""
    done = tagger_train(tmp_path / "t", ranks=2, mpiexec=mpiexec)
    assert "MPI, 2 ranks: a step takes" in done.stderr
    timing = json.loads((tmp_path / "t" / "mpi_timing.json").read_text())
    assert timing["ranks"] == 2 and timing["steps"] == 19  # the last step has no successor to time it
    assert timing["compute_ms"] > 0 and timing["communication_ms"] > 0 and timing["waiting_ms"] >= 0
    assert timing["dense_allreduce_ms"] > 0 and timing["embedding_rows_ms"] > 0
    assert timing["compute_ms"] + timing["communication_ms"] <= timing["step_ms"] * 1.5
    assert 0 < timing["communication_share"] < 1 and 0 <= timing["waiting_share"] < 1
    plain = tmp_path / "plain"
    tagger_train(plain)
    assert not (plain / "mpi_timing.json").exists()  # one process: nothing to split
