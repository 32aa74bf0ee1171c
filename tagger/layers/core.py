"""Embedding, Dense and Dropout.

Legend: B batch, T timesteps, V vocabulary, E embedding width, I input width, K units.
"""
from __future__ import annotations

import numpy as np

from tagger.errors import TaggerError
from tagger.ops.reference import ACTIVATIONS

from tagger.spans import Spans

from .base import Layer, get_initializer


class Embedding(Layer):
    """ids (B, T) int -> vectors (B, T, E). Keras' Embedding.

    mask_zero=True: id 0 is padding. Given no spans, the layer derives them from `ids != 0`
    (one run of real ids per row) for the layers after it; given spans (a batch's), it
    uses them as they are. Padded positions and id 0 never receive a gradient. The
    gradient is a scatter-add into the touched rows only; `grad_rows[0]` lists them so
    lazy optimisers update just those. trainable=False freezes the table (pretrained
    vectors). embeddings_initializer: a Keras name (default "uniform", +-0.05) or a
    callable; `weights` (V, E) replaces the drawn table.
    """

    config_keys = ("input_dim", "output_dim", "mask_zero", "embeddings_initializer")

    def __init__(self, input_dim, output_dim, mask_zero=True, weights=None, embeddings_initializer="uniform", **kwargs):
        super().__init__(**kwargs)
        get_initializer(embeddings_initializer, "Embedding embeddings_initializer")
        self.input_dim = int(input_dim)
        self.output_dim = int(output_dim)
        self.mask_zero = mask_zero
        self.initial_weights = weights
        self.embeddings_initializer = embeddings_initializer

    def build(self, input_shape):
        table = get_initializer(self.embeddings_initializer, "embeddings")(self.rng, (self.input_dim, self.output_dim))
        if self.initial_weights is not None:
            table = np.asarray(self.initial_weights)
            if table.shape != (self.input_dim, self.output_dim):
                raise TaggerError(
                    f"embedding weights have shape {table.shape}, expected {(self.input_dim, self.output_dim)}"
                )
        self.add_weight("embeddings", table)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def spans_from_ids(self, ids) -> Spans | None:
        """The spans `ids != 0` describe (mask_zero), or None without mask_zero."""
        if not self.mask_zero:
            return None
        ids = np.asarray(self.ops.to_numpy(ids))
        return Spans.from_mask(ids != 0, *ids.shape)

    def call(self, x, spans, train):
        self.check_input(x, (2,), "token ids of shape (batch, timesteps)")
        self.ensure_built(tuple(x.shape))
        # the ids stay on the host: validation and the scatter-add's ordering use them;
        # only the lookup sees a device copy
        ids = np.asarray(self.ops.to_numpy(x))
        if ids.size and (ids.min() < 0 or ids.max() >= self.input_dim):
            raise TaggerError(f"layer {self.name!r}: token id out of range 0..{self.input_dim - 1}")
        y = self.ops.embedding_forward(self.params[0], self.ops.asarray(ids))
        if spans is None:
            spans = self.spans_from_ids(ids)
        real = None if spans is None else spans.mask()
        if self.mask_zero:
            real = (ids != 0) if real is None else (real & (ids != 0))

        def backprop(dy):
            if self.trainable:
                rows = np.asarray(self.ops.embedding_backward(self.grads[0], dy, ids, real))
                prev = self.grad_rows[0]
                self.grad_rows[0] = rows if prev is None else np.union1d(prev, rows)
            return None

        return y, backprop


class Dense(Layer):
    """y = activation(x @ kernel + bias) on (N, I) or (B, T, I) input, like Keras.

    use_bias=False: no bias weight (one weight, as in Keras). kernel_initializer /
    bias_initializer: Keras names or callables (glorot_uniform / zeros by default).
    """

    config_keys = ("units", "activation", "use_bias", "kernel_initializer", "bias_initializer")

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        if activation not in (None, *ACTIVATIONS):
            raise TaggerError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        for what, init in (("kernel_initializer", kernel_initializer), ("bias_initializer", bias_initializer)):
            get_initializer(init, f"Dense {what}")
        self.units = int(units)
        self.activation = activation or "linear"
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer

    def build(self, input_shape):
        fan_in = input_shape[-1]
        self.add_weight("kernel", get_initializer(self.kernel_initializer, "kernel")(self.rng, (fan_in, self.units)))
        if self.use_bias:
            self.add_weight("bias", get_initializer(self.bias_initializer, "bias")(self.rng, (self.units,)))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def call(self, x, spans, train):
        self.check_input(x, (2, 3), "input of shape (batch, features) or (batch, timesteps, features)")
        self.ensure_built(tuple(x.shape))
        if tuple(x.shape)[-1] != self.params[0].shape[0]:
            raise TaggerError(f"layer {self.name!r} expects {self.params[0].shape[0]} features, got {tuple(x.shape)[-1]}")
        ops = self.ops
        bias, dbias = (self.params[1], self.grads[1]) if self.use_bias else (None, None)
        z = ops.dense_forward(x, self.params[0], bias)
        y = ops.activation_forward(z, self.activation)

        def backprop(dy):
            dz = ops.activation_backward(dy, y, self.activation)
            return ops.dense_backward(dz, x, self.params[0], self.grads[0], dbias)

        return y, backprop


class Dropout(Layer):
    """Inverted dropout at training time; identity at inference. Seeded per call."""

    config_keys = ("rate",)

    def __init__(self, rate, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise TaggerError(f"dropout rate must be in [0, 1), got {rate}")
        self.rate = float(rate)

    def call(self, x, spans, train):
        self.ensure_built(tuple(x.shape))
        if not train or self.rate == 0.0:
            return x, lambda dy: dy
        keep = self.ops.dropout_mask(tuple(x.shape), self.rate, self.next_seed(), self.dtype)
        y = self.ops.mul(x, keep)
        return y, lambda dy: self.ops.mul(dy, keep)
