"""The `tagger` command line: thin typer commands over plain functions.

    tagger train CONFIG [--output DIR] [--device cpu|cuda|auto] [--corpora DIR] [--SECTION.KEY VALUE ...]
    tagger evaluate MODEL DATA [--output metrics.json]
    tagger predict MODEL INPUT... [--output DIR | -] [--format jsonl|conll|tsv]
    tagger summary CONFIG|MODEL
    tagger init-config [--task tag|classify] [--output FILE]
    tagger debug-data CONFIG
    tagger plot RUN... [--output curves.png] [--name LABEL ...]
    tagger export MODEL model.onnx

Every user error is printed as one line (`error: ...`) with exit status 1, never a traceback.
"""
from __future__ import annotations

import typer

app = typer.Typer(
    name="tagger",
    help="BiLSTM sequence labelling and text classification: train, evaluate, predict.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

from . import debug_data, evaluate, init_config, predict, summary, train  # noqa: E402,F401  (registers commands)
from . import export, plot  # noqa: E402,F401


def main():
    app()
