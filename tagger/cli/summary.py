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
    char_vocab_size: Optional[int] = typer.Option(
        None, help="for a config with model.chars and --vocab-size: characters to assume (default 100)"),
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
        from tagger.data.prepare import build_char_vocab, build_vocabularies, load_splits
        from tagger.models import build_network

        if (vocab_size is None) != (labels is None):
            raise TaggerError("--vocab-size and --labels go together (both sizes, or neither to read them from data.train)")
        for name, value, least in (("--vocab-size", vocab_size, 1), ("--labels", labels, 1), ("--char-vocab-size", char_vocab_size, 2)):
            if value is not None and value < least:
                raise TaggerError(f"{name} {value}: expected a number >= {least}")
        cfg = load_config(target, corpora_root=corpora)
        n_chars = (char_vocab_size or 100) if cfg.model.chars.enabled else None
        if vocab_size is None:
            train = load_splits(cfg).train
            words, label_vocab = build_vocabularies(cfg, train)
            vocab_size, labels = len(words), len(label_vocab)
            chars = build_char_vocab(cfg, train)
            n_chars = None if chars is None else len(chars)
        show(build_network(cfg.model, vocab_size, labels, ops="reference", seed=cfg.training.seed, n_chars=n_chars), as_json)


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
