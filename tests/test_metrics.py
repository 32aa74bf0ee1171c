"""Metrics: hand-computed conlleval cases and classification reports.

Each span case states the chunks conlleval finds (startOfChunk / endOfChunk) in a comment.
"""

from __future__ import annotations

import json

import pytest

from tagger.metrics import classification_report, conlleval_text, span_scores, token_accuracy


def _overall(s):
    return s["correct"], s["found_gold"], s["found_pred"]


def test_iob1_perfect():
    gold = [["I-PER", "I-PER", "O", "I-LOC"]]  # PER[0,2) LOC[3,4)
    s = span_scores(gold, gold)
    assert _overall(s) == (2, 2, 2) and s["f1"] == 1.0 and s["accuracy"] == 1.0


def test_adjacent_same_type_b_separates():
    gold = [["I-PER", "B-PER", "O"]]  # PER[0,1) PER[1,2): I->B ends and starts
    pred = [["I-PER", "I-PER", "O"]]  # PER[0,2)
    s = span_scores(gold, pred)
    assert _overall(s) == (0, 2, 1)
    assert (s["precision"], s["recall"], s["f1"]) == (0.0, 0.0, 0.0)
    assert s["accuracy"] == pytest.approx(2 / 3)


def test_i_tag_opens_a_span_in_bio():
    gold = [["O", "I-ORG", "I-ORG"]]  # O->I starts: ORG[1,3)
    pred = [["O", "B-ORG", "I-ORG"]]  # ORG[1,3)
    s = span_scores(gold, pred, scheme="bio")
    assert _overall(s) == (1, 1, 1) and s["f1"] == 1.0
    assert s["accuracy"] == pytest.approx(2 / 3)  # the I-/B- tag itself differs


def test_span_at_sentence_end_is_closed_by_the_boundary():
    gold = [["O", "I-PER"], ["I-PER", "O"]]  # two chunks; the blank line separates them
    assert _overall(span_scores(gold, gold)) == (2, 2, 2)
    pred = [["O", "I-PER"], ["O", "O"]]
    s = span_scores(gold, pred)
    assert _overall(s) == (1, 2, 1)
    assert (s["precision"], s["recall"]) == (1.0, 0.5)
    assert s["f1"] == pytest.approx(2 / 3)


def test_type_mismatch_splits_prediction():
    gold = [["B-PER", "I-PER"]]  # PER[0,2)
    pred = [["B-PER", "I-LOC"]]  # type change: PER[0,1) then LOC[1,2)
    s = span_scores(gold, pred)
    assert _overall(s) == (0, 1, 2)
    assert s["per_type"]["PER"] == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "correct": 0, "found_gold": 1, "found_pred": 1,
    }
    assert s["per_type"]["LOC"]["found_gold"] == 0 and s["per_type"]["LOC"]["found_pred"] == 1


def test_prediction_ending_early_is_wrong():
    gold = [["B-X", "I-X", "I-X"]]
    pred = [["B-X", "I-X", "O"]]  # same start, different end -> not correct
    assert _overall(span_scores(gold, pred)) == (0, 1, 1)


def test_empty_predictions_give_zero_precision_without_error():
    gold = [["B-PER", "O"], ["I-LOC"]]
    pred = [["O", "O"], ["O"]]
    s = span_scores(gold, pred)
    assert _overall(s) == (0, 2, 0)
    assert (s["precision"], s["recall"], s["f1"]) == (0.0, 0.0, 0.0)
    empty = span_scores([["O"]], [["O"]])
    assert _overall(empty) == (0, 0, 0) and empty["per_type"] == {}


def test_mixed_counts_per_type():
    # gold: PER[0,2) LOC[3,4) LOC[4,5) (B-LOC after I-LOC) ORG[6,7)
    gold = [["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "O", "I-ORG"]]
    # pred: PER[0,2) ok, LOC[3,5) wrong (merged), ORG[6,7) ok, MISC[2,3) spurious
    pred = [["I-PER", "I-PER", "I-MISC", "I-LOC", "I-LOC", "O", "I-ORG"]]
    s = span_scores(gold, pred)
    assert _overall(s) == (2, 4, 4)
    assert (s["precision"], s["recall"], s["f1"]) == (0.5, 0.5, 0.5)
    assert {t: v["correct"] for t, v in s["per_type"].items()} == {"LOC": 0, "MISC": 0, "ORG": 1, "PER": 1}
    assert s["per_type"]["LOC"]["found_gold"] == 2 and s["per_type"]["LOC"]["found_pred"] == 1
    assert s["accuracy"] == pytest.approx(5 / 7)
    text = conlleval_text(s)
    assert text.splitlines()[0] == "processed 7 tokens with 4 phrases; found: 4 phrases; correct: 2."
    assert "FB1:  50.00" in text.splitlines()[1]
    json.dumps(s)  # plain JSON-serialisable dict


def test_bioes_is_converted_before_scoring():
    gold = [["S-PER", "S-PER", "B-LOC", "E-LOC", "B-LOC", "E-LOC"]]  # four chunks in BIOES
    s = span_scores(gold, gold, scheme="bioes")
    assert _overall(s) == (4, 4, 4)
    # plain conlleval rules would merge S-PER S-PER and B-LOC E-LOC B-LOC E-LOC:
    assert _overall(span_scores(gold, gold, scheme="bio")) == (2, 2, 2)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="sentence 0: 2 gold labels but 1 predictions"):
        span_scores([["O", "O"]], [["O"]])


def test_token_accuracy():
    r = token_accuracy([["A", "B"], ["C"]], [["A", "C"], ["C"]])
    assert r == {"accuracy": pytest.approx(2 / 3), "correct": 2, "total": 3}


def test_classification_report_hand_computed():
    gold = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", "c", "c"]
    r = classification_report(gold, pred)
    # a: tp 2, pred 2, gold 3 -> P 1, R 2/3; b: tp 1, pred 2, gold 2 -> P .5 R .5; c: tp 1, pred 2, gold 1 -> P .5 R 1
    a, b, c = (r["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["support"]) == (1.0, pytest.approx(2 / 3), 3)
    assert a["f1"] == pytest.approx(0.8)
    assert (b["precision"], b["recall"], b["f1"]) == (0.5, 0.5, 0.5)
    assert c["f1"] == pytest.approx(2 / 3)
    assert r["macro"]["f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert r["macro"]["precision"] == pytest.approx(2 / 3)
    assert r["weighted"]["recall"] == pytest.approx((3 * 2 / 3 + 2 * 0.5 + 1 * 1) / 6)
    assert r["accuracy"] == pytest.approx(4 / 6) == r["micro"]["f1"]
    json.dumps(r)


def test_classification_report_absent_class_has_no_division_error():
    r = classification_report(["a", "a"], ["a", "a"], labels=["a", "b"])
    assert r["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["macro"]["f1"] == 0.5
