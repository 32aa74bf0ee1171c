"""CharEncoder ('lstm': Lample's char BiLSTM, 'cnn': Ma & Hovy's char CNN): what each word's
vector is, padding never read, Keras-style shapes and counts, and float64 finite
differences through every weight of the whole encoder on the CPU backends."""
import numpy as np
import pytest

from tagger.errors import TaggerError
from tagger.layers import LSTM, Bidirectional, Embedding, Sequential
from tagger.layers.chars import CharEncoder, distinct_words, gather_words
from tagger.ops import get_ops
from tagger.spans import Spans
from tests.gradcheck import assert_grad_close, numeric_grad

V = 9
# 3 sentences, W = 4 words, C = 5 chars; word spans: 4, 2 and 3 words (the last pre-padded)
LENGTHS = np.array([[5, 1, 3, 2], [4, 2, 0, 0], [0, 2, 5, 1]])
WORDS = Spans(np.array([0, 0, 1]), np.array([4, 2, 3]), 4)


def char_ids(seed=0, pad=0):
    ids = np.random.default_rng(seed).integers(1, V, size=(3, 4, 5))
    ids[np.arange(5)[None, None, :] >= LENGTHS[..., None]] = pad
    return ids


def encoder(kind, backend="reference", dropout=0.0, seed=1):
    return CharEncoder(kind, char_vocab_size=V, char_dim=3, units=2, filters=4, width=3, dropout=dropout,
                       ops=backend, dtype=np.float64, seed=seed)


def test_gather_sorts_the_real_words_longest_first():
    ids = char_ids()
    chars, lengths, index, real = gather_words(ids, WORDS, LENGTHS)
    np.testing.assert_array_equal(lengths, [5, 5, 4, 3, 2, 2, 2, 1, 1])
    assert chars.shape == (9, 5)
    for b, w in zip(*np.nonzero(real)):
        k = index[b, w]
        np.testing.assert_array_equal(chars[k, : lengths[k]], ids[b, w, : LENGTHS[b, w]])
    assert not real[1, 2] and not real[2, 0]


def test_distinct_words_keep_every_word_and_their_order():
    ids = char_ids()
    ids[2, 1] = ids[0, 1]  # repeat two words (same characters, same length)
    ids[2, 3] = ids[0, 1]
    lengths = LENGTHS.copy()
    lengths[2, 1] = lengths[2, 3] = LENGTHS[0, 1]
    chars, clen, index, real = gather_words(ids, WORDS, lengths)
    uniq, ulen, uindex = distinct_words(chars, clen, index)
    assert len(uniq) == len(chars) - 2 and (np.diff(ulen) <= 0).all()  # once each, longest first
    assert len({tuple(row) for row in uniq.tolist()}) == len(uniq)
    for b, w in zip(*np.nonzero(real)):
        np.testing.assert_array_equal(uniq[uindex[b, w]], chars[index[b, w]])
        assert ulen[uindex[b, w]] == clen[index[b, w]]


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("kind", ["lstm", "cnn"])
def test_inference_encodes_each_distinct_word_once_with_the_same_features(monkeypatch, backend, kind):
    """train=False encodes the distinct words only (here 7 of 9 rows), and gives what the
    training-mode forward gives with no dropout."""
    import tagger.layers.chars as chars_module

    enc = encoder(kind, backend)
    ids = char_ids()
    ids[2, 1], ids[2, 3] = ids[0, 1], ids[0, 1]
    lengths = LENGTHS.copy()
    lengths[2, 1] = lengths[2, 3] = LENGTHS[0, 1]
    rows = []
    real_embedding = enc.embedding.forward
    monkeypatch.setattr(enc.embedding, "forward", lambda x, *a, **k: rows.append(x.shape[0]) or real_embedding(x, *a, **k))
    trained, _ = enc.forward(ids, WORDS, train=True, char_lengths=lengths)
    inferred, _ = enc.forward(ids, WORDS, train=False, char_lengths=lengths)
    assert rows == [9, 7]
    np.testing.assert_allclose(np.asarray(inferred), np.asarray(trained), rtol=1e-12, atol=1e-14)
    monkeypatch.setattr(chars_module, "distinct_words", lambda *a: a)  # without the dedup: the same
    np.testing.assert_allclose(np.asarray(enc.forward(ids, WORDS, train=False, char_lengths=lengths)[0]),
                               np.asarray(inferred), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["lstm", "cnn"])
def test_each_word_is_its_characters_alone_and_padding_is_zero(kind):
    enc = encoder(kind)
    ids = char_ids()
    y = enc(ids, mask=WORDS.mask())
    assert y.shape == enc.compute_output_shape(ids.shape) == (3, 4, enc.output_dim)
    assert (y[~WORDS.mask()] == 0).all()
    # the same word alone in a batch of one, with garbage after its characters
    alone = np.full((1, 1, 5), 7)
    alone[0, 0, :3] = ids[0, 2, :3]
    np.testing.assert_allclose(enc(alone, char_lengths=np.array([[3]]))[0, 0], y[0, 2], rtol=1e-12, atol=1e-14)


def test_lstm_encoder_is_the_final_states_of_a_bidirectional_lstm():
    enc = encoder("lstm")
    ids = char_ids()
    y = enc(ids, mask=WORDS.mask())
    emb = Embedding(V, 3, ops="reference", dtype=np.float64)
    rnn = Bidirectional(LSTM(2, ops="reference", dtype=np.float64))
    ref = Sequential([emb, rnn], ops="reference", dtype=np.float64, input_shape=(None,))
    ref.set_weights(enc.get_weights())
    word = ids[2, 2][None]  # 5 characters
    np.testing.assert_allclose(y[2, 2], ref(word)[0], rtol=1e-12)


def test_cnn_encoder_is_max_over_positions_of_a_tanh_conv():
    enc = encoder("cnn")
    ids = char_ids()
    y = enc(ids, mask=WORDS.mask())
    table, kernel, bias = enc.get_weights()
    x = table[ids[0, 2, :3]]  # 3 characters, 'same' zeros around them
    xp = np.pad(x, ((1, 1), (0, 0)))
    z = np.tanh(sum(xp[k : k + 3] @ kernel[k] for k in range(3)) + bias)
    np.testing.assert_allclose(y[0, 2], z.max(axis=0), rtol=1e-12)


@pytest.mark.parametrize("kind,count", [("lstm", V * 3 + 2 * 4 * 2 * (3 + 2 + 1)), ("cnn", V * 3 + 3 * 3 * 4 + 4)])
def test_count_params_and_weights_order(kind, count):
    enc = encoder(kind)
    enc(char_ids())
    assert enc.count_params() == count
    weights = enc.get_weights()
    assert weights[0].shape == (V, 3)
    enc.set_weights([w + 1 for w in weights])
    np.testing.assert_array_equal(enc.get_weights()[-1], weights[-1] + 1)
    names = [leaf.name for leaf in enc.sublayers()]
    assert names[0].endswith("_embedding") and len(names) == (3 if kind == "lstm" else 2)


@pytest.mark.parametrize("kind", ["lstm", "cnn"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_encoder_gradients_through_every_weight(backend, kind, dropout):
    ops = get_ops(backend)
    enc = encoder(kind, backend, dropout=dropout)
    ids = char_ids(seed=3)
    R = np.random.default_rng(5).normal(size=(3, 4, enc.output_dim))
    layers = [enc.drop, *enc.sublayers()]

    def run():
        for layer in layers:
            layer._calls = 0  # the same dropout masks on every call
        return enc.forward(ids, WORDS, train=True)

    def loss():
        return float((np.asarray(ops.to_numpy(run()[0])) * R).sum())

    enc.zero_grad()
    y, backprop = run()
    assert backprop(ops.asarray(R)) is None  # ids have no gradient
    for leaf in enc.sublayers():
        for k, name in enumerate(leaf.param_names):
            analytic = np.array(ops.to_numpy(leaf.grads[k]))
            assert_grad_close(analytic, numeric_grad(loss, leaf.params[k]), f"{leaf.name}/{name}")
    assert set(enc.embedding.grad_rows[0].tolist()) <= set(range(1, V))  # padding row 0 never learns


@pytest.mark.parametrize("kind", ["lstm", "cnn"])
def test_cpu_matches_reference(kind):
    ids = char_ids(seed=4)
    ref, cpu = encoder(kind, "reference", seed=2), encoder(kind, "cpu", seed=2)
    np.testing.assert_allclose(cpu(ids, mask=WORDS.mask()), ref(ids, mask=WORDS.mask()), rtol=1e-10, atol=1e-12)


def test_in_a_sequential_the_leaves_are_the_weight_owners():
    enc = encoder("lstm")
    model = Sequential([enc], ops="reference", dtype=np.float64, input_shape=(None, 5))
    assert [leaf.name for leaf in model.leaves()] == [leaf.name for leaf in enc.sublayers()]


def test_no_real_word_gives_zeros():
    enc = encoder("cnn")
    ids = char_ids()
    y, back = enc.forward(ids, Spans.from_lengths([0, 0, 0], 4), train=True)
    assert (np.asarray(y) == 0).all() and y.shape == (3, 4, 4)
    assert back(np.ones((3, 4, 4))) is None


def test_refusals():
    with pytest.raises(TaggerError, match="encoder must be one of lstm, cnn"):
        CharEncoder("gru", char_vocab_size=V)
    with pytest.raises(TaggerError, match="char_vocab_size must be >= 2"):
        CharEncoder("cnn")
    enc = encoder("cnn")
    with pytest.raises(TaggerError, match="post-padded with 0"):
        enc(np.array([[[1, 0, 2]]]))
    with pytest.raises(TaggerError, match="char_lengths must lie in 0..3"):
        enc(np.array([[[1, 2, 2]]]), char_lengths=np.array([[4]]))
    with pytest.raises(TaggerError, match="char ids must be integers"):
        enc(np.ones((1, 1, 3)))


@pytest.mark.parametrize("kind", ["lstm", "cnn"])
def test_config_rebuilds_the_encoder(kind):
    enc = encoder(kind)
    again = CharEncoder.from_config(enc.get_config())
    assert again.get_config() == enc.get_config()
    ids = char_ids()
    again.ops, again.dtype = "reference", np.dtype(np.float64)
    np.testing.assert_allclose(again(ids, mask=WORDS.mask()), enc(ids, mask=WORDS.mask()), rtol=1e-12)


def test_tagger_chain_on_characters_gradients(backend):
    """CharEncoder('cnn') -> BiLSTM (return_sequences) -> Dense in a Sequential handed the
    batch's word spans: finite differences through every weight of the whole chain."""
    from tagger.layers import Dense

    ops = get_ops(backend)
    model = Sequential([encoder("cnn", backend), Bidirectional(LSTM(2, return_sequences=True)), Dense(3)],
                       ops=backend, dtype=np.float64, seed=3, input_shape=(4, 5))
    ids = char_ids(seed=6)
    R = np.random.default_rng(8).normal(size=(3, 4, 3)) * WORDS.mask()[..., None]  # real words only

    def loss():
        return float((np.asarray(ops.to_numpy(model.forward(ids, WORDS, train=True)[0])) * R).sum())

    model.zero_grad()
    y, backprop = model.forward(ids, WORDS, train=True)
    assert tuple(y.shape) == model.compute_output_shape((3, 4, 5)) == (3, 4, 3)
    backprop(ops.asarray(R))
    assert [leaf.name for leaf in model.leaves()][:2] == [leaf.name for leaf in model.layers[0].sublayers()]
    for leaf in model.leaves():
        for k, name in enumerate(leaf.param_names):
            assert_grad_close(np.array(ops.to_numpy(leaf.grads[k])), numeric_grad(loss, leaf.params[k]), f"{leaf.name}/{name}")


def test_word_features_refusals_are_one_line():
    from tagger.layers import WordFeatures, WordInputs

    with pytest.raises(TaggerError, match="expects an Embedding and a CharEncoder"):
        WordFeatures(encoder("cnn"), encoder("cnn"))
    stage = WordFeatures(Embedding(5, 2, ops="reference", dtype=np.float64), encoder("cnn"), ops="reference",
                         dtype=np.float64, seed=2)
    with pytest.raises(TaggerError, match="expects WordInputs") as err:
        stage.forward(np.ones((1, 2), int), None)
    assert "Model.batches" in str(err.value)
    with pytest.raises(TaggerError, match=r"chars must be \(batch, timesteps, chars\) = \(1, 2\) \+ \(C,\)"):
        stage(WordInputs(np.ones((1, 2), int), np.ones((1, 3, 4), int)))
    y = stage(WordInputs(np.array([[1, 2, 0]]), char_ids()[:1, :3]))
    assert y.shape == (1, 3, 2 + 4) and (y[0, 2, 2:] == 0).all()  # spans from the ids: word 3 is padding
