"""Model with a CRF output (model.crf): training, Viterbi predictions, marginals,
save / load, summary, and that crf: false is unchanged. Classifier with pooling over
time (model.pooling): training, save / load, and that pooling: last is unchanged."""
import numpy as np
import pytest
import yaml

from tagger.config import Config
from tagger.data.types import Example
from tagger.data.vocab import LabelVocab, WordVocab
from tagger.errors import TaggerError
from tagger.io import load_model, save_model
from tagger.models import Model, build_network
from tagger.optim import make_optimizer
from tests.gradcheck import assert_grad_close, numeric_grad

FIRST = ["Anna", "Pavel", "Nadim", "Maria"]
LAST = ["Smith", "Tamsin", "Makeba", "Ortiz"]
OTHER = ["the", "minister", "spoke", "rose", "after", "shares", "."]


def sentences(n, seed=0):
    """Names (B-PER I-PER, sometimes a lone B-PER) among other words (O)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.integers(1, 5)):
            if rng.random() < 0.4:
                tokens.append(str(rng.choice(FIRST)))
                tags.append("B-PER")
                if rng.random() < 0.7:
                    tokens.append(str(rng.choice(LAST)))
                    tags.append("I-PER")
            else:
                tokens.append(str(rng.choice(OTHER)))
                tags.append("O")
        out.append(Example(tokens=tokens, labels=tags))
    return out


def tiny_model(crf=True, ops="cpu", dtype=np.float32, seed=0, dropout=0.0, units=8):
    config = Config.model_validate(
        {"model": {"crf": crf, "embedding_dim": 8, "lstm_units": units, "dropout": dropout},
         "training": {"seed": seed}, "device": "cpu"}
    )
    words = WordVocab.build([FIRST + LAST + OTHER])
    labels = LabelVocab.build(["O", "B-PER", "I-PER"], first=["O"])
    network = build_network(config.model, len(words), len(labels), ops=ops, dtype=dtype, seed=seed)
    return Model(config, words, labels, network)


def train(model, examples, steps, lr=0.05):
    optimizer = make_optimizer("adam", lr)
    losses = []
    while len(losses) < steps:
        for batch in model.batches(examples, 16, shuffle=True, seed=len(losses)):
            losses.append(model.train_step(batch))
            optimizer.step(model.network)
    return losses


@pytest.fixture(scope="module")
def trained():
    model = tiny_model()
    losses = train(model, sentences(64), 40)
    return model, losses


def test_a_crf_model_trains(trained):
    model, losses = trained
    assert model.crf is not None and model.crf.name == "crf"
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    A = model.crf.get_weights()[0]
    o, b, i = (model.labels.labels.index(t) for t in ("O", "B-PER", "I-PER"))
    assert A[o, i] < A[b, i]  # O -> I-PER never occurs in the data, B-PER -> I-PER often


def test_predictions_are_the_viterbi_paths_with_marginals_as_confidence(trained):
    model, _ = trained
    examples = sentences(20, seed=1) + [Example(tokens=[], labels=[])]
    preds = model.predict_examples(examples, batch_size=8)
    assert preds[-1] == ([], [])
    for batch in model.batches(examples[:-1], 8, with_labels=False):
        emissions = model.network(batch.ids)
        paths = model.crf.decode(emissions, batch.lengths)
        marginals = model.crf.marginals(emissions, batch.lengths)
        np.testing.assert_allclose(model.probabilities(batch), marginals)
        np.testing.assert_allclose(marginals.sum(-1)[batch.mask], 1.0, rtol=1e-5)
        for row, k in enumerate(batch.index):
            n = int(batch.lengths[row])
            tags, conf = preds[int(k)]
            assert tags == model.labels.decode(paths[row, :n])
            np.testing.assert_allclose(conf, marginals[row, np.arange(n), paths[row, :n]])
    acc = np.mean([t == g for ex, (tags, _) in zip(examples, preds) for t, g in zip(tags, ex.labels)])
    assert acc > 0.9


def test_save_and_load_round_trips(trained, tmp_path):
    model, _ = trained
    examples = sentences(10, seed=2)
    save_model(model, tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert again.config.model.crf and again.crf is not None
    assert again.predict_examples(examples) == model.predict_examples(examples)
    for (name, a), (_, b) in zip(model.network.named_weights(), again.network.named_weights()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    # the weights must match the config: the same directory read as crf: false is refused
    raw = yaml.safe_load((tmp_path / "m" / "config.yaml").read_text())
    raw["model"]["crf"] = False
    (tmp_path / "m" / "config.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(TaggerError, match="unexpected.*crf/"):
        load_model(tmp_path / "m")


def test_summary_shows_the_crf_parameters(trained):
    model, _ = trained
    text = model.network.summary(print_fn=None)
    K = len(model.labels)
    assert "crf (CRF)" in text and f" {K * K + 2 * K} " in text


def test_crf_false_is_unchanged_and_models_without_the_key_still_load(tmp_path):
    plain, with_crf = tiny_model(crf=False, seed=3), tiny_model(crf=True, seed=3)
    assert plain.crf is None and "crf" not in [layer.name for layer in plain.network.layers]
    for (name, a), (_, b) in zip(plain.network.named_weights(), with_crf.network.named_weights()):
        np.testing.assert_array_equal(a, b, err_msg=name)  # same seed, same weights before the CRF
    examples = sentences(8, seed=4)
    save_model(plain, tmp_path / "old")
    raw = yaml.safe_load((tmp_path / "old" / "config.yaml").read_text())
    del raw["model"]["crf"]  # as written before model.crf existed
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump(raw))
    loaded = load_model(tmp_path / "old")
    assert loaded.crf is None and loaded.predict_examples(examples) == plain.predict_examples(examples)


def test_train_step_gradients_through_the_crf():
    """Float64 finite differences of Model.train_step's loss w.r.t. every weight."""
    model = tiny_model(ops="reference", dtype=np.float64, seed=5, units=3)
    for layer in model.network.leaves():  # a non-zero start for the CRF
        if layer.name == "crf":
            rng = np.random.default_rng(0)
            layer.set_weights([rng.normal(size=w.shape) for w in layer.get_weights()])
    batch = model.batches(sentences(3, seed=6), 3)[0]
    model.network.zero_grad()
    model.train_step(batch)
    leaves = model.network.leaves()
    analytic = {(layer.name, k): np.array(layer.grads[k]) for layer in leaves for k in range(len(layer.params))}

    def loss():
        scores = model.network(batch.ids)
        return model.crf.loss(scores, batch.labels, batch.lengths)[0]

    for layer in leaves:
        for k, name in enumerate(layer.param_names):
            w = layer.params[k]
            if layer.name == "embedding":  # only the rows the batch uses
                rows = np.unique(batch.ids[batch.mask])
                sub = w[rows]

                def f(rows=rows, sub=sub, w=w):
                    w[rows] = sub
                    return loss()

                np.testing.assert_array_equal(np.delete(analytic[(layer.name, k)], rows, axis=0), 0)
                assert_grad_close(analytic[(layer.name, k)][rows], numeric_grad(f, sub), f"{layer.name}/{name}")
                w[rows] = sub
                continue
            assert_grad_close(analytic[(layer.name, k)], numeric_grad(loss, w), f"{layer.name}/{name}")


# ----------------------------------------------------------------------------------------
# classify with model.pooling

POSITIVE, NEGATIVE = ["great", "superb", "lovely"], ["awful", "dull", "boring"]
FILLER = ["the", "film", "was", "a", "plot", "with", "and", "actors", "story", "really", "it"]


def texts(n, seed=0):
    """The label is the polarity of one cue word at a random place among 2-11 filler words
    (so the final state alone has to carry it across the rest of the text)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        label = "pos" if rng.random() < 0.5 else "neg"
        tokens = [str(w) for w in rng.choice(FILLER, size=rng.integers(2, 12))]
        tokens.insert(int(rng.integers(0, len(tokens) + 1)), str(rng.choice(POSITIVE if label == "pos" else NEGATIVE)))
        out.append(Example(tokens=tokens, label=label))
    return out


def tiny_classifier(pooling, ops="cpu", dtype=np.float32, seed=0, units=8):
    config = Config.model_validate(
        {"model": {"task": "classify", "pooling": pooling, "embedding_dim": 8, "lstm_units": units, "dropout": 0.0},
         "training": {"seed": seed}, "device": "cpu"}
    )
    words = WordVocab.build([POSITIVE + NEGATIVE + FILLER])
    labels = LabelVocab.build(["neg", "pos"])
    network = build_network(config.model, len(words), len(labels), ops=ops, dtype=dtype, seed=seed)
    return Model(config, words, labels, network)


@pytest.fixture(scope="module")
def trained_max():
    model = tiny_classifier("max")
    losses = train(model, texts(96), 60, lr=0.02)
    return model, losses


def test_a_max_pooling_classifier_trains(trained_max):
    model, losses = trained_max
    layers = {layer.name: layer for layer in model.network.layers}
    assert type(layers["pooling"]).__name__ == "GlobalMaxPooling1D"
    assert layers["bilstm_1"].return_sequences
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5])
    examples = texts(40, seed=1)
    preds = model.predict_examples(examples, batch_size=16)
    assert np.mean([label == ex.label for ex, (label, _) in zip(examples, preds)]) > 0.9
    assert all(0.5 <= prob <= 1 for _, prob in preds)


def test_a_pooled_classifier_saves_and_loads(trained_max, tmp_path):
    model, _ = trained_max
    examples = texts(12, seed=2)
    save_model(model, tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert again.config.model.pooling == "max"
    assert [layer.name for layer in again.network.layers] == [layer.name for layer in model.network.layers]
    assert again.predict_examples(examples) == model.predict_examples(examples)
    for (name, a), (_, b) in zip(model.network.named_weights(), again.network.named_weights()):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_pooling_keeps_the_layer_names_seeds_and_weights_of_last():
    """pooling: last builds the network it always built; max and mean insert a weightless
    layer 'pooling' and leave every other layer's name, seed and initial weights alone (so
    the three compare from the same start)."""
    last = tiny_classifier("last", seed=7)
    names = [layer.name for layer in last.network.layers]
    assert names == ["embedding", "embedding_dropout", "bilstm_1", "output_dropout", "output"]
    assert not last.network.layers[2].return_sequences
    for pooling in ("max", "mean"):
        pooled = tiny_classifier(pooling, seed=7)
        assert [layer.name for layer in pooled.network.layers] == names[:3] + ["pooling"] + names[3:]
        assert [layer.seed for layer in pooled.network.layers if layer.name != "pooling"] == [
            layer.seed for layer in last.network.layers
        ]
        assert pooled.network.layers[3].count_params() == 0
        assert len(pooled.network.named_weights()) == len(last.network.named_weights())
        for (name, a), (other, b) in zip(last.network.named_weights(), pooled.network.named_weights()):
            assert name == other
            np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_train_step_gradients_through_the_pooling(pooling):
    """Float64 finite differences of Model.train_step's loss (a per-text softmax over the
    pooled BiLSTM outputs, ragged batch) w.r.t. the LSTM and output weights."""
    model = tiny_classifier(pooling, ops="reference", dtype=np.float64, seed=8, units=3)
    batch = model.batches(texts(4, seed=3), 4)[0]
    assert batch.lengths.min() < batch.lengths.max()  # ragged
    model.network.zero_grad()
    model.train_step(batch)

    def loss():
        return model.ops.softmax_xent(model.network(batch.ids), batch.labels)[0]

    for layer in model.network.leaves():
        if layer.name == "embedding":
            continue  # covered by tests/layers/test_gradients.py; its table is large
        for k, name in enumerate(layer.param_names):
            analytic = np.array(layer.grads[k])
            assert_grad_close(analytic, numeric_grad(loss, layer.params[k]), f"{layer.name}/{name}")


def test_every_network_call_goes_through_model_forward_with_the_batch_mask(monkeypatch):
    """train_step, probabilities and predict_examples call the network once per batch,
    through Model.forward, with the batch's ids and mask (the one line to switch to spans)."""
    model = tiny_model(crf=True, seed=9)
    calls = []
    real = model.network.forward

    def spy(x, spans=None, train=True):
        calls.append((np.asarray(x).copy(), spans, train))
        return real(x, spans, train=train)

    monkeypatch.setattr(model.network, "forward", spy)
    examples = sentences(6, seed=10)
    batch = model.batches(examples, 6)[0]
    model.train_step(batch)
    model.network.zero_grad()
    model.probabilities(batch)
    model.predict_examples(examples, batch_size=6)
    assert [train for _, _, train in calls] == [True, False, False]
    for ids, spans, _ in calls:
        np.testing.assert_array_equal(ids, batch.ids)
        # the batch's own spans object, handed down as it is (host ids, no mask rebuilt)
        np.testing.assert_array_equal(spans.mask(), batch.mask)
    assert calls[0][1] is batch.spans


def test_model_predict_and_evaluate_use_the_task():
    model = tiny_model(crf=False, seed=11)
    records = model.predict(["Anna Smith spoke .", ""])
    assert records[0]["tokens"] == ["Anna", "Smith", "spoke", "."] and len(records[0]["tags"]) == 4
    assert records[1]["tags"] == [] and records[1]["tokens"] == []
    scores = model.evaluate(sentences(5, seed=12))
    assert scores["task"] == "tag" and 0 <= scores["accuracy"] <= 1
    assert "spans" not in scores  # data.scheme none: tags are not spans
    assert model.task == "tag" and model.labeller.name == "tag"


def test_the_public_load_and_predict_api(tmp_path):
    import tagger

    model = tiny_model(crf=True, seed=13)
    save_model(model, tmp_path / "out" / "model-best")  # a training output folder
    texts = ["Anna Smith spoke .", "the minister rose"]
    assert tagger.load(tmp_path / "out").predict(texts) == model.predict(texts)
