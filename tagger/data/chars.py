"""The character vocabulary of the character encoders (tagger/layers/chars.py).

Characters are Unicode code points after NFC normalisation (so a precomposed "é" and
"e" + combining accent are one character). Ids:

    0  [PAD]   padding, never a real character
    1  [UNK]   any character not in the vocabulary
    2.. the training characters by descending frequency (ties: first appearance), those
        seen at least `min_freq` times, at most `max_size` of them

max_chars: the longest a word is encoded. None (default) encodes every character. With
k = max_chars a longer word keeps its first ceil(k / 2) and its last floor(k / 2)
characters (the prefix and the suffix, where English morphology lives), dropping the
middle, so the end of a long word still counts: "internationalisation" with k = 8 is
"inte" + "tion".

File: plain JSON (UTF-8), one object
    {"format": "tagger-chars", "version": 1, "max_chars": null | k, "chars": ["e", "a", ...]}
with the characters of ids 2.. in order. A missing, damaged, foreign or newer file raises
one-line DataError naming the file.
"""
from __future__ import annotations

import json
import os
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from tagger.errors import DataError, TaggerError
from tagger.fsutil import atomic_write_text

PAD_CHAR, UNK_CHAR = "[PAD]", "[UNK]"
PAD_ID, UNK_ID = 0, 1
FORMAT = "tagger-chars"
VERSION = 1


def normalize(word: str) -> str:
    return unicodedata.normalize("NFC", word)


def clip(word: str, max_chars: int | None) -> str:
    """The characters of `word` that are encoded (see the module docstring)."""
    if max_chars is None or len(word) <= max_chars:
        return word
    head = (max_chars + 1) // 2
    tail = max_chars - head
    return word[:head] + (word[-tail:] if tail else "")


def _check_max_chars(max_chars, where):
    if max_chars is not None and (isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1):
        raise TaggerError(f"{where}: max_chars must be null (no cap) or an int >= 1, got {max_chars!r}")


class CharVocab:
    """Characters <-> ids; `encode_batch` gives the padded id matrix of a list of words."""

    def __init__(self, chars: Sequence[str], max_chars: int | None = None):
        _check_max_chars(max_chars, "CharVocab")
        self.chars = [PAD_CHAR, UNK_CHAR, *chars]
        self._max_chars = max_chars
        self._ids = {c: k + 2 for k, c in enumerate(chars)}
        if len(self._ids) != len(chars):
            raise TaggerError("CharVocab: the character list has duplicates")
        # word -> its encoded ids (int32): `tagger train` encodes every token of the
        # training set each epoch, a few word types many times over; at most CACHE_WORDS
        # entries, so a long prediction over unseen text cannot grow it without bound
        self._encoded: dict[str, np.ndarray] = {}

    CACHE_WORDS = 1 << 18

    @property
    def max_chars(self) -> int | None:
        """Read-only: the word cache holds encodings clipped to it."""
        return self._max_chars

    @classmethod
    def build(cls, words: Iterable[str], min_freq: int = 1, max_size: int | None = None,
              max_chars: int | None = None) -> "CharVocab":
        """From the training tokens: characters seen >= min_freq times, the most frequent
        max_size of them (None: all)."""
        if not isinstance(min_freq, int) or min_freq < 1:
            raise TaggerError(f"CharVocab.build: min_freq must be an int >= 1, got {min_freq!r}")
        counts: Counter = Counter()
        for word in words:
            counts.update(normalize(word))
        # Counter keeps first-appearance order; a stable sort by count keeps it for ties
        kept = [c for c, n in sorted(counts.items(), key=lambda kv: -kv[1]) if n >= min_freq]
        return cls(kept[:max_size] if max_size is not None else kept, max_chars)

    # -- queries --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.chars)

    @property
    def size(self) -> int:
        """Rows of the character embedding (padding and unknown included)."""
        return len(self.chars)

    def char_to_id(self, char: str) -> int:
        return self._ids.get(char, UNK_ID)

    def encode(self, word: str) -> list[int]:
        return [self._ids.get(c, UNK_ID) for c in clip(normalize(word), self.max_chars)]

    def _word_ids(self, word: str) -> np.ndarray:
        """encode(word) as an int32 array, from the word cache (never handed out: copied)."""
        ids = self._encoded.get(word)
        if ids is None:
            ids = np.array(self.encode(word), dtype=np.int32)
            if len(self._encoded) < self.CACHE_WORDS:
                self._encoded[word] = ids
        return ids

    def encode_batch(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids (N, C) int32 post-padded with 0, lengths (N,) int32); C = the longest
        encoded word (at least 1, so an empty list or empty words still give a matrix)."""
        encoded = [self._word_ids(w) for w in words]
        lengths = np.fromiter((e.size for e in encoded), dtype=np.int32, count=len(encoded))
        C = max(int(lengths.max(initial=0)), 1)
        ids = np.zeros((len(encoded), C), dtype=np.int32)
        if encoded:  # row-major order of the real cells = the words' ids one after another
            ids[np.arange(C)[None, :] < lengths[:, None]] = np.concatenate(encoded)
        return ids, lengths

    def encode_each(self, sentences: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Per sentence its (n_k, C_k) int32 ids, C_k = its longest encoded word (at least 1):
        [encode_batch(s)[0] for s in sentences], in one vectorised pass (the per-sentence
        NumPy calls cost more than the encoding once the words are cached). The matrices
        are views of one buffer."""
        n = np.fromiter((len(s) for s in sentences), dtype=np.int64, count=len(sentences))
        encoded = [self._word_ids(w) for s in sentences for w in s]
        wlen = np.fromiter((e.size for e in encoded), dtype=np.int64, count=len(encoded))
        first = np.cumsum(n) - n  # each sentence's first word
        C = np.ones(len(n), dtype=np.int64)
        full = n > 0  # reduceat over the non-empty sentences only: an empty one adds no word
        if full.any():
            C[full] = np.maximum(np.maximum.reduceat(wlen, first[full]), 1)
        base = np.cumsum(n * C) - n * C  # each sentence's matrix in the buffer
        sent = np.repeat(np.arange(len(n)), n)
        row = base[sent] + (np.arange(len(encoded)) - first[sent]) * C[sent]  # each word's row
        buf = np.zeros(int((n * C).sum()), dtype=np.int32)
        if encoded:
            within = np.arange(int(wlen.sum())) - np.repeat(np.cumsum(wlen) - wlen, wlen)
            buf[np.repeat(row, wlen) + within] = np.concatenate(encoded)
        return [buf[b : b + k * c].reshape(k, c) for b, k, c in zip(base.tolist(), n.tolist(), C.tolist())]

    def encode_sentences(self, sentences: Sequence[Sequence[str]], words: int | None = None):
        """(ids (B, W, C) int32, lengths (B, W) int32) of post-padded sentences; W = the
        longest sentence unless given (the batch's padded width)."""
        W = max([len(s) for s in sentences] + [0]) if words is None else int(words)
        flat = [w for s in sentences for w in s]
        ids, lengths = self.encode_batch(flat)
        out = np.zeros((len(sentences), W, ids.shape[1]), dtype=np.int32)
        out_len = np.zeros((len(sentences), W), dtype=np.int32)
        k = 0
        for b, s in enumerate(sentences):
            if len(s) > W:
                raise TaggerError(f"encode_sentences: sentence {b} has {len(s)} words, more than the {W} asked for")
            out[b, : len(s)] = ids[k : k + len(s)]
            out_len[b, : len(s)] = lengths[k : k + len(s)]
            k += len(s)
        return out, out_len

    # -- files ----------------------------------------------------------------------------
    def to_json(self) -> str:
        data = {"format": FORMAT, "version": VERSION, "max_chars": self.max_chars, "chars": self.chars[2:]}
        return json.dumps(data, ensure_ascii=False)

    def save(self, path: str | os.PathLike) -> None:
        """Written to a temporary file and renamed, so a crash never leaves half a file."""
        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CharVocab":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{path}: character vocabulary not found; was the model saved completely?") from None
        except (ValueError, UnicodeDecodeError) as err:
            first = str(err).splitlines()[0]
            raise DataError(f"{path}: damaged character vocabulary ({first}); re-train or restore the model directory") from None
        except OSError as err:
            raise DataError(f"{path}: cannot read the character vocabulary ({err.strerror or err})") from None
        return cls._from_data(data, path)

    @classmethod
    def _from_data(cls, data, path) -> "CharVocab":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DataError(f"{path}: not a tagger character vocabulary (expected a JSON object with \"format\": \"{FORMAT}\")")
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise DataError(f"{path}: character vocabulary has no valid \"version\" (an int >= 1), got {version!r}")
        if version > VERSION:
            raise DataError(f"{path}: character vocabulary version {version} is newer than this tagger reads ({VERSION}); upgrade tagger")
        chars = data.get("chars")
        if not isinstance(chars, list) or not all(isinstance(c, str) and len(c) == 1 for c in chars):
            raise DataError(f"{path}: \"chars\" must be a list of single characters")
        if len(set(chars)) != len(chars):
            raise DataError(f"{path}: \"chars\" lists a character twice")
        try:
            _check_max_chars(data.get("max_chars"), str(path))
        except TaggerError as err:
            raise DataError(str(err)) from None
        return cls(chars, data.get("max_chars"))
