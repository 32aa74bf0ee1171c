"""Keras semantics: shapes, masks and padding, go_backwards alignment, summary counts."""
import numpy as np
import pytest

from tagger.errors import TaggerError
from tagger.spans import Spans
from tagger.layers import (LSTM, Bidirectional, Dense, Dropout, Embedding, GlobalAveragePooling1D,
                           GlobalMaxPooling1D, Sequential)


def ragged(seed=0, B=4, T=6, I=3):
    rng = np.random.default_rng(seed)
    lengths = np.array([6, 1, 4, 2])
    X = rng.normal(size=(B, T, I)).astype(np.float64)
    return X, lengths


def padded(X, lengths, side):
    """The same sequences laid out post- or pre-padded; padding filled with garbage."""
    B, T, I = X.shape
    out = np.full_like(X, 123.0)
    mask = np.zeros((B, T), dtype=bool)
    for b, n in enumerate(lengths):
        s = 0 if side == "post" else T - n
        out[b, s : s + n] = X[b, :n]
        mask[b, s : s + n] = True
    return out, mask


@pytest.mark.parametrize("side", ["post", "pre"])
@pytest.mark.parametrize("merge_mode", ["concat", "sum", "ave", "mul"])
def test_padding_invariance(backend, side, merge_mode):
    """Each sequence inside a padded batch equals the sequence run alone; padded outputs are 0."""
    X, lengths = ragged()
    Xp, mask = padded(X, lengths, side)
    layer = Bidirectional(LSTM(5, return_sequences=True, return_state=True, seed=1, ops=backend, dtype=np.float64), merge_mode=merge_mode)
    out, hf, cf, hb, cb = layer(Xp, mask=mask)
    assert (out[~mask] == 0).all()
    for b, n in enumerate(lengths):
        alone = layer(X[b : b + 1, :n])
        np.testing.assert_allclose(out[b][mask[b]], alone[0][0], rtol=1e-12, atol=1e-14)
        for got, want in zip((hf, cf, hb, cb), alone[1:]):
            np.testing.assert_allclose(got[b], want[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("side", ["post", "pre"])
def test_final_state_is_at_the_last_real_token(backend, side):
    X, lengths = ragged(1)
    Xp, mask = padded(X, lengths, side)
    seq = LSTM(4, return_sequences=True, seed=2, ops=backend, dtype=np.float64)
    last = LSTM(4, seed=2, ops=backend, dtype=np.float64)
    Y, h = seq(Xp, mask=mask), last(Xp, mask=mask)
    for b, n in enumerate(lengths):
        t_last = (n - 1) if side == "post" else Xp.shape[1] - 1
        np.testing.assert_array_equal(h[b], Y[b, t_last])
    # go_backwards: the final state is the state after the first real token
    seqb = LSTM(4, return_sequences=True, go_backwards=True, seed=2, ops=backend, dtype=np.float64)
    lastb = LSTM(4, go_backwards=True, seed=2, ops=backend, dtype=np.float64)
    Yb, hb = seqb(Xp, mask=mask), lastb(Xp, mask=mask)
    for b, n in enumerate(lengths):
        t_first = 0 if side == "post" else Xp.shape[1] - n
        np.testing.assert_array_equal(hb[b], Yb[b, t_first])


def test_go_backwards_outputs_are_aligned_with_input_steps(backend):
    X, lengths = ragged(2)
    fw = LSTM(3, return_sequences=True, seed=5, ops=backend, dtype=np.float64)
    bw = LSTM(3, return_sequences=True, go_backwards=True, seed=5, ops=backend, dtype=np.float64)
    for b, n in enumerate(lengths):
        x = X[b : b + 1, :n]
        y_rev = fw(x[:, ::-1])
        np.testing.assert_allclose(bw(x), y_rev[:, ::-1], rtol=1e-12)


def test_lengths_and_mask_agree(backend):
    X, lengths = ragged(3)
    Xp, mask = padded(X, lengths, "post")
    layer = LSTM(3, return_sequences=True, seed=1, ops=backend, dtype=np.float64)
    np.testing.assert_array_equal(layer(Xp, mask=mask), layer(Xp, mask=lengths))


def test_mask_with_a_gap_is_refused(backend):
    X, _ = ragged()
    mask = np.ones(X.shape[:2], dtype=bool)
    mask[0, 2] = False
    with pytest.raises(TaggerError, match="row 0 has a gap"):
        LSTM(2, ops=backend)(X, mask=mask)


def test_wrong_input_rank_is_a_clear_error(backend):
    with pytest.raises(TaggerError, match="expects input of shape"):
        LSTM(2, ops=backend)(np.zeros((3, 4)))


def test_output_shapes(backend):
    X = np.random.default_rng(0).normal(size=(2, 7, 3)).astype(np.float32)
    assert LSTM(4, ops=backend)(X).shape == (2, 4)
    assert LSTM(4, return_sequences=True, ops=backend)(X).shape == (2, 7, 4)
    assert Bidirectional(LSTM(4, return_sequences=True, ops=backend))(X).shape == (2, 7, 8)
    assert Bidirectional(LSTM(4, ops=backend), merge_mode="sum")(X).shape == (2, 4)
    assert Dense(5, ops=backend)(X).shape == (2, 7, 5)
    assert Dense(5, ops=backend)(X[:, 0]).shape == (2, 5)
    assert LSTM(4, ops=backend)(X).dtype == np.float32


def test_keras_initialisers_and_layouts():
    layer = LSTM(6, seed=3)
    layer.ensure_built((None, 5, 4))
    kernel, recurrent, bias = layer.get_weights()
    assert kernel.shape == (4, 24) and recurrent.shape == (6, 24) and bias.shape == (24,)
    limit = np.sqrt(6 / (4 + 24))
    assert np.abs(kernel).max() <= limit
    np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(6), atol=1e-5)  # orthogonal rows
    np.testing.assert_array_equal(bias, np.r_[np.zeros(6), np.ones(6), np.zeros(12)])


def test_same_seed_same_weights():
    def build(seed):
        m = Sequential([Embedding(50, 8), Bidirectional(LSTM(6, return_sequences=True)), Dense(3)], input_shape=(None,), seed=seed)
        return m.get_weights()

    a, b, c = build(7), build(7), build(8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_summary_counts():
    text = Sequential([LSTM(10)], input_shape=(13, 5)).summary(print_fn=None)
    assert "(None, 10)" in text and "Total params: 640" in text
    assert "Total params: 640" in Sequential([LSTM(10)], input_shape=(100, 5)).summary(print_fn=None)
    text = Sequential([LSTM(32), Dense(2)], input_shape=(10, 64)).summary(print_fn=None)
    assert "12,416" in text and " 66 " in text and "Total params: 12,482" in text
    model = Sequential([Bidirectional(LSTM(384, return_sequences=True))], input_shape=(4995, 12))
    text = model.summary(print_fn=None)
    assert "(None, 4995, 768)" in text and "Total params: 1,219,584" in text
    assert [w.shape for w in model.get_weights()][:3] == [(12, 1536), (384, 1536), (1536,)]


def test_summary_counts_frozen_embedding_as_non_trainable():
    model = Sequential([Embedding(100, 10, trainable=False), LSTM(4)], input_shape=(None,))
    text = model.summary(print_fn=None)
    assert "(None, None, 10)" in text
    assert "Total params: 1,240" in text and "Trainable params: 240" in text and "Non-trainable params: 1,000" in text


def test_set_weights_shape_mismatch_names_the_weight():
    layer = LSTM(3)
    layer.ensure_built((None, 4, 2))
    with pytest.raises(TaggerError, match="recurrent_kernel"):
        layer.set_weights([np.zeros((2, 12)), np.zeros((4, 12)), np.zeros(12)])


@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("merge_mode", ["concat", "ave"])
def test_projected_inference_equals_the_plain_forward(return_sequences, merge_mode):
    """Embedding -> Bidirectional at inference may look input projections up (cpu backend):
    same outputs as the plain path, and refreshed after a weight update."""
    from tagger.optim import SGD

    ids = np.array([[4, 2, 7, 1, 3], [5, 0, 0, 0, 0], [0, 0, 6, 2, 2]])  # post- and pre-padded rows
    model = Sequential(
        [Embedding(9, 4), Dropout(0.3), Bidirectional(LSTM(3, return_sequences=return_sequences), merge_mode=merge_mode), Dense(2)],
        seed=4, ops="cpu", dtype=np.float64,
    )
    assert model._projected_prefix() is not None  # the cpu backend takes the fast path
    model.layers[2].projection_pays = lambda embedding, shape: True  # build the tables at once

    def both():
        model.projected_inference = True
        fast, _ = model.forward(ids, train=False)
        model.projected_inference = False
        plain, _ = model.forward(ids, train=False)
        return np.asarray(fast), np.asarray(plain)

    fast, plain = both()
    np.testing.assert_allclose(fast, plain, rtol=1e-12, atol=1e-14)
    # one training step changes the weights: the cached projection must follow
    y, backprop = model.forward(ids, train=True)
    backprop(np.ones_like(y))
    SGD(lr=0.5).step(model)
    fast2, plain2 = both()
    np.testing.assert_allclose(fast2, plain2, rtol=1e-12, atol=1e-14)
    assert np.abs(fast2 - fast).max() > 1e-6


def test_projection_is_built_only_once_enough_tokens_are_predicted():
    """Ski rental: the plain path until the tokens predicted with the same weights reach V."""
    model = Sequential([Embedding(40, 4), Bidirectional(LSTM(3, return_sequences=True)), Dense(2)], seed=1, ops="cpu")
    bid = model.layers[1]
    ids = np.ones((2, 5), dtype=np.int64)  # 10 tokens a call
    used = [model.forward(ids, train=False) and getattr(bid, "_projection_key", None) is not None for _ in range(5)]
    assert used == [False, False, False, True, True]


# ----------------------------------------------------------------------------------------
# global pooling over time


@pytest.mark.parametrize("side", ["post", "pre"])
def test_pooling_follows_keras_masked_formulas(backend, side):
    """Keras' masked GlobalAveragePooling1D: sum(x * mask) / sum(mask); the masked max:
    max over the real steps. Garbage padding, pre or post, a (B, T) mask or (B,) lengths."""
    X, lengths = ragged(3)
    Xp, mask = padded(X, lengths, side)
    m = mask[..., None]
    mean = GlobalAveragePooling1D(ops=backend, dtype=np.float64)
    mx = GlobalMaxPooling1D(ops=backend, dtype=np.float64)
    np.testing.assert_allclose(mean(Xp, mask=mask), (Xp * m).sum(1) / m.sum(1), rtol=1e-12)
    np.testing.assert_array_equal(mx(Xp, mask=mask), np.where(m, Xp, -np.inf).max(1))
    if side == "post":  # lengths mean post-padding
        np.testing.assert_array_equal(mx(Xp, mask=lengths), mx(Xp, mask=mask))
        np.testing.assert_array_equal(mean(Xp, mask=lengths), mean(Xp, mask=mask))
    # no mask: every step is real, as in Keras
    np.testing.assert_allclose(mean(Xp), Xp.mean(1), rtol=1e-12)
    np.testing.assert_array_equal(mx(Xp), Xp.max(1))
    # the mask stops here
    assert mean.output_spans(Spans.from_mask(mask, *mask.shape)) is None and mx.output_spans(None) is None
    with pytest.raises(TaggerError, match="batch, timesteps, features"):
        mx(Xp[:, 0])


def test_summary_shows_pooling_after_a_bidirectional():
    for pooling in (GlobalMaxPooling1D, GlobalAveragePooling1D):
        model = Sequential(
            [Embedding(100, 8), Bidirectional(LSTM(16, return_sequences=True)), pooling(name="pooling"), Dense(3)],
            input_shape=(None,),
        )
        text = model.summary(print_fn=None)
        row = next(line for line in text.splitlines() if line.startswith(" pooling ("))
        assert f"pooling ({pooling.__name__})" in row and "(None, 32)" in row and row.split()[-1] == "0"
        assert model.layers[2].count_params() == 0 and model.layers[2].get_weights() == []
        assert model.output_shapes()[-1] == (None, 3)
        assert "Total params: 4,099" in text  # 100*8 + 2 * (8*64 + 16*64 + 64) + 32*3 + 3: pooling adds none


@pytest.mark.parametrize("pooling", [GlobalMaxPooling1D, GlobalAveragePooling1D])
def test_projected_inference_through_pooling_equals_the_plain_forward(pooling):
    ids = np.array([[4, 2, 7, 1, 3], [5, 0, 0, 0, 0], [0, 0, 6, 2, 2], [0, 0, 0, 0, 0]])
    model = Sequential(
        [Embedding(9, 4), Dropout(0.3), Bidirectional(LSTM(3, return_sequences=True)), pooling(), Dense(2)],
        seed=5, ops="cpu", dtype=np.float64,
    )
    model.layers[2].projection_pays = lambda embedding, shape: True
    model.projected_inference = True
    fast, _ = model.forward(ids, train=False)
    model.projected_inference = False
    plain, _ = model.forward(ids, train=False)
    assert fast.shape == (4, 2)
    np.testing.assert_allclose(fast, plain, rtol=1e-12, atol=1e-14)
