"""model.chars wired into the product (issue 10): the network's first stage WordFeatures,
encoder none is today's network bit for bit, float64 finite differences through the whole
chars network (word embedding + char encoder + BiLSTM + head) on reference and cpu,
parameter_count and summary(), serialization, batches, training with the optimizer, and
the model directory (chars.json) with its one-line errors."""
import json

import numpy as np
import pytest
import yaml

from tagger.config import parse_config
from tagger.data.chars import UNK_ID, CharVocab
from tagger.data.prepare import build_char_vocab
from tagger.data.types import Example
from tagger.data.vocab import LabelVocab, WordVocab
from tagger.errors import TaggerError
from tagger.io import load_model, save_model
from tagger.layers import (LSTM, Bidirectional, CharEncoder, Dense, Dropout, Embedding, Sequential, WordFeatures,
                           WordInputs, deserialize, serialize)
from tagger.models import Model, build_network, parameter_count
from tagger.ops import get_ops
from tagger.optim import make_optimizer
from tests.gradcheck import assert_grad_close, numeric_grad

SENTENCES = [["The", "cat", "sat", "."], ["A", "dog", "ran", "home", "."], ["Cats", "ran"]]
TAGS = [["DET", "NOUN", "VERB", "PUNCT"], ["DET", "NOUN", "VERB", "NOUN", "PUNCT"], ["NOUN", "VERB"]]
EXAMPLES = [Example(tokens=s, labels=t) for s, t in zip(SENTENCES, TAGS)]


def config(encoder="lstm", dropout=0.0, **model):
    chars = {"encoder": encoder, "char_dim": 3, "units": 2, "filters": 4, "width": 3, "dropout": dropout}
    return parse_config({"model": {"embedding_dim": 4, "lstm_units": 3, "dropout": dropout, "chars": chars, **model},
                         "training": {"seed": 1}})


def tiny(encoder="lstm", ops="reference", dtype=np.float64, dropout=0.0, **model):
    cfg = config(encoder, dropout, **model)
    words = WordVocab.build(SENTENCES)
    labels = LabelVocab.build([t for s in TAGS for t in s])
    chars = build_char_vocab(cfg, EXAMPLES)
    n_chars = None if chars is None else len(chars)
    net = build_network(cfg.model, len(words), len(labels), ops=ops, dtype=dtype, seed=1, n_chars=n_chars)
    return Model(cfg, words, labels, net, chars=chars)


# ----------------------------------------------------------------------------------------
# the network


def test_encoder_none_is_todays_network_bit_for_bit():
    """The same layers, names, seeds and weights as the stack built before model.chars."""
    model = tiny("none")
    cfg = model.config.model
    old = Sequential([
        Embedding(len(model.words), 4, mask_zero=True, trainable=True, name="embedding"),
        Dropout(0.0, name="embedding_dropout"),
        Bidirectional(LSTM(3, return_sequences=True, recurrent_dropout=0.0, name="lstm_1"), merge_mode="concat",
                      name="bilstm_1"),
        Dropout(0.0, name="output_dropout"), Dense(len(model.labels), name="output"),
    ], input_shape=(None,), seed=1, ops="reference", dtype=np.float64, name="tag")
    assert model.chars is None and not cfg.chars.enabled
    assert [type(x) for x in model.network.layers] == [type(x) for x in old.layers]
    new_w, old_w = model.network.named_weights(), old.named_weights()
    assert [n for n, _ in new_w] == [n for n, _ in old_w]
    for (name, a), (_, b) in zip(new_w, old_w):
        np.testing.assert_array_equal(a, b, err_msg=name)
    batch = model.batches(EXAMPLES, 8, with_labels=False)[0]
    assert batch.chars is None and batch.char_lengths is None
    np.testing.assert_array_equal(np.asarray(model.forward(batch, train=False)[0]), old(batch.ids))


@pytest.mark.parametrize("encoder", ["lstm", "cnn"])
def test_the_first_stage_is_word_embedding_then_char_features(encoder):
    model = tiny(encoder)
    stage = model.network.layers[0]
    assert isinstance(stage, WordFeatures) and isinstance(stage.char_encoder, CharEncoder)
    batch = model.batches(EXAMPLES, 8)[0]
    x = WordInputs(batch.ids, batch.chars, batch.char_lengths)
    y = stage(x, mask=batch.mask)
    F = stage.char_encoder.output_dim  # filters, or 2 * units
    assert F == 4 and y.shape == batch.ids.shape + (4 + F,)
    np.testing.assert_array_equal(y[..., :4], stage.embedding(batch.ids))
    np.testing.assert_allclose(y[..., 4:], stage.char_encoder(batch.chars, mask=batch.mask, char_lengths=batch.char_lengths),
                               rtol=1e-13)
    # position-wise: one word alone gives the same vector as inside its sentence
    row, t = 0, 2
    alone = WordInputs(batch.ids[row : row + 1, t : t + 1], batch.chars[row : row + 1, t : t + 1],
                       batch.char_lengths[row : row + 1, t : t + 1])
    np.testing.assert_allclose(stage(alone)[0, 0], y[row, t], rtol=1e-12)
    # the word embedding takes the stage's seed: the same table as the word-only network's
    np.testing.assert_array_equal(stage.embedding.get_weights()[0], tiny("none").network.layers[0].get_weights()[0])


@pytest.mark.parametrize("encoder", ["lstm", "cnn"])
@pytest.mark.parametrize("merge,layers", [("concat", 1), ("sum", 2)])
def test_parameter_count_and_summary_match_the_network(encoder, merge, layers):
    model = tiny(encoder, merge_mode=merge, layers=layers)
    net = model.network
    n = parameter_count(model.config.model, len(model.words), len(model.labels), len(model.chars))
    assert n == sum(w.size for _, w in net.named_weights()) == net.count_params()
    text = net.summary(print_fn=None)
    stage = net.layers[0]
    assert "word_features (WordFeatures)" in text and f"(None, None, {stage.output_dim})" in text
    assert f"{stage.count_params():,}" in text and f"Total params: {n:,}" in text
    names = [name for name, _ in net.named_weights()]
    assert names[0] == "embedding/embeddings" and names[1] == "chars_embedding/embeddings"
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("encoder", ["lstm", "cnn"])
def test_the_network_serializes_by_class_name(encoder):
    net = tiny(encoder).network
    again = Sequential.from_config(json.loads(json.dumps(net.get_config())))
    assert isinstance(again.layers[0], WordFeatures)
    again.ops, again.dtype = net.ops, net.dtype
    for layer in again.layers:
        for leaf in [layer, *layer.sublayers()]:
            leaf.ops, leaf.dtype = net.ops, net.dtype
    again.build((None, None))
    again.set_weights(net.get_weights())
    assert again.get_config() == net.get_config()
    stage = deserialize(serialize(net.layers[0]))
    assert isinstance(stage, WordFeatures) and stage.char_encoder.encoder == encoder
    x = WordInputs(np.array([[2, 3]]), np.array([[[2, 3, 0], [4, 0, 0]]]), np.array([[2, 1]]))
    np.testing.assert_allclose(again.forward(x, None, train=False)[0], net.forward(x, None, train=False)[0], rtol=1e-13)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("encoder", ["lstm", "cnn"])
def test_whole_chars_network_backward_matches_finite_differences(backend, encoder):
    """The task's loss through word embedding + char encoder + BiLSTM + Dense, float64:
    every weight of every leaf against central differences."""
    model = tiny(encoder, ops=backend)
    ops = get_ops(backend)
    batch = model.batches(EXAMPLES, 8)[0]

    def loss():
        scores, _ = model.forward(batch, train=True)
        return model.labeller.loss(scores, batch, model.network)[0]

    model.network.zero_grad()
    scores, backprop = model.forward(batch, train=True)
    backprop(model.labeller.loss(scores, batch, model.network)[1])
    leaves = model.network.leaves()
    assert {"embedding", "chars_embedding", "output"} <= {leaf.name for leaf in leaves}
    for leaf in leaves:
        for k, name in enumerate(leaf.param_names):
            analytic = np.array(ops.to_numpy(leaf.grads[k]))
            assert_grad_close(analytic, numeric_grad(loss, leaf.params[k]), f"{backend} {leaf.name}/{name}")


@pytest.mark.parametrize("encoder", ["lstm", "cnn"])
def test_training_updates_the_char_weights_and_only_touched_embedding_rows(encoder):
    model = tiny(encoder, ops="cpu", dtype=np.float32, dropout=0.3)
    before = dict(model.network.named_weights())
    optimizer = make_optimizer("adam", 0.05)
    seen = {c for ex in EXAMPLES[:2] for t in ex.tokens for c in model.chars.encode(t)}
    batch = model.batches(EXAMPLES[:2], 8)[0]
    losses = []
    for _ in range(15):
        losses.append(model.train_step(batch))
        optimizer.step(model.network)
        model.network.zero_grad()
    after = dict(model.network.named_weights())
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    changed = [n for n in before if not np.array_equal(before[n], after[n])]
    assert set(changed) == set(before)  # every weight learns, the character ones included
    table = "chars_embedding/embeddings"
    rows = np.flatnonzero((before[table] != after[table]).any(axis=1))
    assert set(rows.tolist()) == seen  # lazy Adam: the rows of characters in the batch, no others


# ----------------------------------------------------------------------------------------
# vocabulary, batches, prediction


def test_char_vocab_comes_from_the_raw_tokens_before_lowercasing():
    cfg = parse_config({"vocab": {"lowercase": True, "char_min_freq": 2, "max_chars": 3},
                        "model": {"chars": {"encoder": "cnn"}}})
    chars = build_char_vocab(cfg, EXAMPLES)
    assert chars.max_chars == 3 and chars.char_to_id("T") == UNK_ID  # "T" is seen once: below char_min_freq 2
    assert chars.char_to_id("a") > UNK_ID and chars.char_to_id("C") == UNK_ID
    big = parse_config({"vocab": {"lowercase": True}, "model": {"chars": {"encoder": "cnn"}}})
    assert build_char_vocab(big, EXAMPLES).char_to_id("T") > UNK_ID  # capitals kept
    assert build_char_vocab(parse_config({}), EXAMPLES) is None


def test_batches_carry_each_words_characters_in_row_order():
    model = tiny("lstm")
    examples = EXAMPLES + [Example(tokens=["internationalisation"], labels=["NOUN"])]
    for batch in model.batches(examples, 2, shuffle=True, seed=3):
        B, T = batch.ids.shape
        assert batch.chars.dtype == np.int32 and batch.char_lengths.dtype == np.int32
        words = [examples[int(k)].tokens for k in batch.index]
        assert batch.chars.shape[:2] == (B, T)
        assert batch.chars.shape[2] == max(len(w) for s in words for w in s)  # the batch's longest word
        for row, tokens in enumerate(words):
            for t, word in enumerate(tokens):
                assert batch.char_lengths[row, t] == len(word)
                assert batch.chars[row, t, : len(word)].tolist() == model.chars.encode(word)
            assert not batch.chars[row, len(tokens) :].any() and not batch.char_lengths[row, len(tokens) :].any()


def test_prediction_maps_unseen_characters_to_unk_and_keeps_input_order():
    model = tiny("cnn")
    assert model.chars.encode("Zürich")[:2] == [UNK_ID, UNK_ID]
    records = model.predict(["Zürich ran .", "The cat", "ßß"])
    assert [r["tokens"] for r in records] == [["Zürich", "ran", "."], ["The", "cat"], ["ßß"]]
    one = [model.predict([text])[0] for text in ("Zürich ran .", "The cat", "ßß")]
    for a, b in zip(records, one):
        assert a["tags"] == b["tags"]
        np.testing.assert_allclose(a["probs"], b["probs"], rtol=1e-6)


def test_a_chars_model_needs_its_vocabulary_and_chars_in_its_batches():
    model = tiny("lstm")
    with pytest.raises(TaggerError, match="needs its character vocabulary"):
        Model(model.config, model.words, model.labels, model.network)
    batch = model.batches(EXAMPLES, 8)[0]
    batch.chars = None
    with pytest.raises(TaggerError, match="the batch has none"):
        model.forward(batch, train=False)
    with pytest.raises(TaggerError, match="n_chars"):
        build_network(model.config.model, len(model.words), len(model.labels))


# ----------------------------------------------------------------------------------------
# the model directory


@pytest.mark.parametrize("encoder", ["lstm", "cnn"])
def test_save_and_load_round_trip_with_chars_json(tmp_path, encoder):
    model = tiny(encoder, ops="cpu", dtype=np.float32)
    save_model(model, tmp_path / "m")
    assert (tmp_path / "m" / "chars.json").is_file()
    again = load_model(tmp_path / "m")
    assert again.chars.chars == model.chars.chars
    from tagger.card import model_card

    arch = {"lstm": "++ char BiLSTM 2 per direction (char embedding 3)", "cnn": "++ char CNN 4 x width 3 (char embedding 3)"}
    assert arch[encoder] in model_card(tmp_path / "m")
    texts = ["The cat ran home .", "Ödön sat"]
    assert again.predict(texts) == model.predict(texts)
    for (name, a), (_, b) in zip(model.network.named_weights(), again.network.named_weights()):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_a_model_without_chars_writes_and_needs_no_chars_json(tmp_path):
    save_model(tiny("none", dtype=np.float32), tmp_path / "m")
    assert not (tmp_path / "m" / "chars.json").exists()
    assert load_model(tmp_path / "m").chars is None
    # a directory written before model.chars existed: no chars key in its config.yaml
    raw = yaml.safe_load((tmp_path / "m" / "config.yaml").read_text())
    del raw["model"]["chars"], raw["vocab"]["char_min_freq"], raw["vocab"]["max_chars"]
    (tmp_path / "m" / "config.yaml").write_text(yaml.safe_dump(raw))
    assert load_model(tmp_path / "m").chars is None


def test_missing_or_mismatched_chars_json_is_one_line_naming_it(tmp_path):
    save_model(tiny("lstm", dtype=np.float32), tmp_path / "m")
    f = tmp_path / "m" / "chars.json"
    good = f.read_text()
    f.unlink()
    with pytest.raises(TaggerError, match=r"chars.json: missing; config.yaml has model.chars.encoder lstm") as err:
        load_model(tmp_path / "m")
    assert "\n" not in str(err.value)
    CharVocab(["a", "b"]).save(f)
    with pytest.raises(TaggerError, match=r"chars.json: 4 characters, but .*weights.safetensors was trained with \d+") as err:
        load_model(tmp_path / "m")
    assert "\n" not in str(err.value)
    f.write_text(good[:10])
    with pytest.raises(TaggerError, match="chars.json: damaged character vocabulary"):
        load_model(tmp_path / "m")


@pytest.mark.parametrize("encoder", ["lstm", "cnn"])
def test_every_layer_name_is_fixed_so_a_checkpoint_resumes(encoder):
    """Checkpoints keep dropout counters by layer name (tagger/checkpoint.py): a network built
    again (as --resume does, after other layers were made) has the same names."""
    from tagger.checkpoint import all_layers, call_counters, set_call_counters

    first = tiny(encoder, dropout=0.5)
    first.train_step(first.batches(EXAMPLES, 8)[0])
    CharEncoder("lstm", char_vocab_size=5)  # more unnamed layers in between
    again = tiny(encoder, dropout=0.5)
    names = [layer.name for layer in all_layers(first.network)]
    assert names == [layer.name for layer in all_layers(again.network)] and len(set(names)) == len(names)
    counters = call_counters(first.network)
    assert counters["chars_dropout"] == 1
    set_call_counters(again.network, counters)
    assert call_counters(again.network) == counters


def test_a_checkpoint_from_before_model_chars_resumes_only_without_chars():
    from tagger.checkpoint import check_same_config

    current = parse_config({}).to_dict()
    saved = json.loads(json.dumps(current))
    del saved["model"]["chars"], saved["vocab"]["max_chars"]
    check_same_config(saved, current, "out")  # the missing keys read as their defaults
    with pytest.raises(TaggerError, match=r"--resume: model.chars.encoder is 'lstm' now but 'none'"):
        check_same_config(saved, parse_config({"model": {"chars": {"encoder": "lstm"}}}).to_dict(), "out")


def test_summary_of_a_chars_config_counts_the_encoder(tmp_path):
    from typer.testing import CliRunner

    from tagger.cli import app

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"embedding_dim": 4, "lstm_units": 3, "chars": {"encoder": "cnn", "char_dim": 3,
                                                                                               "filters": 4}}}))
    run = CliRunner().invoke(app, ["summary", str(cfg), "--vocab-size", "10", "--labels", "5", "--char-vocab-size", "7",
                                   "--json"])
    assert run.exit_code == 0, run.output
    report = json.loads(run.output)
    first = report["layers"][0]
    assert first["type"] == "WordFeatures" and first["output_shape"] == [None, None, 8]
    assert first["params"] == 10 * 4 + 7 * 3 + 3 * 3 * 4 + 4
    assert report["total_params"] == parameter_count(parse_config(yaml.safe_load(cfg.read_text())).model, 10, 5, 7)
    bad = CliRunner().invoke(app, ["summary", str(cfg), "--vocab-size", "10", "--labels", "5", "--char-vocab-size", "1"])
    assert bad.exit_code == 1 and "--char-vocab-size 1: expected a number >= 2" in bad.output
