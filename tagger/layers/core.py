"""Embedding, Dense and Dropout.

Legend: B batch, T timesteps, V vocabulary, E embedding width, I input width, K units.
"""
from __future__ import annotations

import numpy as np

from tagger.errors import TaggerError
from tagger.ops.reference import ACTIVATIONS

from .base import Layer, as_mask, glorot_uniform, uniform


class Embedding(Layer):
    """ids (B, T) int -> vectors (B, T, E). Keras' Embedding.

    mask_zero=True: id 0 is padding; the layer emits the mask `ids != 0` for the layers
    after it, and row 0 never receives a gradient. The gradient is a scatter-add into the
    touched rows only; `grad_rows[0]` lists them so lazy optimisers update just those.
    trainable=False freezes the table (pretrained vectors).
    """

    def __init__(self, input_dim, output_dim, mask_zero=True, weights=None, **kwargs):
        super().__init__(**kwargs)
        self.input_dim = int(input_dim)
        self.output_dim = int(output_dim)
        self.mask_zero = mask_zero
        self.initial_weights = weights

    def build(self, input_shape):
        table = uniform(self.rng, (self.input_dim, self.output_dim))
        if self.initial_weights is not None:
            table = np.asarray(self.initial_weights)
            if table.shape != (self.input_dim, self.output_dim):
                raise TaggerError(
                    f"embedding weights have shape {table.shape}, expected {(self.input_dim, self.output_dim)}"
                )
        self.add_weight("embeddings", table)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def compute_mask(self, x, mask):
        if not self.mask_zero:
            return mask
        return np.asarray(self.ops.to_numpy(x)) != 0

    def forward(self, x, mask=None, train=True):
        self.check_input(x, (2,), "token ids of shape (batch, timesteps)")
        self.ensure_built(tuple(x.shape))
        ids = np.asarray(self.ops.to_numpy(x))
        if ids.size and (ids.min() < 0 or ids.max() >= self.input_dim):
            raise TaggerError(f"layer {self.name!r}: token id out of range 0..{self.input_dim - 1}")
        # ids stay on the host too: validation, masks and the scatter-add's ordering use them
        y = self.ops.embedding_forward(self.params[0], self.ops.asarray(ids))
        B, T = ids.shape
        real = as_mask(mask, B, T) if mask is not None else None
        if self.mask_zero:
            real = (ids != 0) if real is None else (real & (ids != 0))

        def backprop(dy):
            if self.trainable:
                rows = self.ops.embedding_backward(self.grads[0], dy, ids, real)
                rows = np.asarray(rows)
                prev = self.grad_rows[0]
                self.grad_rows[0] = rows if prev is None else np.union1d(prev, rows)
            return None

        return y, backprop


class Dense(Layer):
    """y = activation(x @ kernel + bias) on (N, I) or (B, T, I) input, like Keras."""

    def __init__(self, units, activation=None, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        if activation not in (None, *ACTIVATIONS):
            raise TaggerError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        self.units = int(units)
        self.activation = activation or "linear"
        self.use_bias = use_bias

    def build(self, input_shape):
        fan_in = input_shape[-1]
        self.add_weight("kernel", glorot_uniform(self.rng, (fan_in, self.units)))
        self.add_weight("bias", np.zeros(self.units))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def forward(self, x, mask=None, train=True):
        self.check_input(x, (2, 3), "input of shape (batch, features) or (batch, timesteps, features)")
        self.ensure_built(tuple(x.shape))
        if tuple(x.shape)[-1] != self.params[0].shape[0]:
            raise TaggerError(f"layer {self.name!r} expects {self.params[0].shape[0]} features, got {tuple(x.shape)[-1]}")
        ops = self.ops
        z = ops.dense_forward(x, self.params[0], self.params[1])
        y = ops.activation_forward(z, self.activation)

        def backprop(dy):
            dz = ops.activation_backward(dy, y, self.activation)
            return ops.dense_backward(dz, x, self.params[0], self.grads[0], self.grads[1])

        return y, backprop


class Dropout(Layer):
    """Inverted dropout at training time; identity at inference. Seeded per call."""

    def __init__(self, rate, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise TaggerError(f"dropout rate must be in [0, 1), got {rate}")
        self.rate = float(rate)

    def forward(self, x, mask=None, train=True):
        self.ensure_built(tuple(x.shape))
        if not train or self.rate == 0.0:
            return x, lambda dy: dy
        keep = self.ops.dropout_mask(tuple(x.shape), self.rate, self.next_seed(), self.dtype)
        y = self.ops.mul(x, keep)
        return y, lambda dy: self.ops.mul(dy, keep)
