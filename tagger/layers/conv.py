"""Conv1D: Keras' 1-D convolution over (B, T, I), padding-aware, over ops.conv1d_forward/backward.

Legend: B batch, T timesteps, I input channels, F filters, Kw kernel_size,
To = T ('same') or T - Kw + 1 ('valid').

    kernel (Kw, I, F), bias (F,)      Keras' layout and initialisers (glorot_uniform
                                      with Keras' fans for a conv kernel, zeros)
    (B, T, I) -> (B, To, F)           stride 1, dilation 1; padding 'valid' (Keras' default)
                                      or 'same'; 'causal' is not supported

Each row's real steps (its span) are convolved as if they were the whole sequence, so
padded steps never reach a real output (the rule of tagger/ops/_conv_reference.py; equal
to Keras on post-padded rows whose padding is zero). The output carries the spans of
conv1d_output_spans: the input's for 'same', shortened by Kw - 1 for 'valid'. Outside
them the output holds activation(0) (0 for linear, relu and tanh) and is never read by a
span-aware layer after it.
"""
from __future__ import annotations

import numpy as np

from tagger.errors import TaggerError
from tagger.ops._conv_reference import PADDINGS, conv1d_output_length, conv1d_output_spans
from tagger.ops.reference import ACTIVATIONS
from tagger.spans import Spans

from .base import Layer, spans_of


def conv_glorot_uniform(rng, shape):
    """Keras' GlorotUniform for a (Kw, I, F) kernel: fans scaled by the receptive field."""
    receptive = int(np.prod(shape[:-2]))
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


class Conv1D(Layer):
    """y = activation(conv1d(x, kernel) + bias) over each row's real steps. Keras' Conv1D."""

    config_keys = ("filters", "kernel_size", "padding", "activation", "use_bias")

    def __init__(self, filters, kernel_size, padding="valid", activation=None, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        if isinstance(kernel_size, (tuple, list)):
            if len(kernel_size) != 1:
                raise TaggerError(f"Conv1D kernel_size must be an int or a 1-tuple, got {kernel_size!r}")
            kernel_size = kernel_size[0]
        if int(filters) < 1 or int(kernel_size) < 1:
            raise TaggerError(f"Conv1D filters and kernel_size must be >= 1, got {filters} and {kernel_size}")
        if padding not in PADDINGS:
            raise TaggerError(f"Conv1D padding must be one of {', '.join(PADDINGS)} ('causal' is not supported), got {padding!r}")
        if activation not in (None, *ACTIVATIONS):
            raise TaggerError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.padding = padding
        self.activation = activation or "linear"
        self.use_bias = bool(use_bias)

    def build(self, input_shape):
        I = input_shape[-1]
        if I is None:
            raise TaggerError(f"layer {self.name!r} needs the channel count of its input")
        self.add_weight("kernel", conv_glorot_uniform(self.rng, (self.kernel_size, int(I), self.filters)))
        if self.use_bias:
            self.add_weight("bias", np.zeros(self.filters))

    def compute_output_shape(self, input_shape):
        B, T = input_shape[0], input_shape[1]
        To = None if T is None else conv1d_output_length(T, self.kernel_size, self.padding)
        return (B, To, self.filters)

    def output_spans(self, spans):
        if spans is None:
            return None
        To = conv1d_output_length(spans.timesteps, self.kernel_size, self.padding)
        starts, lengths = conv1d_output_spans(spans.starts, spans.lengths, spans.timesteps, self.kernel_size, self.padding)
        return Spans(starts, lengths, To)

    def call(self, x, spans, train):
        self.check_input(x, (3,), "input of shape (batch, timesteps, channels)")
        self.ensure_built(tuple(x.shape))
        if int(x.shape[-1]) != int(self.params[0].shape[1]):
            raise TaggerError(f"layer {self.name!r} expects {self.params[0].shape[1]} channels, got {x.shape[-1]}")
        ops = self.ops
        starts, lengths = spans_of(spans, tuple(x.shape))
        kernel = self.params[0]
        bias = self.params[1] if self.use_bias else None
        z = ops.conv1d_forward(x, kernel, bias, starts, lengths, self.padding)
        y = ops.activation_forward(z, self.activation)

        def backprop(dy):
            dz = ops.activation_backward(dy, y, self.activation)
            dbias = self.grads[1] if self.use_bias else None
            return ops.conv1d_backward(dz, x, kernel, starts, lengths, self.padding, self.grads[0], dbias)

        return y, backprop
