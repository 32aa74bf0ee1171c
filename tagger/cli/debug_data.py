from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Optional

import typer

from . import app
from tagger.errors import TaggerError

from ._util import user_errors


@app.command("debug-data")
def debug_data(
    config: Path = typer.Argument(..., help="YAML experiment config"),
    corpora: Optional[Path] = typer.Option(None, help="root for ${corpora}/ paths (default: $TAGGER_CORPORA)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
):
    """Check the data a config points at: counts, labels, OOV rate, train/dev overlap, malformed lines.

    Every malformed line is listed (file:line and what is wrong), not only the first;
    the command exits with status 1 when there is any.
    """
    with user_errors():
        from tagger.config import load_config
        from tagger.data.readers import collect_malformed

        cfg = load_config(config, corpora_root=corpora)
        with collect_malformed() as malformed:
            try:
                report = data_report(cfg)
            except TaggerError:
                _echo_malformed(malformed)  # what was found before the reading had to stop
                raise
        report["malformed_lines"] = malformed
        if as_json:
            typer.echo(json.dumps(report, indent=2))
        else:
            typer.echo(format_data_report(report))
            _echo_malformed(malformed)
        if malformed:
            raise typer.Exit(1)


MAX_LISTED = 50


def _echo_malformed(malformed: list[str]) -> None:
    if not malformed:
        return
    typer.echo(f"malformed lines: {len(malformed)} (skipped here; training stops at the first)", err=True)
    for message in malformed[:MAX_LISTED]:
        typer.echo(f"  {message}", err=True)
    if len(malformed) > MAX_LISTED:
        typer.echo(f"  ... and {len(malformed) - MAX_LISTED} more (all of them are in --json)", err=True)


def data_report(cfg) -> dict:
    from tagger.training import build_vocabularies, load_splits

    splits = load_splits(cfg)
    words, labels = build_vocabularies(cfg, splits.train)
    tag = cfg.model.task == "tag"
    report = {"task": cfg.model.task, "labels": labels.labels, "vocabulary": len(words), "splits": {}}
    train_texts = {" ".join(ex.tokens) for ex in splits.train}
    for name, examples in (("train", splits.train), ("dev", splits.dev), ("test", splits.test)):
        if not examples:
            continue
        tokens = [t for ex in examples for t in ex.tokens]
        ids = words.encode_batch([ex.tokens for ex in examples])
        unknown = words.unknown_ids
        unk = sum(1 for s in ids for i in s if i in unknown)
        dist = Counter(t for ex in examples for t in ex.labels) if tag else Counter(ex.label for ex in examples)
        lengths = [len(ex.tokens) for ex in examples]
        entry = {
            "examples": len(examples),
            "tokens": len(tokens),
            "max_length": max(lengths),
            "mean_length": round(sum(lengths) / len(lengths), 2),
            "oov_rate": round(unk / max(len(tokens), 1), 4),
            "labels": dict(dist.most_common()),
            "majority_baseline": round(dist.most_common(1)[0][1] / max(sum(dist.values()), 1), 4),
        }
        if name != "train":
            entry["overlap_with_train"] = sum(1 for ex in examples if " ".join(ex.tokens) in train_texts)
            unseen = sorted(set(dist) - set(labels.labels))
            if unseen:
                entry["labels_unseen_in_train"] = unseen
        report["splits"][name] = entry
    return report


def format_data_report(report: dict) -> str:
    lines = [f"task: {report['task']}   vocabulary: {report['vocabulary']} words   labels: {len(report['labels'])}"]
    for name, e in report["splits"].items():
        lines.append(
            f"{name:>5}: {e['examples']} examples, {e['tokens']} tokens (mean length {e['mean_length']}, max {e['max_length']}), "
            f"OOV {e['oov_rate'] * 100:.2f}%, majority baseline {e['majority_baseline'] * 100:.2f}%"
        )
        if "overlap_with_train" in e:
            lines.append(f"       {e['overlap_with_train']} examples also in train")
        if e.get("labels_unseen_in_train"):
            lines.append(f"       labels not seen in train: {', '.join(e['labels_unseen_in_train'])}")
        top = ", ".join(f"{k} {v}" for k, v in list(e["labels"].items())[:10])
        lines.append(f"       labels: {top}")
    return "\n".join(lines)
