"""The model directory: everything needed to predict, nothing that can run code.

    MODEL/
      config.yaml           the resolved config the model was trained with
      tokenizer.json        the `tokenizers` WordLevel vocabulary ([PAD] = 0, [UNK] = 1, [UNK-...] classes last)
      labels.json           label strings in id order
      chars.json            the character vocabulary (tagger.data.chars.CharVocab), only with
                            model.chars (an encoder other than none); older directories have none
      weights.safetensors   every weight as 'layer/param' (safetensors: no pickle, no code); header
                            metadata: format, task, n_words, n_labels (the last two since format 2)
      metrics.json          dev/test scores at save time (optional)

Saving writes a sibling temporary directory and swaps it into place (tagger.fsutil.replace_dir):
at every instant MODEL or its hidden `.MODEL.old` holds a complete model, and loading
falls back to the latter. The weights file is byte-identical for identical weights (the
safetensors header is written with sorted keys). Loading checks every file against the
others - task, labels, vocabulary size, every weight's name, shape and finiteness - and
names the file that disagrees.
"""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np

from tagger.errors import TaggerError
from tagger.fsutil import atomic_write_text, new_temp_dir, old_sibling, replace_dir  # noqa: F401 (atomic_write_text: API)

FORMAT_VERSION = "2"
FILES = ("config.yaml", "tokenizer.json", "labels.json", "weights.safetensors")
WEIGHTS = "weights.safetensors"
EMBEDDING, OUTPUT = "embedding/embeddings", "output/kernel"
# with model.chars only (so directories saved before it still load)
CHARS, CHAR_EMBEDDING = "chars.json", "chars_embedding/embeddings"


# ----------------------------------------------------------------------------- weights file
def safetensors_bytes(tensors: dict, metadata: dict[str, str]) -> bytes:
    """A safetensors file whose bytes depend only on the tensors and metadata.

    safetensors' own writer emits the ``__metadata__`` map in hash order (it differs run to
    run); the format (8-byte little-endian header length, JSON header padded with spaces to
    8 bytes, then the data) leaves key order free, so the header is re-written sorted.
    """
    from safetensors.numpy import save

    raw = save(tensors, metadata=metadata)
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw[8 + n :]


def read_weights(path: Path) -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file; damage is a one-line TaggerError."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            metadata = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise TaggerError(f"{path}: unreadable weights ({str(err).splitlines()[0]}); re-train or restore the model") from None
    return tensors, metadata


def save_model(model, path, metrics=None):
    from tagger.fsutil import atomic_write_bytes

    path = Path(path)
    tmp = new_temp_dir(path)
    try:
        (tmp / "config.yaml").write_text(model.config.to_yaml(), encoding="utf-8")
        model.words.save(tmp / "tokenizer.json")
        model.labels.save(tmp / "labels.json")
        if getattr(model, "chars", None) is not None:
            model.chars.save(tmp / CHARS)
        tensors = {name: np.ascontiguousarray(w) for name, w in model.network.named_weights()}
        meta = {"format": FORMAT_VERSION, "task": model.task, "n_words": str(len(model.words)), "n_labels": str(len(model.labels))}
        atomic_write_bytes(tmp / WEIGHTS, safetensors_bytes(tensors, meta))
        if metrics is not None:
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        replace_dir(tmp, path)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and err.filename is not None:  # name the model, not its temporary
            err.filename = str(err.filename).replace(str(tmp), str(path))
        raise


# ----------------------------------------------------------------------------- loading
def _resolve_device(device):
    from tagger.device import announce_compile, resolve_device

    ops = resolve_device(device)
    announce_compile(ops)
    return ops


def is_model_dir(path) -> bool:
    path = Path(path)
    return (path / "config.yaml").is_file() and (path / WEIGHTS).is_file()


def resolve_model_dir(path) -> Path:
    """A model directory, or a `tagger train` output folder (its model-best/ is used).

    A save killed between its two renames leaves the complete previous model in the hidden
    `.NAME.old`; it is used then (the next save puts it back in place).
    """
    path = Path(path)
    for _ in range(3):  # a concurrent save may move the folder between two looks
        for candidate in (path, path / "model-best"):
            if is_model_dir(candidate):
                return candidate
            if not candidate.exists() and is_model_dir(old_sibling(candidate)):
                return old_sibling(candidate)
    return path


def _read_config(path: Path):
    from tagger.config import parse_config, safe_load_yaml

    f = path / "config.yaml"
    try:
        text = f.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TaggerError(f"{f}: unreadable ({type(err).__name__}); the model is damaged") from None
    raw = safe_load_yaml(text, str(f))
    return parse_config(raw, base_dir=path, source=str(f))


def check_chars(path: Path, chars, tensors: dict) -> None:
    """chars.json's size is the character embedding's row count (when the model has one)."""
    table = tensors.get(CHAR_EMBEDDING)
    if chars is not None and table is not None and table.ndim == 2 and table.shape[0] != len(chars):
        raise TaggerError(
            f"{path / CHARS}: {len(chars)} characters, but {path / WEIGHTS} was trained with {table.shape[0]}; "
            "the files come from different models"
        )


def check_consistency(path: Path, config, words, labels, tensors: dict, metadata: dict, chars=None) -> None:
    """Task, vocabulary sizes and labels of the files agree with the weights; weights are finite."""
    w = path / WEIGHTS
    task = metadata.get("task")
    if task is not None and task != config.model.task:
        raise TaggerError(f"{w}: weights of a model.task {task} model, but {path / 'config.yaml'} says {config.model.task}; the files come from different models")
    emb, out = tensors.get(EMBEDDING), tensors.get(OUTPUT)
    n_words = int(metadata["n_words"]) if "n_words" in metadata else (emb.shape[0] if emb is not None and emb.ndim == 2 else None)
    n_labels = int(metadata["n_labels"]) if "n_labels" in metadata else (out.shape[-1] if out is not None and out.ndim == 2 else None)
    if n_words is not None and n_words != len(words):
        raise TaggerError(f"{path / 'tokenizer.json'}: {len(words)} words, but {w} was trained with {n_words}; the files come from different models")
    if n_labels is not None and n_labels != len(labels):
        raise TaggerError(f"{path / 'labels.json'}: {len(labels)} labels, but {w} was trained with {n_labels}; the files come from different models")
    check_chars(path, chars, tensors)
    for name, t in tensors.items():
        if t.dtype.kind == "f" and not np.isfinite(t).all():
            raise TaggerError(f"{w}: {name} holds NaN or infinite values; the model is damaged (re-train or restore it)")


def load_model(path, device="cpu", dtype=np.float32):
    """Read a model directory (or a training output folder); any damage is a one-line
    TaggerError naming the file."""
    from tagger.data.chars import CharVocab
    from tagger.data.vocab import LabelVocab, WordVocab
    from tagger.models import Model, build_network, check_network_fits

    path = resolve_model_dir(path)
    if not path.is_dir():
        raise TaggerError(f"{path}: no such model directory (train one with `tagger train CONFIG --output {path}`)")
    if not is_model_dir(path) and is_model_dir(path / "previous" / "model-best"):
        raise TaggerError(
            f"{path}: the run here has saved no model yet (running, or stopped early); "
            f"the run before it saved {path / 'previous' / 'model-best'}"
        )
    for name in FILES:
        if not (path / name).is_file():
            raise TaggerError(f"{path / name}: missing; this is not a complete tagger model directory")
    config = _read_config(path)
    if config.model.chars.enabled and not (path / CHARS).is_file():
        raise TaggerError(f"{path / CHARS}: missing; config.yaml has model.chars.encoder {config.model.chars.encoder}, "
                          "so the model needs its character vocabulary (re-train or restore the model directory)")
    words = WordVocab.load(path / "tokenizer.json")
    labels = LabelVocab.load(path / "labels.json")
    chars = CharVocab.load(path / CHARS) if config.model.chars.enabled else None
    n_chars = None if chars is None else len(chars)
    tensors, metadata = read_weights(path / WEIGHTS)
    check_consistency(path, config, words, labels, tensors, metadata, chars)
    check_network_fits(config.model, len(words), len(labels), dtype, copies=1, source=str(path / "config.yaml"),
                       n_chars=n_chars or 0)
    ops = _resolve_device(device)
    network = build_network(config.model, len(words), len(labels), ops=ops, dtype=dtype, seed=0, n_chars=n_chars)
    expected = dict(network.named_weights())
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise TaggerError(
            f"{path / WEIGHTS}: does not match config.yaml "
            f"(missing {missing[:3]}, unexpected {extra[:3]}); the model directory is inconsistent"
        )
    for name, want in expected.items():
        if tensors[name].shape != want.shape:
            raise TaggerError(f"{path / WEIGHTS}: {name} has shape {tensors[name].shape}, config.yaml implies {want.shape}")
    for leaf in network.leaves():
        leaf.set_weights([tensors[f"{leaf.name}/{p}"] for p in leaf.param_names])
    return Model(config, words, labels, network, chars=chars)


def read_metrics(path):
    f = Path(path) / "metrics.json"
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None
