"""Import and export PyTorch `nn.LSTM` weights in our (Keras) layout.

PyTorch, per layer L and direction (suffix '' or '_reverse'):
    weight_ih_lL (4H, I), weight_hh_lL (4H, H), bias_ih_lL (4H,), bias_hh_lL (4H,)
    gate order i, f, g, o  -- the same order as Keras' i, f, c, o (g is the candidate)
Ours: kernel (I, 4H) = weight_ih.T, recurrent_kernel (H, 4H) = weight_hh.T,
      bias (4H,) = bias_ih + bias_hh (one bias; export puts it all in bias_ih).
PyTorch's reverse direction, like ours, starts at each sequence's last real token (packed
input) and its outputs are aligned with the input steps, so no flipping is needed.
No torch import: pass tensors or arrays (anything np.asarray accepts, or a tensor with
.detach().cpu().numpy()).
"""
from __future__ import annotations

import numpy as np

from tagger.errors import TaggerError


def _array(value):
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _suffix(layer, reverse):
    return f"_l{layer}" + ("_reverse" if reverse else "")


def lstm_from_torch(state, layer=0, reverse=False):
    """[kernel, recurrent_kernel, bias] from a PyTorch LSTM state dict."""
    sfx = _suffix(layer, reverse)
    names = [f"weight_ih{sfx}", f"weight_hh{sfx}", f"bias_ih{sfx}", f"bias_hh{sfx}"]
    missing = [n for n in names if n not in state]
    if missing:
        raise TaggerError(f"PyTorch LSTM state has no {', '.join(missing)} (keys: {', '.join(sorted(state))})")
    w_ih, w_hh, b_ih, b_hh = (_array(state[n]) for n in names)
    G, H = w_hh.shape
    if G != 4 * H or w_ih.shape[0] != G or b_ih.shape != (G,) or b_hh.shape != (G,):
        raise TaggerError(
            f"PyTorch LSTM{sfx} shapes do not fit: weight_ih {w_ih.shape}, weight_hh {w_hh.shape}, "
            f"bias_ih {b_ih.shape}, bias_hh {b_hh.shape}"
        )
    return [np.ascontiguousarray(w_ih.T), np.ascontiguousarray(w_hh.T), b_ih + b_hh]


def lstm_to_torch(weights, layer=0, reverse=False):
    """A PyTorch state dict (NumPy values) from [kernel, recurrent_kernel, bias]."""
    kernel, recurrent, bias = (np.asarray(w) for w in weights)
    sfx = _suffix(layer, reverse)
    return {
        f"weight_ih{sfx}": np.ascontiguousarray(kernel.T),
        f"weight_hh{sfx}": np.ascontiguousarray(recurrent.T),
        f"bias_ih{sfx}": bias.copy(),
        f"bias_hh{sfx}": np.zeros_like(bias),
    }


def bidirectional_from_torch(state, layer=0):
    """The six arrays of a Bidirectional(LSTM) (forward then backward) from PyTorch."""
    return lstm_from_torch(state, layer, False) + lstm_from_torch(state, layer, True)


def bidirectional_to_torch(weights, layer=0):
    weights = list(weights)
    return {**lstm_to_torch(weights[:3], layer, False), **lstm_to_torch(weights[3:], layer, True)}
