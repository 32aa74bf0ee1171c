"""Linear-chain CRF output layer: learned tag transitions, Viterbi decoding, marginals.

Legend
------
    B  batch            T  timesteps (padded)     K  tags
    emissions  (B, T, K)  per-token tag scores from the layer below (Dense "output")
    labels     (B, T) int gold tags (values at padded steps are ignored)
    spans      tagger.spans.Spans: row b occupies steps starts[b] .. starts[b] + lengths[b] - 1
               (pre- or post-padding, the one masking rule); a (B,) lengths array means
               post-padding, a (B, T) bool mask one run of real steps per row
    weights    transitions (K, K) [from tag i to tag j], start (K,), end (K,)

The numerics are the ops crf_nll, crf_marginals and crf_viterbi of the layer's backend
(reference: NumPy, the spec in tagger/ops/_crf_reference.py, with the score, the loss and
its gradient written out; cpu: njit kernels; cuda: numba.cuda kernels on device arrays).
"""
from __future__ import annotations

import numpy as np

from tagger.errors import TaggerError
from tagger.spans import Spans

from .base import Layer, uniform


class CRF(Layer):
    """Linear-chain CRF over per-token tag scores (B, T, K), like keras-contrib's CRF.

    Weights: `transitions` (K, K) [from tag i to tag j], `start` (K,), `end` (K,);
    initializer "zeros" (the default: before training, decoding equals the per-token
    argmax and the marginals equal the softmax) or "uniform" (+-0.05, seeded).

    In a Sequential the layer passes its input through unchanged (the mask too), so the
    network still outputs the emissions and summary() lists the K*K + 2K weights; the
    CRF itself runs through `loss`, `decode` and `marginals`, which take the emissions
    and their spans, on the layer's ops backend: on cuda the emissions, the gradient and
    the weight gradients stay on the device (only the per-sentence losses and the
    decoded paths come back).
    """

    INITIALIZERS = ("zeros", "uniform")
    config_keys = ("units", "initializer")

    def __init__(self, units, initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        if initializer not in self.INITIALIZERS:
            raise TaggerError(f"unknown CRF initializer {initializer!r}; choose one of {', '.join(self.INITIALIZERS)}")
        self.units = int(units)
        self.initializer = initializer

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise TaggerError(f"layer {self.name!r} expects tag scores of shape (batch, timesteps, tags), got {tuple(input_shape)}")
        if input_shape[-1] is not None and input_shape[-1] != self.units:
            raise TaggerError(f"layer {self.name!r} has {self.units} tags but its input has {input_shape[-1]} scores per token")
        K = self.units
        init = (lambda shape: np.zeros(shape)) if self.initializer == "zeros" else (lambda shape: uniform(self.rng, shape))
        self.add_weight("transitions", init((K, K)))
        self.add_weight("start", init((K,)))
        self.add_weight("end", init((K,)))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, x, spans, train):
        self.check_input(x, (3,), "tag scores of shape (batch, timesteps, tags)")
        self.ensure_built(tuple(x.shape))
        if tuple(x.shape)[-1] != self.units:
            raise TaggerError(f"layer {self.name!r} has {self.units} tags, got {tuple(x.shape)[-1]} scores per token")
        return x, lambda dy: dy

    # -- the CRF proper, on the layer's ops backend ------------------------------------
    def _inputs(self, emissions, spans):
        """Emissions as a backend array in the layer's dtype, and their Spans."""
        self.ensure_built((None, None, self.units))  # used on its own, outside a Sequential
        E = self.ops.asarray(emissions, dtype=self.dtype)
        shape = tuple(E.shape)
        if len(shape) != 3 or shape[-1] != self.units:
            raise TaggerError(f"layer {self.name!r} expects emissions (batch, timesteps, {self.units}), got {shape}")
        return E, Spans.from_mask(spans, shape[0], shape[1])

    def loss(self, emissions, labels, spans):
        """(mean negative log-likelihood per real token: float, d_emissions (B, T, K) as a
        backend array). Accumulates the gradients of transitions, start and end into
        self.grads (on the backend: device arrays on cuda, no host copies)."""
        E, sp = self._inputs(emissions, spans)
        grads = self.grads if self.trainable else [self.ops.zeros(tuple(p.shape), self.dtype) for p in self.params]
        return self.ops.crf_nll(E, labels, sp.starts, sp.lengths, *self.params, *grads)

    def decode(self, emissions, spans):
        """Viterbi best paths (B, T) int64 NumPy, 0 at padded steps."""
        E, sp = self._inputs(emissions, spans)
        return self.ops.crf_viterbi(E, sp.starts, sp.lengths, *self.params)[0]

    def marginals(self, emissions, spans):
        """Per-token tag marginals p(y_t = j | x) (B, T, K) NumPy, 0 at padded steps."""
        E, sp = self._inputs(emissions, spans)
        return np.asarray(self.ops.to_numpy(self.ops.crf_marginals(E, sp.starts, sp.lengths, *self.params)))
