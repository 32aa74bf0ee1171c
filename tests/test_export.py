"""ONNX export matches our forward pass on ragged batches (onnxruntime, to 1e-5)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")  # the 'onnx' extra; the dev extra installs it in CI

from typer.testing import CliRunner  # noqa: E402

from tagger.cli import app  # noqa: E402
from tagger.config import ModelConfig  # noqa: E402
from tagger.data.vocab import LabelVocab  # noqa: E402
from tagger.errors import TaggerError  # noqa: E402
from tagger.export import export_onnx, keras_to_onnx_gates  # noqa: E402
from tagger.ops.reference import crf_viterbi  # noqa: E402
from tagger.models import build_network  # noqa: E402
from tagger.spans import Spans  # noqa: E402

V, K, LENGTHS, T = 30, 5, np.array([7, 1, 4, 3, 6], np.int32), 7
SPANS = Spans.from_lengths(LENGTHS, T)


def random_model(seed=0, **model):
    """A network with random (not initial) weights, so every gate and bias matters."""
    cfg = ModelConfig(embedding_dim=6, lstm_units=4, dropout=0.3, **model)
    net = build_network(cfg, V, K, ops="reference", dtype=np.float64, seed=seed)
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        for sub in layer.sublayers() or [layer]:
            if sub.params:
                sub.set_weights([rng.normal(0.0, 0.6, w.shape) for w in sub.get_weights()])
    # a stand-in for a loaded Model: what export reads (no tag grammar: labels L0.. are no span tags)
    return SimpleNamespace(task=cfg.task, labels=LabelVocab([f"L{k}" for k in range(K)]), network=net,
                           labeller=SimpleNamespace(head=SimpleNamespace(allowed=None)))


def ragged_ids(seed=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, V, size=(len(LENGTHS), T))
    ids[np.arange(T)[None, :] >= LENGTHS[:, None]] = 0  # post-padding with [PAD] = 0
    return ids.astype(np.int64)


def run_onnx(path, ids, lengths=LENGTHS):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"ids": ids, "lengths": lengths})))


CASES = {
    "tag": dict(task="tag"),
    "tag-2-layers-sum": dict(task="tag", layers=2, merge_mode="sum"),
    "tag-crf-mul": dict(task="tag", crf=True, merge_mode="mul"),
    "classify-last-ave": dict(task="classify", merge_mode="ave"),
    "classify-max-2-layers": dict(task="classify", pooling="max", layers=2),
    "classify-mean-mul": dict(task="classify", pooling="mean", merge_mode="mul"),
}


@pytest.mark.parametrize("name", CASES)
def test_onnx_matches_forward_on_ragged_batches(tmp_path, name):
    model = random_model(**CASES[name])
    ids = ragged_ids()
    ours, _ = model.network.forward(ids, SPANS, train=False)
    ours = np.asarray(ours)
    out = run_onnx(export_onnx(model, tmp_path / "m.onnx")[0], ids)
    if model.task == "tag":
        real = np.arange(T)[None, :] < LENGTHS[:, None]
        np.testing.assert_allclose(out["scores"][real], ours[real], atol=1e-5, rtol=0)
    else:
        np.testing.assert_allclose(out["scores"], ours, atol=1e-5, rtol=0)
    assert np.abs(ours).max() > 0.1  # the scores are far from trivial
    if "probs" in out:
        np.testing.assert_allclose(out["probs"].sum(-1), 1.0, atol=1e-5)


def test_each_row_is_independent_of_the_batch_padding(tmp_path):
    model = random_model(task="tag")
    path = export_onnx(model, tmp_path / "m.onnx")[0]
    ids = ragged_ids()
    batch = run_onnx(path, ids)["scores"]
    alone = run_onnx(path, ids[3:4, : LENGTHS[3]], LENGTHS[3:4])["scores"]
    np.testing.assert_allclose(batch[3, : LENGTHS[3]], alone[0], atol=1e-5, rtol=0)


def test_crf_sidecar_decodes_like_our_viterbi(tmp_path):
    model = random_model(task="tag", crf=True)
    files = export_onnx(model, tmp_path / "m.onnx")
    assert [f.name for f in files] == ["m.onnx", "m.crf.json"]
    crf = json.loads(files[1].read_text())
    assert crf["labels"] == model.labels.labels and "Viterbi" in crf["decoding"]
    scores = run_onnx(files[0], ragged_ids())["scores"].astype(np.float64)
    A, s, e = (np.array(crf[k]) for k in ("transitions", "start", "end"))
    ours, _ = model.network.forward(ragged_ids(), SPANS, train=False)
    layer = model.network.layers[-1]
    np.testing.assert_array_equal(crf_viterbi(scores, SPANS.starts, SPANS.lengths, A, s, e)[0], layer.decode(np.asarray(ours), SPANS))



def test_crf_sidecar_carries_the_tag_grammar(tmp_path):
    """With a grammar, decoding the sidecar's weights with -inf at what `allowed` marks
    false is our constrained decode."""
    from tagger.data.schemes import allowed_transitions
    from tagger.ops._crf_reference import constrained

    model = random_model(task="tag", crf=True)
    grammar = allowed_transitions(["O", "B-X", "I-X", "B-Y", "I-Y"], "bio")  # K = 5 tags
    model.labeller.head.allowed = grammar
    crf = json.loads(export_onnx(model, tmp_path / "m.onnx")[1].read_text())
    allowed = tuple(np.array(crf["allowed"][k], dtype=bool) for k in ("start", "transitions", "end"))
    for got, want in zip(allowed, grammar):
        np.testing.assert_array_equal(got, want)
    assert "allowed" in crf["decoding"]
    A, s, e = constrained(*(np.array(crf[k]) for k in ("transitions", "start", "end")), allowed, -np.inf)
    ours, _ = model.network.forward(ragged_ids(), SPANS, train=False)
    scores = np.asarray(ours)
    np.testing.assert_array_equal(crf_viterbi(scores, SPANS.starts, SPANS.lengths, A, s, e)[0],
                                  model.network.layers[-1].decode(scores, SPANS, grammar))

def test_gate_reorder_and_metadata(tmp_path):
    H = 2
    w = np.repeat(np.array([[0, 1, 2, 3]]), H, axis=1)  # Keras blocks i f c o, H columns each
    assert keras_to_onnx_gates(w).tolist() == [[0, 0, 3, 3, 1, 1, 2, 2]]  # ONNX i o f c
    import onnx

    proto = onnx.load(str(export_onnx(random_model(task="classify"), tmp_path / "c.onnx")[0]))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["task"] == "classify" and json.loads(props["labels"]) == [f"L{k}" for k in range(K)]
    assert [n.op_type for n in proto.graph.node].count("LSTM") == 1


def test_export_command_on_a_saved_model(tmp_path):
    from tagger.config import load_config
    from tagger.data.types import Example
    from tagger.io import load_model
    from tests.cli.conftest import REPO
    from tests.test_card import tiny_model_dir

    cfg = load_config(REPO / "configs" / "sample_pos.yaml", overrides=["model.lstm_units=8", "model.embedding_dim=8"])
    model_dir = tiny_model_dir(cfg, tmp_path / "run")
    result = CliRunner().invoke(app, ["export", str(model_dir), str(tmp_path / "pos.onnx")])
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "pos.onnx") in json.loads(result.stdout)["outputs"]  # stdout: one JSON document
    model = load_model(model_dir)
    ids, _ = model.encode([Example(["The", "cat", "sleeps", "."], None)], with_labels=False)
    ids = np.asarray(ids[0], np.int64)[None, :]
    ours = np.asarray(model.network.forward(ids, train=False)[0])
    out = run_onnx(tmp_path / "pos.onnx", ids, np.array([ids.shape[1]], np.int32))
    np.testing.assert_allclose(out["scores"], ours, atol=1e-5, rtol=0)


def test_export_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(app, ["export", str(tmp_path / "nope"), str(tmp_path / "m.onnx")])
    assert result.exit_code == 1 and result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
    with pytest.raises(TaggerError, match="folder .* does not exist"):
        export_onnx(random_model(task="tag"), tmp_path / "missing" / "m.onnx")


# ----------------------------------------------------------------------------------------
# models with a character encoder (model.chars): two more inputs, chars and char_lengths

TRAIN = [["The", "cat", "sat", "."], ["A", "dog", "ran", "home", "."], ["Cats", "ran"]]
# ragged: rows of 4, 1 and 3 words (padded words in the shorter rows), one word far longer
# than the rest, and characters (Z, ü, q) the vocabulary has never seen -> [UNK]
SENTENCES = [["Internationalisation", "is", "hard", "."], ["x"], ["Zürich", "dogs", "quit"]]


def random_chars_model(encoder, width=3, seed=0, **model):
    """A tagger Model (vocabularies, task) whose network weights are random, chars included."""
    from tagger.config import parse_config
    from tagger.data.prepare import build_char_vocab
    from tagger.data.types import Example
    from tagger.data.vocab import WordVocab
    from tagger.models import Model

    chars = {"encoder": encoder, "char_dim": 5, "units": 3, "filters": 4, "width": width, "dropout": 0.2}
    cfg = parse_config({"model": {"embedding_dim": 6, "lstm_units": 4, "dropout": 0.3, "chars": chars, **model},
                        "training": {"seed": 1}})
    examples = [Example(tokens=s, labels=None) for s in TRAIN]
    words, vocab = WordVocab.build(TRAIN), build_char_vocab(cfg, examples)
    net = build_network(cfg.model, len(words), K, ops="reference", dtype=np.float64, seed=seed, n_chars=len(vocab))
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        for sub in layer.sublayers() or [layer]:
            if sub.params:
                sub.set_weights([rng.normal(0.0, 0.6, w.shape) for w in sub.get_weights()])
    return Model(cfg, words, LabelVocab([f"L{k}" for k in range(K)]), net, chars=vocab)


def chars_batch(model, sentences=SENTENCES):
    from tagger.data.types import Example

    return model.batches([Example(tokens=s, labels=None) for s in sentences], 8, with_labels=False)[0]


def onnx_inputs(batch):
    return {"ids": batch.ids.astype(np.int64), "lengths": batch.lengths.astype(np.int32),
            "chars": batch.chars.astype(np.int64), "char_lengths": batch.char_lengths.astype(np.int32)}


def run_inputs(path, inputs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))


CHAR_CASES = {
    "lstm": dict(encoder="lstm"),
    "cnn-odd-width": dict(encoder="cnn", width=3),
    "cnn-even-width": dict(encoder="cnn", width=4),  # 'same' puts the extra zero on the right
    "lstm-crf-2-layers-sum": dict(encoder="lstm", crf=True, layers=2, merge_mode="sum"),
    "cnn-crf": dict(encoder="cnn", crf=True),
    "lstm-classify-max": dict(encoder="lstm", task="classify", pooling="max"),
}


@pytest.mark.parametrize("name", CHAR_CASES)
def test_chars_model_onnx_matches_forward(tmp_path, name):
    model = random_chars_model(**CHAR_CASES[name])
    batch = chars_batch(model)
    assert batch.lengths.tolist() == [4, 3, 1] and batch.char_lengths.max() == len("Internationalisation")
    assert (batch.chars == 1).any()  # some characters are [UNK]
    # a real word with no characters (row 1, word 0) encodes to 0, in tagger and in the graph
    batch.chars, batch.char_lengths = batch.chars.copy(), batch.char_lengths.copy()
    batch.chars[1, 0], batch.char_lengths[1, 0] = 0, 0
    ours = np.asarray(model.forward(batch, train=False)[0])
    path, *sidecar = export_onnx(model, tmp_path / "m.onnx")
    out = run_inputs(path, onnx_inputs(batch))
    if model.task == "tag":
        real = batch.mask
        np.testing.assert_allclose(out["scores"][real], ours[real], atol=1e-5, rtol=0)
    else:
        np.testing.assert_allclose(out["scores"], ours, atol=1e-5, rtol=0)
    assert np.abs(ours).max() > 0.1
    assert ("probs" in out) == (not CHAR_CASES[name].get("crf")) and len(sidecar) == int("probs" not in out)


@pytest.mark.parametrize("encoder", ["lstm", "cnn"])
def test_chars_rows_are_independent_of_word_and_char_padding(tmp_path, encoder):
    """A row alone (no padded words, C its own longest word) scores as inside the batch,
    and whatever the padded characters hold is never read."""
    model = random_chars_model(encoder, width=4)
    path = export_onnx(model, tmp_path / "m.onnx")[0]
    batch = chars_batch(model)
    inputs = onnx_inputs(batch)
    scores = run_inputs(path, inputs)["scores"]
    row, n = 1, int(batch.lengths[1])
    C = int(batch.char_lengths[row].max())
    assert C < batch.chars.shape[2]  # the row's words are shorter than the batch's longest
    alone = {"ids": inputs["ids"][row : row + 1, :n], "lengths": inputs["lengths"][row : row + 1],
             "chars": inputs["chars"][row : row + 1, :n, :C], "char_lengths": inputs["char_lengths"][row : row + 1, :n]}
    np.testing.assert_allclose(run_inputs(path, alone)["scores"][0], scores[row, :n], atol=1e-5, rtol=0)
    wide = dict(inputs, chars=np.concatenate([inputs["chars"], np.zeros_like(inputs["chars"][..., :3])], axis=-1))
    wide["chars"][np.arange(wide["chars"].shape[2]) >= inputs["char_lengths"][..., None]] = 2  # not [PAD]
    np.testing.assert_allclose(run_inputs(path, wide)["scores"][batch.mask], scores[batch.mask], atol=1e-5, rtol=0)


def test_chars_graph_inputs_and_metadata(tmp_path):
    import onnx

    proto = onnx.load(str(export_onnx(random_chars_model("cnn"), tmp_path / "c.onnx")[0]))
    types = {i.name: i.type.tensor_type.elem_type for i in proto.graph.input}
    assert types == {"ids": onnx.TensorProto.INT64, "lengths": onnx.TensorProto.INT32,
                     "chars": onnx.TensorProto.INT64, "char_lengths": onnx.TensorProto.INT32}
    props = {p.key: p.value for p in proto.metadata_props}
    chars = json.loads(props["chars"])
    assert chars["inputs"] == ["chars", "char_lengths"] and chars["vocabulary"] == "chars.json"
    assert chars["encoder"] == "cnn" and (chars["padding_id"], chars["unknown_id"]) == (0, 1)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Conv") == 1 and ops.count("LSTM") == 1
    word_only = onnx.load(str(export_onnx(random_model(task="tag"), tmp_path / "w.onnx")[0]))
    assert [i.name for i in word_only.graph.input] == ["ids", "lengths"]
    assert {p.key: p.value for p in word_only.metadata_props}["chars"] == "none"


def test_char_lstm_reorders_gates_like_the_word_lstm(tmp_path):
    """The char BiLSTM's W, R, B are lstm_onnx_weights of its two directions."""
    import onnx
    from onnx import numpy_helper

    from tagger.export import lstm_onnx_weights

    model = random_chars_model("lstm")
    proto = onnx.load(str(export_onnx(model, tmp_path / "m.onnx")[0]))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    rnn = model.network.layers[0].char_encoder.rnn
    first = next(n for n in proto.graph.node if n.op_type == "LSTM")  # the char LSTM comes first
    want = lstm_onnx_weights(rnn.forward_layer.get_weights(), rnn.backward_layer.get_weights())
    for name, w in zip(first.input[1:4], want):
        np.testing.assert_array_equal(inits[name], w)


def test_export_command_on_a_saved_chars_model(tmp_path):
    from tagger.config import load_config
    from tagger.data.prepare import build_char_vocab, build_vocabularies, load_splits
    from tagger.data.types import Example
    from tagger.io import load_model, save_model
    from tagger.models import Model
    from tests.cli.conftest import REPO

    cfg = load_config(REPO / "configs" / "sample_pos.yaml",
                      overrides=["model.lstm_units=8", "model.embedding_dim=8", "model.chars.encoder=lstm",
                                 "model.chars.char_dim=4", "model.chars.units=3"])
    train = load_splits(cfg).train
    (words, labels), chars = build_vocabularies(cfg, train), build_char_vocab(cfg, train)
    network = build_network(cfg.model, len(words), len(labels), ops="reference", seed=0, n_chars=len(chars))
    save_model(Model(cfg, words, labels, network, chars=chars), tmp_path / "model")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "model"), str(tmp_path / "pos.onnx")])
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "pos.onnx") in json.loads(result.stdout)["outputs"]
    model = load_model(tmp_path / "model")
    batch = model.batches([Example(["The", "cat", "sleeps", "."], None), Example(["Zzyzx", "!"], None)], 8,
                          with_labels=False)[0]
    ours = np.asarray(model.forward(batch, train=False)[0])
    out = run_inputs(tmp_path / "pos.onnx", onnx_inputs(batch))
    np.testing.assert_allclose(out["scores"][batch.mask], ours[batch.mask], atol=1e-5, rtol=0)
