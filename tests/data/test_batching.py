"""Batching: sorted longest-first, budgets, determinism, and restoring input order."""

from __future__ import annotations

import numpy as np
import pytest

from tagger.data.batching import make_batches, pad_batch, restore_order


def _data(n=57, seed=3):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 30, size=n)
    ids = [list(rng.integers(2, 100, size=k)) for k in lengths]
    labels = [list(rng.integers(0, 5, size=k)) for k in lengths]
    return ids, labels


def _check_batch(b, ids, labels):
    assert b.ids.dtype == np.int32 and b.lengths.dtype == np.int32 and b.mask.dtype == bool
    assert np.all(np.diff(b.lengths) <= 0), "rows must be sorted longest first"
    assert b.ids.shape == (b.size, int(b.lengths[0])) == b.mask.shape
    for row, k in enumerate(b.index):
        n = b.lengths[row]
        assert n == len(ids[k])
        assert list(b.ids[row, :n]) == list(ids[k]) and not b.ids[row, n:].any()
        assert b.mask[row].sum() == n and b.mask[row, :n].all()
        assert list(b.labels[row, :n]) == list(labels[k])


@pytest.mark.parametrize("unit,size", [("sentences", 8), ("tokens", 100)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_cover_every_example_once_sorted(unit, size, shuffle):
    ids, labels = _data()
    batches = make_batches(ids, labels, batch_size=size, unit=unit, shuffle=shuffle, seed=1, buffer=20)
    seen = np.concatenate([b.index for b in batches])
    assert sorted(seen.tolist()) == list(range(len(ids)))
    for b in batches:
        _check_batch(b, ids, labels)
        if unit == "sentences":
            assert b.size <= size
        else:
            assert b.ids.size <= size or b.size == 1


def test_token_budget_and_long_sentence_kept():
    ids = [[1] * 3] * 10 + [[2] * 50]  # the long one exceeds the budget of 20 tokens
    batches = make_batches(ids, batch_size=20, unit="tokens")
    assert batches[0].size == 1 and batches[0].lengths.tolist() == [50]
    assert all(b.ids.size <= 20 for b in batches[1:])
    assert sum(b.size for b in batches) == 11
    assert [b.size for b in batches[1:]] == [6, 4]  # 6 * 3 = 18 <= 20


def test_seeded_determinism():
    ids, labels = _data()
    a = make_batches(ids, labels, batch_size=5, shuffle=True, seed=7, buffer=16)
    b = make_batches(ids, labels, batch_size=5, shuffle=True, seed=7, buffer=16)
    c = make_batches(ids, labels, batch_size=5, shuffle=True, seed=8, buffer=16)
    assert [x.index.tolist() for x in a] == [x.index.tolist() for x in b]
    assert [x.index.tolist() for x in a] != [x.index.tolist() for x in c]


def test_restore_order_round_trip():
    ids, labels = _data(n=23)
    batches = make_batches(ids, labels, batch_size=4, shuffle=True, seed=2)
    outputs = [b.unpad(b.ids) for b in batches]  # "predictions" = the ids themselves
    restored = restore_order(batches, outputs)
    assert [r.tolist() for r in restored] == [list(x) for x in ids]


def test_classification_labels_and_no_labels():
    b = pad_batch([[5, 6], [7, 8, 9], [1]], [0, 2, 1], [0, 1, 2])
    assert b.lengths.tolist() == [3, 2, 1] and b.index.tolist() == [1, 0, 2]
    assert b.labels.tolist() == [2, 0, 1] and b.labels.shape == (3,)
    assert b.ids.tolist() == [[7, 8, 9], [5, 6, 0], [1, 0, 0]]
    assert make_batches([[1], [2, 3]], None, batch_size=2)[0].labels is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="unit must be"):
        make_batches([[1]], unit="words")
    with pytest.raises(ValueError, match="1 examples but 2 labels"):
        make_batches([[1]], [[0], [1]])
