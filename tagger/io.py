"""The model directory: everything needed to predict, nothing that can run code.

    MODEL/
      config.yaml           the resolved config the model was trained with
      tokenizer.json        the `tokenizers` WordLevel vocabulary ([PAD] = 0, [UNK] = 1, [UNK-...] classes last)
      labels.json           label strings in id order
      weights.safetensors   every weight as 'layer/param' (safetensors: no pickle, no code)
      metrics.json          dev/test scores at save time (optional)

Saving writes a sibling temporary directory and renames it into place, so a crash or
Ctrl-C never leaves a half-written model. Loading checks every file and every weight's
name and shape against the network the config describes.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import yaml

from tagger.errors import TaggerError

FORMAT_VERSION = "1"
FILES = ("config.yaml", "tokenizer.json", "labels.json", "weights.safetensors")


def atomic_write_text(path, text, encoding="utf-8"):
    """Write a file via a temporary sibling and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding=encoding) as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(model, path, metrics=None):
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        (tmp / "config.yaml").write_text(model.config.to_yaml(), encoding="utf-8")
        model.words.save(tmp / "tokenizer.json")
        model.labels.save(tmp / "labels.json")
        tensors = {name: np.ascontiguousarray(w) for name, w in model.network.named_weights()}
        save_file(tensors, str(tmp / "weights.safetensors"), metadata={"format": FORMAT_VERSION, "task": model.task})
        if metrics is not None:
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _resolve_device(device):
    from tagger.device import announce_compile, resolve_device

    ops = resolve_device(device)
    announce_compile(ops)
    return ops


def is_model_dir(path) -> bool:
    path = Path(path)
    return (path / "config.yaml").is_file() and (path / "weights.safetensors").is_file()


def resolve_model_dir(path) -> Path:
    """A model directory, or a `tagger train` output folder (its model-best/ is used)."""
    path = Path(path)
    if not is_model_dir(path) and is_model_dir(path / "model-best"):
        return path / "model-best"
    return path


def load_model(path, device="cpu", dtype=np.float32):
    """Read a model directory (or a training output folder); any damage is a one-line
    TaggerError naming the file."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from tagger.config import parse_config
    from tagger.data.vocab import LabelVocab, WordVocab
    from tagger.models import Model, build_network

    path = resolve_model_dir(path)
    if not path.is_dir():
        raise TaggerError(f"{path}: no such model directory (train one with `tagger train CONFIG --output {path}`)")
    for name in FILES:
        if not (path / name).is_file():
            raise TaggerError(f"{path / name}: missing; this is not a complete tagger model directory")
    try:
        raw = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise TaggerError(f"{path / 'config.yaml'}: unreadable ({type(err).__name__}); the model is damaged") from None
    config = parse_config(raw, base_dir=path, source=str(path / "config.yaml"))
    words = WordVocab.load(path / "tokenizer.json")
    labels = LabelVocab.load(path / "labels.json")
    try:
        tensors = load_file(str(path / "weights.safetensors"))
    except (SafetensorError, OSError, ValueError) as err:
        raise TaggerError(f"{path / 'weights.safetensors'}: unreadable weights ({str(err).splitlines()[0]})") from None
    ops = _resolve_device(device)
    network = build_network(config.model, len(words), len(labels), ops=ops, dtype=dtype, seed=0)
    expected = dict(network.named_weights())
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise TaggerError(
            f"{path / 'weights.safetensors'}: does not match config.yaml "
            f"(missing {missing[:3]}, unexpected {extra[:3]}); the model directory is inconsistent"
        )
    for name, want in expected.items():
        if tensors[name].shape != want.shape:
            raise TaggerError(
                f"{path / 'weights.safetensors'}: {name} has shape {tensors[name].shape}, config.yaml implies {want.shape}"
            )
    for leaf in network.leaves():
        leaf.set_weights([tensors[f"{leaf.name}/{p}"] for p in leaf.param_names])
    return Model(config, words, labels, network)


def read_metrics(path):
    f = Path(path) / "metrics.json"
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None
