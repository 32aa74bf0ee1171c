"""Padded, length-sorted batches.

Notation: ``B`` examples in a batch, ``T`` = the longest length in it.

:class:`PaddedBatch` arrays (NumPy, C-contiguous)::

    ids     (B, T) int32   word ids, post-padded with 0 (= [PAD])
    lengths (B,)   int32   real lengths, DESCENDING (longest first: the LSTM kernels rely on it)
    spans   Spans          (starts, lengths) of every row, computed once: the one description
                           of padding the whole network, the loss and the CRF read (tagger/spans.py)
    mask    (B, T) bool    True on real tokens (a view of ``spans``)
    labels  (B, T) int32   per-token label ids, padded with 0 - use ``mask`` to ignore padding
            (B,)   int32   or one class id per example (classification)
            None           or no labels (prediction)
    index   (B,)   int64   position of each row in the input order (see :func:`restore_order`)
    chars   (B, T, C) int32  each word's character ids (tagger.data.chars.CharVocab), post-padded
                           with 0; C = the batch's longest word; None without a character encoder
    char_lengths (B, T) int32  characters per word (0 at padded words); None with chars None

:func:`make_batches` follows the "sort a shuffled buffer by length, cut by padded size"
recipe: the (optionally shuffled) examples are taken ``buffer`` at a time, each buffer is
sorted longest-first, and cut into batches of ``batch_size`` sentences, or, with
``unit="tokens"``, of as many sentences as keep ``B * T <= batch_size``.  A sentence longer
than the token budget becomes a batch of its own; nothing is ever dropped.  With
``shuffle=True`` the batch order is shuffled too.  All randomness comes from
``numpy.random.default_rng(seed)``: same seed, same batches (pass ``seed + epoch`` for a
new order each epoch).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from tagger.spans import Spans


@dataclass
class PaddedBatch:
    ids: np.ndarray  # (B, T) int32
    lengths: np.ndarray  # (B,) int32, descending
    spans: Spans  # post-padding spans of the rows
    labels: np.ndarray | None  # (B, T) or (B,) int32
    index: np.ndarray  # (B,) int64
    chars: np.ndarray | None = None  # (B, T, C) int32
    char_lengths: np.ndarray | None = None  # (B, T) int32

    @property
    def mask(self) -> np.ndarray:
        """(B, T) bool, True on real tokens."""
        return self.spans.mask()

    @property
    def size(self) -> int:
        return int(self.ids.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())

    def unpad(self, values: np.ndarray) -> list[np.ndarray]:
        """Split per-token ``values`` (B, T, ...) into one array of its real length per row."""
        return [values[i, : int(n)] for i, n in enumerate(self.lengths)]


def pad_chars(chars: Sequence[np.ndarray], order: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray]:
    """(chars (B, T, C) int32, char_lengths (B, T) int32) of examples' character matrices
    (example k: (n_k, C_k), post-padded with 0, as CharVocab.encode_batch gives), rows in
    `order`; C = the longest word of these examples (at least 1)."""
    C = max([int((c != 0).sum(axis=-1).max(initial=0)) for c in chars] + [1])
    out = np.zeros((len(order), T, C), dtype=np.int32)
    for row, k in enumerate(order):
        c = np.asarray(chars[k])
        w = min(c.shape[1], C)  # a share of a wider batch (distributed.share_batch) holds only 0 past C
        out[row, : c.shape[0], :w] = c[:, :w]
    return out, (out != 0).sum(axis=-1).astype(np.int32)


def pad_batch(
    ids: Sequence[Sequence[int]],
    labels: Sequence | None,
    index: Sequence[int],
    chars: Sequence[np.ndarray] | None = None,
) -> PaddedBatch:
    """Pad the given examples (any order) into a batch sorted longest-first; `chars`, when
    given, holds each example's (n_words, C_k) character ids (see :func:`pad_chars`)."""
    lengths = np.array([len(x) for x in ids], dtype=np.int32)
    order = np.argsort(-lengths, kind="stable")
    lengths = lengths[order]
    B = len(order)
    T = int(lengths[0]) if B else 0
    out_ids = np.zeros((B, T), dtype=np.int32)
    per_token = labels is not None and B > 0 and not np.isscalar(labels[0])
    out_labels = None
    if labels is not None:
        out_labels = np.zeros((B, T), dtype=np.int32) if per_token else np.zeros((B,), dtype=np.int32)
    for row, k in enumerate(order):
        n = lengths[row]
        out_ids[row, :n] = ids[k]
        if out_labels is not None:
            if per_token:
                if len(labels[k]) != n:
                    raise ValueError(f"example {index[k]}: {n} tokens but {len(labels[k])} labels")
                out_labels[row, :n] = labels[k]
            else:
                out_labels[row] = labels[k]
    if chars is not None and len(chars) != B:
        raise ValueError(f"{B} examples but {len(chars)} character matrices")
    out_chars, char_lengths = pad_chars(chars, order, T) if chars is not None else (None, None)
    return PaddedBatch(
        ids=out_ids,
        lengths=lengths,
        spans=Spans.from_lengths(lengths, T),
        labels=out_labels,
        index=np.asarray(index, dtype=np.int64)[order],
        chars=out_chars,
        char_lengths=char_lengths,
    )


def make_batches(
    ids: Sequence[Sequence[int]],
    labels: Sequence | None = None,
    batch_size: int = 32,
    unit: str = "sentences",
    shuffle: bool = False,
    seed: int = 0,
    buffer: int | None = None,
    chars: Sequence[np.ndarray] | None = None,
) -> list[PaddedBatch]:
    """Cut encoded examples into length-sorted padded batches.

    ids:        one sequence of word ids per example.
    labels:     per example, a sequence of label ids (tagging) or one int (classification); or None.
    batch_size: sentences per batch, or the ``B * T`` budget with ``unit="tokens"``.
    buffer:     examples sorted together (default: all of them).
    chars:      per example, its (n_words, C_k) character ids, or None (no character encoder).
    """
    n = len(ids)
    if labels is not None and len(labels) != n:
        raise ValueError(f"{n} examples but {len(labels)} labels")
    if chars is not None and len(chars) != n:
        raise ValueError(f"{n} examples but {len(chars)} character matrices")
    lengths = sequence_lengths(ids)
    return [pad_rows(ids, labels, chars, g) for g in batch_groups(lengths, batch_size, unit, shuffle, seed, buffer)]


def sequence_lengths(sequences: Sequence) -> np.ndarray:
    """(n,) int64: the length of each sequence (word ids or tokens), what batch_groups reads."""
    return np.fromiter((len(x) for x in sequences), dtype=np.int64, count=len(sequences))


def pad_rows(ids, labels, chars, rows) -> PaddedBatch:
    """pad_batch of the examples at `rows` of encoded ids, labels (or None) and character
    matrices (or None): one of batch_groups' batches, or some of its rows."""
    return pad_batch([ids[k] for k in rows], None if labels is None else [labels[k] for k in rows], rows,
                     None if chars is None else [chars[k] for k in rows])


def batch_groups(
    lengths: np.ndarray,
    batch_size: int = 32,
    unit: str = "sentences",
    shuffle: bool = False,
    seed: int = 0,
    buffer: int | None = None,
) -> list[np.ndarray]:
    """The examples of each batch make_batches makes (same arguments, lengths (n,) int):
    per batch an int64 index array, longest example first (the row order pad_batch gives
    them). Lets a caller pad only some rows of each batch (an MPI rank's share)."""
    if unit not in ("sentences", "tokens"):
        raise ValueError(f"unit must be 'sentences' or 'tokens', not {unit!r}")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    n = len(lengths)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n) if shuffle else np.arange(n)
    buffer = n if buffer is None else max(1, int(buffer))

    groups: list[np.ndarray] = []
    for start in range(0, n, buffer):
        chunk = order[start : start + buffer]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        if unit == "sentences":
            groups.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
            continue
        i = 0
        while i < len(chunk):
            longest = max(int(lengths[chunk[i]]), 1)
            take = max(1, batch_size // longest)  # sorted: the first row sets T
            groups.append(chunk[i : i + take])
            i += take
    if shuffle:
        groups = [groups[k] for k in rng.permutation(len(groups))]
    return groups


def restore_order(batches: Iterable[PaddedBatch], outputs: Iterable[Sequence]) -> list:
    """Put per-row outputs of each batch back into input order.

    ``outputs`` holds, for each batch, a sequence of per-row results (e.g. ``batch.unpad(pred)``
    or an array of class ids).  Returns a list with ``result[i]`` = the output of input ``i``.
    """
    pairs = []
    for batch, out in zip(batches, outputs):
        if len(out) != batch.size:
            raise ValueError(f"a batch of {batch.size} rows got {len(out)} outputs")
        pairs.extend(zip(batch.index.tolist(), out))
    result: list = [None] * len(pairs)
    for i, value in pairs:
        if i >= len(result) or result[i] is not None:
            raise ValueError("batch indices do not cover 0..N-1 exactly once")
        result[i] = value
    return result
