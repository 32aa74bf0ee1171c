"""`tagger predict MODEL INPUT...`: tagger.predict over files, from the command line."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from tagger.threads import threads_option

from ._app import app
from ._util import check_output_dir, load, note, positive_int, text_encoding, user_errors


@app.command()
def predict(
    model: Path = typer.Argument(..., help="model directory (or a training output folder)"),
    inputs: List[Path] = typer.Argument(..., help="text files or folders; one sentence (or text) per line"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="output folder, or - for stdout (default: stdout)"),
    format: str = typer.Option("jsonl", "--format", "-f", help="jsonl | conll | tsv"),
    encoding: str = typer.Option("utf-8", help="encoding of the input files", callback=text_encoding),
    device: str = typer.Option("cpu", help="cpu | cuda | auto"),
    batch_size: int = typer.Option(256, help="sentences per batch", callback=positive_int),
    threads: Optional[int] = typer.Option(None, "--threads", help="threads (default: every core this process may use)", callback=threads_option),
):
    """Tag or classify raw text files; one output per input, written atomically."""
    with user_errors():
        from tagger.predict import predict_files

        if output not in (None, "-"):
            check_output_dir(output, "--output")
        m = load(str(model), device)
        done = predict_files(m, [str(p) for p in inputs], output, format, encoding, batch_size=batch_size)
        if output not in (None, "-"):
            for src, dst, n in done:
                note(f"{src} -> {dst} ({n} records)")
