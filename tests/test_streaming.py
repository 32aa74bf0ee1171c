"""Blockwise inference of long sentences (tagger/streaming.py) equals the whole-sentence
forward: tags and labels equal, scores and probabilities to float32 rounding; softmax and
CRF heads, 1 and 2 layers, every merge mode, the classifier's final state and pooling, on
the reference and cpu backends, through projected tables and without; `tagger predict`
on a file with long lines writes byte for byte what the unblocked path writes; and (slow)
a 1 MB line at an EWT-sized model stays within a memory bound the old path far exceeds.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tagger import streaming
from tagger.config import Config
from tagger.data.types import Example
from tagger.data.vocab import LabelVocab, WordVocab
from tagger.models import Model, build_network
from tagger.spans import Spans

REPO = Path(__file__).resolve().parents[1]
WORDS = ["the", "minister", "spoke", "rose", "after", "shares", ".", "Anna", "Smith", "Maria", "Ortiz", "fell"]
TAGS = ["O", "B-PER", "I-PER", "B-LOC"]


@pytest.fixture
def small_blocks(monkeypatch):
    """Sentences of more than 7 tokens go blockwise, in blocks of 5."""
    monkeypatch.setattr(streaming, "THRESHOLD", 7)
    monkeypatch.setattr(streaming, "BLOCK", 5)


def make_model(ops="cpu", seed=0, units=6, scheme="none", **model):
    task = model.get("task", "tag")
    config = Config.model_validate(
        {"model": {"embedding_dim": 5, "lstm_units": units, "dropout": 0.3, "recurrent_dropout": 0.2, **model},
         "data": {"scheme": scheme}, "training": {"seed": seed}, "device": "cpu"}
    )
    words = WordVocab.build([WORDS])
    labels = LabelVocab.build(TAGS if task == "tag" else ["neg", "pos", "mid"])
    network = build_network(config.model, len(words), len(labels), ops=ops, dtype=np.float32, seed=seed)
    if model.get("crf"):  # non-zero transitions, so Viterbi differs from the argmax
        crf = network.layers[-1]
        crf.set_weights([np.random.default_rng(seed).normal(0, 1.0, w.shape) for w in crf.get_weights()])
    return Model(config, words, labels, network)


def sentence(n, seed):
    rng = np.random.default_rng(seed)
    return Example(tokens=[str(w) for w in rng.choice(WORDS + ["unseen", "Zyx"], size=n)])


LENGTHS = (23, 3, 10, 8, 7, 1, 26)
# float32 rounding: a GEMM over a block's rows may round unlike one over the sentence's
# (seen: ~1 ulp in the second layer's input projection; one layer came out bitwise equal)
PROBS = dict(rtol=2e-6, atol=1e-7)
SCORES = dict(rtol=2e-6, atol=2e-7)  # 5 blocks with a short last one, short ones between


def whole_and_blocked(model, examples, monkeypatch):
    blocked = model.predict_examples(examples)
    monkeypatch.setattr(streaming, "THRESHOLD", 10**9)
    return model.predict_examples(examples), blocked


def assert_same_predictions(whole, blocked):
    assert len(whole) == len(blocked)
    for (tags_w, probs_w), (tags_b, probs_b) in zip(whole, blocked):
        assert tags_w == tags_b
        np.testing.assert_allclose(probs_b, probs_w, **PROBS)


def blocked_scores(model, ids):
    plan = streaming.plan_of(model.network)
    assert plan is not None  # build_network's shapes are all supported
    return np.asarray(model.ops.to_numpy(streaming.network_scores(model.network, plan, ids)))


def whole_scores(model, ids):
    scores, _ = model.network.forward(ids, Spans.full(*ids.shape), train=False)
    return np.asarray(model.ops.to_numpy(scores))


@pytest.mark.parametrize("ops", ["reference", "cpu"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("crf", [False, True])
def test_tags_and_probabilities_equal_the_whole_sentence(small_blocks, monkeypatch, ops, layers, crf):
    model = make_model(ops, layers=layers, crf=crf, scheme="bio")
    examples = [sentence(n, seed) for seed, n in enumerate(LENGTHS)]
    whole, blocked = whole_and_blocked(model, examples, monkeypatch)
    assert_same_predictions(whole, blocked)
    assert [len(t) for t, _ in blocked] == list(LENGTHS)


@pytest.mark.parametrize("ops", ["reference", "cpu"])
@pytest.mark.parametrize("encoder", ["lstm", "cnn"])
def test_a_chars_model_goes_blockwise_with_each_blocks_characters(small_blocks, monkeypatch, ops, encoder):
    """WordFeatures is position-wise: a block's word vectors come from its own words'
    characters, so the plan accepts it and the result is the whole sentence's."""
    from tagger.data.chars import CharVocab

    config = Config.model_validate(
        {"model": {"embedding_dim": 5, "lstm_units": 6, "layers": 2, "crf": True, "dropout": 0.3,
                   "chars": {"encoder": encoder, "char_dim": 3, "units": 2, "filters": 4, "width": 3}},
         "data": {"scheme": "bio"}, "training": {"seed": 4}, "device": "cpu"}
    )
    words, labels = WordVocab.build([WORDS]), LabelVocab.build(TAGS)
    chars = CharVocab.build(WORDS)
    network = build_network(config.model, len(words), len(labels), ops=ops, dtype=np.float32, seed=4, n_chars=len(chars))
    model = Model(config, words, labels, network, chars=chars)
    assert streaming.plan_of(model.network) is not None
    examples = [sentence(n, seed) for seed, n in enumerate(LENGTHS)]
    whole, blocked = whole_and_blocked(model, examples, monkeypatch)
    assert_same_predictions(whole, blocked)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "ave", "mul"])
@pytest.mark.parametrize("projected", [True, False])
def test_scores_equal_for_every_merge_mode_with_and_without_tables(small_blocks, merge_mode, projected):
    model = make_model("cpu", layers=2, merge_mode=merge_mode, seed=3)
    model.network.projected_inference = projected
    ids = np.asarray(model.words.encode_batch([sentence(31, 7).tokens]), dtype=np.int64)
    np.testing.assert_allclose(blocked_scores(model, ids), whole_scores(model, ids), **SCORES)


def test_the_tables_are_used_as_the_whole_forward_uses_them(small_blocks, monkeypatch):
    """cpu with projected tables: the blockwise first layer reads them too (lstm_forward_ids)."""
    model = make_model("cpu")
    calls = []
    real = model.ops._lstm_forward_ids  # what lstm_forward_ids and the pair op run
    monkeypatch.setattr(model.ops, "_lstm_forward_ids", lambda *a, **k: calls.append(a[-2]) or real(*a, **k))
    ids = np.asarray(model.words.encode_batch([sentence(23, 1).tokens]), dtype=np.int64)
    whole = whole_scores(model, ids)
    calls.clear()
    np.testing.assert_allclose(blocked_scores(model, ids), whole, **SCORES)
    # the forward sweep over 5 blocks, then both directions per block; every state given
    # but the forward one before block 0 (twice) and the backward one before block 4
    assert len(calls) == 5 + 2 * 5 and sum(h0 is None for h0 in calls) == 3


@pytest.mark.parametrize("ops", ["reference", "cpu"])
@pytest.mark.parametrize("pooling", ["last", "max", "mean"])
@pytest.mark.parametrize("layers", [1, 2])
def test_classifier_labels_and_probabilities_equal(small_blocks, monkeypatch, ops, pooling, layers):
    model = make_model(ops, task="classify", pooling=pooling, layers=layers, seed=2)
    examples = [sentence(n, seed) for seed, n in enumerate(LENGTHS)]
    whole, blocked = whole_and_blocked(model, examples, monkeypatch)
    assert [label for label, _ in whole] == [label for label, _ in blocked]
    np.testing.assert_allclose([p for _, p in blocked], [p for _, p in whole], **PROBS)
    ids = np.asarray(model.words.encode_batch([examples[0].tokens]), dtype=np.int64)
    np.testing.assert_allclose(blocked_scores(model, ids), whole_scores(model, ids), **SCORES)


def test_pooling_equals_the_pooling_op_exactly(small_blocks):
    """The running max and the running sum in time order are the op's own arithmetic."""
    for pooling in ("max", "mean"):
        model = make_model("cpu", task="classify", pooling=pooling, units=16, seed=5)
        plan = streaming.plan_of(model.network)
        ids = np.asarray(model.words.encode_batch([sentence(47, 9).tokens]), dtype=np.int64)
        run = streaming._Blockwise(model.network, plan, ids)
        run.sweep(0, forward=True)
        run.sweep(0, forward=False)
        sequences, _ = model.network.layers[2].call(model.network.layers[0].call(ids, None, False)[0], None, False)
        expected, _ = model.ops.pool_forward(sequences, np.zeros(1, np.int64), np.array([47]), pooling)
        np.testing.assert_array_equal(model.ops.to_numpy(run.pooled()), expected)


def test_a_block_boundary_exactly_at_the_end_and_one_token_blocks(monkeypatch):
    model = make_model("cpu", layers=2, crf=True)
    ids = np.asarray(model.words.encode_batch([sentence(15, 4).tokens]), dtype=np.int64)
    for block in (1, 3, 5, 15, 40):
        monkeypatch.setattr(streaming, "BLOCK", block)
        np.testing.assert_allclose(blocked_scores(model, ids), whole_scores(model, ids), **SCORES)


def test_every_configured_network_shape_is_supported():
    for model in ({}, {"crf": True}, {"layers": 3, "merge_mode": "sum"},
                  {"task": "classify", "pooling": "last"}, {"task": "classify", "pooling": "mean"}):
        assert streaming.plan_of(make_model("reference", **model).network) is not None


def test_an_unknown_layer_is_predicted_whole_but_alone(small_blocks, monkeypatch):
    model = make_model("cpu")
    monkeypatch.setattr(streaming, "POSITIONWISE", ())  # the Embedding no longer counts as position-wise
    assert streaming.plan_of(model.network) is None
    examples = [sentence(n, seed) for seed, n in enumerate(LENGTHS)]
    whole, blocked = whole_and_blocked(model, examples, monkeypatch)
    assert_same_predictions(whole, blocked)


# ---------------------------------------------------------------------------------------
# `tagger predict` end to end


def test_predict_writes_byte_identical_output_for_long_lines(tmp_path, small_blocks, monkeypatch, cli_run):
    """Blockwise or whole, and in chunks of a line or of 2048: the same bytes, for text and
    pre-tokenized input."""
    from tagger import predict
    from tagger.io import save_model

    text = tmp_path / "long.txt"
    lines = [" ".join(sentence(n, seed).tokens) for seed, n in enumerate((60, 4, 0, 33, 2))]
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for name, model in (("softmax", make_model("cpu", layers=2, scheme="bio")), ("crf", make_model("cpu", crf=True, scheme="bio"))):
        save_model(model, tmp_path / name)
        outputs = {}
        for threshold, chunk_chars in ((7, 50), (7, 1 << 20), (10**9, 1 << 20)):
            monkeypatch.setattr(streaming, "THRESHOLD", threshold)
            monkeypatch.setattr(predict, "CHUNK_CHARS", chunk_chars)
            for fmt, kind in (("jsonl", "text"), ("conll", "text"), ("jsonl", "tokens")):
                outputs[threshold, chunk_chars, fmt, kind] = cli_run("predict", tmp_path / name, text, "-f", fmt, "-i", kind)
        for key in outputs:
            assert outputs[key] == outputs[(10**9, 1 << 20, *key[2:])], key
        records = [json.loads(line) for line in outputs[7, 50, "jsonl", "text"].splitlines()]
        assert [len(r["tokens"]) for r in records] == [60, 4, 33, 2]


def test_chunks_close_at_the_character_budget(monkeypatch):
    from tagger import predict

    monkeypatch.setattr(predict, "CHUNK_CHARS", 100)
    lines = [(k, "x" * n if n else "  ") for k, n in enumerate((30, 0, 50, 40, 200, 10, 10))]
    assert [[k for k, _ in chunk] for chunk in predict._chunks(lines)] == [[0, 2, 3], [4], [5, 6]]
    monkeypatch.setattr(predict, "CHUNK_LINES", 2)
    assert [[k for k, _ in chunk] for chunk in predict._chunks(lines)] == [[0, 2], [3, 4], [5, 6]]


@pytest.fixture
def cli_run():
    from typer.testing import CliRunner

    from tagger.cli import app

    def run(*args):
        result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    return run


# ---------------------------------------------------------------------------------------
# memory: a 1 MB line, an EWT-sized model (vocabulary 20k, embedding 100, BiLSTM 256, 17 tags)

MEMORY_SCRIPT = REPO / "tests" / "long_line_memory.py"


@pytest.mark.slow
@pytest.mark.parametrize("crf", [False, True])
def test_a_one_megabyte_line_stays_within_a_small_multiple_of_its_size(tmp_path, crf):
    """Peak RSS of `tagger predict` on one 1 MB line (~210k tokens), above the same process
    on one short line. The whole-sentence path took ~2.1 GB above it (~2,000 bytes per
    byte of text); the bound, 400 MB, is what the tokens, their offsets and the record
    need with room to spare."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(MEMORY_SCRIPT), str(tmp_path), "1", *(["--crf"] if crf else [])],
                         env=env, capture_output=True, text=True, timeout=600, check=True)
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["tokens"] > 200_000
    assert result["extra_bytes"] < 400 * 2**20, result


@pytest.mark.slow
def test_blockwise_on_the_cuda_simulator():
    """tests/cuda_streaming_cases.py under NUMBA_ENABLE_CUDASIM=1."""
    from tests.ops.cuda_subprocess import assert_cases_pass

    assert_cases_pass(REPO / "tests" / "cuda_streaming_cases.py")
