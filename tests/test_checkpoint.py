"""Full checkpoints (tagger/checkpoint.py) and `tagger train --resume`: the state round-trips,
a resumed run is bitwise the uninterrupted one, even after SIGKILL at random moments."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tagger.checkpoint import CHECKPOINT, all_layers, call_counters, check_same_config, load_checkpoint
from tagger.config import load_config
from tagger.errors import TaggerError
from tagger.training import train

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "configs" / "sample_pos.yaml"
# dropout (call counters), singleton replacement (its generator), clipping and evaluations
# between checkpoints: every piece of state a resume must restore is in play
OVERRIDES = ["training.max_steps=60", "training.eval_every=10", "training.checkpoint_every=3", "training.unk_replace=0.5",
             "training.patience=null"]
CLI = "import sys; from tagger.cli import main; sys.argv[0] = 'tagger'; main()"


def config(*extra):
    return load_config(SAMPLE, overrides=[*OVERRIDES, *extra])


def weights(folder: Path) -> bytes:
    return (folder / "weights.safetensors").read_bytes()


def test_a_resumed_run_is_bitwise_the_uninterrupted_one(tmp_path):
    train(config("training.max_steps=30"), tmp_path / "whole", progress=False)
    train(config("training.max_steps=14"), tmp_path / "part", progress=False)
    state = json.loads((tmp_path / "part" / CHECKPOINT / "state.json").read_text())
    assert state["step"] == 14 and state["finished"] and len(state["calls"]) == 1
    train(config("training.max_steps=30"), tmp_path / "part", progress=False, resume=True)
    for name in ("model-last", "model-best"):
        assert weights(tmp_path / "part" / name) == weights(tmp_path / "whole" / name), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 14, 20, 30]  # the shorter run's last evaluation stays in the log


def test_the_checkpoint_holds_weights_optimizer_counters_and_position(tmp_path):
    train(config("training.max_steps=7"), tmp_path, progress=False)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.loop.step == 7 and ckpt.optimizer["step"] == 7 and ckpt.loop.epoch == 1 and ckpt.loop.in_epoch == 7
    assert {"embedding_dropout", "output_dropout"} <= set(ckpt.calls[0]) and ckpt.calls[0]["embedding_dropout"] == 7
    assert any(k.endswith("/m") for k in ckpt.optimizer) and any(k.endswith("/v") for k in ckpt.optimizer)
    from tagger.io import load_model

    last = load_model(tmp_path / "model-last")
    assert set(ckpt.weights) == {name for name, _ in last.network.named_weights()}
    for name, w in last.network.named_weights():
        np.testing.assert_array_equal(ckpt.weights[name], w, err_msg=name)
    assert ckpt.log["evaluations"] == 1 and ckpt.log["best_saved"]
    assert not list((tmp_path / CHECKPOINT).parent.glob(".checkpoint*"))  # no temporary, no .old left


def test_use_ema_saves_and_scores_the_average_and_checkpoints_keep_the_weights(tmp_path):
    from tagger.data.prepare import load_splits
    from tagger.io import load_model, read_metrics

    train(config("training.max_steps=12", "training.use_ema=true", "training.ema_momentum=0.9"), tmp_path, progress=False)
    ckpt = load_checkpoint(tmp_path)  # written at the last evaluation, step 12, as model-last
    last = load_model(tmp_path / "model-last")
    moved = 0
    for name, w in last.network.named_weights():
        np.testing.assert_array_equal(w, ckpt.optimizer[f"{name}/ema"], err_msg=name)  # the model is the average
        moved += not np.array_equal(w, ckpt.weights[name])  # the checkpoint, the weights
    assert moved == len(ckpt.weights)
    dev = last.evaluate(load_splits(config()).dev)
    assert dev["score"] == read_metrics(tmp_path / "model-last")["dev"]["score"]  # scored as saved
    # a resumed run continues the average exactly
    train(config("training.max_steps=20", "training.use_ema=true", "training.ema_momentum=0.9"), tmp_path / "whole",
          progress=False)
    train(config("training.max_steps=20", "training.use_ema=true", "training.ema_momentum=0.9"), tmp_path,
          progress=False, resume=True)
    assert weights(tmp_path / "model-last") == weights(tmp_path / "whole" / "model-last")


def test_resume_is_refused_without_a_checkpoint_or_with_another_config(tmp_path):
    with pytest.raises(TaggerError, match=r"--resume: .*checkpoint does not exist.*train without --resume"):
        train(config(), tmp_path / "none", progress=False, resume=True)
    train(config("training.max_steps=4"), tmp_path / "run", progress=False)
    with pytest.raises(TaggerError, match=r"training\.lr is 0\.01 now but 0\.005 in .*only training\.epochs and training\.max_steps"):
        train(config("training.max_steps=8", "training.lr=0.01"), tmp_path / "run", progress=False, resume=True)
    with pytest.raises(TaggerError, match=r"finished at step 4; raise training\.epochs or training\.max_steps"):
        train(config("training.max_steps=4"), tmp_path / "run", progress=False, resume=True)


def test_config_comparison_names_the_key_and_ignores_the_length_of_training():
    a = {"training": {"epochs": 3, "max_steps": None, "seed": 0}, "model": {"dropout": 0.3}}
    check_same_config(a, {"training": {"epochs": 9, "max_steps": 100, "seed": 0}, "model": {"dropout": 0.3}}, "out")
    with pytest.raises(TaggerError, match=r"model\.dropout is 0\.5 now but 0\.3"):
        check_same_config(a, {"training": {"epochs": 3, "max_steps": None, "seed": 0}, "model": {"dropout": 0.5}}, "out")


def test_every_layer_with_a_dropout_counter_is_found():
    from tagger.models import build_network

    cfg = config("model.recurrent_dropout=0.2")
    net = build_network(cfg.model, 30, 5, seed=0)
    names = [layer.name for layer in all_layers(net)]
    assert len(names) == len(set(names))  # the counters are keyed by name
    assert {"embedding_dropout", "output_dropout", "bilstm_1"} <= set(names)
    assert len([n for n in names if "lstm_1" in n]) >= 3  # the wrapper and both directions
    assert set(call_counters(net)) == set(names)


def test_epoch_batches_after_a_skip_are_the_uninterrupted_ones():
    from tagger.data.prepare import build_vocabularies, load_splits
    from tagger.models import Model, build_network
    from tagger.training import epoch_batches

    cfg = config("training.epochs=2")
    splits = load_splits(cfg)
    words, labels = build_vocabularies(cfg, splits.train)
    model = Model(cfg, words, labels, build_network(cfg.model, len(words), len(labels)))
    whole = list(epoch_batches(model, splits.train, cfg.training))
    n1 = sum(1 for e, _ in whole if e == 1)
    for epoch, skip in [(1, 5), (1, n1), (2, 3)]:
        start = skip if epoch == 1 else n1 + skip
        rest = list(epoch_batches(model, splits.train, cfg.training, epoch, skip))
        assert len(rest) == len(whole) - start
        for (ea, a), (eb, b) in zip(rest, whole[start:]):
            assert ea == eb
            np.testing.assert_array_equal(a.ids, b.ids)  # singleton replacement included


# ------------------------------------------------------------------------------ real processes
def _env():
    return dict(os.environ, PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1")


def _args(out: Path, *extra):
    return [sys.executable, "-c", CLI, "train", str(SAMPLE), "-o", str(out), "--no-progress",
            *[f"--{o.split('=')[0]}={o.split('=')[1]}" for o in OVERRIDES], *extra]


def _checkpoint_step(out: Path) -> int:
    try:
        return json.loads((out / CHECKPOINT / "state.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


def _run_until(out: Path, target: int, resume: bool, rng: random.Random) -> int:
    """Start a run; SIGKILL it a random few ms after its checkpoint passes `target`. Its exit code."""
    start = _checkpoint_step(out)
    proc = subprocess.Popen(_args(out, *(["--resume"] if resume else [])), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        step = _checkpoint_step(out)
        if step >= target and step > start:
            time.sleep(rng.uniform(0, 0.03))  # mid-step, mid-evaluation or mid-write
            proc.kill()
            break
        time.sleep(0.002)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, -signal.SIGKILL), err
    return proc.returncode


@pytest.mark.slow
def test_five_sigkills_at_random_moments_and_resumes_end_bitwise_equal(tmp_path):
    seed = int(os.environ.get("KILL_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    ref, out = tmp_path / "ref", tmp_path / "killed"
    assert subprocess.run(_args(ref), env=_env(), capture_output=True).returncode == 0
    targets = sorted(rng.sample(range(3, 46), 5))
    codes = [_run_until(out, t, resume=k > 0, rng=rng) for k, t in enumerate(targets)]
    assert codes == [-signal.SIGKILL] * 5, f"KILL_SEED={seed} targets {targets}: {codes}"
    done = subprocess.run(_args(out, "--resume"), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in ("model-last", "model-best"):
        assert weights(out / name) == weights(ref / name), f"{name} KILL_SEED={seed} targets {targets}"
    assert (out / CHECKPOINT / "arrays.safetensors").read_bytes() == (ref / CHECKPOINT / "arrays.safetensors").read_bytes()
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30, 40, 50, 60]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".tagger.lock"]


@pytest.mark.slow
def test_sigterm_checkpoints_exits_143_and_prints_the_command_that_resumes(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "term"
    assert subprocess.run(_args(ref), env=_env(), capture_output=True).returncode == 0
    proc = subprocess.Popen(_args(out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while _checkpoint_step(out) < 12 and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and stdout == "", err
    assert err.strip().splitlines()[-1] == "terminated" and "Traceback" not in err
    line = next(x for x in err.splitlines() if "resume with: " in x)
    command = line.split("resume with: ", 1)[1].split()
    assert command[:2] == ["tagger", "train"] and command[-1] == "--resume"
    assert _checkpoint_step(out) > 12 - 1
    done = subprocess.run([sys.executable, "-c", CLI, *command[1:]], env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert weights(out / "model-last") == weights(ref / "model-last")


def test_a_signal_is_noted_until_the_step_ends_and_a_second_one_stops_at_once(capsys):
    from tagger.distributed import World
    from tagger.training import StopRequests

    # Python's own handler, also when this process was started ignoring SIGINT (`&`)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with StopRequests() as stops:
            os.kill(os.getpid(), signal.SIGINT)  # noted, not raised
            assert stops.requested(World()) == signal.SIGINT
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, before)
    assert "SIGINT: stopping after this step (again to stop now)" in capsys.readouterr().err


def test_a_signal_the_process_ignores_stays_ignored():
    """A job started with `&` from a script ignores SIGINT; training must not take it back."""
    from tagger.cli._util import _signal_handlers
    from tagger.distributed import World
    from tagger.training import StopRequests

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _signal_handlers(), StopRequests() as stops:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)  # ignored: nothing noted, nothing raised
            assert stops.requested(World()) == 0
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_start_run_keeps_the_previous_outputs_when_resuming_and_moves_them_otherwise(tmp_path):
    from tagger.fsutil import start_run

    (tmp_path / CHECKPOINT).mkdir()
    (tmp_path / "loss.tsv").write_text("epoch\n")
    (tmp_path / f".loss.tsv.{2**22 + 7}.dead.tmp").write_text("half")  # a killed writer's temporary
    assert start_run(tmp_path, (CHECKPOINT, "loss.tsv"), resume=True) is None
    assert (tmp_path / CHECKPOINT).is_dir() and (tmp_path / "loss.tsv").is_file()
    assert not list(tmp_path.glob(".*.tmp"))
    assert start_run(tmp_path, (CHECKPOINT, "loss.tsv")) == tmp_path / "previous"
    assert (tmp_path / "previous" / CHECKPOINT).is_dir() and not (tmp_path / CHECKPOINT).exists()
