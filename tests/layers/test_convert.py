"""PyTorch nn.LSTM weights imported into our layout, checked against a NumPy
transcription of PyTorch's documented equations (no torch needed)."""
import numpy as np
import pytest

from tagger.errors import TaggerError
from tagger.layers import LSTM, Bidirectional
from tagger.layers.convert import bidirectional_from_torch, bidirectional_to_torch, lstm_from_torch


def sig(x):
    return 1 / (1 + np.exp(-x))


def torch_lstm_numpy(x, w_ih, w_hh, b_ih, b_hh):
    """PyTorch docs: i,f,g,o = chunks of W_ih x + b_ih + W_hh h + b_hh (in that order)."""
    H = w_hh.shape[1]
    h = np.zeros(H)
    c = np.zeros(H)
    out = []
    for xt in x:
        z = w_ih @ xt + b_ih + w_hh @ h + b_hh
        i, f, g, o = sig(z[:H]), sig(z[H : 2 * H]), np.tanh(z[2 * H : 3 * H]), sig(z[3 * H :])
        c = f * c + i * g
        h = o * np.tanh(c)
        out.append(h)
    return np.array(out), h, c


def torch_state(rng, I, H, reverse_too=True):
    state = {}
    for sfx in ["_l0"] + (["_l0_reverse"] if reverse_too else []):
        state[f"weight_ih{sfx}"] = rng.normal(size=(4 * H, I))
        state[f"weight_hh{sfx}"] = rng.normal(size=(4 * H, H))
        state[f"bias_ih{sfx}"] = rng.normal(size=4 * H)
        state[f"bias_hh{sfx}"] = rng.normal(size=4 * H)
    return state


def test_bidirectional_import_matches_pytorch_equations(backend):
    rng = np.random.default_rng(0)
    I, H, T = 3, 4, 5
    state = torch_state(rng, I, H)
    X = rng.normal(size=(3, T, I))
    lengths = np.array([5, 2, 1])  # packed-sequence semantics
    layer = Bidirectional(LSTM(H, return_sequences=True, ops=backend, dtype=np.float64))
    layer.ensure_built((None, T, I))
    layer.set_weights(bidirectional_from_torch(state))
    Y = layer(X, mask=lengths)
    for b, n in enumerate(lengths):
        fw, _, _ = torch_lstm_numpy(X[b, :n], *(state[k] for k in ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]))
        rv, _, _ = torch_lstm_numpy(X[b, :n][::-1], *(state[k + "_reverse"] for k in ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]))
        np.testing.assert_allclose(Y[b, :n], np.concatenate([fw, rv[::-1]], axis=1), rtol=1e-10)
        assert (Y[b, n:] == 0).all()


def test_export_round_trip_keeps_the_function():
    rng = np.random.default_rng(1)
    state = torch_state(rng, 2, 3)
    weights = bidirectional_from_torch(state)
    again = bidirectional_from_torch(bidirectional_to_torch(weights))
    for a, b in zip(weights, again):
        np.testing.assert_allclose(a, b)


def test_missing_key_is_a_clear_error():
    with pytest.raises(TaggerError, match="weight_hh_l0"):
        lstm_from_torch({"weight_ih_l0": np.zeros((8, 2))})
