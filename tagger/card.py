"""A model card: README.md in a model directory, saying what the model is and is not.

    text = model_card("runs/quickstart/model-best", command="tagger train ...")
    write_card("runs/quickstart/model-best")       # -> runs/quickstart/model-best/README.md

Everything comes from the model directory itself (``config.yaml``, ``labels.json``,
``weights.safetensors``, ``metrics.json``) and, for the data section, from the files the
config names: each is read once with the config's reader to count its examples, and
hashed (sha256) so that a reader of the card can check they have the same data.  A file
that is no longer where the config says is listed as not found rather than refused, so a
card can be written for a model copied to another machine.  Speed comes from the run's
``metrics.jsonl`` beside the model directory when it is there (``tokens_per_s``).
"""

from __future__ import annotations

import json
import math
import shlex
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

from tagger.errors import TaggerError
from tagger.fsutil import file_sha256

PACKAGES = ("tagger", "numpy", "numba", "tokenizers", "safetensors", "pydantic")

NOT_FOR = {
    "tag": (
        "Text unlike its training data: another language, another genre or era, or text "
        "tokenised differently. Accuracy falls on words it never saw in training.",
        "Labels outside the list above: it always answers with one of them, even when none fits.",
        "Decisions about people (hiring, credit, policing, medical or legal judgements): a tag "
        "can be wrong with high probability, and the errors are not evenly spread over kinds of text.",
    ),
    "classify": (
        "Texts unlike its training data: another language, domain or length. Its probabilities are "
        "not calibrated outside the dev set it was chosen on.",
        "Classes outside the list above: it always picks one of them.",
        "Decisions about people (moderation without review, hiring, credit, medical or legal "
        "judgements): the scores are a model's guess, with errors that are not evenly spread.",
    ),
}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:
        raise TaggerError(f"{path}: not valid JSON; the model directory is damaged") from None


def _data_rows(config) -> list[str]:
    from tagger.data.readers import read_examples

    rows = ["| split | file | examples | sha256 |", "|---|---|---:|---|"]
    for split in ("train", "dev", "test"):
        path = getattr(config.data, split)
        if not path:
            continue
        if not Path(path).is_file():
            rows.append(f"| {split} | `{path}` | (not found here) | |")
            continue
        n = sum(1 for _ in read_examples(path, config.data.format, **config.data.reader_options()))
        rows.append(f"| {split} | `{path}` | {n:,} | `{file_sha256(path)}` |")
    if len(rows) == 2:
        rows.append("| train | (none recorded in config.yaml) | | |")
    return rows


def _scores_section(metrics: dict | None) -> list[str]:
    if not metrics:
        return ["No scores were saved with this model (no `metrics.json`)."]
    out = []
    for split in ("dev", "test"):
        scores = metrics.get(split)
        if not scores:
            continue
        head = f"**{split}**: accuracy {100 * scores['accuracy']:.2f}%"
        if "spans" in scores:
            head += f", span F1 {100 * scores['spans']['f1']:.2f} (conlleval: exact spans)"
        n = scores.get("n_sentences", scores.get("n"))
        out += [head + (f", {n:,} examples" if n is not None else ""), ""] + _per_class(scores["report"]) + [""]
    return out or ["`metrics.json` holds no dev or test scores."]


def _per_class(report: dict) -> list[str]:
    rows = ["| label | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for label, r in report["per_class"].items():
        rows.append(f"| {label} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | {r['support']:,} |")
    for avg in ("macro", "weighted"):
        if avg in report:
            r = report[avg]
            rows.append(f"| *{avg} avg* | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | |")
    return rows


def _speed(model_dir: Path) -> str:
    log = model_dir.parent / "metrics.jsonl"
    rates = []
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                rates.append(float(json.loads(line)["tokens_per_s"]))
            except (ValueError, KeyError, TypeError):
                continue
    if not rates:
        return "not recorded (no training log beside the model directory)"
    return (f"training: median {statistics.median(rates):,.0f} tokens/s over {len(rates)} evaluation intervals "
            f"(from `{log.name}`; the machine and its load are not recorded)")


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"python {sys.version.split()[0]}"]
    for name in PACKAGES:
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} (not installed as a package)")
    return ", ".join(parts)


def _parameters(model_dir: Path) -> str:
    from safetensors import safe_open

    weights = model_dir / "weights.safetensors"
    if not weights.is_file():
        raise TaggerError(f"{model_dir}: no weights.safetensors; give a model directory (e.g. runs/x/model-best)")
    with safe_open(str(weights), framework="numpy") as f:
        total = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return f"{total:,}"


def model_card(model_dir, command: str | None = None, date: str | None = None) -> str:
    """The card's Markdown text. ``command`` defaults to this process's command line,
    ``date`` to now (UTC)."""
    from tagger.config import load_config
    from tagger.tasks import train_scheme

    model_dir = Path(model_dir)
    if not (model_dir / "config.yaml").is_file():
        raise TaggerError(f"{model_dir}: no config.yaml; give a model directory (e.g. runs/x/model-best)")
    config = load_config(model_dir / "config.yaml")
    labels = _read_json(model_dir / "labels.json") or []
    metrics = _read_json(model_dir / "metrics.json")
    task, m = config.model.task, config.model
    what = "a label per token" if task == "tag" else "one label per text"
    c = m.chars
    chars = "" if not c.enabled else (
        f" ++ char {'BiLSTM ' + str(c.units) + ' per direction' if c.encoder == 'lstm' else f'CNN {c.filters} x width {c.width}'}"
        f" (char embedding {c.char_dim})")
    arch = (f"word embedding {m.embedding_dim}{chars} -> {m.layers} x BiLSTM {m.lstm_units} per direction ({m.merge_mode}) -> "
            + ("CRF" if m.crf else "dense softmax" if task == "tag" else f"{m.pooling} pooling -> dense softmax"))
    lines = [
        f"# Model card: {model_dir.resolve().parent.name}/{model_dir.name}",
        "",
        f"* **Task:** `{task}` ({what}), data format `{config.data.format}`"
        + (f", label column `{config.data.label_column}`" if config.data.label_column is not None else "")
        + (f", tag scheme `{train_scheme(config.data)}`" if config.data.scheme != "none" else ""),
        f"* **Architecture:** {arch}; {_parameters(model_dir)} parameters",
        f"* **Seed:** {config.training.seed} (training is deterministic for a config and seed)",
        f"* **Speed:** {_speed(model_dir)}",
        f"* **Written:** {date or datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"* **Command:** `{command if command is not None else shlex.join(sys.argv)}`",
        f"* **Packages:** {_versions()}",
        "", "## Data", "", *_data_rows(config),
        "", f"## Labels ({len(labels)})", "", ", ".join(f"`{l}`" for l in labels),
        "", "## Scores", "", *_scores_section(metrics),
        "## What this model is not for", "", *[f"* {item}" for item in NOT_FOR[task]],
        "", "## Config", "", "```yaml", (model_dir / "config.yaml").read_text(encoding="utf-8").rstrip(), "```", "",
    ]
    return "\n".join(lines)


def write_card(model_dir, command: str | None = None, date: str | None = None) -> Path:
    """Write ``model_dir/README.md`` (atomically) and return its path."""
    from tagger.io import atomic_write_text

    path = Path(model_dir) / "README.md"
    atomic_write_text(path, model_card(model_dir, command=command, date=date))
    return path
