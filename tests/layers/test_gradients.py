"""Float64 finite-difference checks of every layer and of the whole model chain."""
import numpy as np
import pytest

from tagger.layers import (LSTM, Bidirectional, Dense, Dropout, Embedding, GlobalAveragePooling1D,
                           GlobalMaxPooling1D, Sequential)
from tagger.ops import get_ops
from tests.gradcheck import assert_grad_close, numeric_grad

# post- and pre-padded id batches, T = 5: a full row, a length-1 row, one in between
IDS = {
    "post": np.array([[3, 1, 4, 1, 5], [2, 0, 0, 0, 0], [6, 5, 3, 0, 0]]),
    "pre": np.array([[3, 1, 4, 1, 5], [0, 0, 0, 0, 2], [0, 0, 6, 5, 3]]),
}


def reset_dropout(model):
    for leaf in model.leaves():
        leaf._calls = 0


def check_model_gradients(model, ids, loss_fn, ops):
    """Compare every weight's analytic gradient with central differences."""
    def loss():
        reset_dropout(model)
        y, _ = model.forward(ids, train=True)
        return loss_fn(ops.to_numpy(y))[0]

    reset_dropout(model)
    model.zero_grad()
    y, backprop = model.forward(ids, train=True)
    _, dy = loss_fn(ops.to_numpy(y))
    backprop(ops.asarray(dy))
    for leaf in model.leaves():
        for k, name in enumerate(leaf.param_names):
            analytic = np.array(ops.to_numpy(leaf.grads[k]))
            w = leaf.params[k]  # a NumPy array on CPU backends: perturbed in place
            numeric = numeric_grad(loss, w)
            assert_grad_close(analytic, numeric, f"{leaf.name}/{name}")


def token_loss(ops, ids, seed=0):
    mask = ids != 0
    labels = np.random.default_rng(seed).integers(0, 5, size=ids.shape)
    return lambda y: ops.softmax_xent(y, labels, mask)


@pytest.mark.parametrize("padding", ["post", "pre"])
@pytest.mark.parametrize("merge_mode", ["concat", "sum", "ave", "mul"])
def test_tagger_chain_gradients(backend, padding, merge_mode):
    """Embedding -> 2-layer BiLSTM -> Dense -> per-token loss, with recurrent dropout."""
    ops = get_ops(backend)
    model = Sequential(
        [
            Embedding(7, 3),
            Bidirectional(LSTM(3, return_sequences=True, dropout=0.2, recurrent_dropout=0.2), merge_mode=merge_mode),
            Bidirectional(LSTM(2, return_sequences=True), merge_mode="concat"),
            Dropout(0.25),
            Dense(5),
        ],
        seed=1,
        ops=backend,
        dtype=np.float64,
    )
    ids = IDS[padding]
    check_model_gradients(model, ids, token_loss(ops, ids), ops)


@pytest.mark.parametrize("padding", ["post", "pre"])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_classifier_chain_gradients(backend, padding, go_backwards):
    """Final state (return_sequences=False) of a stacked BiLSTM feeding a softmax classifier."""
    ops = get_ops(backend)
    model = Sequential(
        [
            Embedding(7, 3),
            Bidirectional(LSTM(3, return_sequences=True)),
            # go_backwards=True: the wrapped layer reads backwards, its partner forwards
            Bidirectional(LSTM(2, go_backwards=go_backwards), merge_mode="sum",
                          backward_layer=LSTM(2, go_backwards=not go_backwards)),
            Dense(4, activation="tanh"),
            Dense(3),
        ],
        seed=2,
        ops=backend,
        dtype=np.float64,
    )
    ids = IDS[padding]
    labels = np.array([0, 2, 1])
    check_model_gradients(model, ids, lambda y: ops.softmax_xent(y, labels), ops)


@pytest.mark.parametrize("padding", ["post", "pre"])
@pytest.mark.parametrize("pooling", [GlobalMaxPooling1D, GlobalAveragePooling1D])
def test_pooled_classifier_chain_gradients(backend, padding, pooling):
    """Embedding -> BiLSTM (return_sequences) -> global max / mean pooling over the real
    steps -> Dropout -> Dense -> per-sequence loss. An all-padding row (length 0) pools to 0."""
    ops = get_ops(backend)
    model = Sequential(
        [
            Embedding(7, 3),
            Bidirectional(LSTM(3, return_sequences=True)),
            pooling(),
            Dropout(0.25),
            Dense(3),
        ],
        seed=4,
        ops=backend,
        dtype=np.float64,
    )
    ids = np.vstack([IDS[padding], np.zeros((1, 5), dtype=int)])
    labels = np.array([0, 2, 1, 1])
    check_model_gradients(model, ids, lambda y: ops.softmax_xent(y, labels), ops)


@pytest.mark.parametrize("padding", ["post", "pre"])
def test_lstm_return_state_gradients(backend, padding):
    ops = get_ops(backend)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(3, 5, 2))
    mask = IDS[padding] != 0
    layer = LSTM(3, return_sequences=True, return_state=True, seed=4, ops=backend, dtype=np.float64)
    R = [rng.normal(size=(3, 5, 3)), rng.normal(size=(3, 3)), rng.normal(size=(3, 3))]

    def loss():
        out, h, c = layer(X, mask=mask)
        return float(sum((a * r).sum() for a, r in zip((out, h, c), R)))

    (out, h, c), backprop = layer.forward(ops.asarray(X), mask=mask)
    layer.zero_grad()
    dX = backprop([ops.asarray(r) for r in R])
    assert_grad_close(ops.to_numpy(dX), numeric_grad(loss, X), "dX")
    for k, name in enumerate(layer.param_names):
        assert_grad_close(ops.to_numpy(layer.grads[k]), numeric_grad(loss, layer.params[k]), name)


def test_bidirectional_return_state_gradients(backend):
    ops = get_ops(backend)
    rng = np.random.default_rng(5)
    X = rng.normal(size=(3, 5, 2))
    lengths = np.array([5, 1, 3])
    layer = Bidirectional(LSTM(2, return_state=True, seed=6, ops=backend, dtype=np.float64))
    outs = layer(X, mask=lengths)
    R = [rng.normal(size=o.shape) for o in outs]

    def loss():
        return float(sum((a * r).sum() for a, r in zip(layer(X, mask=lengths), R)))

    _, backprop = layer.forward(ops.asarray(X), mask=lengths)
    dX = backprop([ops.asarray(r) for r in R])
    assert_grad_close(ops.to_numpy(dX), numeric_grad(loss, X), "dX")
    for k, name in enumerate(layer.param_names):
        assert_grad_close(ops.to_numpy(layer.grads[k]), numeric_grad(loss, layer.params[k]), name)
