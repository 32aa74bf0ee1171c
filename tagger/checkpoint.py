"""Full training checkpoints: what `tagger train --resume` needs to continue bit for bit.

    OUT/checkpoint/
      arrays.safetensors  'weights/LAYER/PARAM'             every weight (float32, as trained)
                          'optimizer/LAYER/PARAM/SLOT'      Adam m, v / SGD velocity (Optimizer.get_state)
      state.json          format, the resolved config, step, epoch, batches done in that epoch,
                          the optimizer's step and lr, early stopping's and the lr schedule's
                          Patience (best, bad), the training-loss window since the last
                          evaluation, the dropout call counter of every layer (per MPI rank),
                          the loggers' counters, the world size, finished

No pickle: arrays in safetensors (written with sorted headers, so equal states give equal
bytes), the rest in JSON (floats as Python writes them, which read back exactly; -inf as
null). The folder is written beside itself and swapped in (tagger.fsutil.replace_dir), so
a run killed at any instant leaves the previous checkpoint or the new one, never a mix.

The random streams need no state of their own: shuffling is seeded by (seed, epoch), the
singleton-replacement generator by [seed, epoch] and is replayed over the batches already
done in the epoch (tagger.training.epoch_batches), and dropout masks are seeded by (layer
seed, call counter), so the counters are what is saved.
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tagger.errors import TaggerError
from tagger.fsutil import atomic_write_bytes, new_temp_dir, recover_dir, replace_dir

CHECKPOINT = "checkpoint"
ARRAYS, STATE = "arrays.safetensors", "state.json"
FORMAT = 1
# what --resume may change: how long to train (the run goes on from where it stopped)
RESUMABLE_KEYS = (("training", "epochs"), ("training", "max_steps"))


@dataclass
class LoopState:
    """The loop's own counters: train_loop reads and advances them (a resumed run starts
    from a checkpoint's). best/bad are early stopping's Patience; window the batch losses
    since the last evaluation."""

    step: int = 0
    epoch: int = 1
    in_epoch: int = 0  # batches of `epoch` done
    best: float = -math.inf
    bad: int = 0
    window: list = field(default_factory=list)


@dataclass
class Checkpoint:
    config: dict
    loop: LoopState
    weights: dict  # 'LAYER/PARAM' -> array
    optimizer: dict  # Optimizer.get_state() (step and lr included)
    schedule: dict | None  # ReduceOnPlateau's patience {"best", "bad"}, or None
    calls: list  # per rank: {layer name: dropout call counter}
    log: dict  # the loggers' counters (RunLog: evaluations written, tokens since the last)
    world_size: int = 1
    finished: bool = False


def _num(x: float):
    return None if x == -math.inf else float(x)


def _unnum(x) -> float:
    return -math.inf if x is None else float(x)


def all_layers(network) -> list:
    """Every layer under `network`, found through its attributes (Sequential members, wrapped
    layers, the two directions, a char encoder's own Dropout), each once, in a fixed order."""
    from tagger.layers.base import Layer

    out, todo, seen = [], [network], set()
    while todo:
        layer = todo.pop(0)
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        out.append(layer)
        for value in vars(layer).values():
            items = value if isinstance(value, (list, tuple)) else [value]
            todo.extend(v for v in items if isinstance(v, Layer))
    return out


def call_counters(network) -> dict[str, int]:
    """{layer name: dropout call counter}: what seeds the next dropout masks."""
    return {layer.name: int(layer._calls) for layer in all_layers(network)}


def set_call_counters(network, counters: dict[str, int]) -> None:
    layers = {layer.name: layer for layer in all_layers(network)}
    missing = sorted(set(counters) - set(layers))
    if missing:
        raise TaggerError(f"checkpoint: layers {missing[:3]} are not in this network; the checkpoint is from another model")
    for name, n in counters.items():
        layers[name]._calls = int(n)


# ----------------------------------------------------------------------------- writing
def _arrays(ckpt: Checkpoint) -> dict[str, np.ndarray]:
    arrays = {f"weights/{k}": np.ascontiguousarray(v) for k, v in ckpt.weights.items()}
    arrays.update({f"optimizer/{k}": np.ascontiguousarray(v) for k, v in ckpt.optimizer.items() if k not in ("step", "lr")})
    return arrays


def _state(ckpt: Checkpoint) -> dict:
    loop = ckpt.loop
    return {
        "format": FORMAT, "config": ckpt.config, "world_size": ckpt.world_size, "finished": ckpt.finished,
        "step": loop.step, "epoch": loop.epoch, "in_epoch": loop.in_epoch,
        "patience": {"best": _num(loop.best), "bad": loop.bad}, "window": [float(x) for x in loop.window],
        "optimizer": {"step": int(ckpt.optimizer["step"]), "lr": float(ckpt.optimizer["lr"])},
        "schedule": None if ckpt.schedule is None else {"best": _num(ckpt.schedule["best"]), "bad": ckpt.schedule["bad"]},
        "calls": ckpt.calls, "log": ckpt.log,
    }


def save_checkpoint(ckpt: Checkpoint, output_dir) -> Path:
    """Write OUT/checkpoint/ atomically (a temporary folder swapped in)."""
    from tagger.io import safetensors_bytes

    path = Path(output_dir) / CHECKPOINT
    tmp = new_temp_dir(path)
    try:
        atomic_write_bytes(tmp / ARRAYS, safetensors_bytes(_arrays(ckpt), {"format": str(FORMAT)}))
        atomic_write_bytes(tmp / STATE, (json.dumps(_state(ckpt), indent=1, sort_keys=True) + "\n").encode("utf-8"))
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# ----------------------------------------------------------------------------- reading
def has_checkpoint(output_dir) -> bool:
    path = Path(output_dir) / CHECKPOINT
    recover_dir(path)
    return (path / STATE).is_file() and (path / ARRAYS).is_file()


def load_checkpoint(output_dir) -> Checkpoint:
    """Read OUT/checkpoint/; absent or damaged is a one-line TaggerError."""
    from tagger.io import read_weights

    path = Path(output_dir) / CHECKPOINT
    if not has_checkpoint(output_dir):
        raise TaggerError(f"--resume: {path} does not exist (no run has saved a checkpoint in {output_dir}); train without --resume")
    try:
        s = json.loads((path / STATE).read_text(encoding="utf-8"))
        if s.get("format") != FORMAT:
            raise TaggerError(f"{path / STATE}: checkpoint format {s.get('format')!r}, this tagger reads {FORMAT}; train without --resume")
        arrays, _ = read_weights(path / ARRAYS)
        loop = LoopState(s["step"], s["epoch"], s["in_epoch"], _unnum(s["patience"]["best"]), s["patience"]["bad"], list(s["window"]))
        optimizer = {"step": np.array(s["optimizer"]["step"], np.int64), "lr": np.array(s["optimizer"]["lr"], np.float64)}
        optimizer.update({k[len("optimizer/"):]: v for k, v in arrays.items() if k.startswith("optimizer/")})
        weights = {k[len("weights/"):]: v for k, v in arrays.items() if k.startswith("weights/")}
        sched = s["schedule"]
        schedule = None if sched is None else {"best": _unnum(sched["best"]), "bad": sched["bad"]}
        return Checkpoint(s["config"], loop, weights, optimizer, schedule, s["calls"], s["log"], s["world_size"], s["finished"])
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as err:
        raise TaggerError(f"{path / STATE}: damaged checkpoint ({type(err).__name__}: {err}); train without --resume") from None


def _flatten(d: dict, prefix=()) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def check_same_config(saved: dict, current: dict, output_dir) -> None:
    """Refuse to resume with a config that differs in anything but RESUMABLE_KEYS. A key the
    saved config lacks (a checkpoint written before the key existed, e.g. model.chars) reads
    as its default: the run it started trained with exactly that."""
    from tagger.config import Config

    a, b = _flatten(saved), _flatten(current)
    defaults = _flatten(Config().to_dict())
    a.update({k: defaults[k] for k in b if k not in a and k in defaults})
    diff = [k for k in sorted(set(a) | set(b)) if k not in RESUMABLE_KEYS and a.get(k) != b.get(k)]
    if diff:
        k = diff[0]
        more = f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
        raise TaggerError(
            f"--resume: {'.'.join(k)} is {b.get(k)!r} now but {a.get(k)!r} in {Path(output_dir) / CHECKPOINT}{more}; "
            "only training.epochs and training.max_steps may change on resume (or train into a new --output)"
        )
