from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ._app import app
from ._util import note, user_errors


@app.command()
def plot(
    runs: List[Path] = typer.Argument(..., help="training output folders (what tagger train --output wrote)"),
    output: Path = typer.Option(Path("curves.png"), "--output", "-o", help="PNG file to write (a folder: FOLDER/curves.png)"),
    name: Optional[List[str]] = typer.Option(None, "--name", help="legend label per run, in order (default: folder names)"),
):
    """Draw loss, dev score and learning rate against steps for one or more runs, to compare them."""
    with user_errors():
        from tagger.errors import TaggerError
        from tagger.plot import matplotlib_available, plot_runs

        if not matplotlib_available():
            raise TaggerError("plot needs matplotlib; install it with pip install 'tagger[plot]'")
        if name and len(name) != len(runs):
            raise TaggerError(f"--name: got {len(name)} names for {len(runs)} runs; give one per run or none")
        written = plot_runs(runs, output, names=name or None)
        note(f"wrote {written}")
        typer.echo(json.dumps({"output": str(written)}))  # stdout: the one machine-readable result
