"""Evaluation metrics.  Every function returns plain JSON-serialisable dicts.

* :func:`token_accuracy` - fraction of tokens whose predicted label equals the gold one.
* :func:`classification_report` - per-class precision / recall / F1 / support, plus
  macro, weighted and micro averages and accuracy.
* :func:`span_scores` - chunk precision / recall / F1 per type and overall, identical to
  the conlleval perl script run on the sentences with a blank line between them.
  Rates are fractions in [0, 1]: multiply by 100 for conlleval's printout.

conlleval semantics: each token is ``PREFIX-TYPE`` or ``O``; chunks start and end by
``startOfChunk`` / ``endOfChunk`` (:mod:`tagger.data.schemes`); a predicted chunk is
correct when it starts and ends at the same tokens as a gold chunk with the same type.
``accuracy`` here is conlleval's token accuracy (tag and type both equal).  BIOES input
(``scheme="bioes"``) is first converted to BIO, because conlleval itself mis-reads
``S-`` and ``E-`` followed by ``B-``.  Precision with no predicted chunk is 0 (no error).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from tagger.data.schemes import convert, end_of_chunk, split_tag, start_of_chunk


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def _flatten(seqs: Sequence) -> list:
    if seqs and isinstance(seqs[0], (list, tuple)):
        return [x for s in seqs for x in s]
    return list(seqs)


def _check_lengths(gold: Sequence, pred: Sequence) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold items but {len(pred)} predictions")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if isinstance(g, (list, tuple)) and len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold labels but {len(p)} predictions")


def token_accuracy(gold: Sequence, pred: Sequence) -> dict:
    """``{"accuracy", "correct", "total"}`` over all tokens (lists of sentences or flat lists)."""
    _check_lengths(gold, pred)
    g, p = _flatten(gold), _flatten(pred)
    correct = sum(1 for a, b in zip(g, p) if a == b)
    return {"accuracy": _ratio(correct, len(g)), "correct": correct, "total": len(g)}


def classification_report(gold: Sequence, pred: Sequence, labels: Sequence | None = None) -> dict:
    """Per-class and averaged precision / recall / F1.

    ``labels`` fixes which classes are reported (default: every label in gold or pred,
    sorted).  ``micro`` pools counts over those classes; with all classes it equals accuracy.
    """
    _check_lengths(gold, pred)
    g, p = _flatten(gold), _flatten(pred)
    if labels is None:
        labels = sorted(set(g) | set(p), key=str)
    tp: Counter = Counter()
    n_gold: Counter = Counter(g)
    n_pred: Counter = Counter(p)
    for a, b in zip(g, p):
        if a == b:
            tp[a] += 1
    per_class = {}
    for label in labels:
        prec = _ratio(tp[label], n_pred[label])
        rec = _ratio(tp[label], n_gold[label])
        per_class[str(label)] = {"precision": prec, "recall": rec, "f1": _f1(prec, rec), "support": n_gold[label]}
    k = len(labels)
    support = sum(n_gold[label] for label in labels)
    macro = {m: _ratio(sum(c[m] for c in per_class.values()), k) for m in ("precision", "recall", "f1")}
    weighted = {
        m: _ratio(sum(c[m] * c["support"] for c in per_class.values()), support) for m in ("precision", "recall", "f1")
    }
    tp_all = sum(tp[label] for label in labels)
    micro_p = _ratio(tp_all, sum(n_pred[label] for label in labels))
    micro_r = _ratio(tp_all, support)
    correct = sum(1 for a, b in zip(g, p) if a == b)
    return {
        "accuracy": _ratio(correct, len(g)),
        "total": len(g),
        "per_class": per_class,
        "macro": {**macro, "support": support},
        "weighted": {**weighted, "support": support},
        "micro": {"precision": micro_p, "recall": micro_r, "f1": _f1(micro_p, micro_r), "support": support},
    }


def span_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], scheme: str = "iob1") -> dict:
    """conlleval over sentences: overall and per-type chunk precision / recall / F1.

    Returns ``{"precision", "recall", "f1", "accuracy", "tokens", "correct",
    "found_gold", "found_pred", "per_type": {TYPE: {"precision", "recall", "f1",
    "correct", "found_gold", "found_pred"}}}``.
    ``scheme`` is ``iob1`` or ``bio`` (read directly by conlleval's rules) or ``bioes``.
    """
    _check_lengths(gold, pred)
    if scheme == "bioes":
        gold = [convert(s, "bioes", "bio") for s in gold]
        pred = [convert(s, "bioes", "bio") for s in pred]
    elif scheme not in ("iob1", "bio"):
        raise ValueError(f"span_scores needs scheme iob1, bio or bioes, not {scheme!r}")

    counts = _ConllevalCounts()
    for g_sent, p_sent in zip(gold, pred):
        for g_tag, p_tag in zip(g_sent, p_sent):
            counts.token(g_tag, p_tag)
        # the blank line between sentences: conlleval reads it as O / O, not counted as a token
        counts.step("O", "", "O", "")
    if counts.in_correct:  # conlleval's end-of-file rule (unreachable after a boundary, kept for fidelity)
        counts.correct_chunk[counts.last[1]] += 1

    def rates(c: int, fg: int, fp: int) -> dict:
        prec, rec = _ratio(c, fp), _ratio(c, fg)
        return {"precision": prec, "recall": rec, "f1": _f1(prec, rec), "correct": c, "found_gold": fg, "found_pred": fp}

    found_correct, found_guessed, correct_chunk = counts.found_correct, counts.found_guessed, counts.correct_chunk
    per_type = {
        t: rates(correct_chunk[t], found_correct[t], found_guessed[t])
        for t in sorted(set(found_correct) | set(found_guessed))
    }
    overall = rates(sum(correct_chunk.values()), sum(found_correct.values()), sum(found_guessed.values()))
    return {**overall, "accuracy": _ratio(counts.correct_tags, counts.tokens), "tokens": counts.tokens, "per_type": per_type}


class _ConllevalCounts:
    """conlleval's chunk bookkeeping, one (gold, guessed) tag pair at a time, with its
    variable names: a chunk is correct when both start and end together with one type."""

    def __init__(self):
        self.correct_chunk: Counter = Counter()
        self.found_correct: Counter = Counter()
        self.found_guessed: Counter = Counter()
        self.correct_tags = self.tokens = 0
        self.in_correct = False
        self.last = ("O", "", "O", "")  # last correct tag, its type, last guessed tag, its type

    def token(self, g_tag: str, p_tag: str) -> None:
        correct, c_type = split_tag(g_tag)
        guessed, g_type = split_tag(p_tag)
        self.step(correct, c_type, guessed, g_type)
        if correct == guessed and g_type == c_type:
            self.correct_tags += 1
        self.tokens += 1

    def step(self, correct: str, c_type: str, guessed: str, g_type: str) -> None:
        last_c, last_ct, last_g, last_gt = self.last
        end_c = end_of_chunk(last_c, correct, last_ct, c_type)
        end_g = end_of_chunk(last_g, guessed, last_gt, g_type)
        start_c = start_of_chunk(last_c, correct, last_ct, c_type)
        start_g = start_of_chunk(last_g, guessed, last_gt, g_type)
        if self.in_correct:
            if end_c and end_g and last_gt == last_ct:
                self.in_correct = False
                self.correct_chunk[last_ct] += 1
            elif end_c != end_g or g_type != c_type:
                self.in_correct = False
        if start_c and start_g and g_type == c_type:
            self.in_correct = True
        if start_c:
            self.found_correct[c_type] += 1
        if start_g:
            self.found_guessed[g_type] += 1
        self.last = (correct, c_type, guessed, g_type)


def conlleval_text(scores: dict) -> str:
    """The report in conlleval's layout (percentages with two decimals)."""
    lines = [
        f"processed {scores['tokens']} tokens with {scores['found_gold']} phrases; "
        f"found: {scores['found_pred']} phrases; correct: {scores['correct']}.",
        f"accuracy: {100 * scores['accuracy']:6.2f}%; precision: {100 * scores['precision']:6.2f}%; "
        f"recall: {100 * scores['recall']:6.2f}%; FB1: {100 * scores['f1']:6.2f}",
    ]
    for t, s in scores["per_type"].items():
        lines.append(
            f"{t:>17}: precision: {100 * s['precision']:6.2f}%; recall: {100 * s['recall']:6.2f}%; "
            f"FB1: {100 * s['f1']:6.2f}  {s['found_pred']}"
        )
    return "\n".join(lines)


def oracle_choice(gold: Sequence[Sequence[str]], candidates: Sequence[Sequence[Sequence[str]]], scheme: str) -> list:
    """Per sentence, the candidate tag sequence closest to the gold one: the best span F1
    (span schemes; 1 when neither has a span) or the most correct tags (scheme none); ties
    go to the earlier (better-ranked) candidate. The oracle of an n-best list: how good
    its best member is, e.g. NCRF++'s 10-best oracle F1 on CoNLL-2003 (97.47)."""
    from tagger.data.schemes import spans

    if len(gold) != len(candidates):
        raise ValueError(f"oracle_choice: {len(gold)} gold sentences but {len(candidates)} candidate lists")
    chosen = []
    for g, cands in zip(gold, candidates):
        if scheme == "none":
            closeness = [sum(a == b for a, b in zip(g, c)) for c in cands]
        else:
            want = set(spans(g, scheme))
            closeness = [_sentence_f1(want, set(spans(c, scheme))) for c in cands]
        chosen.append(list(cands[max(range(len(cands)), key=lambda m: (closeness[m], -m))]))
    return chosen


def _sentence_f1(gold: set, pred: set) -> float:
    return 1.0 if not gold and not pred else 2 * len(gold & pred) / (len(gold) + len(pred))
