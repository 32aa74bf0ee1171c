"""Global pooling over time, mask-aware: Keras' GlobalMaxPooling1D and GlobalAveragePooling1D.

Legend: B batch, T timesteps, F features.

    (B, T, F) -> (B, F): the max or the mean over each sequence's real steps.

The spans (a batch's, or an Embedding's with mask_zero=True, passed on by a
return_sequences LSTM or Bidirectional) are the same (starts, lengths) as everywhere
else, so pre- and post-padding follow one rule: padded steps never win the max and never count in the mean, whatever
they hold. A row with no real step pools to 0 (Keras' mean gives NaN there). No weights;
the output carries no mask.
"""
from __future__ import annotations

from .base import Layer, spans_of


class _GlobalPooling1D(Layer):
    mode: str = ""

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def output_spans(self, spans):
        return None

    def call(self, x, spans, train):
        self.check_input(x, (3,), "input of shape (batch, timesteps, features)")
        self.ensure_built(tuple(x.shape))
        T = tuple(x.shape)[1]
        starts, lengths = spans_of(spans, tuple(x.shape))
        ops = self.ops
        y, argmax = ops.pool_forward(x, starts, lengths, self.mode)

        def backprop(dy):
            return ops.pool_backward(dy, argmax, starts, lengths, T, self.mode)

        return y, backprop


class GlobalMaxPooling1D(_GlobalPooling1D):
    """y[b, f] = max over the real steps t of x[b, t, f] (the gradient goes to that step)."""

    mode = "max"


class GlobalAveragePooling1D(_GlobalPooling1D):
    """y[b, f] = mean over the real steps t of x[b, t, f]."""

    mode = "mean"
