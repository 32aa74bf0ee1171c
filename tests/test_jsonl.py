"""tagger.jsonl and the task's records: what `tagger predict` writes is byte for byte what
it wrote before the chunked writers (json.dumps per record, round() per probability),
on awkward inputs, except that a NaN or infinity is now null.

The previous record and format code is kept here as the reference (`old_record`,
`old_format_record`); every test compares the new writers against it.
"""
import json
import math

import numpy as np
import pytest

from tagger.config import Config
from tagger.data.prepare import examples_from_texts
from tagger.data.schemes import spans as tag_spans
from tagger.data.types import Example
from tagger.data.vocab import LabelVocab
from tagger.jsonl import json_members, json_prob_lists, json_value, jsonl_close, jsonl_open, round_probs, rounded_rows
from tagger.tasks import make_task, tsv_field

TEXTS = [
    "The young teacher reads a long book .",
    'He said "no" to the \\ back-slash',
    "tabs\there\tand\tthere",
    "control \x01 chars \x1f and \x7f delete",
    "Pàris, Ünterstadt-am-See, 日本語のテキスト and emoji 😀 here",
    "line\u2028separator and nbsp\u00a0here",
    "\u200b",  # no token the pre-tokenizer keeps? (a zero-width space is a symbol to it)
    "   ",  # blank: no tokens
    "",
    "x",
    "U.S. shares rose $3.50... to 1,000.25 -- ``quoted'' text !",
]
POS = LabelVocab(["DET", "NOUN", "VERB", 'Q"UOTE', "BACK\\SLASH", "ÜNI"])
NER_LABELS = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]


def config(**sections):
    return Config.model_validate(sections)


def old_record(task, ex, pred):
    """TagTask.record / ClassifyTask.record before the chunked writers."""
    if task.name == "classify":
        label, prob = pred
        return {"text": ex.text, "label": label, "probability": round(float(prob), 6)}
    tags, probs = pred
    record = {
        "text": ex.text,
        "tokens": ex.tokens,
        "offsets": [list(o) for o in ex.offsets] if ex.offsets is not None else None,
        "tags": tags,
        "probs": [round(float(p), 6) for p in probs],
    }
    if task.data_scheme != "none" and ex.offsets is not None:
        record["spans"] = [
            {"type": kind, "start": ex.offsets[a][0], "end": ex.offsets[b - 1][1],
             "text": ex.text[ex.offsets[a][0] : ex.offsets[b - 1][1]], "token_start": a, "token_end": b}
            for kind, a, b in tag_spans(tags, task.data_scheme)
        ]
    return record


def old_format_record(task, record, line, fmt):
    """Task.format_record before the chunked writers."""
    if fmt == "jsonl":
        return json.dumps({"line": line, **record}, ensure_ascii=False) + "\n"
    if task.name == "classify":
        return f"{line}\t{record['label']}\t{record['probability']}\t{tsv_field(record['text'])}\n"
    if fmt == "conll":
        return "".join(f"{t}\t{g}\n" for t, g in zip(record["tokens"], record["tags"])) + "\n"
    return f"{line}\t{' '.join(record['tokens'])}\t{' '.join(record['tags'])}\n"


def awkward_probs(rng, n):
    """float32 probabilities with the values rounding and repr treat specially: 0, 1, exponent
    forms (below 1e-4), ones a hair either side of a rounding half, and plain ones."""
    special = np.array([0.0, 1.0, 1e-5, 5e-7, 4.9e-7, 0.0001, 0.00005, 0.9999995, 0.5, 0.1234565,
                        0.0000015, 0.000999, 0.25, 0.999999, 0.1, 1e-9], dtype=np.float32)
    out = rng.uniform(0, 1, n).astype(np.float32)
    pick = rng.random(n) < 0.4
    out[pick] = special[rng.integers(0, len(special), pick.sum())]
    return out


def predictions(task, examples, rng):
    """Random predictions in the shape Task.decode makes them (Python floats of float32)."""
    out = []
    for ex in examples:
        if task.name == "classify":
            out.append((task.labels.labels[rng.integers(len(task.labels))], float(awkward_probs(rng, 1)[0])))
        else:
            tags = [task.labels.labels[i] for i in rng.integers(0, len(task.labels), len(ex.tokens))]
            out.append((task.to_data_scheme(tags), awkward_probs(rng, len(ex.tokens)).tolist()))
    return out


TASKS = {
    "pos": lambda: make_task(config(), POS),
    "ner": lambda: make_task(config(data={"scheme": "bio", "target_scheme": "bioes"}), LabelVocab(NER_LABELS)),
    "cls": lambda: make_task(config(model={"task": "classify"}), LabelVocab(["neg", "pos", "tab\there", 'q"uote'])),
}


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("fmt", ["jsonl", "conll", "tsv"])
def test_records_and_lines_are_byte_identical_to_the_old_writers(name, fmt):
    task = TASKS[name]()
    rng = np.random.default_rng(len(name) * 7 + len(fmt))
    texts = [t for t in TEXTS * 30 if task.name != "classify" or t.strip()]
    examples = examples_from_texts(texts)
    if task.name == "classify":
        examples = [ex for ex in examples if ex.tokens]
    preds = predictions(task, examples, rng)
    lines = list(range(3, 3 + 2 * len(examples), 2))
    want = [old_format_record(task, old_record(task, ex, p), n, fmt) for ex, p, n in zip(examples, preds, lines)]
    records = task.records(examples, preds)
    assert records == [old_record(task, ex, p) for ex, p in zip(examples, preds)]
    assert task.format_records(records, lines, fmt) == want
    assert [task.format_record(task.record(ex, p), n, fmt) for ex, p, n in zip(examples, preds, lines)] == want
    if fmt == "jsonl":  # the chunk path: each line begun before the model runs
        assert task.jsonl_lines(task.jsonl_heads(examples, lines), examples, preds) == want


def test_pretokenized_examples_without_text_or_offsets_write_nulls_as_before():
    task = TASKS["ner"]()
    examples = [Example(["Anna", "Smith"]), Example(["a", 'b"c'], text=None, offsets=[(0, 1), (2, 5)])]
    preds = [(["B-PER", "I-PER"], [0.5, 0.25]), (["O", "O"], [1.0, 0.0])]
    want = [old_format_record(task, old_record(task, ex, p), 1, "jsonl") for ex, p in zip(examples, preds)]
    assert task.format_records(task.records(examples, preds), [1, 1], "jsonl") == want
    assert task.jsonl_lines(task.jsonl_heads(examples, [1, 1]), examples, preds) == want


def test_round_probs_is_pythons_round_to_six_places():
    rng = np.random.default_rng(0)
    halves = (np.arange(0, 1_000_000, 997) + 0.5) / 1e6  # the nearest doubles to exact halves
    values = np.concatenate([
        rng.random(20_000), rng.random(20_000).astype(np.float32), awkward_probs(rng, 5_000), halves,
        np.nextafter(halves, 0), np.nextafter(halves, 1), -rng.random(100), rng.normal(0, 1e12, 100),
        [0.0, -0.0, 1.0, 5e-7, 1e300, -1e300, 2.0**31 / 1e6, 2.0**53],
    ])
    got = round_probs(values)
    want = np.array([round(float(v), 6) for v in values])
    assert got.tobytes() == want.tobytes()  # same floats, the sign of zero too
    both = round_probs(np.array([np.nan, np.inf, -np.inf]))
    assert np.isnan(both[0]) and both[1] == np.inf and both[2] == -np.inf
    rows = [values[:3].tolist(), [], values[3:10].tolist()]
    assert rounded_rows(rows) == [[round(v, 6) for v in row] for row in rows]


def test_probability_lists_are_written_as_json_writes_them():
    rng = np.random.default_rng(1)
    rows = [rounded_rows([awkward_probs(rng, int(n)).tolist()])[0] for n in rng.integers(0, 30, 300)]
    rows += [[], [1.0], [0.0], [-0.0, 0.5], [1e-05, 0.00012], [0.3333333], [1, 2], [0.5, None], None, "x"]
    want = [json.dumps(row, ensure_ascii=False) for row in rows]
    assert json_prob_lists(rows) == want
    assert json_prob_lists(rows[:2]) == want[:2]  # few values: the per-list path


def _strict(text):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_nan_and_infinity_are_written_as_null_never_as_nan():
    tag, cls = TASKS["ner"](), TASKS["cls"]()
    (ex,) = examples_from_texts(["Anna Smith spoke"])
    probs = [float("nan"), float("inf"), 0.5]
    many = [ex] * 40  # enough values for the vectorised path too
    for task, examples, preds in ((tag, [ex], [(["B-PER", "E-PER", "O"], probs)]),
                                  (tag, many, [(["O", "O", "O"], probs)] * len(many)),
                                  (cls, [ex], [("pos", float("nan"))])):
        texts = task.format_records(task.records(examples, preds), [1] * len(examples), "jsonl")
        assert texts == task.jsonl_lines(task.jsonl_heads(examples, [1] * len(examples)), examples, preds)
        for text in texts:
            assert "NaN" not in text and "Infinity" not in text
            record = _strict(text)
            assert record.get("probs", [None, None, 0.5]) == [None, None, 0.5]
            assert record.get("probability", None) is None
    nested = {"nbest": [{"tags": ["O"], "score": float("-inf")}], "ok": 1.5}
    assert _strict(json_value(nested)) == {"nbest": [{"tags": ["O"], "score": None}], "ok": 1.5}


def test_a_key_a_task_adds_to_its_records_is_written_like_json_dumps():
    """A new record key (an n-best list, say) needs no writer of its own."""
    extra = [{"nbest": [{"tags": ["B-PER", "O"], "score": -1.25}], "odd key \"%s\"": "\t\\"}, {"nbest": []}, {}]
    heads = jsonl_open([{"text": "a\tb"}] * 3, [7, 8, 9], {})
    got = jsonl_close(heads, extra, {})
    assert got == [json.dumps({"line": n, "text": "a\tb", **e}, ensure_ascii=False) + "\n" for n, e in zip([7, 8, 9], extra)]
    assert json_members([{1: "one", None: 2.5}], {}) == [json.dumps({1: "one", None: 2.5})[1:-1]]
    assert math.isclose(_strict(got[0])["nbest"][0]["score"], -1.25)
