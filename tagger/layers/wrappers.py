"""TimeDistributed: Keras' wrapper applying one layer to every timestep of (B, T, ...).

Legend: B batch, T outer timesteps (e.g. words), S the inner axis of the wrapped layer's
input (e.g. characters), "..." the remaining per-timestep shape.

    x (B, T, ...)  --reshape-->  (B*T, ...)  --layer-->  (B*T, ...')  --reshape-->  (B, T, ...')

Row b*T + t of the inner batch is timestep t of row b. Two paddings, one rule each:
  * outer `spans` (over T; a Keras mask (B, T) is accepted) are passed on unchanged
    (Keras: the output keeps the input's mask);
  * `inner_mask`, the padding along S of every timestep: (B, T) lengths (post-padding) or
    a (B, T, S) boolean mask, or a Spans of B*T rows over S. It is handed to the wrapped
    layer, with the rows of padded outer timesteps set to length 0 so nothing they hold
    is read. Without it the wrapped layer sees no inner padding.
Like Keras, the wrapped layer runs on padded timesteps too (their outputs are what it
gives a row with no real step: 0 for Conv1D + pooling, the bias for a Dense) and the
outer spans tell the next layer to skip them. Reshapes only, so device arrays stay on
the device.
"""
from __future__ import annotations

import numpy as np

from tagger.errors import TaggerError
from tagger.spans import Spans

from .base import Layer, as_spans


def _inner_spans(inner_mask, outer, B, T, S):
    """Spans of the B*T inner rows over S, with padded outer timesteps emptied."""
    if isinstance(inner_mask, Spans):
        if (inner_mask.batch, inner_mask.timesteps) != (B * T, S):
            raise TaggerError(f"inner spans for {(inner_mask.batch, inner_mask.timesteps)} given to {B * T} rows of {S} steps")
        inner = inner_mask
    else:
        mask = np.asarray(inner_mask)
        if mask.shape not in ((B, T), (B, T, S)):
            raise TaggerError(f"inner_mask must be (batch, timesteps) lengths or a (batch, timesteps, {S}) mask, got shape {mask.shape}")
        inner = Spans.from_mask(mask.reshape(B * T, *mask.shape[2:]), B * T, S)
    if outer is None:
        return inner
    real = outer.mask().reshape(-1)
    return Spans(np.where(real, inner.starts, 0), np.where(real, inner.lengths, 0), S)


class TimeDistributed(Layer):
    """Apply `layer` to every timestep of a (B, T, ...) input; weights are the layer's."""

    def __init__(self, layer, **kwargs):
        if not isinstance(layer, Layer):
            raise TaggerError(f"TimeDistributed wraps a layer, got {type(layer).__name__}")
        kwargs.setdefault("ops", layer._ops)
        kwargs.setdefault("dtype", layer.dtype)
        super().__init__(**kwargs)
        self.layer = layer

    def get_config(self):
        from .sequential import serialize

        return {**super().get_config(), "layer": serialize(self.layer)}

    @classmethod
    def from_config(cls, config):
        from .sequential import deserialize

        config = dict(config)
        return cls(deserialize(config.pop("layer")), **config)

    def sublayers(self):
        # the weight-owning layers (Sequential.leaves() walks one level down)
        subs = self.layer.sublayers()
        return subs if subs else [self.layer]

    # weights live in the wrapped layer; these views are derived so they never go stale
    params = property(lambda self: self.layer.params, lambda self, v: None)
    grads = property(lambda self: self.layer.grads, lambda self, v: None)
    param_names = property(lambda self: self.layer.param_names, lambda self, v: None)
    grad_rows = property(lambda self: self.layer.grad_rows, lambda self, v: None)

    def zero_grad(self):
        self.layer.zero_grad()

    def set_weights(self, weights):
        self.layer.set_weights(weights)

    def build(self, input_shape):
        if len(input_shape) < 3:
            raise TaggerError(f"TimeDistributed needs an input of at least 3 dimensions (batch, timesteps, ...), got {input_shape}")
        self.layer.ops = self._ops
        self.layer.dtype = self.dtype
        self.layer.ensure_built((None, *input_shape[2:]))

    def compute_output_shape(self, input_shape):
        inner = self.layer.compute_output_shape((None, *input_shape[2:]))
        return (input_shape[0], input_shape[1], *inner[1:])

    def output_spans(self, spans):
        return spans

    def forward(self, x, spans=None, train=True, mask=None, inner_mask=None):
        """Layer.forward plus `inner_mask`, the padding along the wrapped layer's own axis."""
        return self.call(x, as_spans(spans if mask is None else mask, tuple(x.shape)), train, inner_mask)

    def call(self, x, spans, train, inner_mask=None):
        self.check_input(x, (3, 4, 5), "input of shape (batch, timesteps, ...)")
        self.ensure_built(tuple(x.shape))
        B, T, *rest = (int(n) for n in x.shape)
        inner = None
        if inner_mask is not None:
            if not rest:
                raise TaggerError("TimeDistributed: inner_mask needs an input with an inner axis (batch, timesteps, steps, ...)")
            inner = _inner_spans(inner_mask, spans, B, T, rest[0])
        y, back = self.layer.forward(x.reshape(B * T, *rest), inner, train)
        out = y.reshape(B, T, *tuple(y.shape)[1:])

        def backprop(dy):
            dx = back(dy.reshape(B * T, *tuple(dy.shape)[2:]))
            return None if dx is None else dx.reshape(B, T, *tuple(dx.shape)[1:])

        return out, backprop
