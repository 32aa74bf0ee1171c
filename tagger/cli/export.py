from __future__ import annotations

import json
from pathlib import Path

import typer

from ._app import app
from ._util import load, note, user_errors


@app.command()
def export(
    model: Path = typer.Argument(..., help="a model directory (or a training output folder: its model-best)"),
    output: Path = typer.Argument(..., help="the ONNX file to write, e.g. model.onnx"),
):
    """Export the network to ONNX: token ids and lengths in (and each word's character ids
    for a model with a character encoder), per-token or per-text scores out."""
    with user_errors():
        from tagger.export import export_onnx

        written = [str(path) for path in export_onnx(load(str(model)), output)]
        for path in written:
            note(f"wrote {path}")
        typer.echo(json.dumps({"outputs": written}))  # stdout: the one machine-readable result
