"""The model card: every section is there and its numbers match the model directory."""

from __future__ import annotations

import hashlib
import json

import pytest

from tagger.card import model_card, write_card
from tagger.config import load_config, parse_config
from tagger.errors import TaggerError
from tagger.data.prepare import build_vocabularies, load_splits
from tagger.io import save_model
from tagger.models import Model, build_network
from tests.cli.conftest import REPO, SAMPLES


def tiny_model_dir(config, folder, seed=0):
    """An untrained model saved with real dev scores, and a one-line training log beside it."""
    splits = load_splits(config)
    words, labels = build_vocabularies(config, splits.train)
    network = build_network(config.model, len(words), len(labels), ops="reference", seed=seed)
    model = Model(config, words, labels, network)
    save_model(model, folder / "model-best", {"dev": model.evaluate(splits.dev), "interrupted": False})
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 1, "tokens_per_s": 1234.0}) + "\n")
    return folder / "model-best"


@pytest.fixture(scope="module")
def tag_dir(tmp_path_factory):
    cfg = load_config(REPO / "configs" / "sample_pos.yaml", overrides=["model.lstm_units=8", "model.embedding_dim=8"])
    return tiny_model_dir(cfg, tmp_path_factory.mktemp("tag"))


def test_card_has_every_section_with_the_directory_numbers(tag_dir):
    text = model_card(tag_dir, command="tagger train x.yaml", date="2026-01-02")
    for heading in ("## Data", "## Labels (15)", "## Scores", "## What this model is not for", "## Config"):
        assert heading in text, heading
    train = SAMPLES / "sample_pos.train.conllu"
    assert f"| train | `{train}` | 250 | `{hashlib.sha256(train.read_bytes()).hexdigest()}` |" in text
    assert "| dev |" in text and "| 50 |" in text
    dev = json.loads((tag_dir / "metrics.json").read_text())["dev"]
    assert f"**dev**: accuracy {100 * dev['accuracy']:.2f}%" in text
    noun = dev["report"]["per_class"]["NOUN"]
    assert f"| NOUN | {noun['precision']:.4f} | {noun['recall']:.4f} | {noun['f1']:.4f} | {noun['support']} |" in text
    assert "**Seed:** 0" in text and "`tagger train x.yaml`" in text and "2026-01-02" in text
    assert "median 1,234 tokens/s" in text and "numpy " in text and "numba " in text
    assert "task: tag" in text  # the config, verbatim


def test_write_card_writes_readme_and_survives_moved_data(tag_dir, tmp_path):
    path = write_card(tag_dir, command="c", date="d")
    assert path == tag_dir / "README.md" and path.read_text(encoding="utf-8") == model_card(tag_dir, command="c", date="d")
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in tag_dir.iterdir():
        text = f.read_bytes()
        if f.name == "config.yaml":
            text = text.replace(str(SAMPLES).encode(), b"/gone")
        (moved / f.name).write_bytes(text)
    assert "`/gone/sample_pos.train.conllu` | (not found here)" in model_card(moved)
    assert "Speed:** not recorded" in model_card(moved)


def test_classifier_card(tmp_path):
    raw = {"data": {"train": str(SAMPLES / "sample_cls.train.tsv"), "dev": str(SAMPLES / "sample_cls.dev.tsv"),
                    "format": "tsv", "text_column": "sentence", "label_column": "label"},
           "model": {"task": "classify", "embedding_dim": 8, "lstm_units": 8, "pooling": "max"}}
    text = model_card(tiny_model_dir(parse_config(raw), tmp_path))
    assert "one label per text" in text and "max pooling -> dense softmax" in text
    assert "## Labels (3)" in text and "| positive |" in text and "it always picks one of them" in text


def test_not_a_model_directory(tmp_path):
    with pytest.raises(TaggerError, match="no config.yaml; give a model directory"):
        model_card(tmp_path)
