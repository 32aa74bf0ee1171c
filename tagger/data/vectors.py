"""Pretrained word vectors in text form: GloVe, word2vec text, fastText ``.vec``.

    GloVe            ``word v1 ... vD`` per line
    word2vec/.vec    a header line ``N D`` first, then lines like GloVe's (detected automatically)

A ``.gz`` suffix is decompressed.  The word is everything before the last ``D`` fields, so
words containing spaces (as in some GloVe releases) survive.  A line with the wrong number
of values, or a value that is not a number, raises DataError naming ``FILE:LINE``.

:func:`embedding_matrix` builds the ``(V, D)`` float32 matrix for a :class:`WordVocab`:
row 0 (``[PAD]``) is zero, a word takes its own vector, else the vector of its lower-cased
form (case-insensitive fallback), else a row drawn uniformly from ``[-scale, scale]``
(Keras' ``Embedding`` default, scale 0.05) from the given NumPy Generator.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from tagger.data.readers import iter_lines
from tagger.data.vocab import PAD_ID, UNK_ID, WordVocab
from tagger.errors import DataError


@dataclass
class Vectors:
    """Words and their vectors (``matrix[i]`` belongs to ``words[i]``)."""

    words: list[str]
    matrix: np.ndarray  # (N, D) float32
    _index: dict[str, int] = field(default_factory=dict, repr=False)
    _lower: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for i, w in enumerate(self.words):
            self._index.setdefault(w, i)
            self._lower.setdefault(w.lower(), i)  # first (= most frequent in GloVe order) wins

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def __len__(self) -> int:
        return len(self.words)

    def lookup(self, word: str) -> int | None:
        """Row of ``word``: exact match, else case-insensitive; None if absent."""
        i = self._index.get(word)
        return self._lower.get(word.lower()) if i is None else i

    def get(self, word: str) -> np.ndarray | None:
        i = self.lookup(word)
        return None if i is None else self.matrix[i]


def _is_header(fields: list[str]) -> bool:
    return len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit()


def read_vectors(
    path: str | os.PathLike,
    keep: Iterable[str] | None = None,
    encoding: str = "utf-8",
) -> Vectors:
    """Read a vectors file.  ``keep``: only words whose exact or lower-cased form is in it."""
    wanted = None
    if keep is not None:
        wanted = set(keep)
        wanted |= {w.lower() for w in wanted}
    words: list[str] = []
    rows: list[np.ndarray] = []
    dim = None
    declared = None
    for lineno, line in iter_lines(path, encoding):
        fields = line.rstrip().split(" ")
        if lineno == 1 and _is_header(fields):
            declared, dim = int(fields[0]), int(fields[1])
            continue
        if not line.strip():
            continue
        if dim is None:
            dim = len(fields) - 1
            if dim < 1:
                raise DataError(f"{path}:{lineno}: expected 'word v1 ... vD', found one field")
        if len(fields) < dim + 1:
            raise DataError(
                f"{path}:{lineno}: expected {dim} values after the word, found {len(fields) - 1} "
                "(truncated line, or vectors of mixed sizes?)"
            )
        word = " ".join(fields[:-dim]) if len(fields) > dim + 1 else fields[0]
        if wanted is not None and word not in wanted and word.lower() not in wanted:
            continue
        try:
            rows.append(np.asarray(fields[-dim:], dtype=np.float32))
        except ValueError:
            bad = next(f for f in fields[-dim:] if not _is_float(f))
            raise DataError(f"{path}:{lineno}: value {bad!r} is not a number") from None
        words.append(word)
    if dim is None:
        raise DataError(f"{path}: no vectors found (is the file empty?)")
    if declared is not None and keep is None and len(words) != declared:
        raise DataError(f"{path}: header announces {declared} vectors but the file has {len(words)}")
    matrix = np.stack(rows) if rows else np.zeros((0, dim), dtype=np.float32)
    return Vectors(words, matrix)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def embedding_matrix(
    vocab: WordVocab,
    vectors: Vectors,
    rng: np.random.Generator,
    dim: int | None = None,
    scale: float = 0.05,
    counts: Mapping[str, int] | None = None,
) -> tuple[np.ndarray, dict]:
    """``(V, D)`` float32 embedding matrix for ``vocab`` and a coverage report.

    ``dim``: the configured ``model.embedding_dim``; a mismatch raises DataError.
    ``counts``: word frequencies in the training data, to report token coverage too.
    Coverage: ``{"types_found", "types_total", "types", "tokens_found", "tokens_total", "tokens"}``
    (``types`` / ``tokens`` are fractions; token fields only with ``counts``).  A token is
    covered when its word is in the vocabulary and that entry got a pretrained vector.
    """
    if dim is not None and dim != vectors.dim:
        raise DataError(
            f"pretrained vectors have {vectors.dim} dimensions but model.embedding_dim is {dim}; "
            f"set model.embedding_dim: {vectors.dim}"
        )
    size, d = vocab.size, vectors.dim
    matrix = rng.uniform(-scale, scale, size=(size, d)).astype(np.float32)
    matrix[PAD_ID] = 0.0
    has_vector: set[int] = set()
    for idx, word in enumerate(vocab.words()):
        if idx in (PAD_ID, UNK_ID):
            continue
        row = vectors.lookup(word)
        if row is not None:
            matrix[idx] = vectors.matrix[row]
            has_vector.add(idx)
    found = len(has_vector)
    total = size - 2
    report: dict = {"types_found": found, "types_total": total, "types": found / total if total else 0.0}
    if counts is not None:
        tok_total = sum(counts.values())
        tok_found = sum(n for w, n in counts.items() if vocab.word_to_id(w) in has_vector)
        report.update(tokens_found=tok_found, tokens_total=tok_total, tokens=tok_found / tok_total if tok_total else 0.0)
    return matrix, report
