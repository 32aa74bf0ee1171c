"""Tag schemes: spans under conlleval's chunk rules, conversions, and a real-corpus round trip."""

from __future__ import annotations

from collections import Counter

import pytest

from tagger.data.readers import read_examples
from tagger.data.schemes import convert, invalid_tags, spans
from tagger.errors import DataError


def test_iob1_spans():
    tags = ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG"]
    assert spans(tags, "iob1") == [("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5), ("ORG", 5, 6)]


def test_bio_lenient_i_start_and_type_change():
    assert spans(["O", "I-X", "B-X", "I-Y"], "bio") == [("X", 1, 2), ("X", 2, 3), ("Y", 3, 4)]


def test_bioes_spans():
    tags = ["S-A", "S-A", "B-B", "I-B", "E-B", "B-B", "E-B", "O", "B-A", "S-A"]
    assert spans(tags, "bioes") == [("A", 0, 1), ("A", 1, 2), ("B", 2, 5), ("B", 5, 7), ("A", 8, 9), ("A", 9, 10)]


@pytest.mark.parametrize(
    "src,dst,tags,expected",
    [
        ("iob1", "bio", ["I-PER", "B-PER", "O", "I-LOC"], ["B-PER", "B-PER", "O", "B-LOC"]),
        ("bio", "iob1", ["B-PER", "B-PER", "I-PER", "B-LOC"], ["I-PER", "B-PER", "I-PER", "I-LOC"]),
        ("bio", "bioes", ["B-PER", "I-PER", "I-PER", "B-LOC", "O"], ["B-PER", "I-PER", "E-PER", "S-LOC", "O"]),
        ("bioes", "bio", ["S-A", "S-A", "B-B", "E-B"], ["B-A", "B-A", "B-B", "I-B"]),
        ("none", "none", ["NOUN", "VERB"], ["NOUN", "VERB"]),
    ],
)
def test_convert(src, dst, tags, expected):
    assert convert(tags, src, dst) == expected


def test_scheme_errors_and_validation():
    with pytest.raises(DataError, match="scheme 'none' has no spans"):
        spans(["NOUN"], "none")
    with pytest.raises(DataError, match="unknown tag scheme 'iob3'"):
        spans(["O"], "iob3")
    assert invalid_tags(["O", "B-PER", "E-PER", "PER", "I-"], "bio") == ["E-PER", "PER", "I-"]
    assert invalid_tags(["S-X", "E-X"], "bioes") == []


def test_round_trip_on_real_conll2003_testa(corpora):
    sents = [e.labels for e in read_examples(corpora / "conll2003_en" / "eng.testa", "conll")]
    counts = Counter()
    for tags in sents:
        gold = spans(tags, "iob1")
        counts.update(kind for kind, _, _ in gold)
        bioes = convert(tags, "iob1", "bioes")
        assert spans(bioes, "bioes") == gold
        assert spans(convert(tags, "iob1", "bio"), "bio") == gold
        assert convert(bioes, "bioes", "iob1") == tags  # IOB1 is canonical, so tags come back identical
    assert counts == {"LOC": 1837, "MISC": 922, "ORG": 1341, "PER": 1842}  # published testa figures


def test_scheme_problem_names_the_first_tag_a_scheme_cannot_have_produced():
    from tagger.data.schemes import scheme_problem

    assert scheme_problem(["B-PER", "I-PER", "O", "B-LOC"], "bio") is None
    assert scheme_problem(["O", "I-PER"], "bio") is None  # loose BIO / IOB1 reads the same way
    assert scheme_problem(["NOUN", "B-X"], "bio")[0] == 0
    assert scheme_problem(["S-PER", "B-LOC", "I-LOC", "E-LOC"], "bioes") is None
    assert scheme_problem(["O", "B-PER", "O"], "bioes")[0] == 1  # BIO's one-token chunk
    assert scheme_problem(["B-PER", "I-PER"], "bioes")[0] == 1  # BIO's chunk end
    assert scheme_problem(["O", "E-PER"], "bioes")[0] == 1
    assert scheme_problem(["B-PER", "E-LOC"], "bioes")[0] == 0
    assert scheme_problem(["ADJ"], "none") is None
