"""Tokenization and vocabularies, on the HuggingFace ``tokenizers`` library.

Pre-tokenizer
    :func:`pretokenize` splits raw text PTB-style with character offsets:
    ``"I don't know, U.S. $3.50..."`` -> ``I do n't know , U.S. $ 3.50 ...``.
    The same function splits classification text at train and predict time, so both
    see identical tokens.  It is a ``tokenizers`` ``Split`` pre-tokenizer over one regex
    (:data:`TOKEN_PATTERN`), saved inside ``tokenizer.json``.

WordVocab
    A ``tokenizers.Tokenizer`` with a ``WordLevel`` model: ``[PAD]`` = 0, ``[UNK]`` = 1,
    then words by descending frequency (ties by first appearance), cut by ``min_freq``
    and ``max_size``; optional ``Lowercase`` normalizer.  Saved as ``tokenizer.json``.
    Encoding a pre-tokenised sentence gives exactly one id per word (a word is never
    split again: the pre-tokenised path runs without the pre-tokenizer).

Unknown-word classes
    With ``unknown_classes`` a word missing from the vocabulary maps to the entry of its
    shape class (:func:`unknown_class`: ``[UNK-Cap-s]``, ``[UNK-ALLCAPS]``, ``[UNK-NUM]``,
    ``[UNK-lower-ing]`` ...) instead of the one ``[UNK]``, so an unseen name and an unseen
    verb no longer share a vector (the Berkeley/Stanford parsers' signatures; word-level,
    computed from the surface form before lower-casing).  The classes are ordinary
    entries appended after the words, one for each class that occurs in training, so
    ``tokenizer.json`` stays a plain WordLevel model and old files keep their ids; a
    class never seen in training falls back to ``[UNK]``.

LabelVocab
    Labels <-> ids in a fixed list order (JSON: a list of strings).  An unknown label
    at evaluation time raises :class:`~tagger.errors.DataError` naming the label and the
    known ones, unless a fallback label is asked for explicitly (``encode(labels, fallback="O")``).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

from tagger.errors import DataError

PAD, UNK = "[PAD]", "[UNK]"
PAD_ID, UNK_ID = 0, 1

# Suffixes that mark a word's part of speech in English, tried in this order (the first
# match wins, so "es" before "s"); a class is "<shape>-<suffix>" for lower-case and
# capitalised words, and the stem must keep at least two letters.
UNKNOWN_SUFFIXES = (
    "ing", "ed", "ly", "ion", "ness", "ment", "ity", "able", "ible", "ous", "ive", "ful",
    "less", "ist", "ism", "est", "er", "al", "ic", "an", "es", "s", "y",
)


def unknown_class(word: str) -> str:
    """The shape class of a word, as a vocabulary entry: ``[UNK-<shape>[-<suffix>]]``.

    Shapes: ``NUM`` (digits and punctuation: 3.50, 1,000, 12:30), ``ALNUM`` (letters and
    digits: A4, 1990s), ``SYM`` (no letter, no digit), ``ALLCAPS`` (2+ letters, all upper:
    NATO), ``Cap`` (first letter upper: Smith), ``mIxed`` (an upper letter later: eBay),
    ``lower``; a hyphen adds ``-hyph``; lower and Cap words add a known suffix.
    """
    if not word:
        return UNK
    if any(c.isdigit() for c in word):
        return "[UNK-ALNUM]" if any(c.isalpha() for c in word) else "[UNK-NUM]"
    letters = [c for c in word if c.isalpha()]
    if not letters:
        return "[UNK-SYM]"
    if len(letters) > 1 and all(c.isupper() for c in letters):
        shape = "ALLCAPS"
    elif letters[0].isupper():
        shape = "Cap"
    elif any(c.isupper() for c in letters):
        shape = "mIxed"
    else:
        shape = "lower"
    if "-" in word:
        return f"[UNK-{shape}-hyph]"
    if shape in ("Cap", "lower"):
        low = word.lower()
        for suffix in UNKNOWN_SUFFIXES:
            if low.endswith(suffix) and len(low) > len(suffix) + 1:
                return f"[UNK-{shape}-{suffix}]"
    return f"[UNK-{shape}]"


def is_unknown_entry(token: str) -> bool:
    """True for ``[UNK]`` and the ``[UNK-...]`` class entries."""
    return token == UNK or (token.startswith("[UNK-") and token.endswith("]"))

# One regex, alternatives tried in order at each position:
#   abbreviations with dots (U.S.), the clitic split of PTB (do|n't, it|'s),
#   numbers with inner separators (3.50, 1,000, 12:30, 1/2), words with inner hyphens,
#   ellipsis, double dash, PTB quotes, and any other single non-space symbol.
TOKEN_PATTERN = (
    r"(?:[A-Za-z]\.){2,}"
    r"|\w+(?=(?i:n't)\b)|(?i:n't)\b"
    r"|'(?i:s|re|ve|ll|d|m)\b"
    r"|\d+(?:[.,:/]\d+)+"
    r"|\w+(?:-\w+)*"
    r"|\.\.\.|--|``|''"
    r"|[^\w\s]"
)


def make_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """The pre-tokenizer: keep every :data:`TOKEN_PATTERN` match, drop whitespace."""
    return pre_tokenizers.Split(Regex(TOKEN_PATTERN), behavior="removed", invert=True)


_PRE_TOKENIZER = make_pre_tokenizer()


def pretokenize(text: str) -> list[tuple[str, tuple[int, int]]]:
    """Split raw text into ``(token, (start, end))`` with ``text[start:end] == token``."""
    return _PRE_TOKENIZER.pre_tokenize_str(text)


def split_words(text: str) -> list[str]:
    """Tokens of :func:`pretokenize` without offsets."""
    return [tok for tok, _ in _PRE_TOKENIZER.pre_tokenize_str(text)]


class WordVocab:
    """Word <-> id through a ``tokenizers`` WordLevel model; ``[PAD]`` = 0, ``[UNK]`` = 1."""

    def __init__(self, tokenizer: Tokenizer):
        vocab = tokenizer.get_vocab()
        if vocab.get(PAD) != PAD_ID or vocab.get(UNK) != UNK_ID:
            raise DataError(f"tokenizer: expected {PAD}=0 and {UNK}=1 in the vocabulary")
        self.tokenizer = tokenizer
        # Same model and normalizer, no pre-tokenizer: each given word stays one token.
        self._word_tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._word_tokenizer.pre_tokenizer = None
        self._vocab = vocab
        # the unknown-word class entries this vocabulary has (empty: plain [UNK] only)
        self.unknown_ids = {i for w, i in vocab.items() if is_unknown_entry(w)}
        self._has_classes = len(self.unknown_ids) > 1
        # class id per unknown surface form: a text repeats its unknown words, and the
        # class costs a Python call per token (a quarter of `tagger predict` before this)
        self._unknown_cache: dict[str, int] = {}
        self._id_cache: dict[str, int] = {}  # word -> id (encode_batch)

    # at most this many unknown forms are remembered, so memory stays bounded on any stream
    UNKNOWN_CACHE_SIZE = 200_000
    ID_CACHE_SIZE = 500_000

    # construction -------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        sentences: Iterable[Sequence[str]],
        min_freq: int = 1,
        max_size: int | None = None,
        lowercase: bool = False,
        unknown_classes: bool = False,
    ) -> "WordVocab":
        """Count words of pre-tokenised sentences and keep the frequent ones.

        ``max_size`` counts words besides ``[PAD]``, ``[UNK]`` and the unknown-word
        classes.  Order: descending frequency, ties broken by first appearance (so the
        result is deterministic); with ``unknown_classes`` the classes that occur in the
        sentences follow the words, in order of first appearance.
        """
        normalizer = normalizers.Lowercase() if lowercase else None
        counts: Counter[str] = Counter()
        for words in sentences:
            counts.update(words)
        merged: Counter[str] = Counter()
        for word, n in counts.items():  # Counter keeps first-appearance order
            merged[normalizer.normalize_str(word) if normalizer else word] += n
        ranked = sorted(
            ((w, n) for w, n in merged.items() if n >= min_freq and w != PAD and not is_unknown_entry(w) and w),
            key=lambda item: -item[1],
        )
        if max_size is not None:
            ranked = ranked[:max_size]
        vocab = {PAD: PAD_ID, UNK: UNK_ID}
        for word, _ in ranked:
            vocab[word] = len(vocab)
        if unknown_classes:
            for word in counts:
                vocab.setdefault(unknown_class(word), len(vocab))
        tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
        if normalizer is not None:
            tokenizer.normalizer = normalizer
        tokenizer.pre_tokenizer = make_pre_tokenizer()
        return cls(tokenizer)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "WordVocab":
        """Read ``tokenizer.json``; a missing or damaged file raises DataError naming it."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: tokenizer file not found; was the model saved completely?")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises plain Exception on bad JSON
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataError(
                f"{path}: damaged tokenizer file ({first}); re-train or restore the model directory"
            ) from None
        if not isinstance(tokenizer.model, models.WordLevel):
            raise DataError(f"{path}: expected a WordLevel tokenizer, found {type(tokenizer.model).__name__}")
        return cls(tokenizer)

    def save(self, path: str | os.PathLike) -> None:
        self.tokenizer.save(str(path))

    # queries ------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def __len__(self) -> int:
        return self.size

    @property
    def lowercase(self) -> bool:
        return self.tokenizer.normalizer is not None

    def normalize(self, word: str) -> str:
        norm = self.tokenizer.normalizer
        return norm.normalize_str(word) if norm is not None else word

    def words(self) -> list[str]:
        """All entries in id order (``[PAD]``, ``[UNK]``, then words)."""
        return [w for w, _ in sorted(self._vocab.items(), key=lambda kv: kv[1])]

    def word_to_id(self, word: str) -> int:
        idx = self._vocab.get(self.normalize(word))
        return idx if idx is not None else self.unknown_id(word)

    def unknown_id(self, word: str) -> int:
        """The id an out-of-vocabulary word gets: its class entry, else ``[UNK]``."""
        if not self._has_classes:
            return UNK_ID
        idx = self._unknown_cache.get(word)
        if idx is None:
            if len(self._unknown_cache) >= self.UNKNOWN_CACHE_SIZE:
                self._unknown_cache.clear()
            idx = self._unknown_cache[word] = self._vocab.get(unknown_class(word), UNK_ID)
        return idx

    @property
    def unknown_classes(self) -> bool:
        return self._has_classes

    def id_to_word(self, idx: int) -> str | None:
        return self.tokenizer.id_to_token(idx)

    # encoding -----------------------------------------------------------------------
    def encode_words(self, words: Sequence[str]) -> list[int]:
        """One id per word of a pre-tokenised sentence."""
        return self.encode_batch([words])[0]

    def encode_batch(self, sentences: Sequence[Sequence[str]]) -> list[list[int]]:
        """One id list per sentence, one id per word.

        A word's id depends on the word alone, so ids are remembered per word (bounded):
        only words not seen before go through the tokenizer, in one batch. A dict lookup
        per word is several times cheaper than the tokenizer's per-sentence round trip
        (measured: Model.batches of a 256-line chunk, ~18 -> ~6 us per line)."""
        cache = self._id_cache
        try:  # every word seen before: one pass
            return [[cache[w] for w in s] for s in sentences]
        except KeyError:
            pass
        missing = list(dict.fromkeys(w for s in sentences for w in s if w not in cache))
        if len(cache) + len(missing) > self.ID_CACHE_SIZE:
            cache.clear()  # memory stays bounded; this batch's words are all looked up again
            missing = list(dict.fromkeys(w for s in sentences for w in s))
        for word, idx in zip(missing, self._encode_words_uncached(missing)):
            cache[word] = idx
        return [[cache[w] for w in s] for s in sentences]

    def _encode_words_uncached(self, words: list[str]) -> list[int]:
        """The id of each word as the tokenizer gives it for a one-word sentence: the
        WordLevel model is a lookup of the normalized word in its vocabulary, [UNK] when
        absent, so that lookup is done here directly, through the tokenizer's own
        normalizer: 1.2-1.5 us per new word instead of 2.9-3.8 (measured; `tagger predict`
        meets new words all along a large input). tests/test_predict_batched.py checks it
        against the tokenizer itself."""
        vocab, unknown, norm = self._vocab, self.unknown_id, self.tokenizer.normalizer
        keys = words if norm is None else map(norm.normalize_str, words)
        return [unknown(w) if (i := vocab.get(key, UNK_ID)) == UNK_ID else i for w, key in zip(words, keys)]

    def encode_text(self, text: str) -> tuple[list[int], list[str], list[tuple[int, int]]]:
        """Raw text -> ``(ids, tokens, offsets)``; tokens are the original surface strings."""
        pieces = pretokenize(text)
        tokens = [tok for tok, _ in pieces]
        offsets = [span for _, span in pieces]
        return self.encode_words(tokens), tokens, offsets


class LabelVocab:
    """Labels <-> ids; the order of ``labels`` is the id order."""

    def __init__(self, labels: Sequence[str]):
        self.labels: list[str] = list(labels)
        self._index = {label: i for i, label in enumerate(self.labels)}
        if len(self._index) != len(self.labels):
            raise DataError("label vocabulary has duplicate labels")

    @classmethod
    def build(cls, labels: Iterable[str], first: Sequence[str] = ()) -> "LabelVocab":
        """``first`` labels (e.g. ``["O"]``) come first, then the rest sorted by name."""
        seen = set(labels)
        rest = sorted(seen - set(first))
        return cls(list(first) + rest)

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, label: str) -> bool:
        return label in self._index

    def encode(self, labels: Sequence[str], fallback: str | None = None) -> list[int]:
        """Ids of labels; unknown -> the id of ``fallback`` if given, else DataError."""
        index = self._index
        try:
            return [index[label] for label in labels]
        except KeyError:
            pass
        fallback_id = index.get(fallback) if fallback is not None else None
        out = []
        for label in labels:
            i = index.get(label, fallback_id)
            if i is None:
                known = ", ".join(self.labels[:20]) + (" ..." if len(self.labels) > 20 else "")
                raise DataError(
                    f"label {label!r} was not seen in training (known: {known}); "
                    "check data.label_column / data.scheme, or retrain with this label"
                )
            out.append(i)
        return out

    def encode_one(self, label: str, fallback: str | None = None) -> int:
        return self.encode([label], fallback)[0]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.labels[int(i)] for i in ids]

    def to_json(self) -> str:
        return json.dumps(self.labels, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "LabelVocab":
        return cls(json.loads(text))

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LabelVocab":
        path = Path(path)
        try:
            labels = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{path}: label file not found") from None
        except (ValueError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: damaged label file ({err}); expected a JSON list of strings") from None
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise DataError(f"{path}: expected a JSON list of strings")
        return cls(labels)
