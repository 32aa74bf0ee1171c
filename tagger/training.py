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
import os
import shlex
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from tagger.data.batching import batch_groups, sequence_lengths
from tagger.data.prepare import Splits, build_char_vocab, build_vocabularies, load_splits, pretrained_matrix
from tagger.device import announce_compile, resolve_device
from tagger.distributed import DataParallel, World, check_weights, global_max, root_only, timing_summary, world
from tagger.errors import TaggerError
from tagger.card import write_card
from tagger.checkpoint import (CHECKPOINT, Checkpoint, LoopState, call_counters, check_same_config, has_checkpoint,
                               load_checkpoint, save_checkpoint, set_call_counters)
from tagger.fsutil import OutputLock, atomic_write_text, cleanup_stale, start_run
from tagger.io import load_model, read_metrics, save_model
from tagger.models import Model, build_network, check_network_fits
from tagger.optim import Patience, ReduceOnPlateau, clip_by_global_norm, make_optimizer
from tagger.plot import write_curves
from tagger.signals import give_back, take_over

BEST, LAST = "model-best", "model-last"
MPI_TIMING = "mpi_timing.json"  # under MPI: where a step's time went (report_timing)


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
    return _replaced(batch, replacements, p, rng.random(batch.ids.shape))


def _replaced(batch, replacements, p, draw):
    """replace_singletons with its uniform draw given: draw (>= B, >= T), row b of the
    batch reads draw[b] (a share reads its rows of the whole batch's draw)."""
    target = replacements[batch.ids]
    hit = (target >= 0) & (draw[: batch.ids.shape[0], : batch.ids.shape[1]] < p)
    return replace(batch, ids=np.where(hit, target, batch.ids).astype(batch.ids.dtype))


def epoch_batches(model, examples, tcfg, start_epoch: int = 1, skip: int = 0,
                  share: tuple[int, int] | None = None) -> Iterator[tuple[int, object]]:
    """(epoch, batch) for epochs start_epoch..tcfg.epochs: shuffled with seed + epoch, and with
    training.unk_replace > 0 singletons replaced (a generator per epoch seeded [seed, epoch]).

    A resumed run starts at `start_epoch` after its first `skip` batches; the replacement
    generator is replayed over the skipped ones (one draw per batch, as in the first run),
    so the batches that follow are the ones the uninterrupted run saw.
    share (rank, ranks): under MPI, each batch is a BatchShare: only this rank's rows of
    the global batch are padded (distributed.share's rows, the same ids and replacements
    as in the global batch), with the global batch's counts beside them.
    The examples are encoded once, not once per epoch."""
    from tagger.data.batching import pad_rows
    from tagger.distributed import BatchShare, share as share_rows

    singletons = singleton_replacements(model, examples) if tcfg.unk_replace > 0 else None
    ids, labels = model.encode(examples)
    chars = model.encode_chars(examples)
    lengths = sequence_lengths(ids)
    per_token = model.task == "tag"
    for epoch in range(start_epoch, tcfg.epochs + 1):
        groups = batch_groups(lengths, tcfg.batch_size, tcfg.batch_unit, shuffle=True, seed=tcfg.seed + epoch)
        unk_rng = np.random.default_rng([tcfg.seed, epoch])
        for k, group in enumerate(groups):
            # the whole batch's draw, made for skipped batches too (see above)
            draw = unk_rng.random((len(group), int(lengths[group[0]]))) if singletons is not None else None
            if epoch == start_epoch and k < skip:
                continue
            picked = slice(None) if share is None else share_rows(len(group), *share)
            batch = pad_rows(ids, labels, chars, group[picked])
            if draw is not None:
                batch = _replaced(batch, singletons, tcfg.unk_replace, draw[picked])
            if share is not None:
                n_tokens = int(lengths[group].sum())
                batch = BatchShare(batch, n_tokens, n_tokens if per_token else len(group))
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
    eval_s: float = 0.0  # evaluation steps: seconds the evaluation took

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
    state: LoopState | None = None,
) -> Iterator[Step]:
    """Update `model` on each (epoch, batch) of `batches`, yielding a Step after every update.

    Evaluates at the end of each epoch (eval_every "epoch") or every `eval_every`
    updates, and always at the last update. `evaluate()` returns a dict with a
    "score" (higher is better); with evaluate None the score is minus the mean training
    loss since the previous evaluation. `schedule.observe(score)` follows each evaluation.
    `state` (a tagger.checkpoint.LoopState) holds the step, the data position, patience and
    the loss window; the loop advances it, so a checkpoint taken after any yield resumes
    exactly (hand the loop the restored state and the batches after its position).
    """
    state = LoopState() if state is None else state
    patience = Patience(stop.patience)
    patience.best, patience.bad = state.best, state.bad
    for epoch, batch, end_of_epoch, end in _with_ends(batches, stop.epochs):
        loss = model.train_step(batch)
        if not math.isfinite(loss):
            raise TaggerError(f"training diverged at step {state.step + 1} (loss {loss}); lower training.lr or set training.clip_norm")
        if clip_norm:
            clip_by_global_norm(model.network, clip_norm)
        optimizer.step(model.network)
        state.in_epoch = state.in_epoch + 1 if epoch == state.epoch else 1
        state.step, state.epoch = state.step + 1, epoch
        state.window.append(loss)
        step = state.step
        last = end or (stop.max_steps is not None and step >= stop.max_steps)
        info = Step(step, epoch, loss, batch.n_tokens, optimizer.lr, last)
        due = end_of_epoch if eval_every == "epoch" else step % int(eval_every) == 0
        if due or last:
            info.mean_loss, state.window = float(np.mean(state.window)), []
            started = time.perf_counter()
            info.scores = evaluate() if evaluate is not None else {"score": -info.mean_loss}
            info.eval_s = time.perf_counter() - started
            info.is_best = patience.observe(info.scores["score"])
            state.best, state.bad = patience.best, patience.bad
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

    def __init__(self, output_dir: Path, echo: Callable[[str], None], resumed: dict | None = None):
        """resumed: the counters a checkpoint saved (`counters()`); the logs keep the lines
        of its evaluations and drop any a killed run wrote after it."""
        self.dir, self.echo = output_dir, echo
        self.evaluations, self.tokens = 0, 0
        if resumed:
            self.evaluations, self.tokens = resumed["evaluations"], resumed["tokens"]
            self._keep_lines("metrics.jsonl", self.evaluations, "")
            self._keep_lines("loss.tsv", self.evaluations + 1, self.HEADER)
        else:
            (output_dir / "loss.tsv").write_text(self.HEADER, encoding="utf-8")
            (output_dir / "metrics.jsonl").write_text("", encoding="utf-8")
        self.start = time.perf_counter()

    def _keep_lines(self, name: str, n: int, empty: str) -> None:
        path = self.dir / name
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True) if path.is_file() else []
        atomic_write_text(path, "".join(lines[:n]) or empty)

    def counters(self) -> dict:
        return {"evaluations": self.evaluations, "tokens": self.tokens}

    def __call__(self, s: Step) -> dict | None:
        """The evaluation record of an evaluation step (None for the others)."""
        self.tokens += s.n_tokens
        if not s.evaluated:
            return None
        elapsed = time.perf_counter() - self.start
        info = {
            "epoch": s.epoch, "step": s.step, "loss": s.mean_loss, "dev_score": s.scores["score"],
            "dev_accuracy": s.scores.get("accuracy"), "lr": s.lr, "tokens_per_s": self.tokens / max(elapsed, 1e-9),
            # the same without the evaluation: what the updates alone run at
            "train_tokens_per_s": self.tokens / max(elapsed - s.eval_s, 1e-9),
            "elapsed_s": elapsed, "eval_s": s.eval_s, "dev": s.scores,
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
        self.evaluations += 1
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

    def __init__(self, total: int, enabled: bool, initial: int = 0):
        self.bar = None
        if enabled:
            from tqdm import tqdm  # only where a bar may be drawn

            # disable=None: no bar when stderr is not a terminal (batch jobs, CI logs); epoch lines still print
            self.bar = tqdm(total=total, initial=initial, unit="batch", dynamic_ncols=True, file=sys.stderr, mininterval=0.5,
                            disable=None)
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
# Ctrl-C / SIGTERM: acted on between two steps


class StopRequests:
    """While training, SIGINT and SIGTERM are remembered, not raised: the run stops after the
    current step (the state is whole there, so a checkpoint of it resumes exactly). A second
    signal stops at once. `requested(world)` is the signal any rank got (every rank agrees,
    so all stop after the same step); `stop()` re-raises it through the handler it replaced
    (the CLI's: exit 130 / 143)."""

    def __init__(self, echo: bool = True):
        self.signum = 0
        self.previous: dict = {}
        self.echo = echo  # under MPI rank 0 alone says so

    def __enter__(self) -> "StopRequests":
        self.previous = take_over(self._note)
        return self

    def __exit__(self, *exc) -> None:
        give_back(self.previous)
        self.previous = {}

    def _note(self, signum, frame):
        if self.signum:
            self.stop(signum)
        self.signum = signum
        if self.echo:
            print(f"\n{signal.Signals(signum).name}: stopping after this step (again to stop now)", file=sys.stderr)

    def requested(self, w) -> int:
        return int(global_max(w, self.signum))

    def stop(self, signum: int):
        handler = self.previous.get(signum)
        self.__exit__()
        if callable(handler):
            handler(signum, None)  # the CLI's handler raises (and records the signal)
        raise KeyboardInterrupt


def resume_command(w) -> str:
    """The command that continues this run: the same arguments with --resume (and the launcher)."""
    args = list(sys.argv[1:])
    if "--resume" not in args:
        args.append("--resume")
    launcher = []
    if w.size > 1:
        launcher = ["srun", "--mpi=pmi2", "-n", str(w.size)] if os.environ.get("SLURM_STEP_ID") else ["mpiexec", "-n", str(w.size)]
    return shlex.join([*launcher, "tagger", *args])


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
    world: World = field(default_factory=World)
    resumed: Checkpoint | None = None


def train(config, output_dir, device="cpu", progress=True, resume=False) -> dict:
    """`_train` (below) as the only writer of `output_dir` (a second run there is refused).
    Under mpiexec / srun every rank calls this; rank 0 alone holds the lock and writes."""
    w = world()
    lock = OutputLock(output_dir)
    root_only(w, lambda: lock.acquire() and None)
    try:
        return _train(config, Path(output_dir), device, progress, resume, w)
    finally:
        lock.release()


def _train(config, output_dir, device="cpu", progress=True, resume=False, w=None) -> dict:
    """Train from a resolved config into `output_dir`:

        output_dir/model-best/   the best model on dev (a complete model directory)
        output_dir/model-last/   the latest model (also written on Ctrl-C)
        output_dir/checkpoint/   everything --resume needs (tagger.checkpoint)
        output_dir/metrics.jsonl one JSON object per evaluation
        output_dir/loss.tsv      epoch, step, loss, dev score, lr, tokens/s per evaluation

    Returns the final metrics (dev and test scores of the best model).
    """
    w = w or World()
    ckpt = open_output(config, output_dir, resume, w)
    run = setup(config, output_dir, device, w)
    run.resumed = ckpt
    execute(run, progress)
    return root_only(w, finalize, run)


def open_output(config, output_dir, resume, w) -> Checkpoint | None:
    """Rank 0 cleans the folder (a fresh run moves the previous one to previous/ first, so
    fresh logs never sit beside an old model-best; a resumed one keeps it); then every rank
    reads the checkpoint to resume from, refused unless the config is the same."""
    root_only(w, start_run, output_dir, (BEST, LAST, CHECKPOINT, "loss.tsv", "metrics.jsonl", "curves.png", MPI_TIMING), resume)
    w.barrier()
    if not resume:
        return None
    ckpt = load_checkpoint(output_dir)
    check_same_config(ckpt.config, config.to_dict(), output_dir)
    tcfg = config.training
    if ckpt.finished and ckpt.config["training"]["epochs"] == tcfg.epochs and ckpt.config["training"]["max_steps"] == tcfg.max_steps:
        raise TaggerError(
            f"--resume: the run in {output_dir} finished at step {ckpt.loop.step}; "
            "raise training.epochs or training.max_steps to train on"
        )
    return ckpt


def setup(config, output_dir, device="cpu", w=None) -> Run:
    """Read the data, build vocabularies and the model on the chosen device (every rank the same)."""
    w = w or World()
    output_dir = Path(output_dir)  # created by the OutputLock that train() holds
    splits = load_splits(config)
    words, labels = build_vocabularies(config, splits.train)
    chars = build_char_vocab(config, splits.train)
    n_chars = None if chars is None else len(chars)
    ops = resolve_device(device, announce=w.is_root)
    if w.is_root:
        announce_compile(ops)
    embeddings = pretrained_matrix(config, words, splits.train, config.training.seed)
    check_network_fits(config.model, len(words), len(labels), n_chars=n_chars or 0)
    network = build_network(config.model, len(words), len(labels), ops=ops, seed=config.training.seed, embeddings=embeddings,
                            n_chars=n_chars)
    model = Model(config, words, labels, network, chars=chars)
    if w.is_root:
        print(
            f"train: {len(splits.train)} examples, dev: {len(splits.dev)} ({splits.dev_source or config.data.dev}), "
            f"vocabulary: {len(words)} words" + (f", {n_chars} characters" if chars is not None else "")
            + f", labels: {len(labels)}" + (f", {w.size} MPI ranks" if w.size > 1 else ""),
            file=sys.stderr,
        )
    return Run(config, output_dir, splits, model, ops, world=w)


class Job:
    """One run's parts: the optimizer and schedule, the loop, and on rank 0 its consumers
    (bar, logs, models, checkpoints). `consume(step)` is called on every rank after every step."""

    def __init__(self, run: Run, progress: bool):
        tcfg, model, w = run.config.training, run.model, run.world
        self.run, self.w, self.tcfg = run, w, tcfg
        run.optimizer = make_optimizer(tcfg.optimizer, tcfg.lr, tcfg.weight_decay, tcfg.momentum,
                                       tcfg.ema_momentum if tcfg.use_ema else None)
        self.schedule = (
            ReduceOnPlateau(run.optimizer, tcfg.lr_factor, tcfg.lr_patience, tcfg.min_lr) if tcfg.lr_schedule == "plateau" else None
        )
        self.state = LoopState()
        ckpt = run.resumed
        if ckpt is not None:
            restore(run, ckpt, self.schedule)
            self.state = ckpt.loop
        # counted, not made: padding a whole epoch to count its batches cost ~0.2 s at start-up on EWT
        n_batches = len(batch_groups(sequence_lengths([ex.tokens for ex in run.splits.train]), tcfg.batch_size,
                                     tcfg.batch_unit))
        total = tcfg.epochs * n_batches if tcfg.max_steps is None else min(tcfg.max_steps, tcfg.epochs * n_batches)
        self.bar = Progress(total, progress and w.is_root, initial=self.state.step)
        self.log = self.models = None
        if w.is_root:
            self.log = RunLog(run.output_dir, self.bar.echo, ckpt.log if ckpt else None)
            self.models = Checkpoints(model, run.output_dir)
            self.models.best_saved = bool(ckpt and ckpt.log.get("best_saved"))
        dev = run.splits.dev
        evaluate = (lambda: self.averaged(root_only, w, model.evaluate, dev)) if dev else None  # one score, on every rank
        self.parallel = DataParallel(model, w)
        self.steps = train_loop(
            self.parallel, epoch_batches(model, run.splits.train, tcfg, self.state.epoch, self.state.in_epoch,
                                         share=(w.rank, w.size) if w.size > 1 else None), evaluate,
            run.optimizer, Stop.from_config(tcfg), eval_every=tcfg.eval_every, clip_norm=tcfg.clip_norm,
            schedule=self.schedule, state=self.state,
        )

    def averaged(self, fn, *args):
        """fn(*args) with the weights' moving averages in the network (training.use_ema;
        otherwise the weights): what is evaluated and saved. Checkpoints keep both."""
        with self.run.optimizer.averaged(self.run.model.network):
            return fn(*args)

    def consume(self, s: Step) -> None:
        if self.w.is_root:
            self.bar(s)
            if not s.evaluated:
                self.log(s)  # counts the tokens; it writes only on evaluation steps (in _write)
        every = self.tcfg.checkpoint_every
        if self.w.size > 1 and (s.evaluated or s.step == 1):  # a drifted rank stops the run before it writes
            check_weights(self.w, [p for _, p in self.run.model.network.named_weights()])
        if s.evaluated or (every and s.step % every == 0):
            ckpt = snapshot(self.run, self.state, self.schedule, finished=s.last)
            root_only(self.w, self._write, s, ckpt)

    def _write(self, s: Step, ckpt: Checkpoint) -> None:
        if s.evaluated:
            self.log(s)
            self.averaged(self.models, s)
        ckpt.log = {**self.log.counters(), "best_saved": self.models.best_saved}
        save_checkpoint(ckpt, self.run.output_dir)

    def save_interrupted(self, whole: bool) -> None:
        """On Ctrl-C / SIGTERM: model-last (and model-best if none), and when the state is whole
        (every rank stopped after the same step) a checkpoint of it. A second signal lands
        inside a step: only rank 0 saves then, with no collective call."""
        ckpt = snapshot(self.run, self.state, self.schedule) if whole else None

        def write():
            self.averaged(self.models.interrupted)
            if ckpt is not None:
                ckpt.log = {**self.log.counters(), "best_saved": self.models.best_saved}
                save_checkpoint(ckpt, self.run.output_dir)

        if whole:
            root_only(self.w, write)
        elif self.w.is_root:
            write()


def execute(run: Run, progress=True) -> None:
    """The loop with its parts from the config, consumed by logs, checkpoints and the bar.
    Ctrl-C / SIGTERM stops it after the current step, saves model-last (model-best if none) and
    a checkpoint, says how to resume, and re-raises (the CLI exits 130 / 143)."""
    job = Job(run, progress)
    with StopRequests(echo=run.world.is_root) as stops:
        try:
            for s in job.steps:
                job.consume(s)
                signum = stops.requested(run.world)
                if signum:
                    run.interrupted = True
                    job.save_interrupted(whole=True)
                    _say_resume(run, job.state.step)
                    stops.stop(signum)
        except KeyboardInterrupt:
            if not run.interrupted:  # raised inside a step: the weights may be half updated
                run.interrupted = True
                job.save_interrupted(whole=False)
                _say_resume(run, job.state.step)
            raise  # the run stops here: the CLI exits 130 (Ctrl-C) or 143 (SIGTERM)
        finally:
            job.bar.close()
    report_timing(run, job.parallel)
    if run.world.is_root and not job.models.best_saved:
        job.averaged(save_model, run.model, run.output_dir / BEST)


def report_timing(run: Run, parallel: DataParallel) -> None:
    """Under MPI: where a step's time went (compute, communication, waiting for the slowest
    rank), printed on rank 0 and kept in MPI_TIMING (benchmarks/scaling.py reads it)."""
    summary = timing_summary(run.world, parallel.times)  # a collective: every rank calls it
    if summary is None or not run.world.is_root:
        return
    atomic_write_text(run.output_dir / MPI_TIMING, json.dumps(summary, indent=2) + "\n")
    print(
        f"MPI, {summary['ranks']} ranks: a step takes {summary['step_ms']:.1f} ms (median): compute {summary['compute_ms']:.1f}, "
        f"communication {summary['communication_ms']:.1f} ({100 * summary['communication_share']:.0f}%), "
        f"waiting for the slowest rank {summary['waiting_ms']:.1f} ({100 * summary['waiting_share']:.0f}%), "
        f"the rest is the update; details in {run.output_dir / MPI_TIMING}",
        file=sys.stderr,
    )


def _say_resume(run: Run, step: int) -> None:
    if not run.world.is_root:
        return
    ckpt = run.output_dir / CHECKPOINT
    where = f"checkpoint at step {step} in {ckpt}" if has_checkpoint(run.output_dir) else "no checkpoint yet"
    print(
        f"\ninterrupted: the current model is saved in {run.output_dir / LAST}, {where}; "
        f"resume with: {resume_command(run.world)}",
        file=sys.stderr,
    )


def snapshot(run: Run, state: LoopState, schedule, finished: bool = False) -> Checkpoint:
    """The whole training state now (every rank calls it: the dropout counters are gathered);
    rank 0 adds its loggers' counters before writing it."""
    network = run.model.network
    calls = run.world.allgather(call_counters(network))
    sched = None if schedule is None else {"best": schedule.patience.best, "bad": schedule.patience.bad}
    loop = replace(state, window=list(state.window))
    return Checkpoint(
        run.config.to_dict(), loop, dict(network.named_weights()), run.optimizer.get_state(), sched, calls,
        {}, run.world.size, finished,
    )


def restore(run: Run, ckpt: Checkpoint, schedule) -> None:
    """Put a checkpoint's weights, optimizer, schedule and dropout counters into the run."""
    network = run.model.network
    for leaf in network.leaves():
        names = [f"{leaf.name}/{p}" for p in leaf.param_names]
        missing = [n for n in names if n not in ckpt.weights]
        if missing:
            raise TaggerError(f"--resume: the checkpoint has no {missing[0]}; it is from another model")
        leaf.set_weights([ckpt.weights[n] for n in names])
    run.optimizer.set_state(ckpt.optimizer)
    if schedule is not None and ckpt.schedule is not None:
        schedule.patience.best, schedule.patience.bad = ckpt.schedule["best"], ckpt.schedule["bad"]
    rank = run.world.rank
    set_call_counters(network, ckpt.calls[rank] if rank < len(ckpt.calls) else ckpt.calls[0])
    if run.world.is_root:
        print(f"resuming from {run.output_dir / CHECKPOINT}: step {ckpt.loop.step}, epoch {ckpt.loop.epoch}", file=sys.stderr)


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
