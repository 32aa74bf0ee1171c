"""Tag schemes: spans under conlleval's chunk rules, conversions, and a real-corpus round trip."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from tagger.data.readers import read_examples
from tagger.data.schemes import allowed_transitions, convert, from_spans, invalid_tags, spans
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


# ----------------------------------------------------------------------------------------
# allowed_transitions: the grammar a CRF decodes within

GRAMMAR_TAGS = {
    "bio": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"],
    "iob1": ["O", "I-PER", "B-PER", "I-LOC", "B-LOC"],
    "bioes": ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "E-LOC", "S-LOC"],
}


def _fits(seq, tags, allowed):
    start_ok, trans_ok, end_ok = allowed
    ids = [tags.index(t) for t in seq]
    return bool(start_ok[ids[0]] and end_ok[ids[-1]] and all(trans_ok[a, b] for a, b in zip(ids, ids[1:])))


@pytest.mark.parametrize("scheme", list(GRAMMAR_TAGS))
def test_the_grammar_admits_exactly_what_the_scheme_writes(scheme):
    """A sequence fits iff re-encoding its spans gives it back: the grammar is the set of
    sequences `from_spans` produces, for every sequence up to length 4."""
    tags = GRAMMAR_TAGS[scheme]
    allowed = allowed_transitions(tags, scheme)
    assert [a.shape for a in allowed] == [(len(tags),), (len(tags), len(tags)), (len(tags),)]
    for n in range(1, 5):
        for seq in itertools.product(tags, repeat=n):
            canonical = from_spans(spans(seq, scheme), n, scheme) == list(seq)
            assert _fits(seq, tags, allowed) == canonical, (scheme, seq)


def test_the_grammar_in_examples():
    tags = GRAMMAR_TAGS["bio"]
    start_ok, trans_ok, end_ok = allowed_transitions(tags, "bio")
    i = {t: k for k, t in enumerate(tags)}
    assert not trans_ok[i["O"], i["I-PER"]] and not trans_ok[i["B-PER"], i["I-LOC"]]
    assert trans_ok[i["B-PER"], i["I-PER"]] and trans_ok[i["I-PER"], i["B-PER"]] and trans_ok[i["I-LOC"], i["O"]]
    assert not start_ok[i["I-PER"]] and start_ok[i["B-PER"]] and end_ok.all()
    tags = GRAMMAR_TAGS["bioes"]
    start_ok, trans_ok, end_ok = allowed_transitions(tags, "bioes")
    i = {t: k for k, t in enumerate(tags)}
    assert not trans_ok[i["B-PER"], i["O"]] and not trans_ok[i["B-PER"], i["E-LOC"]] and trans_ok[i["B-PER"], i["E-PER"]]
    assert not trans_ok[i["E-PER"], i["I-PER"]] and trans_ok[i["E-PER"], i["S-LOC"]] and trans_ok[i["S-PER"], i["B-PER"]]
    assert not end_ok[i["B-PER"]] and not end_ok[i["I-PER"]] and end_ok[i["E-PER"]] and end_ok[i["O"]]
    assert not start_ok[i["E-PER"]] and start_ok[i["S-PER"]]
    tags = GRAMMAR_TAGS["iob1"]
    start_ok, trans_ok, end_ok = allowed_transitions(tags, "iob1")
    i = {t: k for k, t in enumerate(tags)}
    assert trans_ok[i["O"], i["I-PER"]] and trans_ok[i["I-LOC"], i["I-PER"]] and trans_ok[i["I-PER"], i["B-PER"]]
    assert not trans_ok[i["O"], i["B-PER"]] and not trans_ok[i["I-LOC"], i["B-PER"]] and not start_ok[i["B-PER"]]


def test_no_grammar_for_scheme_none_and_foreign_tags_read_as_o():
    start_ok, trans_ok, end_ok = allowed_transitions(["NOUN", "VERB"], "none")
    assert start_ok.all() and trans_ok.all() and end_ok.all()
    # a tag the scheme cannot have (S- in bio, a bare word) constrains like O
    a = allowed_transitions(["O", "B-X", "I-X", "S-X", "junk"], "bio")
    for k in (3, 4):
        assert (a[1][k] == a[1][0]).all() and (a[1][:, k] == a[1][:, 0]).all() and a[0][k]
    with pytest.raises(DataError, match="unknown tag scheme 'bilou'"):
        allowed_transitions(["O"], "bilou")
