"""Conv1D and TimeDistributed: Keras shapes and parameter counts, span rules, and float64
finite differences through every weight on the CPU backends."""
import numpy as np
import pytest

from tagger.errors import TaggerError
from tagger.layers import Dense
from tagger.layers.conv import Conv1D
from tagger.layers.wrappers import TimeDistributed
from tagger.ops import get_ops
from tagger.spans import Spans
from tests.gradcheck import assert_grad_close, numeric_grad

B, T, I = 3, 5, 2
LENGTHS = np.array([5, 2, 0])


def layer_grads_match(layer, x, run, ops):
    """run(layer, x) -> (y, backprop); compare each weight's gradient with central differences."""
    R = np.random.default_rng(4).normal(size=tuple(run(layer, x)[0].shape))

    def loss():
        return float((np.asarray(ops.to_numpy(run(layer, x)[0])) * R).sum())

    layer.zero_grad()
    y, back = run(layer, x)
    dx = back(ops.asarray(R))
    for k, name in enumerate(layer.param_names):
        assert_grad_close(np.array(ops.to_numpy(layer.grads[k])), numeric_grad(loss, layer.params[k]), f"{layer.name}/{name}")
    return dx, R


@pytest.mark.parametrize("padding,T_out", [("same", 5), ("valid", 3)])
def test_conv1d_shapes_and_params_are_keras(padding, T_out):
    conv = Conv1D(4, 3, padding=padding, ops="reference", dtype=np.float64, seed=0)
    y = conv(np.ones((B, T, I)))
    assert y.shape == conv.compute_output_shape((B, T, I)) == (B, T_out, 4)
    assert conv.compute_output_shape((None, None, I)) == (None, None, 4)
    assert conv.count_params() == 3 * I * 4 + 4
    assert [w.shape for w in conv.get_weights()] == [(3, I, 4), (4,)]
    assert Conv1D(4, (3,), use_bias=False, ops="reference").count_params() == 0  # not built yet
    nobias = Conv1D(4, 3, use_bias=False, ops="reference")
    nobias(np.ones((B, T, I), np.float32))
    assert nobias.count_params() == 3 * I * 4


def test_conv1d_kernel_init_is_keras_glorot_for_a_conv_kernel():
    conv = Conv1D(50, 5, ops="reference", dtype=np.float64, seed=1)
    conv(np.zeros((1, 6, 40)))
    kernel = conv.get_weights()[0]
    limit = np.sqrt(6.0 / (5 * 40 + 5 * 50))  # fans scaled by the receptive field (Keras)
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.9 * limit


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_conv1d_spans_in_and_out(padding):
    conv = Conv1D(2, 3, padding=padding, activation="relu", ops="reference", dtype=np.float64, seed=0)
    spans = Spans.from_lengths(LENGTHS, T, padding="pre")
    x = np.random.default_rng(0).normal(size=(B, T, I))
    x[~spans.mask()] = np.nan  # padding is never read
    y, _ = conv.forward(x, spans, train=False)
    out = conv.output_spans(spans)
    assert out.timesteps == y.shape[1]
    assert np.isfinite(y).all()
    assert (y[~out.mask()] == 0).all()  # relu(0)
    if padding == "valid":
        np.testing.assert_array_equal(out.lengths, [3, 0, 0])
    assert conv.output_spans(None) is None


def test_conv1d_refusals():
    with pytest.raises(TaggerError, match="'causal' is not supported"):
        Conv1D(2, 3, padding="causal")
    with pytest.raises(TaggerError, match="unknown activation 'gelu'"):
        Conv1D(2, 3, activation="gelu")
    conv = Conv1D(2, 3, ops="reference")
    conv(np.ones((1, 4, 2), np.float32))
    with pytest.raises(TaggerError, match="expects 2 channels, got 3"):
        conv(np.ones((1, 4, 3), np.float32))


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("activation", ["tanh", None])
def test_conv1d_gradients(backend, padding, activation):
    ops = get_ops(backend)
    conv = Conv1D(3, 3, padding=padding, activation=activation, ops=backend, dtype=np.float64, seed=2)
    spans = Spans.from_lengths(LENGTHS, T)
    x = np.random.default_rng(1).normal(size=(B, T, I))
    dx, R = layer_grads_match(conv, x, lambda layer, v: layer.forward(v, spans), ops)

    def loss():
        return float((np.asarray(ops.to_numpy(conv.forward(x, spans)[0])) * R).sum())

    assert_grad_close(np.asarray(ops.to_numpy(dx)), numeric_grad(loss, x), "dx")


# ----------------------------------------------------------------------------------------
# TimeDistributed


def test_time_distributed_dense_is_per_timestep_and_keeps_the_spans():
    dense = Dense(4, ops="reference", dtype=np.float64, seed=0)
    td = TimeDistributed(dense)
    x = np.random.default_rng(0).normal(size=(B, T, I))
    y = td(x)
    assert y.shape == td.compute_output_shape((B, T, I)) == (B, T, 4)
    np.testing.assert_allclose(y[1, 2], dense(x[1, 2][None])[0], rtol=1e-12)
    assert td.count_params() == I * 4 + 4 == dense.count_params()
    spans = Spans.from_lengths(LENGTHS, T)
    assert td.output_spans(spans) is spans


def test_time_distributed_conv_reads_only_real_inner_steps(backend):
    """(B, W, S, I): a Conv1D per word; padded words and padded characters are never read."""
    W, S = 4, 5
    conv = Conv1D(3, 3, padding="same", ops=backend, dtype=np.float64, seed=3)
    td = TimeDistributed(conv)
    words = Spans.from_lengths([4, 2, 1], W)
    inner = np.array([[5, 3, 1, 2], [4, 2, 0, 0], [1, 0, 0, 0]])  # chars per word
    x = np.random.default_rng(2).normal(size=(3, W, S, I))
    real_chars = np.arange(S)[None, None, :] < inner[..., None]
    xn = np.where((real_chars & words.mask()[..., None])[..., None], x, np.nan)
    y, back = td.forward(xn, words, train=False, inner_mask=inner)
    assert y.shape == (3, W, S, 3)
    assert np.isfinite(y).all()
    single, _ = conv.forward(x[0, 1][None], Spans.from_lengths([3], S), train=False)
    np.testing.assert_allclose(y[0, 1], single[0], rtol=1e-12)
    assert (y[1, 2:] == 0).all()  # padded words: no real character, 0 (the bias is 0)
    dx, R = layer_grads_match(td, x, lambda layer, v: layer.forward(v, words, inner_mask=inner), get_ops(backend))
    assert (np.asarray(dx)[~(real_chars & words.mask()[..., None])] == 0).all()


def test_time_distributed_refusals():
    with pytest.raises(TaggerError, match="wraps a layer"):
        TimeDistributed("dense")
    td = TimeDistributed(Conv1D(2, 3, ops="reference"))
    with pytest.raises(TaggerError, match="inner_mask must be"):
        td.forward(np.ones((2, 3, 4, 2), np.float32), None, inner_mask=np.ones((2, 4), int))


def test_configs_rebuild_the_layers():
    conv = Conv1D(4, 3, padding="same", activation="tanh", use_bias=False, name="c", seed=5)
    again = Conv1D.from_config(conv.get_config())
    assert again.get_config() == conv.get_config()
    td = TimeDistributed(Dense(3, name="d"), name="td")
    rebuilt = TimeDistributed.from_config(td.get_config())
    assert rebuilt.get_config() == td.get_config() and isinstance(rebuilt.layer, Dense)
