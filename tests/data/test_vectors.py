"""Pretrained vectors: formats, malformed lines, embedding matrix and coverage."""

from __future__ import annotations

import gzip
from collections import Counter

import numpy as np
import pytest

from tagger.data.readers import read_examples
from tagger.data.vectors import embedding_matrix, read_vectors
from tagger.data.vocab import WordVocab
from tagger.errors import DataError
from tests.data.conftest import write

GLOVE = "the 0.1 0.2 0.3\ncat 1 2 3\nParis 4 5 6\n"


def test_glove_and_word2vec_header_and_gzip(tmp_path):
    g = read_vectors(write(tmp_path / "g.txt", GLOVE))
    assert (len(g), g.dim, g.words) == (3, 3, ["the", "cat", "Paris"])
    assert g.matrix.dtype == np.float32 and np.allclose(g.get("cat"), [1, 2, 3])
    w2v = read_vectors(write(tmp_path / "w.vec", "3 3\n" + GLOVE))
    assert w2v.words == g.words and np.array_equal(w2v.matrix, g.matrix)
    gz = tmp_path / "g.txt.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write(GLOVE)
    assert read_vectors(gz).words == g.words
    assert read_vectors(gz, keep=["CAT"]).words == ["cat"]  # case-insensitive filter


def test_malformed_lines(tmp_path):
    with pytest.raises(DataError, match=r"bad.txt:2: expected 3 values after the word, found 2"):
        read_vectors(write(tmp_path / "bad.txt", "the 0.1 0.2 0.3\ncat 1 2\n"))
    with pytest.raises(DataError, match=r"nan.txt:2: value 'x' is not a number"):
        read_vectors(write(tmp_path / "nan.txt", "the 0.1 0.2 0.3\ncat 1 x 3\n"))
    with pytest.raises(DataError, match=r"hdr.vec: header announces 5 vectors but the file has 3"):
        read_vectors(write(tmp_path / "hdr.vec", "5 3\n" + GLOVE))


def test_embedding_matrix_fallback_and_random_rows(tmp_path):
    vectors = read_vectors(write(tmp_path / "g.txt", GLOVE))
    vocab = WordVocab.build([["The", "cat", "paris", "zebra"]])
    m, report = embedding_matrix(vocab, vectors, np.random.default_rng(0), dim=3, counts={"The": 3, "zebra": 1})
    assert m.shape == (6, 3) and m.dtype == np.float32
    assert not m[0].any()  # [PAD]
    assert np.allclose(m[vocab.word_to_id("The")], [0.1, 0.2, 0.3])  # case-insensitive fallback
    assert np.allclose(m[vocab.word_to_id("paris")], [4, 5, 6])
    z = m[vocab.word_to_id("zebra")]
    assert np.all(np.abs(z) <= 0.05) and z.any()
    assert report == {"types_found": 3, "types_total": 4, "types": 0.75, "tokens_found": 3, "tokens_total": 4, "tokens": 0.75}
    again, _ = embedding_matrix(vocab, vectors, np.random.default_rng(0))
    assert np.array_equal(m, again)  # seeded
    with pytest.raises(DataError, match="pretrained vectors have 3 dimensions but model.embedding_dim is 100"):
        embedding_matrix(vocab, vectors, np.random.default_rng(0), dim=100)


def test_real_glove_coverage_on_ud_ewt(corpora):
    vectors = read_vectors(corpora / "word_vectors" / "glove.6B.100d.filtered.txt.gz")
    assert (len(vectors), vectors.dim) == (2715, 100)
    assert np.allclose(vectors.get("the")[:3], [-0.038194, -0.24487, 0.72812])
    sents = [
        e.tokens
        for split in ("train", "dev", "test")
        for e in read_examples(corpora / "ud_english_ewt" / f"en_ewt-ud-{split}.conllu", "conllu")
    ]
    vocab = WordVocab.build(sents, lowercase=True)
    _, report = embedding_matrix(vocab, vectors, np.random.default_rng(0), counts=Counter(w for s in sents for w in s))
    # README: 13.6% of 19,342 types, 81.0% of 254,818 tokens (lower-cased)
    assert report["types_total"] == 19342 and report["tokens_total"] == 254818
    assert round(100 * report["types"], 1) == 13.6 and round(100 * report["tokens"], 1) == 81.0
