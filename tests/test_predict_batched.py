"""tagger.predict's batched hot path writes exactly what the per-sentence path wrote.

The previous path is reconstructed here: a pre-tokenize call and an Example per line, the
tokenizer run over each whole sentence for the ids (WordVocab.encode_batch as it was), and
one write per record. Both paths run on the same untrained models (a tagger with unknown
word classes and lower-casing, a span tagger, a classifier) over a sample with unknown
words, non-ASCII text, repeated and blank lines; the outputs must be byte-identical.
"""
import gc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tagger.config import load_config
from tagger.data.prepare import build_vocabularies, load_splits
from tagger.data.types import Example
from tagger.data.vocab import UNK_ID, WordVocab, pretokenize
from tagger.models import Model, build_network
from tagger.data.readers import iter_lines
from tagger.predict import _chunks, cyclic_gc_paused, predict_chunk, predict_stream

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "corpora"
TINY = {"model.embedding_dim": 8, "model.lstm_units": 8}
SETUPS = {
    "pos": {"data.train": str(SAMPLES / "sample_pos.train.conllu"), "data.dev": None, "data.format": "conllu",
            "data.label_column": "upos", "vocab.unknown_classes": True, "vocab.lowercase": True},
    "ner": {"data.train": str(SAMPLES / "sample_ner.train.conll"), "data.dev": None, "data.format": "conll",
            "data.label_column": 1, "data.scheme": "iob1", "data.target_scheme": "bioes"},
    "cls": {"data.train": str(SAMPLES / "sample_cls.train.tsv"), "data.dev": None, "data.format": "tsv",
            "data.text_column": "sentence", "data.label_column": "label", "data.header": True, "model.task": "classify"},
}
LINES = [
    "The young teacher reads a long book in the quiet library .",
    "Zyxwv Qqqrrr visited Pàris and Ünterstadt-am-See in 1987 , didn't they ?",
    "",
    "   ",
    "U.S. shares rose $3.50... to 1,000.25 -- ``quoted'' text !",
    "日本語のテキスト and emoji 😀 here",
    "The young teacher reads a long book in the quiet library .",
    "ALLCAPS eBay iPhone running quickly happiness",
    "x",
]


def old_encode_batch(self, sentences):
    """WordVocab.encode_batch before the per-word cache: the tokenizer over each sentence."""
    sentences = [list(s) for s in sentences]
    out = []
    for words, enc in zip(sentences, self._word_tokenizer.encode_batch(sentences, is_pretokenized=True, add_special_tokens=False)):
        ids = enc.ids
        if len(ids) != len(words):
            ids = [self.word_to_id(w) for w in words]
        elif self._has_classes and UNK_ID in ids:
            ids = [self.unknown_id(w) if i == UNK_ID else i for i, w in zip(ids, words)]
        out.append(list(ids))
    return out


def old_predict_stream(model, lines, fmt, write, source="input", batch_size=256):
    """The per-sentence path: an Example per line from its own pre-tokenize call, a write per record."""
    n, task = 0, model.labeller
    for chunk in _chunks(lines):
        examples = []
        for lineno, text in chunk:
            pieces = pretokenize(text)
            examples.append(Example([t for t, _ in pieces], text=text, offsets=[o for _, o in pieces], source=f"{source}:{lineno}"))
        for (lineno, _), ex, pred in zip(chunk, examples, model.predict_examples(examples, batch_size=batch_size)):
            write(task.format_record(task.record(ex, pred), lineno, fmt), tokens=len(ex.tokens))
            n += 1
    return n


class Sink:
    """A writer as tagger.predict calls it: write(text, tokens) per record."""

    def __init__(self):
        self.parts, self.tokens = [], 0

    def write(self, text, tokens=0):
        self.parts.append(text)
        self.tokens += tokens


def untrained(name, **overrides):
    cfg = load_config(REPO / "configs" / "quickstart.yaml", {**SETUPS[name], **TINY, **overrides})
    words, labels = build_vocabularies(cfg, load_splits(cfg).train)
    return Model(cfg, words, labels, build_network(cfg.model, len(words), len(labels), ops="cpu", seed=5))


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    path = tmp_path_factory.mktemp("predict") / "sample.txt"
    rng = np.random.default_rng(0)
    lines = [LINES[i] for i in rng.integers(0, len(LINES), size=300)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("name", sorted(SETUPS))
@pytest.mark.parametrize("fmt", ["jsonl", "conll", "tsv"])  # conllu writes column inputs back
def test_batched_predict_is_byte_identical_to_the_per_sentence_path(name, fmt, sample, monkeypatch):
    model = untrained(name)
    new, old = Sink(), Sink()
    lines = list(iter_lines(sample, "utf-8"))
    n_new = predict_stream(model, lines, fmt, new.write, str(sample), batch_size=16)
    with monkeypatch.context() as m:
        m.setattr(WordVocab, "encode_batch", old_encode_batch)
        model.words._id_cache.clear()
        n_old = old_predict_stream(model, lines, fmt, old.write, str(sample), batch_size=16)
    assert n_new == n_old == sum(1 for line in sample.read_text(encoding="utf-8").splitlines() if line.strip())
    assert "".join(new.parts).encode("utf-8") == "".join(old.parts).encode("utf-8")
    assert len(new.parts) == len(old.parts) == n_new and new.tokens == old.tokens > n_new


@pytest.mark.parametrize("lowercase", [True, False])  # both lookups of _encode_words_uncached
def test_word_ids_are_the_tokenizers_whatever_the_cache_holds(lowercase):
    words = untrained("pos", **{"vocab.lowercase": lowercase}).words
    assert words.lowercase == lowercase and words.unknown_classes
    sentences = [pretokenize(line) for line in LINES if line.strip()]
    sentences = [[t for t, _ in s] for s in sentences] + [["", "The", "THE", "zzz-top", "Qqq"],
                                                          ["[UNK]", "[PAD]", "[UNK-Cap]", "[UNK-Nothing]", " "],
                                                          ["ΟΔΟΣ", "İstanbul", "STRASSE", "ǅemal", "ﬁne", "THE"]]
    want = old_encode_batch(words, sentences)
    assert words.encode_batch(sentences) == want
    assert words.encode_batch(sentences) == want  # from the cache this time
    words.ID_CACHE_SIZE = 3  # overflowing the bound clears it and still gives the same ids
    assert words.encode_batch(sentences) == want
    words._id_cache.clear()
    assert words.encode_batch(sentences[:1]) == want[:1]
    # seen and unseen words in one batch past the bound: the seen ones are looked up again
    assert words.encode_batch(sentences) == want and len(words._id_cache) <= len({w for s in sentences for w in s})


@pytest.mark.parametrize("name", sorted(SETUPS) + ["crf"])
def test_a_chunk_makes_no_reference_cycles_so_pausing_the_collector_frees_everything(name):
    """predict_chunk runs with the cyclic collector paused: all it allocates must be freed
    by reference counting alone, for every task and head."""
    model = untrained("ner", **{"model.crf": True}) if name == "crf" else untrained(name)
    chunk = [(k + 1, line) for k, line in enumerate(LINES * 3) if line.strip()]
    for fmt in ("jsonl", "conll", "tsv"):  # first calls fill caches (and may compile kernels:
        predict_chunk(model, chunk, "t", fmt, batch_size=4)  # numba's compiler makes cycles)
    while gc.collect():  # earlier tests' garbage, to the last of it: a pass that runs
        pass  # finalizers can free more cycles (seen: matplotlib figures) for the next
    for fmt in ("jsonl", "conll", "tsv"):
        assert len(predict_chunk(model, chunk, "t", fmt, batch_size=4)) == len(chunk)
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        found = gc.collect()
        kinds = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage).most_common(5)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert found == 0, f"cyclic garbage left by predict_chunk: {kinds}"
    assert gc.isenabled()


def test_the_collector_is_paused_only_inside_and_restored_as_it_was():
    assert gc.isenabled()
    with pytest.raises(KeyError):
        with cyclic_gc_paused():
            assert not gc.isenabled()
            raise KeyError("inside")
    assert gc.isenabled()
    gc.disable()
    try:
        with cyclic_gc_paused():
            pass
        assert not gc.isenabled()  # a caller's choice is kept
    finally:
        gc.enable()
