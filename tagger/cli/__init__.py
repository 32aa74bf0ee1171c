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

from ._app import app
from . import benchmark, debug_data, evaluate, init_config, predict, summary, train  # noqa: F401  (registers the commands)
from . import export, plot  # noqa: F401


def main():
    app()
