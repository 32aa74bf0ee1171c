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


def _chars(ids, seed=5):
    """Per example an (n_words, C_k) char-id matrix, post-padded with 0, ragged words."""
    rng = np.random.default_rng(seed)
    out = []
    for words in ids:
        lens = rng.integers(0, 7, size=len(words))
        m = np.zeros((len(words), max(int(lens.max(initial=0)), 1)), dtype=np.int32)
        for k, n in enumerate(lens):
            m[k, :n] = rng.integers(1, 40, size=n)
        out.append(m)
    return out


@pytest.mark.parametrize("unit,size", [("sentences", 8), ("tokens", 100)])
def test_chars_follow_the_rows_and_c_is_the_batch_longest_word(unit, size):
    ids, labels = _data()
    chars = _chars(ids)
    batches = make_batches(ids, labels, batch_size=size, unit=unit, shuffle=True, seed=2, chars=chars)
    for b in batches:
        _check_batch(b, ids, labels)
        assert b.chars.dtype == np.int32 and b.char_lengths.dtype == np.int32
        longest = max(int((chars[k] != 0).sum(-1).max(initial=0)) for k in b.index)
        assert b.chars.shape == b.ids.shape + (max(longest, 1),)
        for row, k in enumerate(b.index):
            n, m = b.lengths[row], chars[k]
            w = min(m.shape[1], b.chars.shape[2])
            np.testing.assert_array_equal(b.chars[row, :n, :w], m[:, :w])
            np.testing.assert_array_equal(b.char_lengths[row, :n], (m != 0).sum(-1))
            assert not b.chars[row, n:].any() and not b.char_lengths[row, n:].any()
    assert make_batches(ids, labels, batch_size=8)[0].chars is None


def test_a_rank_share_of_a_chars_batch_keeps_its_characters():
    from tagger.distributed import share_batch

    ids, labels = _data(n=9)
    batch = pad_batch(ids, labels, np.arange(9), _chars(ids))
    part = share_batch(batch, 1, 2)
    for row, k in enumerate(part.index):
        src = int(np.flatnonzero(batch.index == k)[0])
        n = part.lengths[row]
        np.testing.assert_array_equal(part.chars[row, :n], batch.chars[src, :n, : part.chars.shape[2]])
        np.testing.assert_array_equal(part.char_lengths[row, :n], batch.char_lengths[src, :n])
    with pytest.raises(ValueError, match="9 examples but 2 character matrices"):
        make_batches(ids, labels, chars=_chars(ids)[:2])
