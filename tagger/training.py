"""Training and evaluation.

`train_loop` is a generator yielding (step, info, is_best) after every evaluation, with
patience, max steps and the LR schedule explicit; `train` consumes it to write logs,
checkpoints and the progress bar. Evaluation and prediction walk the same chain.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tagger.data.readers import read_examples, split_dev
from tagger.data.schemes import spans
from tagger.data.vocab import LabelVocab, WordVocab
from tagger.errors import TaggerError
from tagger.metrics import classification_report, span_scores, token_accuracy
from tagger.optim import ReduceOnPlateau, clip_by_global_norm, make_optimizer


# ----------------------------------------------------------------------------------------
# data


@dataclass
class Splits:
    train: list
    dev: list
    test: list = field(default_factory=list)
    dev_source: str = ""


def read_split(config, path):
    return list(read_examples(path, config.data.format, **config.data.reader_options()))


def load_splits(config) -> Splits:
    """Read train/dev/test; carve a seeded dev split out of train when no dev file is given."""
    if not config.data.train:
        raise TaggerError("data.train: no training file given; set it in the config or with --data.train PATH")
    train = read_split(config, config.data.train)
    if config.data.dev:
        dev, source = read_split(config, config.data.dev), config.data.dev
    elif config.data.dev_fraction > 0:
        train, dev = split_dev(train, config.data.dev_fraction, config.training.seed)
        source = f"{len(dev)} examples held out of data.train (dev_fraction {config.data.dev_fraction})"
    else:
        dev, source = [], "none (dev_fraction 0: the best model is the one with the lowest training loss)"
    test = read_split(config, config.data.test) if config.data.test else []
    return Splits(train, dev, test, source)


def build_vocabularies(config, train):
    words = WordVocab.build(
        (ex.tokens for ex in train),
        min_freq=config.vocab.min_freq,
        max_size=config.vocab.max_size,
        lowercase=config.vocab.lowercase,
        unknown_classes=config.vocab.unknown_classes,
    )
    if config.model.task == "tag":
        from tagger.data.schemes import convert

        scheme, target = config.data.scheme, config.data.target_scheme or config.data.scheme
        seen = []
        for ex in train:
            tags = ex.labels if scheme == target or scheme == "none" else convert(ex.labels, scheme, target)
            seen.extend(tags)
        labels = LabelVocab.build(seen, first=["O"] if "O" in seen else [])
    else:
        labels = LabelVocab.build(ex.label for ex in train)
    return words, labels


def pretrained_matrix(config, words, train, seed):
    """Embedding rows from pretrained vectors (None when the config names none); prints coverage."""
    path = config.model.pretrained_vectors
    if not path:
        return None
    from tagger.data.vectors import embedding_matrix, read_vectors

    from collections import Counter

    counts = Counter(t for ex in train for t in ex.tokens)
    vecs = read_vectors(path, keep=words.words())
    matrix, coverage = embedding_matrix(words, vecs, np.random.default_rng(seed), dim=config.model.embedding_dim, counts=counts)
    print(
        f"pretrained vectors {path}: {coverage['types_found']}/{coverage['types_total']} word types "
        f"({coverage['types'] * 100:.1f}%), {coverage['tokens'] * 100:.1f}% of training tokens",
        file=sys.stderr,
    )
    return matrix


# ----------------------------------------------------------------------------------------
# evaluation


def evaluate(model, examples, batch_size=256) -> dict:
    """Scores of `model` on labelled examples: accuracy, per-class P/R/F1, spans for span schemes."""
    preds = model.predict_examples(examples, batch_size=batch_size)
    if model.task == "classify":
        gold = [ex.label for ex in examples]
        guess = [p[0] for p in preds]
        report = classification_report(gold, guess)
        return {"task": "classify", "n": len(gold), "accuracy": report["accuracy"], "score": report["accuracy"], "report": report}
    gold = [ex.labels for ex in examples]
    guess = [p[0] for p in preds]
    acc = token_accuracy(gold, guess)
    out = {"task": "tag", "n_sentences": len(gold), "accuracy": acc["accuracy"], "token_accuracy": acc}
    out["report"] = classification_report([t for s in gold for t in s], [t for s in guess for t in s])
    if model.data_scheme != "none":
        out["spans"] = span_scores(gold, guess, scheme=model.data_scheme)
        out["score"] = out["spans"]["f1"]
    else:
        out["score"] = out["accuracy"]
    return out


# ----------------------------------------------------------------------------------------
# the loop


def singleton_replacements(model, train_examples) -> np.ndarray:
    """Per vocabulary id, what a word seen once in training is replaced by; -1 elsewhere.

    The replacement is the word's unknown-word class (``[UNK-Cap]`` ...) when the
    vocabulary has classes, else ``[UNK]``: the rows an unseen word will hit at test time
    are trained on the rare words they stand for.  A singleton has one surface form, so
    its class is exact even with a lower-casing vocabulary.
    """
    from collections import Counter

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
    from dataclasses import replace

    target = replacements[batch.ids]
    hit = (target >= 0) & (rng.random(batch.ids.shape) < p)
    return replace(batch, ids=np.where(hit, target, batch.ids).astype(batch.ids.dtype))


def train_loop(model, train_examples, dev_examples, tcfg, log=None):
    """Yield (step, info, is_best) after each evaluation.

    Stops after `tcfg.epochs`, `tcfg.max_steps` updates, or `tcfg.patience` evaluations
    without a better dev score. `log(step, n_tokens, loss)` is called after every update.
    """
    singletons = singleton_replacements(model, train_examples) if tcfg.unk_replace > 0 else None
    optimizer = make_optimizer(tcfg.optimizer, tcfg.lr, tcfg.weight_decay, tcfg.momentum)
    schedule = ReduceOnPlateau(optimizer, tcfg.lr_factor, tcfg.lr_patience, tcfg.min_lr) if tcfg.lr_schedule == "plateau" else None
    best, bad, step = -math.inf, 0, 0
    losses, tokens, start = [], 0, time.perf_counter()
    for epoch in range(1, tcfg.epochs + 1):
        batches = model.batches(
            train_examples, tcfg.batch_size, tcfg.batch_unit, shuffle=True, seed=tcfg.seed + epoch
        )
        unk_rng = np.random.default_rng([tcfg.seed, epoch])
        for k, batch in enumerate(batches):
            if singletons is not None:
                batch = replace_singletons(batch, singletons, tcfg.unk_replace, unk_rng)
            loss = model.train_step(batch)
            if not math.isfinite(loss):
                raise TaggerError(f"training diverged at step {step + 1} (loss {loss}); lower training.lr or set training.clip_norm")
            if tcfg.clip_norm:
                clip_by_global_norm(model.network, tcfg.clip_norm)
            optimizer.step(model.network)
            step += 1
            losses.append(loss)
            tokens += batch.n_tokens
            if log is not None:
                log(step, batch.n_tokens, loss)
            last_of_epoch = k == len(batches) - 1
            due = last_of_epoch if tcfg.eval_every == "epoch" else step % int(tcfg.eval_every) == 0
            done = tcfg.max_steps is not None and step >= tcfg.max_steps
            if due or done:
                scores = evaluate(model, dev_examples) if dev_examples else {"score": -float(np.mean(losses))}
                score = scores["score"]
                is_best = score > best
                if is_best:
                    best, bad = score, 0
                else:
                    bad += 1
                if schedule is not None:
                    schedule.observe(score)
                elapsed = time.perf_counter() - start
                info = {
                    "epoch": epoch, "step": step, "loss": float(np.mean(losses)), "dev_score": score,
                    "dev_accuracy": scores.get("accuracy"), "lr": optimizer.lr, "tokens_per_s": tokens / max(elapsed, 1e-9),
                    "elapsed_s": elapsed, "dev": scores,
                }
                losses, tokens, start = [], 0, time.perf_counter()
                yield step, info, is_best
                if done or (tcfg.patience is not None and bad >= tcfg.patience):
                    return


# ----------------------------------------------------------------------------------------
# the `tagger train` job


BEST, LAST = "model-best", "model-last"


def train(config, output_dir, device="cpu", progress=True) -> dict:
    """Train from a resolved config into `output_dir`:

        output_dir/model-best/   the best model on dev (a complete model directory)
        output_dir/model-last/   the latest model (also written on Ctrl-C)
        output_dir/metrics.jsonl one JSON object per evaluation
        output_dir/loss.tsv      epoch, step, loss, dev score, lr, tokens/s per evaluation

    Returns the final metrics (dev and test scores of the best model).
    """
    from tagger.device import announce_compile, resolve_device
    from tagger.io import load_model
    from tagger.models import Model, build_network

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    splits = load_splits(config)
    words, labels = build_vocabularies(config, splits.train)
    ops = resolve_device(device, announce=True)
    announce_compile(ops)
    embeddings = pretrained_matrix(config, words, splits.train, config.training.seed)
    network = build_network(config.model, len(words), len(labels), ops=ops, seed=config.training.seed, embeddings=embeddings)
    model = Model(config, words, labels, network)
    print(
        f"train: {len(splits.train)} examples, dev: {len(splits.dev)} ({splits.dev_source or config.data.dev}), "
        f"vocabulary: {len(words)} words, labels: {len(labels)}",
        file=sys.stderr,
    )
    tcfg = config.training
    n_batches = len(model.batches(splits.train, tcfg.batch_size, tcfg.batch_unit, with_labels=False))
    total = tcfg.epochs * n_batches if tcfg.max_steps is None else min(tcfg.max_steps, tcfg.epochs * n_batches)
    bar = _progress(total, progress)
    rate = {"tokens": 0, "t0": time.perf_counter()}

    def log(step, n_tokens, loss):
        rate["tokens"] += n_tokens
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate['tokens'] / max(time.perf_counter() - rate['t0'], 1e-9):,.0f}")

    (output_dir / "loss.tsv").write_text("epoch\tstep\tloss\tdev_score\tdev_accuracy\tlr\ttokens_per_s\n", encoding="utf-8")
    (output_dir / "metrics.jsonl").write_text("", encoding="utf-8")
    interrupted = False
    best_info = None
    try:
        for step, info, is_best in train_loop(model, splits.train, splits.dev, tcfg, log):
            with open(output_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(info) + "\n")
            with open(output_dir / "loss.tsv", "a", encoding="utf-8") as fh:
                fh.write(
                    f"{info['epoch']}\t{step}\t{info['loss']:.6f}\t{info['dev_score']:.6f}\t"
                    f"{info['dev_accuracy'] if info['dev_accuracy'] is not None else ''}\t{info['lr']:.3g}\t{info['tokens_per_s']:.0f}\n"
                )
            msg = f"epoch {info['epoch']} step {step}: loss {info['loss']:.4f} dev {info['dev_score']:.4f}" + (" (best)" if is_best else "")
            (bar.write if bar is not None else lambda m: print(m, file=sys.stderr))(msg)
            if is_best:
                best_info = info
                model.save(output_dir / BEST, metrics={"dev": info["dev"], "step": step, "epoch": info["epoch"]})
            model.save(output_dir / LAST, metrics={"dev": info["dev"], "step": step, "epoch": info["epoch"]})
    except KeyboardInterrupt:
        interrupted = True
        model.save(output_dir / LAST)
        if not (output_dir / BEST).exists():
            model.save(output_dir / BEST)
        print(f"\ninterrupted: the current model is saved in {output_dir / LAST}", file=sys.stderr)
    finally:
        if bar is not None:
            bar.close()
    if best_info is None and not interrupted:
        model.save(output_dir / BEST)
    best = load_model(output_dir / BEST, device=ops)
    final = {"dev": evaluate(best, splits.dev) if splits.dev else None, "interrupted": interrupted}
    if splits.test:
        final["test"] = evaluate(best, splits.test)
    best.save(output_dir / BEST, metrics=final)
    from tagger.plot import write_curves

    write_curves(output_dir)  # curves.png, or a one-line note without matplotlib
    return final


def _progress(total, enabled):
    if not enabled:
        return None
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (batch jobs, CI logs); epoch lines still print
    return tqdm(total=total, unit="batch", dynamic_ncols=True, file=sys.stderr, mininterval=0.5, disable=None)
