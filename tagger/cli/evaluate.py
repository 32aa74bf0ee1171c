"""`tagger evaluate MODEL DATA`: the task's scores on a labelled file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ._app import app
from ._util import check_output_file, load, positive_int, user_errors


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help="model directory (or a training output folder)"),
    data: Path = typer.Argument(..., help="labelled file in the format the model was trained on"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write all metrics as JSON here"),
    predictions: Optional[Path] = typer.Option(
        None, "--predictions", "-p",
        help="write `token gold predicted` per line here (a blank line after each sentence), as conlleval reads it",
    ),
    as_json: bool = typer.Option(False, "--json", help="print all metrics as one JSON document instead of the table"),
    device: str = typer.Option("cpu", help="cpu | cuda | auto"),
    nbest: Optional[int] = typer.Option(
        None, "--nbest", help="also score the K-best oracle: per sentence the best of the CRF's K best tag "
        "sequences (span F1; accuracy for scheme none)", callback=positive_int,
    ),
):
    """Score a model on labelled data: accuracy, per-class P/R/F1, conlleval spans."""
    with user_errors():
        from tagger.data.prepare import read_split
        from tagger.errors import TaggerError
        from tagger.io import atomic_write_text
        from tagger.predict import evaluate_to_file

        for path, option in ((output, "--output"), (predictions, "--predictions")):
            if path is not None:
                check_output_file(path, option)
        m = load(str(model), device)
        if nbest is not None:
            m.check_nbest(nbest, "--nbest")
            if predictions is not None:
                raise TaggerError("--nbest and --predictions: write the predictions and score the oracle in two runs")
        examples = read_split(m.config, data)
        if predictions is not None:
            scores = evaluate_to_file(m, examples, predictions)
        else:
            scores = m.evaluate(examples, nbest=nbest)
        if as_json:
            typer.echo(json.dumps(scores, indent=2))
        else:
            typer.echo(format_report(scores, m.labeller.report_lines(scores)))
        if output is not None:
            atomic_write_text(output, json.dumps(scores, indent=2) + "\n")


def format_report(scores: dict, headline: list[str]) -> str:
    """The task's headline lines, then the per-class table."""
    lines = list(headline)
    report = scores["report"]
    lines.append(f"{'label':<16}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for label, r in report["per_class"].items():
        lines.append(f"{label:<16}{r['precision']:>10.4f}{r['recall']:>10.4f}{r['f1']:>10.4f}{r['support']:>10}")
    for avg in ("macro", "weighted"):
        if avg in report:
            r = report[avg]
            lines.append(f"{avg + ' avg':<16}{r['precision']:>10.4f}{r['recall']:>10.4f}{r['f1']:>10.4f}")
    return "\n".join(lines)
