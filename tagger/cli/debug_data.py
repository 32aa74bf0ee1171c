"""`tagger debug-data CONFIG`: the data report of tagger.data.prepare, printed."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ._app import app
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
        from tagger.data.prepare import data_report
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


def format_data_report(report: dict) -> str:
    lines = [f"task: {report['task']}   vocabulary: {report['vocabulary']} words   labels: {len(report['labels'])}"]
    if report.get("dev_source"):
        lines.append(f"  dev: {report['dev_source']}")
    if "characters" in report:
        lines.append(f"  model.chars: {report['characters']} characters (besides [PAD] and [UNK])")
    for name, e in report["splits"].items():
        lines.append(
            f"{name:>5}: {e['examples']} examples, {e['tokens']} tokens (mean length {e['mean_length']}, max {e['max_length']}), "
            f"OOV {e['oov_rate'] * 100:.2f}%, majority baseline {e['majority_baseline'] * 100:.2f}% "
            f"(train's most common label, {e['majority_label']})"
        )
        if "longest_word" in e:
            clipped = f", {e['words_clipped']} words clipped by vocab.max_chars" if "words_clipped" in e else ""
            lines.append(f"       characters: longest word {e['longest_word']}, unknown {e['unknown_char_rate'] * 100:.2f}%{clipped}")
        if "overlap_with_train" in e:
            lines.append(f"       {e['overlap_with_train']} examples also in train")
        if e.get("labels_unseen_in_train"):
            lines.append(f"       labels not seen in train: {', '.join(e['labels_unseen_in_train'])}")
        top = ", ".join(f"{k} {v}" for k, v in list(e["labels"].items())[:10])
        lines.append(f"       labels: {top}")
    return "\n".join(lines)
