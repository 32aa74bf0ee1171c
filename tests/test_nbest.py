"""A CRF model within its tag grammar and its n-best lists, end to end: the head the task
builds for each model.crf_constraints, gold paths made canonical for a constrained loss,
Model.predict(nbest=k) against brute-force enumeration over the model's own emissions,
`tagger predict --nbest` (jsonl only) and `tagger evaluate --nbest` (the k-best oracle),
and the one-line errors."""
import itertools
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tagger.cli import app
from tagger.config import Config, ConfigError, load_config
from tagger.data.prepare import examples_from_texts
from tagger.data.schemes import allowed_transitions
from tagger.data.types import Example
from tagger.data.vocab import LabelVocab, WordVocab
from tagger.errors import TaggerError
from tagger.io import save_model
from tagger.metrics import oracle_choice
from tagger.models import Model, build_network
from tagger.predict import predict_files
from tests.layers.test_crf import path_score
from tests.test_models import FIRST, LAST, OTHER, sentences, train

TAGS = ["O", "B-PER", "I-PER"]
TEXTS = ["Anna Smith spoke after the minister .", "Pavel", "shares rose"]


def bio_model(crf=True, constraints="decode", seed=0, scheme="bio"):
    config = Config.model_validate(
        {"data": {"scheme": scheme, "format": "conll"},
         "model": {"crf": crf, "crf_constraints": constraints, "embedding_dim": 8, "lstm_units": 8, "dropout": 0.0},
         "training": {"seed": seed}, "device": "cpu"}
    )
    words = WordVocab.build([FIRST + LAST + OTHER])
    labels = LabelVocab.build(TAGS, first=["O"])
    network = build_network(config.model, len(words), len(labels), ops="cpu", dtype=np.float64, seed=seed)
    return Model(config, words, labels, network)


@pytest.fixture(scope="module")
def trained():
    model = bio_model()
    train(model, sentences(48), 20)
    # transitions that favour O -> I-PER, so the grammar has something to refuse
    A, s, e = model.crf.get_weights()
    A[0, 2] = 4.0
    model.crf.set_weights([A, s, e])
    return model


def emissions(model, text):
    (ex,) = examples_from_texts([text])
    (batch,) = model.batches([ex], 8, with_labels=False)
    scores, _ = model.forward(batch, train=False)
    return np.asarray(model.ops.to_numpy(scores))[0, : len(ex.tokens)]


def fits(path, allowed):
    start_ok, trans_ok, end_ok = allowed
    return bool(start_ok[path[0]] and end_ok[path[-1]] and all(trans_ok[a, b] for a, b in zip(path, path[1:])))


def test_the_task_builds_the_head_each_setting_asks_for():
    assert bio_model(constraints="decode").labeller.head.allowed is not None
    assert bio_model(constraints="decode").labeller.head.train_allowed is None
    train_head = bio_model(constraints="train").labeller.head
    assert train_head.train_allowed is train_head.allowed and train_head.allowed is not None
    assert bio_model(constraints="none").labeller.head.allowed is None
    assert bio_model(scheme="none").labeller.head.allowed is None  # no spans, no grammar
    # the grammar is the train scheme's, over the tags the CRF sees
    config = Config.model_validate({"data": {"scheme": "iob1", "target_scheme": "bioes"}, "model": {"crf": True}})
    labels = LabelVocab.build(["O", "B-PER", "I-PER", "E-PER", "S-PER"], first=["O"])
    from tagger.tasks import make_task

    head = make_task(config, labels).head
    want = allowed_transitions(labels.labels, "bioes")
    for got, w in zip(head.allowed, want):
        np.testing.assert_array_equal(got, w)


def test_a_constrained_loss_trains_on_canonical_gold_paths():
    model = bio_model(constraints="train")
    loose = Example(tokens=["the", "Anna"], labels=["O", "I-PER"])  # loose BIO: I- opens a chunk
    assert model.labeller.encode([loose]) == [[0, 1]]  # re-encoded through its spans: O B-PER
    assert bio_model(constraints="decode").labeller.encode([loose]) == [[0, 2]]  # as read
    losses = train(model, sentences(32), 6)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    model.network.zero_grad()
    model.train_step(next(iter(model.batches(sentences(8), 8))))
    A_grad = model.crf.grads[0]
    assert A_grad[0, 2] == 0 and A_grad[0, 1] != 0  # O -> I-PER is no parameter, O -> B-PER is


def test_decoding_keeps_to_the_grammar_unless_told_not_to(trained):
    allowed = allowed_transitions(TAGS, "bio")
    ids = {t: k for k, t in enumerate(TAGS)}
    tags = {}
    for mode in ("decode", "none"):
        model = bio_model(constraints=mode)
        model.network.set_weights(trained.network.get_weights())
        A, s, e = model.crf.get_weights()
        A[0, 2] = A[2, 2] = 50.0  # O -> I-PER -> I-PER beats everything, unless forbidden
        model.crf.set_weights([A, s, e])
        tags[mode] = [r["tags"] for r in model.predict(TEXTS)]
    assert all(fits([ids[t] for t in seq], allowed) for seq in tags["decode"]), tags["decode"]
    assert ["O", "I-PER"] in [seq[:2] for seq in tags["none"]], tags["none"]


def test_nbest_records_against_enumeration(trained):
    plain = trained.predict(TEXTS)
    records = trained.predict(TEXTS, nbest=4)
    allowed = allowed_transitions(TAGS, "bio")
    A, s, e = trained.crf.get_weights()
    for text, rec, base in zip(TEXTS, records, plain):
        assert {k: v for k, v in rec.items() if k != "nbest"} == base  # the 1-best fields unchanged
        E = emissions(trained, text)
        n = E.shape[0]
        legal = {p: path_score(E, p, A, s, e) for p in itertools.product(range(3), repeat=n) if fits(p, allowed)}
        values = np.array(list(legal.values()))
        logZ = values.max() + np.log(np.exp(values - values.max()).sum())
        ranked = sorted(legal, key=lambda p: (-legal[p], p[::-1]))[:4]
        assert [c["tags"] for c in rec["nbest"]] == [[TAGS[k] for k in p] for p in ranked]
        np.testing.assert_allclose([c["score"] for c in rec["nbest"]], [legal[p] for p in ranked], rtol=1e-9)
        np.testing.assert_allclose([c["probability"] for c in rec["nbest"]],
                                   [np.exp(legal[p] - logZ) for p in ranked], rtol=1e-9)
        assert rec["nbest"][0]["tags"] == rec["tags"]
        json.dumps(rec)  # plain JSON types


def test_nbest_of_short_sentences_lists_every_path(trained):
    one, empty = trained.predict(["Pavel", ""], nbest=10)
    assert sorted(tuple(c["tags"]) for c in one["nbest"]) == [("B-PER",), ("O",)]  # I-PER cannot open
    assert sum(c["probability"] for c in one["nbest"]) == pytest.approx(1.0, rel=1e-9)
    assert empty["nbest"] == [{"tags": [], "score": 0.0, "probability": 1.0}] and empty["tags"] == []


def test_nbest_needs_a_crf_and_a_positive_count(trained):
    with pytest.raises(TaggerError, match=r"^nbest needs a CRF model \(model.crf: true\)"):
        bio_model(crf=False).predict(TEXTS, nbest=2)
    for bad in (0, -1, 2.5):
        with pytest.raises(TaggerError, match="nbest must be a positive number of tag sequences"):
            trained.predict(TEXTS, nbest=bad)


def test_crf_constraints_is_validated_in_one_line(tmp_path):
    for model, fragment in (({"crf": True, "crf_constraints": "always"}, "crf_constraints"),
                            ({"crf": False, "crf_constraints": "train"}, "crf_constraints: train constrains")):
        path = tmp_path / "c.yaml"
        path.write_text(json.dumps({"model": model}))
        with pytest.raises(ConfigError, match=fragment) as err:
            load_config(path)
        assert "\n" not in str(err.value).strip()


def test_oracle_choice_picks_the_closest_candidate():
    gold = [["B-PER", "I-PER", "O"], ["O", "O"]]
    cands = [[["O", "O", "O"], ["B-PER", "O", "O"], ["B-PER", "I-PER", "O"]], [["O", "O"], ["B-PER", "O"]]]
    assert oracle_choice(gold, cands, "bio") == gold
    assert oracle_choice([["A", "B"]], [[["A", "A"], ["B", "B"], ["A", "B"]]], "none") == [["A", "B"]]
    # ties: the better-ranked candidate
    assert oracle_choice([["B-PER", "O"]], [[["O", "O"], ["O", "B-PER"]]], "bio") == [["O", "O"]]


def test_evaluate_nbest_reports_the_oracle(trained):
    examples = sentences(12, seed=5)
    scores = trained.evaluate(examples, nbest=5)
    assert scores["oracle"]["k"] == 5 and scores["oracle"]["metric"] == "span_f1"
    assert scores["oracle"]["score"] >= scores["score"]
    assert {k: v for k, v in scores.items() if k != "oracle"} == trained.evaluate(examples)
    assert any("5-best oracle span F1" in line for line in trained.labeller.report_lines(scores))


def test_predict_files_and_the_cli(trained, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n")
    with pytest.raises(TaggerError, match=r"--nbest lists are written in --format jsonl only \(got --format tsv\)"):
        predict_files(trained, [src], tmp_path / "out", fmt="tsv", nbest=2)
    with pytest.raises(TaggerError, match=r"--nbest needs a CRF model \(model.crf: true\)"):
        predict_files(bio_model(crf=False), [src], tmp_path / "out", nbest=2)
    save_model(trained, tmp_path / "model")
    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(tmp_path / "model"), str(src), "--nbest", "3"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [len(r["nbest"]) for r in lines] == [3, 2, 3]  # "Pavel": O or B-PER
    assert [r["line"] for r in lines] == [1, 2, 3]
    result = runner.invoke(app, ["predict", str(tmp_path / "model"), str(src), "--nbest", "3", "--format", "conll"])
    assert result.exit_code == 1 and "--nbest lists are written in --format jsonl only" in result.output


def test_evaluate_cli_prints_the_oracle(trained, tmp_path):
    save_model(trained, tmp_path / "model")
    data = tmp_path / "dev.conll"
    data.write_text("".join("".join(f"{t} {g}\n" for t, g in zip(ex.tokens, ex.labels)) + "\n"
                            for ex in sentences(10, seed=7)))
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(tmp_path / "model"), str(data), "--nbest", "4"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "4-best oracle span F1: " in result.stdout
    result = runner.invoke(app, ["evaluate", str(tmp_path / "model"), str(data), "--nbest", "4", "--json"])
    assert json.loads(result.stdout)["oracle"]["k"] == 4
    result = runner.invoke(app, ["evaluate", str(tmp_path / "model"), str(data), "--nbest", "2", "-p", str(tmp_path / "p")])
    assert result.exit_code == 1 and "--nbest and --predictions" in result.output


def test_nbest_from_a_column_input(trained, tmp_path):
    """--input-format conll with --format jsonl: the same lists as for the raw sentences."""
    src = tmp_path / "in.conll"
    src.write_text("".join("".join(f"{t}\tO\n" for t in text.split()) + "\n" for text in TEXTS))
    out = tmp_path / "out"
    predict_files(trained, [src], out, fmt="jsonl", nbest=3)
    records = [json.loads(line) for line in (out / "in.conll.jsonl").read_text().splitlines()]
    want = trained.predict_examples([Example(tokens=t.split()) for t in TEXTS], nbest=3)
    assert [[c["tags"] for c in r["nbest"]] for r in records] == [[c[0] for c in w[2]] for w in want]
