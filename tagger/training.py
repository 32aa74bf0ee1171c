"""Training: a loop that is handed its parts, and the `tagger train` job that consumes it.

`train_loop(model, batches, evaluate, optimizer, stop)` runs the updates and yields a
`Step` after EVERY update; on evaluation steps it carries the scores and whether they
are the best so far. The caller builds the batches (`epoch_batches`: shuffled per
epoch, singletons replaced by their unknown-word entry), the evaluation, the optimizer
and the LR schedule; the loop decides only when to evaluate and when to stop (`Stop`:
epochs, max_steps, patience, with the rule of `tagger.optim.Patience`).

`train(config, output_dir)` is setup -> run -> finalize; during the run the logs
(metrics.jsonl, loss.tsv), the checkpoints (model-best/, model-last/) and the progress
bar consume the loop's steps.
"""
from __future__ import annotations

import json
import math
import shlex
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tagger.data.prepare import Splits, build_vocabularies, load_splits, pretrained_matrix
from tagger.device import announce_compile, resolve_device
from tagger.errors import TaggerError
from tagger.card import write_card
from tagger.fsutil import OutputLock, cleanup_stale, start_run
from tagger.io import load_model, read_metrics, save_model
from tagger.models import Model, build_network, check_network_fits
from tagger.optim import Patience, ReduceOnPlateau, clip_by_global_norm, make_optimizer
from tagger.plot import write_curves

BEST, LAST = "model-best", "model-last"


# ----------------------------------------------------------------------------------------
# batches


def singleton_replacements(model, train_examples) -> np.ndarray:
    """Per vocabulary id, what a word seen once in training is replaced by; -1 elsewhere.

    The replacement is the word's unknown-word class (``[UNK-Cap]`` ...) when the
    vocabulary has classes, else ``[UNK]``: the rows an unseen word will hit at test time
    are trained on the rare words they stand for.  A singleton has one surface form, so
    its class is exact even with a lower-casing vocabulary.
    """
    words = model.words
    surface = {}
    counts: Counter[str] = Counter()
    for ex in train_examples:
        for t in ex.tokens:
            norm = words.normalize(t)
            counts[norm] += 1
            surface.setdefault(norm, t)
    target = np.full(len(words), -1, dtype=np.int64)
    for w, n in counts.items():
        idx = words.word_to_id(w)
        if n == 1 and idx not in words.unknown_ids and idx != 0:
            target[idx] = words.unknown_id(surface[w])
    return target


def replace_singletons(batch, replacements, p, rng):
    """A copy of `batch` whose singleton words become their unknown-word entry with probability p."""
    target = replacements[batch.ids]
    hit = (target >= 0) & (rng.random(batch.ids.shape) < p)
    return replace(batch, ids=np.where(hit, target, batch.ids).astype(batch.ids.dtype))


def epoch_batches(model, examples, tcfg) -> Iterator[tuple[int, object]]:
    """(epoch, batch) for epochs 1..tcfg.epochs: shuffled with seed + epoch, and with
    training.unk_replace > 0 singletons replaced (a generator per epoch seeded [seed, epoch])."""
    singletons = singleton_replacements(model, examples) if tcfg.unk_replace > 0 else None
    for epoch in range(1, tcfg.epochs + 1):
        batches = model.batches(examples, tcfg.batch_size, tcfg.batch_unit, shuffle=True, seed=tcfg.seed + epoch)
        unk_rng = np.random.default_rng([tcfg.seed, epoch])
        for batch in batches:
            if singletons is not None:
                batch = replace_singletons(batch, singletons, tcfg.unk_replace, unk_rng)
            yield epoch, batch


# ----------------------------------------------------------------------------------------
# the loop


@dataclass
class Stop:
    """When the loop stops: after `epochs` epochs, `max_steps` updates, or `patience`
    evaluations in a row without a better score (None: no such limit)."""

    epochs: int | None = None
    max_steps: int | None = None
    patience: int | None = None

    @classmethod
    def from_config(cls, tcfg) -> "Stop":
        return cls(epochs=tcfg.epochs, max_steps=tcfg.max_steps, patience=tcfg.patience)


@dataclass
class Step:
    """What the loop yields after every update."""

    step: int  # updates so far, from 1
    epoch: int
    loss: float  # this batch's loss
    n_tokens: int  # this batch's real tokens
    lr: float  # the lr after this step (and after the schedule, on evaluation steps)
    last: bool = False  # the loop stops after this step
    scores: dict | None = None  # evaluation steps: the evaluation's scores ("score" is watched)
    is_best: bool = False  # evaluation steps: the score improved on every earlier one
    mean_loss: float | None = None  # evaluation steps: mean batch loss since the previous evaluation

    @property
    def evaluated(self) -> bool:
        return self.scores is not None


def _with_ends(batches: Iterable, epochs: int | None) -> Iterator[tuple[int, object, bool, bool]]:
    """(epoch, batch, last of its epoch, last of all), looking one batch ahead."""
    it = iter(batches)
    item = next(it, None)
    while item is not None and (epochs is None or item[0] <= epochs):
        nxt = next(it, None)
        end = nxt is None or (epochs is not None and nxt[0] > epochs)
        yield item[0], item[1], end or nxt[0] != item[0], end
        item = nxt


def train_loop(
    model,
    batches: Iterable,
    evaluate: Callable[[], dict] | None,
    optimizer,
    stop: Stop,
    eval_every: int | str = "epoch",
    clip_norm: float | None = None,
    schedule: ReduceOnPlateau | None = None,
) -> Iterator[Step]:
    """Update `model` on each (epoch, batch) of `batches`, yielding a Step after every update.

    Evaluates at the end of each epoch (eval_every "epoch") or every `eval_every`
    updates, and always at the last update. `evaluate()` returns a dict with a
    "score" (higher is better); with evaluate None the score is minus the mean training
    loss since the previous evaluation. `schedule.observe(score)` follows each evaluation.
    """
    patience = Patience(stop.patience)
    window: list[float] = []
    step = 0
    for epoch, batch, end_of_epoch, end in _with_ends(batches, stop.epochs):
        loss = model.train_step(batch)
        if not math.isfinite(loss):
            raise TaggerError(f"training diverged at step {step + 1} (loss {loss}); lower training.lr or set training.clip_norm")
        if clip_norm:
            clip_by_global_norm(model.network, clip_norm)
        optimizer.step(model.network)
        step += 1
        window.append(loss)
        last = end or (stop.max_steps is not None and step >= stop.max_steps)
        info = Step(step, epoch, loss, batch.n_tokens, optimizer.lr, last)
        due = end_of_epoch if eval_every == "epoch" else step % int(eval_every) == 0
        if due or last:
            info.mean_loss, window = float(np.mean(window)), []
            info.scores = evaluate() if evaluate is not None else {"score": -info.mean_loss}
            info.is_best = patience.observe(info.scores["score"])
            if schedule is not None:
                schedule.observe(info.scores["score"])
            info.lr = optimizer.lr
            info.last = last or patience.exhausted
        yield info
        if info.last:
            return


# ----------------------------------------------------------------------------------------
# consumers of the loop: logs, checkpoints, progress


class RunLog:
    """metrics.jsonl (one JSON object per evaluation), loss.tsv and a console line per evaluation."""

    HEADER = "epoch\tstep\tloss\tdev_score\tdev_accuracy\tlr\ttokens_per_s\n"

    def __init__(self, output_dir: Path, echo: Callable[[str], None]):
        self.dir, self.echo = output_dir, echo
        (output_dir / "loss.tsv").write_text(self.HEADER, encoding="utf-8")
        (output_dir / "metrics.jsonl").write_text("", encoding="utf-8")
        self.tokens, self.start = 0, time.perf_counter()

    def __call__(self, s: Step) -> dict | None:
        """The evaluation record of an evaluation step (None for the others)."""
        self.tokens += s.n_tokens
        if not s.evaluated:
            return None
        elapsed = time.perf_counter() - self.start
        info = {
            "epoch": s.epoch, "step": s.step, "loss": s.mean_loss, "dev_score": s.scores["score"],
            "dev_accuracy": s.scores.get("accuracy"), "lr": s.lr, "tokens_per_s": self.tokens / max(elapsed, 1e-9),
            "elapsed_s": elapsed, "dev": s.scores,
        }
        with open(self.dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(info) + "\n")
        acc = info["dev_accuracy"] if info["dev_accuracy"] is not None else ""
        with open(self.dir / "loss.tsv", "a", encoding="utf-8") as fh:
            fh.write(f"{s.epoch}\t{s.step}\t{s.mean_loss:.6f}\t{info['dev_score']:.6f}\t{acc}\t{s.lr:.3g}\t{info['tokens_per_s']:.0f}\n")
        self.echo(
            f"epoch {s.epoch} step {s.step}: loss {s.mean_loss:.4f} dev {info['dev_score']:.4f}, "
            f"{info['tokens_per_s']:,.0f} tokens/s" + (" (best)" if s.is_best else "")
        )
        self.tokens, self.start = 0, time.perf_counter()
        return info


class Checkpoints:
    """model-best/ on every improvement, model-last/ on every evaluation (and on Ctrl-C)."""

    def __init__(self, model, output_dir: Path):
        self.model, self.dir = model, output_dir
        self.best_saved = False

    def __call__(self, s: Step) -> None:
        if not s.evaluated:
            return
        metrics = {"dev": s.scores, "step": s.step, "epoch": s.epoch}
        if s.is_best:
            save_model(self.model, self.dir / BEST, metrics)
            self.best_saved = True
        save_model(self.model, self.dir / LAST, metrics)

    def interrupted(self) -> None:
        save_model(self.model, self.dir / LAST)
        if not (self.dir / BEST).exists():
            save_model(self.model, self.dir / BEST)
        # an interrupt that landed inside a save (between creating its temporary folder and
        # the cleanup that guards it) leaves that folder: this run holds the output lock, so
        # every temporary here is its own
        cleanup_stale(self.dir, all_pids=True)


class Progress:
    """A tqdm bar over the updates; none when disabled or stderr is not a terminal."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm  # only where a bar may be drawn

            # disable=None: no bar when stderr is not a terminal (batch jobs, CI logs); epoch lines still print
            self.bar = tqdm(total=total, unit="batch", dynamic_ncols=True, file=sys.stderr, mininterval=0.5, disable=None)
        self.tokens, self.start = 0, time.perf_counter()

    def __call__(self, s: Step) -> None:
        self.tokens += s.n_tokens
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{s.loss:.3f}", tok_s=f"{self.tokens / max(time.perf_counter() - self.start, 1e-9):,.0f}")

    def echo(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)  # tqdm.write defaults to stdout
        else:
            print(message, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------------
# the `tagger train` job: setup -> run -> finalize


@dataclass
class Run:
    config: object
    output_dir: Path
    splits: Splits
    model: Model
    ops: object
    optimizer: object = None
    interrupted: bool = False


def train(config, output_dir, device="cpu", progress=True) -> dict:
    """`_train` (below) as the only writer of `output_dir` (a second run there is refused)."""
    with OutputLock(output_dir):
        return _train(config, Path(output_dir), device, progress)


def _train(config, output_dir, device="cpu", progress=True) -> dict:
    """Train from a resolved config into `output_dir`:

        output_dir/model-best/   the best model on dev (a complete model directory)
        output_dir/model-last/   the latest model (also written on Ctrl-C)
        output_dir/metrics.jsonl one JSON object per evaluation
        output_dir/loss.tsv      epoch, step, loss, dev score, lr, tokens/s per evaluation

    Returns the final metrics (dev and test scores of the best model).
    """
    run = setup(config, output_dir, device)
    execute(run, progress)
    return finalize(run)


def setup(config, output_dir, device="cpu") -> Run:
    """Read the data, build vocabularies and the model on the chosen device."""
    output_dir = Path(output_dir)  # created by the OutputLock that train() holds
    splits = load_splits(config)
    words, labels = build_vocabularies(config, splits.train)
    ops = resolve_device(device, announce=True)
    announce_compile(ops)
    embeddings = pretrained_matrix(config, words, splits.train, config.training.seed)
    check_network_fits(config.model, len(words), len(labels))
    network = build_network(config.model, len(words), len(labels), ops=ops, seed=config.training.seed, embeddings=embeddings)
    model = Model(config, words, labels, network)
    print(
        f"train: {len(splits.train)} examples, dev: {len(splits.dev)} ({splits.dev_source or config.data.dev}), "
        f"vocabulary: {len(words)} words, labels: {len(labels)}",
        file=sys.stderr,
    )
    return Run(config, output_dir, splits, model, ops)


def execute(run: Run, progress=True) -> None:
    """The loop with its parts from the config, consumed by logs, checkpoints and the bar.
    Ctrl-C stops it and saves the current weights as model-last (and model-best if none)."""
    tcfg, model, dev = run.config.training, run.model, run.splits.dev
    run.optimizer = make_optimizer(tcfg.optimizer, tcfg.lr, tcfg.weight_decay, tcfg.momentum)
    schedule = (
        ReduceOnPlateau(run.optimizer, tcfg.lr_factor, tcfg.lr_patience, tcfg.min_lr) if tcfg.lr_schedule == "plateau" else None
    )
    n_batches = len(model.batches(run.splits.train, tcfg.batch_size, tcfg.batch_unit, with_labels=False))
    total = tcfg.epochs * n_batches if tcfg.max_steps is None else min(tcfg.max_steps, tcfg.epochs * n_batches)
    bar = Progress(total, progress)
    # a restarted run moves the previous run's models and logs to previous/ first, so fresh
    # logs never sit beside an old model-best
    start_run(run.output_dir, (BEST, LAST, "loss.tsv", "metrics.jsonl", "curves.png"))
    log, checkpoints = RunLog(run.output_dir, bar.echo), Checkpoints(model, run.output_dir)
    steps = train_loop(
        model, epoch_batches(model, run.splits.train, tcfg), (lambda: model.evaluate(dev)) if dev else None,
        run.optimizer, Stop.from_config(tcfg), eval_every=tcfg.eval_every, clip_norm=tcfg.clip_norm, schedule=schedule,
    )
    try:
        for s in steps:
            bar(s)
            log(s)
            checkpoints(s)
    except KeyboardInterrupt:
        run.interrupted = True
        checkpoints.interrupted()
        print(f"\ninterrupted: the current model is saved in {run.output_dir / LAST}", file=sys.stderr)
        raise  # the run stops here: the CLI exits 130 (Ctrl-C) or 143 (SIGTERM)
    finally:
        bar.close()
    if not checkpoints.best_saved and not run.interrupted:
        save_model(model, run.output_dir / BEST)


def finalize(run: Run) -> dict:
    """Score the best model on dev and test and store the scores beside it (keeping the
    step and epoch it was saved at)."""
    best = load_model(run.output_dir / BEST, device=run.ops)
    saved = read_metrics(run.output_dir / BEST) or {}
    final = {"dev": best.evaluate(run.splits.dev) if run.splits.dev else None, "interrupted": run.interrupted}
    final.update({k: saved[k] for k in ("step", "epoch") if k in saved})
    if run.splits.test:
        final["test"] = best.evaluate(run.splits.test)
    save_model(best, run.output_dir / BEST, final)
    # after the last save_model of each directory (a save replaces the whole directory)
    command = shlex.join(["tagger", *sys.argv[1:]])
    for name in (BEST, LAST):
        if (run.output_dir / name).is_dir():
            write_card(run.output_dir / name, command=command)
    write_curves(run.output_dir)  # curves.png, or a one-line note without matplotlib
    return final
