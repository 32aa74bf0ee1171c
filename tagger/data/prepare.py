"""From a config to examples and vocabularies: what training, evaluation, `summary` and
`debug-data` read before any network exists.

    load_splits(config)                 train / dev / test examples; a seeded dev split is
                                        carved out of train when no dev file is given;
                                        data.scheme is checked against the training tags
    build_vocabularies(config, train)   (WordVocab, LabelVocab) from the training examples
    build_char_vocab(config, train)     CharVocab of the raw training tokens, or None (no model.chars)
    pretrained_matrix(config, words, train, seed)   embedding rows from pretrained vectors
    examples_from_texts(texts)          raw texts -> unlabelled examples with character offsets
    data_report(config)                 the numbers `tagger debug-data` prints
"""
from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from operator import itemgetter

import numpy as np

from tagger.data.readers import read_examples, require_task, split_dev
from tagger.data.schemes import scheme_problem, split_tag
from tagger.data.types import Example
from tagger.data.vocab import WordVocab, pretokenize
from tagger.errors import DataError, TaggerError
from tagger.tasks import build_labels, make_task


@dataclass
class Splits:
    train: list
    dev: list
    test: list = field(default_factory=list)
    dev_source: str = ""


def read_split(config, path) -> list[Example]:
    """The examples of one split; a corpus that does not fit the task is refused by name."""
    examples = read_examples(path, config.data.format, **config.data.reader_options())
    return list(require_task(examples, config.model.task, path, config.data.format))


def load_splits(config) -> Splits:
    """Read train/dev/test; carve a seeded dev split out of train when no dev file is given."""
    if not config.data.train:
        raise TaggerError("data.train: no training file given; set it in the config or with --data.train PATH")
    train = read_split(config, config.data.train)
    check_scheme(config, train)
    if config.data.dev:
        dev, source = read_split(config, config.data.dev), config.data.dev
    elif config.data.dev_fraction > 0:
        train, dev = split_dev(train, config.data.dev_fraction, config.training.seed)
        source = f"{len(dev)} examples held out of data.train (dev_fraction {config.data.dev_fraction})"
    else:
        dev, source = [], "none (dev_fraction 0: the best model is the one with the lowest training loss)"
    test = read_split(config, config.data.test) if config.data.test else []
    return Splits(train, dev, test, source)


def check_scheme(config, train) -> None:
    """Refuse a data.scheme the training tags do not follow, naming the first bad tag and
    its FILE:LINE; warn when scheme none is given tags that look like spans.

    A wrong span scheme is an error: spans, conversions and conlleval scores would all be
    silently wrong. Span-looking tags with scheme none only warn: training as plain labels
    is still correct (token accuracy), and some tag sets merely look like B-/I- spans.
    """
    if config.model.task != "tag":
        return
    scheme, guess = config.data.scheme, guess_scheme(train)
    if scheme == "none":
        if guess != "none" and any(t == "O" for ex in train for t in ex.labels):
            print(
                f"warning: data.scheme is none but the training tags look like {guess} spans; "
                f"set data.scheme: {guess} to score spans (conlleval F1), or keep none to score tokens only",
                file=sys.stderr,
            )
        return
    for ex in train:
        problem = scheme_problem(ex.labels, scheme)
        if problem is not None:
            i, why = problem
            fix = "none for labels that are not spans (POS tags)" if guess == "none" else f"{guess}"
            raise DataError(
                f"{token_source(config, ex, i)}: tag {ex.labels[i]!r} {why}, so data.scheme {scheme} "
                f"does not fit the training tags; set data.scheme: {fix}"
            )


def guess_scheme(examples) -> str:
    """The scheme the tags look like: bioes when S-/E- occur, bio when all are O/B-/I-, else none."""
    prefixes = {split_tag(t)[0] if split_tag(t)[1] else t for ex in examples for t in ex.labels} - {"O"}
    if not prefixes or not prefixes <= set("BIES"):
        return "none"
    return "bioes" if prefixes & set("SE") else "bio"


def token_source(config, ex, index: int) -> str:
    """FILE:LINE of token `index` of a training example (the reader is run again, keeping
    its rows, only when there is an error to report)."""
    if config.data.format not in ("conll", "conllu") or not ex.source:
        return ex.source or "data.train"
    path = ex.source.rsplit(":", 1)[0]
    for other in read_examples(path, config.data.format, **config.data.reader_options(), keep_rows=True):
        if other.source == ex.source:
            return next(f"{path}:{n}" for n, _, k in other.rows if k == index)
    return ex.source


def build_vocabularies(config, train):
    """(words, labels) of the training examples."""
    words = WordVocab.build(
        (ex.tokens for ex in train),
        min_freq=config.vocab.min_freq,
        max_size=config.vocab.max_size,
        lowercase=config.vocab.lowercase,
        unknown_classes=config.vocab.unknown_classes,
    )
    return words, build_labels(config, train)


def build_char_vocab(config, train):
    """The CharVocab of the training tokens when model.chars has an encoder, else None.

    From the raw tokens, before vocab.lowercase: lower-casing is the word vocabulary's
    business, and capitalisation is most of what characters bring to NER."""
    if not config.model.chars.enabled:
        return None
    from tagger.data.chars import CharVocab

    return CharVocab.build(
        (t for ex in train for t in ex.tokens), min_freq=config.vocab.char_min_freq, max_chars=config.vocab.max_chars
    )


def pretrained_matrix(config, words, train, seed):
    """Embedding rows from pretrained vectors (None when the config names none); prints coverage."""
    path = config.model.pretrained_vectors
    if not path:
        return None
    from tagger.data.vectors import embedding_matrix, read_vectors  # reads large files: only when asked

    counts = Counter(t for ex in train for t in ex.tokens)
    vecs = read_vectors(path, keep=words.words())
    matrix, coverage = embedding_matrix(words, vecs, np.random.default_rng(seed), dim=config.model.embedding_dim, counts=counts)
    print(
        f"pretrained vectors {path}: {coverage['types_found']}/{coverage['types_total']} word types "
        f"({coverage['types'] * 100:.1f}%), {coverage['tokens'] * 100:.1f}% of training tokens",
        file=sys.stderr,
    )
    return matrix


def examples_from_texts(texts: Iterable[str], sources: Iterable[str] | None = None) -> list[Example]:
    """Unlabelled examples: the pre-tokenized words of each text and their character offsets.
    (One pre_tokenize call per text measured as fast as the tokenizers' encode_batch with
    offsets over the whole batch, and as one call over the texts joined: converting the
    results to Python dominates all three. The pairs are unzipped by map, in C.)"""
    texts = list(texts)
    sources = list(sources) if sources is not None else []
    sources = sources or [f"text {k + 1}" for k in range(len(texts))]
    out = []
    for text, source in zip(texts, sources):
        pieces = pretokenize(text)
        out.append(Example(list(map(_first, pieces)), text=text, offsets=list(map(_second, pieces)), source=source))
    return out


_first, _second = itemgetter(0), itemgetter(1)


def data_report(config) -> dict:
    """Counts, label distributions, OOV rates and train overlap of every split."""
    splits = load_splits(config)
    words, labels = build_vocabularies(config, splits.train)
    task = make_task(config, labels)
    report = {"task": task.name, "labels": labels.labels, "vocabulary": len(words), "dev_source": splits.dev_source, "splits": {}}
    chars = build_char_vocab(config, splits.train)
    if chars is not None:
        report["characters"] = len(chars) - 2  # without [PAD] and [UNK]
    train_texts = {" ".join(ex.tokens) for ex in splits.train}
    # labels as the files write them (the data scheme), so a target_scheme conversion
    # never makes a dev tag look unseen; the baseline is always train's majority label
    train_dist = task.label_counts(splits.train)
    majority = train_dist.most_common(1)[0][0]
    for name, examples in (("train", splits.train), ("dev", splits.dev), ("test", splits.test)):
        if not examples:
            continue
        tokens = [t for ex in examples for t in ex.tokens]
        ids = words.encode_batch([ex.tokens for ex in examples])
        unknown = words.unknown_ids
        unk = sum(1 for s in ids for i in s if i in unknown)
        dist = task.label_counts(examples)
        lengths = [len(ex.tokens) for ex in examples]
        entry = {
            "examples": len(examples),
            "tokens": len(tokens),
            "max_length": max(lengths),
            "mean_length": round(sum(lengths) / len(lengths), 2),
            "oov_rate": round(unk / max(len(tokens), 1), 4),
            "labels": dict(dist.most_common()),
            "majority_label": majority,
            "majority_baseline": round(dist[majority] / max(sum(dist.values()), 1), 4),
        }
        if chars is not None:
            entry.update(char_report(chars, tokens, config.vocab.max_chars))
        if name != "train":
            entry["overlap_with_train"] = sum(1 for ex in examples if " ".join(ex.tokens) in train_texts)
            unseen = sorted(set(dist) - set(train_dist))
            if unseen:
                entry["labels_unseen_in_train"] = unseen
        report["splits"][name] = entry
    return report


def char_report(chars, tokens: list[str], max_chars: int | None) -> dict:
    """What the character encoder sees of a split: the longest word, the share of
    characters it reads as [UNK], and the words vocab.max_chars clips (keeping their first
    and last characters; no word is dropped)."""
    from tagger.data.chars import UNK_ID, normalize

    spelled = [normalize(t) for t in tokens]
    n_chars = sum(len(t) for t in spelled)
    unknown = sum(1 for t in spelled for c in t if chars.char_to_id(c) == UNK_ID)
    entry = {"longest_word": max((len(t) for t in spelled), default=0),
             "unknown_char_rate": round(unknown / max(n_chars, 1), 4)}
    if max_chars is not None:
        entry["words_clipped"] = sum(1 for t in spelled if len(t) > max_chars)
    return entry
