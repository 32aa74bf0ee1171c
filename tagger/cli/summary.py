"""`tagger summary CONFIG|MODEL`: the Keras-style layer table."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ._app import app
from ._util import user_errors


@app.command()
def summary(
    target: Path = typer.Argument(..., help="a YAML config, or a model directory"),
    corpora: Optional[Path] = typer.Option(None, help="root for ${corpora}/ paths (default: $TAGGER_CORPORA)"),
    vocab_size: Optional[int] = typer.Option(None, help="for a config: vocabulary size to assume instead of reading train (needs --labels)"),
    labels: Optional[int] = typer.Option(None, help="for a config: number of labels to assume instead of reading train (needs --vocab-size)"),
    as_json: bool = typer.Option(False, "--json", help="print the layers and parameter counts as JSON"),
):
    """Print the Keras-style layer table (output shapes and parameter counts)."""
    with user_errors():
        from tagger.errors import TaggerError
        from tagger.io import is_model_dir, load_model, resolve_model_dir

        path = resolve_model_dir(target)
        if is_model_dir(path) or path.is_dir():
            show(load_model(path).network, as_json)
            return
        from tagger.config import load_config
        from tagger.data.prepare import build_vocabularies, load_splits
        from tagger.models import build_network

        if (vocab_size is None) != (labels is None):
            raise TaggerError("--vocab-size and --labels go together (both sizes, or neither to read them from data.train)")
        for name, value in (("--vocab-size", vocab_size), ("--labels", labels)):
            if value is not None and value < 1:
                raise TaggerError(f"{name} {value}: expected a positive number")
        cfg = load_config(target, corpora_root=corpora)
        if vocab_size is None:
            words, label_vocab = build_vocabularies(cfg, load_splits(cfg).train)
            vocab_size, labels = len(words), len(label_vocab)
        show(build_network(cfg.model, vocab_size, labels, ops="reference", seed=cfg.training.seed), as_json)


def show(network, as_json: bool) -> None:
    """The Keras-style table, or the same rows as one JSON document."""
    if not as_json:
        network.summary()
        return
    layers = [
        {"name": layer.name, "type": type(layer).__name__, "output_shape": shape, "params": layer.count_params()}
        for layer, shape in zip(network.layers, network.output_shapes())
    ]
    total, trainable = network.count_params(), network.trainable_count()
    typer.echo(json.dumps({"layers": layers, "total_params": total, "trainable_params": trainable}))
