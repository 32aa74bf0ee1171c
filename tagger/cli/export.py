from __future__ import annotations

from pathlib import Path

import typer

from ._app import app
from ._util import load, note, user_errors


@app.command()
def export(
    model: Path = typer.Argument(..., help="a model directory (or a training output folder: its model-best)"),
    output: Path = typer.Argument(..., help="the ONNX file to write, e.g. model.onnx"),
):
    """Export the network to ONNX: token ids and lengths in, per-token or per-text scores out."""
    with user_errors():
        from tagger.export import export_onnx

        for path in export_onnx(load(str(model)), output):
            note(f"wrote {path}")
