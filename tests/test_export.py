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
