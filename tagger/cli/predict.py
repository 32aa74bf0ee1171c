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
    inputs: List[Path] = typer.Argument(..., help="files or folders; see --input-format"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="output folder, or - for stdout (default: stdout)"),
    format: str = typer.Option("jsonl", "--format", "-f", help="jsonl | conll | tsv | conllu (conllu: a CoNLL-U input written back)"),
    input_format: Optional[str] = typer.Option(
        None, "--input-format", "-i",
        help="text (one sentence per line) | tokens (one per line, split on whitespace) | conll | conllu "
        "(the token column of a column file); default: conll/conllu by the file's suffix, else text",
    ),
    encoding: str = typer.Option("utf-8", help="encoding of the input files", callback=text_encoding),
    device: str = typer.Option("cpu", help="cpu | cuda | auto"),
    batch_size: int = typer.Option(256, help="sentences per batch", callback=positive_int),
    threads: Optional[int] = typer.Option(None, "--threads", help="threads (default: every core this process may use)", callback=threads_option),
    shard: Optional[str] = typer.Option(
        None, help="I/N: predict shard I of N (byte-balanced; big files split by lines); auto or auto/N in a Slurm array"
    ),
    overwrite: bool = typer.Option(False, help="redo outputs an earlier run completed (default: skip them and resume)"),
    workers: int = typer.Option(
        1, help="worker processes on this node, one thread each (into --output DIR: each takes its share of the "
        "inputs; to stdout: the chunks of each text input in turn, records in input order)", callback=positive_int,
    ),
    nbest: Optional[int] = typer.Option(
        None, "--nbest", help="also list the K best tag sequences of each sentence with score and probability "
        "(a CRF model, --format jsonl)", callback=positive_int,
    ),
):
    """Tag or classify text or already-tokenized files; one output per input, written atomically.

    With a column input, --format conll writes the input's own columns plus the predicted one.
    A rerun into the same --output skips what is complete (resume); --shard splits the work."""
    with user_errors():
        from tagger.predict import predict_files, predict_workers

        if output not in (None, "-"):
            check_output_dir(output, "--output")
        options = dict(fmt=format, encoding=encoding, overwrite=overwrite, batch_size=batch_size,
                       input_format=input_format, nbest=nbest)
        if workers > 1:
            done = predict_workers(model, [str(p) for p in inputs], output, workers, shard, device, **options)
        else:
            m = load(str(model), device)
            done = predict_files(m, [str(p) for p in inputs], output, shard=shard, **options)
        if output not in (None, "-"):
            for src, dst, n in done:
                note(f"{src} -> {dst} ({'already complete' if n is None else f'{n} records'})")
