from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from . import app
from ._util import check_output_file, load, user_errors


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help="model directory (or a training output folder)"),
    data: Path = typer.Argument(..., help="labelled file in the format the model was trained on"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write all metrics as JSON here"),
    device: str = typer.Option("cpu", help="cpu | cuda | auto"),
):
    """Score a model on labelled data: accuracy, per-class P/R/F1, conlleval spans."""
    with user_errors():
        from tagger.io import atomic_write_text
        from tagger.metrics import conlleval_text
        from tagger.training import evaluate as run_eval, read_split

        if output is not None:
            check_output_file(output, "--output")
        m = load(str(model), device)
        examples = read_split(m.config, data)
        scores = run_eval(m, examples)
        typer.echo(format_report(scores, conlleval_text))
        if output is not None:
            atomic_write_text(output, json.dumps(scores, indent=2) + "\n")


def format_report(scores: dict, conlleval_text) -> str:
    lines = []
    if scores["task"] == "tag":
        lines.append(f"token accuracy: {scores['accuracy'] * 100:.2f}% ({scores['n_sentences']} sentences)")
        if "spans" in scores:
            lines.append(conlleval_text(scores["spans"]))
    else:
        lines.append(f"accuracy: {scores['accuracy'] * 100:.2f}% ({scores['n']} texts)")
    report = scores["report"]
    lines.append(f"{'label':<16}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for label, r in report["per_class"].items():
        lines.append(f"{label:<16}{r['precision']:>10.4f}{r['recall']:>10.4f}{r['f1']:>10.4f}{r['support']:>10}")
    for avg in ("macro", "weighted"):
        if avg in report:
            r = report[avg]
            lines.append(f"{avg + ' avg':<16}{r['precision']:>10.4f}{r['recall']:>10.4f}{r['f1']:>10.4f}")
    return "\n".join(lines)
