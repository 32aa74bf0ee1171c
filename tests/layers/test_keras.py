"""Keras-exact where we claim it: constructor arguments, weights, refusals and configs,
each checked against a NumPy transcription of Keras' documented behaviour (no Keras here).

Keras' LSTM step (keras/src/layers/rnn/lstm.py, implementation 2):
    z = x @ kernel + h @ recurrent_kernel + bias;  z_i, z_f, z_c, z_o = split(z, 4)
    i, f, o = recurrent_activation(z_i, z_f, z_o);  c = f * c + i * activation(z_c)
    h = o * activation(c)
"""
import numpy as np
import pytest

from tagger.errors import TaggerError
from tagger.layers import (CRF, LSTM, Bidirectional, Conv1D, Dense, Dropout, Embedding, GlobalAveragePooling1D,
                           GlobalMaxPooling1D, Sequential, deserialize, serialize)

KERAS_ACTIVATIONS = {
    "tanh": np.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "hard_sigmoid": lambda x: np.clip(x / 6.0 + 0.5, 0.0, 1.0),  # Keras 3: relu6(x + 3) / 6
    "relu": lambda x: np.maximum(x, 0.0),
    "linear": lambda x: x,
}


def keras_lstm(X, kernel, recurrent, bias, lengths, activation="tanh", recurrent_activation="sigmoid", h0=None, c0=None):
    """Keras' LSTM over post-padded X with a (B,) lengths mask: outputs (0 at padding) and final h, c."""
    act, ract = KERAS_ACTIVATIONS[activation], KERAS_ACTIVATIONS[recurrent_activation]
    B, T, _ = X.shape
    H = recurrent.shape[0]
    h = np.zeros((B, H)) if h0 is None else h0.copy()
    c = np.zeros((B, H)) if c0 is None else c0.copy()
    Y = np.zeros((B, T, H))
    for t in range(T):
        z = X[:, t] @ kernel + h @ recurrent + (0.0 if bias is None else bias)
        i, f, g, o = ract(z[:, :H]), ract(z[:, H:2 * H]), act(z[:, 2 * H:3 * H]), ract(z[:, 3 * H:])
        c_new = f * c + i * g
        h_new = o * act(c_new)
        real = (t < lengths)[:, None]  # a masked step keeps the previous state (Keras)
        c, h = np.where(real, c_new, c), np.where(real, h_new, h)
        Y[:, t] = np.where(real, h, 0.0)
    return Y, h, c


@pytest.fixture(params=["reference", "cpu"])
def backend(request):
    return request.param


def _inputs(B=3, T=5, I=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, T, I)), np.array([5, 2, 0])


def test_lstm_use_bias_false_has_two_weights_and_keras_outputs(backend):
    X, lengths = _inputs()
    layer = LSTM(3, use_bias=False, return_sequences=True, return_state=True, seed=1, ops=backend, dtype=np.float64)
    Y, h, c = layer(X, mask=lengths)
    kernel, recurrent = layer.get_weights()
    assert [n for n in layer.param_names] == ["kernel", "recurrent_kernel"]
    assert layer.count_params() == 4 * (3 * (4 + 3))  # Keras' count without the 4*units bias
    Yk, hk, ck = keras_lstm(X, kernel, recurrent, None, lengths)
    np.testing.assert_allclose(Y, Yk, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h, hk, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(c, ck, rtol=1e-10, atol=1e-12)


def test_lstm_with_bias_matches_keras_equations(backend):
    X, lengths = _inputs(seed=3)
    layer = LSTM(3, return_sequences=True, seed=2, ops=backend, dtype=np.float64, bias_initializer="random_normal")
    Y = layer(X, mask=lengths)
    kernel, recurrent, bias = layer.get_weights()
    np.testing.assert_array_equal(bias[3:6], 1.0)  # unit_forget_bias: Keras' [init(H), ones(H), init(2H)]
    assert (bias[:3] != 0).all() and (bias[6:] != 0).all()
    np.testing.assert_allclose(Y, keras_lstm(X, kernel, recurrent, bias, lengths)[0], rtol=1e-10, atol=1e-12)


def test_dense_use_bias_false(backend):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 3, 5))
    layer = Dense(4, use_bias=False, activation="tanh", seed=0, ops=backend, dtype=np.float64)
    y = layer(x)
    (kernel,) = layer.get_weights()
    assert layer.param_names == ["kernel"] and layer.count_params() == 20
    np.testing.assert_allclose(y, np.tanh(x @ kernel), rtol=1e-12)
    # gradients: the one weight, and the input
    y, backprop = layer.forward(layer.ops.asarray(x))
    dx = backprop(layer.ops.asarray(np.ones_like(x[..., :4])))
    np.testing.assert_allclose(dx, ((1 - np.tanh(x @ kernel) ** 2) @ kernel.T), rtol=1e-12)
    assert len(layer.grads) == 1


@pytest.mark.parametrize("name", ["zeros", "ones", "glorot_uniform", "orthogonal", "random_uniform",
                                  "random_normal", "he_uniform", "lecun_uniform"])
def test_initializers_by_keras_name(name):
    layer = Dense(6, kernel_initializer=name, bias_initializer="ones", seed=5)
    layer.ensure_built((None, 4))
    kernel, bias = layer.get_weights()
    np.testing.assert_array_equal(bias, 1.0)
    if name == "zeros":
        assert (kernel == 0).all()
    elif name == "ones":
        assert (kernel == 1).all()
    elif name == "orthogonal":
        np.testing.assert_allclose(kernel @ kernel.T, np.eye(4), atol=1e-6)
    else:
        limit = {"glorot_uniform": np.sqrt(6 / 10), "random_uniform": 0.05, "he_uniform": np.sqrt(6 / 4),
                 "lecun_uniform": np.sqrt(3 / 4), "random_normal": 1.0}[name]
        assert np.abs(kernel).max() <= limit and np.unique(kernel).size == kernel.size


def test_initializer_callable_and_unknown_name():
    layer = LSTM(2, kernel_initializer=lambda shape: np.full(shape, 0.5))
    layer.ensure_built((None, None, 3))
    np.testing.assert_array_equal(layer.get_weights()[0], 0.5)
    with pytest.raises(TaggerError, match="kernel_initializer: unknown initializer 'glorot'"):
        LSTM(2, kernel_initializer="glorot")
    with pytest.raises(TaggerError, match="unknown activation 'swish'"):
        LSTM(2, activation="swish")
    with pytest.raises(TaggerError, match="positive integer"):
        LSTM(0)


def test_bidirectional_refuses_what_keras_refuses():
    # an inner layer that already reads backwards: Keras' copy would read backwards too
    with pytest.raises(TaggerError, match="different go_backwards"):
        Bidirectional(LSTM(2, go_backwards=True))
    # a backward layer that reads forwards
    with pytest.raises(TaggerError, match="different go_backwards"):
        Bidirectional(LSTM(2), backward_layer=LSTM(2))
    with pytest.raises(TaggerError, match="same return_sequences"):
        Bidirectional(LSTM(2, return_sequences=True), backward_layer=LSTM(2, go_backwards=True))
    with pytest.raises(TaggerError, match="same return_state"):
        Bidirectional(LSTM(2, return_state=True), backward_layer=LSTM(2, go_backwards=True))
    with pytest.raises(TaggerError, match="wraps LSTM"):
        Bidirectional(Dense(2))
    # accepted: opposite directions, the backward layer with its own activation (Keras' example)
    layer = Bidirectional(LSTM(2, return_sequences=True), backward_layer=LSTM(2, activation="relu", return_sequences=True,
                                                                           go_backwards=True))
    assert layer.backward_layer.activation == "relu" and layer.forward_layer.activation == "tanh"


def test_bidirectional_backward_copy_keeps_the_layer_config():
    layer = Bidirectional(LSTM(3, activation="relu", use_bias=False, dropout=0.1, return_sequences=True, name="enc"))
    fw, bw = layer.forward_layer.get_config(), layer.backward_layer.get_config()
    assert bw["go_backwards"] is True and fw["go_backwards"] is False
    assert {k: v for k, v in fw.items() if k not in ("go_backwards", "name", "seed")} == \
        {k: v for k, v in bw.items() if k not in ("go_backwards", "name", "seed")}
    assert (layer.forward_layer.name, layer.backward_layer.name) == ("forward_enc", "backward_enc")


def _stack():
    return Sequential([
        Embedding(20, 4, name="emb"),
        Dropout(0.25, name="drop"),
        Bidirectional(LSTM(3, return_sequences=True, recurrent_dropout=0.1, use_bias=False), merge_mode="ave", name="bi"),
        GlobalMaxPooling1D(name="pool"),
        Dense(5, activation="relu", kernel_initializer="he_uniform", name="out"),
    ], seed=7)


def test_get_config_from_config_round_trip():
    model = _stack()
    config = model.get_config()
    rebuilt = Sequential.from_config(config)
    assert rebuilt.get_config() == config
    assert [type(layer).__name__ for layer in rebuilt.layers] == [type(layer).__name__ for layer in model.layers]
    for layer in (LSTM(2, return_state=True), Dense(3, use_bias=False), Dropout(0.5), GlobalAveragePooling1D(),
                  Embedding(9, 2, mask_zero=False), Conv1D(4, 3, padding="same", activation="tanh")):
        again = deserialize(serialize(layer))
        assert type(again) is type(layer) and again.get_config() == layer.get_config()
    with pytest.raises(TaggerError, match="unknown layer class 'Lambda'"):
        deserialize({"class_name": "Lambda", "config": {}})
    with pytest.raises(TaggerError, match="unknown layer class 'errors'"):
        deserialize({"class_name": "errors", "config": {}})


def test_same_config_and_weights_give_the_same_outputs():
    model = _stack()
    model.build((None, None))
    ids = np.array([[3, 4, 5, 0], [6, 7, 0, 0]])
    rebuilt = Sequential.from_config(model.get_config())
    rebuilt.build((None, None))
    rebuilt.set_weights(model.get_weights())
    np.testing.assert_array_equal(rebuilt(ids), model(ids))


def test_crf_config():
    layer = CRF(4, initializer="uniform", name="crf")
    assert deserialize(serialize(layer)).get_config() == layer.get_config()


@pytest.mark.parametrize("activation,recurrent_activation", [("tanh", "sigmoid"), ("relu", "hard_sigmoid"),
                                                             ("linear", "tanh"), ("sigmoid", "linear")])
def test_lstm_activations_match_keras_equations(backend, activation, recurrent_activation):
    X, lengths = _inputs(seed=6)
    layer = LSTM(3, activation=activation, recurrent_activation=recurrent_activation, return_sequences=True,
                 return_state=True, seed=3, ops=backend, dtype=np.float64)
    Y, h, c = layer(X, mask=lengths)
    Yk, hk, ck = keras_lstm(X, *layer.get_weights(), lengths, activation, recurrent_activation)
    for got, want in ((Y, Yk), (h, hk), (c, ck)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert LSTM(2, activation=None).activation == "linear"  # Keras: None means linear


def test_lstm_initial_state_matches_keras_and_its_gradient(backend):
    from tests.gradcheck import assert_grad_close, numeric_grad

    X, lengths = _inputs(seed=8)
    rng = np.random.default_rng(9)
    h0, c0 = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    layer = LSTM(3, return_sequences=True, seed=4, ops=backend, dtype=np.float64)
    Y = layer(X, mask=lengths, initial_state=[h0, c0])
    np.testing.assert_allclose(Y, keras_lstm(X, *layer.get_weights(), lengths, h0=h0, c0=c0)[0], rtol=1e-10, atol=1e-12)
    R = rng.normal(size=Y.shape)

    def loss():
        return float((layer(X, mask=lengths, initial_state=[h0, c0]) * R).sum())

    ops = layer.ops
    _, backprop = layer.forward(ops.asarray(X), mask=lengths, initial_state=[ops.asarray(h0), ops.asarray(c0)])
    dx, dh0, dc0 = backprop(ops.asarray(R))
    assert_grad_close(ops.to_numpy(dh0), numeric_grad(loss, h0), "dh0")
    assert_grad_close(ops.to_numpy(dc0), numeric_grad(loss, c0), "dc0")
    assert_grad_close(ops.to_numpy(dx), numeric_grad(loss, X), "dx")
    with pytest.raises(TaggerError, match=r"initial state h must have shape \(3, 3\)"):
        layer(X, initial_state=[h0[:2], c0])


def test_bidirectional_initial_state_is_split_in_halves(backend):
    X, lengths = _inputs(seed=10)
    rng = np.random.default_rng(11)
    states = [rng.normal(size=(3, 2)) for _ in range(4)]
    bi = Bidirectional(LSTM(2, return_sequences=True, return_state=True, ops=backend, dtype=np.float64), seed=5)
    out, hf, cf, hb, cb = bi(X, mask=lengths, initial_state=states)
    fw = bi.forward_layer(X, mask=lengths, initial_state=states[:2])
    bw = bi.backward_layer(X, mask=lengths, initial_state=states[2:])
    np.testing.assert_allclose(out, np.concatenate([fw[0], bw[0]], axis=-1), rtol=1e-12)
    np.testing.assert_allclose(hb, bw[1], rtol=1e-12)
    np.testing.assert_allclose(cf, fw[2], rtol=1e-12)
    with pytest.raises(TaggerError, match="initial_state is"):
        bi(X, initial_state=states[:2])
