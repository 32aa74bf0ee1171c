"""TagTask and ClassifyTask: labels and schemes, encoding, heads, decoding, records, scores."""
import json

import numpy as np
import pytest

from tagger.config import Config
from tagger.data.batching import make_batches
from tagger.data.prepare import examples_from_texts
from tagger.data.types import Example
from tagger.data.vocab import LabelVocab
from tagger.errors import TaggerError
from tagger.tasks import (ClassifyTask, CRFHead, HeadSpec, SoftmaxHead, TagTask, build_labels, head_spec, make_task,
                          train_scheme)


def config(**sections):
    return Config.model_validate(sections)


NER = config(data={"scheme": "bio", "target_scheme": "bioes"})
TRAIN = [
    Example(["Anna", "Smith", "spoke"], labels=["B-PER", "I-PER", "O"]),
    Example(["in", "Paris"], labels=["O", "B-LOC"]),
]


def test_the_train_scheme_is_the_target_scheme_or_the_data_scheme():
    assert train_scheme(NER.data) == "bioes"
    assert train_scheme(config(data={"scheme": "iob1"}).data) == "iob1"
    assert train_scheme(config().data) == "none"


def test_tag_labels_are_built_in_the_train_scheme_and_o_comes_first():
    labels = build_labels(NER, TRAIN)
    assert labels.labels[0] == "O"
    assert set(labels.labels) == {"O", "B-PER", "E-PER", "S-LOC"}
    pos = build_labels(config(), [Example(["a", "b"], labels=["DET", "NOUN"])])
    assert sorted(pos.labels) == ["DET", "NOUN"]  # no "O" to put first


def test_tag_encoding_converts_to_the_train_scheme_and_decoding_back():
    task = make_task(NER, build_labels(NER, TRAIN))
    assert isinstance(task, TagTask) and task.name == "tag"
    ids = task.encode(TRAIN)
    assert [task.labels.decode(x) for x in ids] == [["B-PER", "E-PER", "O"], ["O", "S-LOC"]]
    # an entity type never seen in training scores as a miss ("O"), it does not crash
    (unseen,) = task.encode([Example(["at", "ACME"], labels=["O", "B-ORG"])])
    assert task.labels.decode(unseen) == ["O", "O"]
    with pytest.raises(TaggerError, match="x.conll:3: sentence has no labels"):
        task.encode([Example(["a"], source="x.conll:3")])
    K = len(task.labels)
    best = np.array([task.labels.labels.index(t) for t in ["B-PER", "E-PER", "O", "O"]])
    probs = np.full((4, K), 0.1)
    probs[np.arange(4), best] = 0.7
    tags, conf = task.prediction(best, probs, n=3)  # the 4th step is padding
    assert tags == ["B-PER", "I-PER", "O"] and conf == pytest.approx([0.7, 0.7, 0.7])
    assert task.to_train_scheme(["B-LOC", "I-LOC"]) == ["B-LOC", "E-LOC"]
    assert task.empty_prediction(Example([])) == ([], [])


def test_tag_records_carry_character_spans_in_the_data_scheme():
    task = make_task(NER, build_labels(NER, TRAIN))
    (ex,) = examples_from_texts(["Anna Smith spoke in Paris."])
    assert ex.tokens == ["Anna", "Smith", "spoke", "in", "Paris", "."]
    record = task.record(ex, (["B-PER", "I-PER", "O", "O", "B-LOC", "O"], [0.9, 0.8, 1, 1, 0.6, 1]))
    assert record["offsets"][4] == [20, 25]
    assert [(s["type"], s["text"], s["token_start"], s["token_end"]) for s in record["spans"]] == [
        ("PER", "Anna Smith", 0, 2), ("LOC", "Paris", 4, 5)
    ]
    assert json.loads(task.format_record(record, 7, "jsonl"))["line"] == 7
    assert task.format_record(record, 7, "conll").splitlines()[:2] == ["Anna\tB-PER", "Smith\tI-PER"]
    assert task.format_record(record, 7, "tsv") == "7\tAnna Smith spoke in Paris .\tB-PER I-PER O O B-LOC O\n"
    pos = make_task(config(), LabelVocab(["DET", "NOUN"]))
    assert "spans" not in pos.record(Example(["a"], text="a", offsets=[(0, 1)]), (["DET"], [1.0]))


def test_tag_scores_are_token_accuracy_and_conlleval_spans_for_span_schemes():
    task = make_task(NER, build_labels(NER, TRAIN))
    gold = TRAIN
    preds = [(["B-PER", "I-PER", "O"], [1] * 3), (["O", "O"], [1] * 2)]
    scores = task.score(gold, preds)
    assert scores["accuracy"] == pytest.approx(4 / 5)
    assert scores["spans"]["precision"] == 1.0 and scores["spans"]["recall"] == 0.5
    assert scores["score"] == pytest.approx(scores["spans"]["f1"]) == pytest.approx(2 / 3)
    assert scores["report"]["per_class"]["B-LOC"]["recall"] == 0.0
    assert any("accuracy" in line for line in task.report_lines(scores))
    pos = make_task(config(), LabelVocab(["DET", "NOUN"]))
    plain = pos.score([Example(["a", "b"], labels=["DET", "NOUN"])], [(["DET", "DET"], [1, 1])])
    assert "spans" not in plain and plain["score"] == plain["accuracy"] == 0.5


def test_classify_labels_encoding_predictions_records_and_scores():
    cfg = config(model={"task": "classify"})
    texts = [Example(["good"], label="pos"), Example(["bad"], label="neg"), Example(["fine"], label="pos")]
    task = make_task(cfg, build_labels(cfg, texts))
    assert isinstance(task, ClassifyTask) and task.labels.labels == ["neg", "pos"]
    assert task.encode(texts) == [1, 0, 1]
    with pytest.raises(TaggerError, match="t.tsv:2: text has no label"):
        task.encode([Example(["x"], source="t.tsv:2")])
    with pytest.raises(TaggerError, match="empty text cannot be classified"):
        task.empty_prediction(Example([]))
    assert task.prediction(np.int64(1), np.array([0.25, 0.75]), n=3) == ("pos", 0.75)
    record = task.record(Example(["good"], text="good"), ("pos", 0.7512345678))
    assert record == {"text": "good", "label": "pos", "probability": 0.751235}
    assert task.format_record(record, 2, "tsv") == task.format_record(record, 2, "conll") == "2\tpos\t0.751235\tgood\n"
    scores = task.score(texts, [("pos", 1.0), ("pos", 1.0), ("pos", 1.0)])
    assert scores["score"] == scores["accuracy"] == pytest.approx(2 / 3) and scores["n"] == 3
    assert task.report_lines(scores) == ["accuracy: 66.67% (3 texts)"]
    assert task.label_counts(texts) == {"pos": 2, "neg": 1}


def test_head_specs_say_what_the_network_ends_with():
    assert head_spec(config().model) == HeadSpec(sequences=True, pooling=None, crf=False)
    assert head_spec(config(model={"crf": True}).model) == HeadSpec(sequences=True, pooling=None, crf=True)
    assert head_spec(config(model={"task": "classify"}).model) == HeadSpec(sequences=False, pooling=None, crf=False)
    assert head_spec(config(model={"task": "classify", "pooling": "mean"}).model) == HeadSpec(True, "mean", False)
    assert isinstance(make_task(config(model={"crf": True}), LabelVocab(["O"])).head, CRFHead)
    assert isinstance(make_task(config(), LabelVocab(["O"])).head, SoftmaxHead)


def test_the_softmax_head_masks_padding_for_tags_and_decodes_by_argmax():
    from tagger.layers import Dense, Sequential

    network = Sequential([Dense(3, name="output")], input_shape=(None, 2), ops="reference", dtype=np.float64, seed=0)
    batch = make_batches([[1, 2, 3], [4]], [[0, 1, 2], [2]], batch_size=2)[0]
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(2, 3, 3))
    head = SoftmaxHead(per_token=True)
    loss, d = head.loss(scores, batch, network)
    np.testing.assert_array_equal(d[1, 1:], 0)  # padded steps get no gradient
    p = np.exp(scores[0]) / np.exp(scores[0]).sum(-1, keepdims=True)
    nll = -np.log(p[np.arange(3), [0, 1, 2]]).sum() - np.log(
        (np.exp(scores[1, 0]) / np.exp(scores[1, 0]).sum())[2])
    assert loss == pytest.approx(nll / 4)  # mean over the 4 real tokens
    best, probs = head.decode(scores, batch, network)
    real = batch.mask
    np.testing.assert_array_equal(best[real], scores.argmax(-1)[real])
    np.testing.assert_allclose(probs[real].sum(-1), 1.0)
    np.testing.assert_allclose(probs[real], network.ops.softmax(scores)[real])  # each row's softmax alone
    # padded steps: best 0 and probabilities 0, as the CRF head decodes them
    np.testing.assert_array_equal(best[~real], 0)
    np.testing.assert_array_equal(probs[~real], 0.0)
