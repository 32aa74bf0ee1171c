"""The bundled sample corpora read cleanly, have the documented sizes, and are learnable."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest

from tagger.data.readers import read_examples, split_dev
from tagger.data.schemes import invalid_tags, spans
from tagger.errors import DataError

SAMPLES = Path(__file__).resolve().parents[2] / "corpora"
TSV = {"text_column": "sentence", "label_column": "label"}


def _read(name, fmt, **options):
    return list(read_examples(SAMPLES / name, fmt, **options))


def _unigram_baseline(train, dev):
    """Accuracy of 'most frequent label of this word' (unknown -> overall majority) vs. plain majority."""
    by_word = defaultdict(Counter)
    for e in train:
        for w, t in zip(e.tokens, e.labels):
            by_word[w.lower()][t] += 1
    majority = Counter(t for e in train for t in e.labels).most_common(1)[0][0]
    gold = [t for e in dev for t in e.labels]
    pred = [by_word[w.lower()].most_common(1)[0][0] if w.lower() in by_word else majority for e in dev for w in e.tokens]
    acc = sum(a == b for a, b in zip(gold, pred)) / len(gold)
    return acc, sum(t == majority for t in gold) / len(gold)


def test_pos_sample():
    train, dev = _read("sample_pos.train.conllu", "conllu"), _read("sample_pos.dev.conllu", "conllu")
    assert (len(train), len(dev)) == (250, 50)
    acc, majority = _unigram_baseline(train, dev)
    assert acc > 0.9 and majority < 0.25


def test_ner_sample():
    train, dev = _read("sample_ner.train.conll", "conll"), _read("sample_ner.dev.conll", "conll")
    assert (len(train), len(dev)) == (250, 60)
    assert all(not invalid_tags(e.labels, "bio") for e in train + dev)
    kinds = Counter(k for e in train for k, _, _ in spans(e.labels, "bio"))
    assert set(kinds) == {"PER", "LOC", "ORG", "MISC"}
    acc, majority = _unigram_baseline(train, dev)
    assert acc > majority + 0.2


def test_cls_sample():
    train, dev = _read("sample_cls.train.tsv", "tsv", **TSV), _read("sample_cls.dev.tsv", "tsv", **TSV)
    assert (len(train), len(dev)) == (300, 60)
    labels = Counter(e.label for e in train)
    assert set(labels) == {"positive", "negative", "neutral"} and max(labels.values()) / len(train) < 0.5


def test_split_dev_is_seeded_and_disjoint():
    exs = _read("sample_cls.train.tsv", "tsv", **TSV)
    train, dev = split_dev(exs, 0.1, seed=3)
    assert (len(train), len(dev)) == (270, 30)
    assert split_dev(exs, 0.1, seed=3)[1] == dev and split_dev(exs, 0.1, seed=4)[1] != dev
    assert sorted(map(id, train + dev)) == sorted(map(id, exs))
    with pytest.raises(DataError, match="cannot carve a dev set"):
        split_dev(exs[:1], 0.1)
