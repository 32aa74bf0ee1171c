from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import app
from ._util import user_errors


@app.command()
def summary(
    target: Path = typer.Argument(..., help="a YAML config, or a model directory"),
    corpora: Optional[Path] = typer.Option(None, help="root for ${corpora}/ paths (default: $TAGGER_CORPORA)"),
    vocab_size: Optional[int] = typer.Option(None, help="for a config: vocabulary size to assume instead of reading train"),
):
    """Print the Keras-style layer table (output shapes and parameter counts)."""
    with user_errors():
        from tagger.io import is_model_dir, load_model, resolve_model_dir

        path = resolve_model_dir(target)
        if is_model_dir(path) or path.is_dir():
            load_model(path).network.summary()
            return
        from tagger.config import load_config
        from tagger.models import build_network
        from tagger.training import build_vocabularies, load_splits

        cfg = load_config(target, corpora_root=corpora)
        if vocab_size is None:
            splits = load_splits(cfg)
            words, labels = build_vocabularies(cfg, splits.train)
            n_words, n_labels = len(words), len(labels)
        else:
            n_words, n_labels = vocab_size, 2
        build_network(cfg.model, n_words, n_labels, ops="reference", seed=cfg.training.seed).summary()
