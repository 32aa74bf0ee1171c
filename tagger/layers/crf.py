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

The numerics are the ops crf_nll, crf_marginals, crf_viterbi and crf_nbest of the layer's backend
(reference: NumPy, the spec in tagger/ops/_crf_reference.py, with the score, the loss and
its gradient written out; cpu: njit kernels; cuda: numba.cuda kernels on device arrays).

Tag grammar: loss, decode, marginals and nbest take `allowed`, the (start_ok (K,), trans_ok
(K, K), end_ok (K,)) masks of tagger.data.schemes.allowed_transitions, or None. The ops see
it as weights with the forbidden entries replaced (tagger.ops._crf_reference.constrained):
-inf for decoding, FORBIDDEN (-1e4) for the nll and the marginals. See docs/crf.md.
"""
from __future__ import annotations

import numpy as np

from tagger.errors import TaggerError
from tagger.ops._crf_reference import FORBIDDEN, constrained, weight_masks
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

    def _weights(self, allowed, fill):
        """transitions, start, end as the ops take them: the layer's own, or with `fill` at
        the entries the tag grammar `allowed` forbids (masked host copies moved to the
        backend: K x K is tiny)."""
        if allowed is None:
            return self.params
        host = [self.ops.to_numpy(p) for p in self.params]
        return [self.ops.asarray(w, dtype=self.dtype) for w in constrained(*host, allowed, fill)]

    def loss(self, emissions, labels, spans, allowed=None):
        """(mean negative log-likelihood per real token: float, d_emissions (B, T, K) as a
        backend array). Accumulates the gradients of transitions, start and end into
        self.grads (on the backend: device arrays on cuda, no host copies).

        allowed: the tag grammar (start_ok, trans_ok, end_ok), or None. With it, the nll of
        the constrained model (forbidden entries scored FORBIDDEN); the forbidden entries
        are then no parameters of the model, and their gradients are set to exactly 0."""
        E, sp = self._inputs(emissions, spans)
        grads = self.grads if self.trainable else [self.ops.zeros(tuple(p.shape), self.dtype) for p in self.params]
        out = self.ops.crf_nll(E, labels, sp.starts, sp.lengths, *self._weights(allowed, FORBIDDEN), *grads)
        if allowed is not None:
            for g, ok in zip(grads, weight_masks(allowed)):
                # the entries as rows of an (n, 1) view, so fill_'s row form reaches them in place
                forbidden = np.flatnonzero(~ok.ravel())
                if forbidden.size:
                    self.ops.fill_(g.reshape(-1, 1), 0.0, rows=forbidden)
        return out

    def decode(self, emissions, spans, allowed=None):
        """Viterbi best paths (B, T) int64 NumPy, 0 at padded steps; within the tag grammar
        `allowed` (forbidden entries -inf) when given."""
        E, sp = self._inputs(emissions, spans)
        return self.ops.crf_viterbi(E, sp.starts, sp.lengths, *self._weights(allowed, -np.inf))[0]

    def marginals(self, emissions, spans, allowed=None):
        """Per-token tag marginals p(y_t = j | x) (B, T, K) NumPy, 0 at padded steps; those
        of the constrained model (forbidden entries FORBIDDEN) when `allowed` is given.
        At most 1: in float32, exp(alpha + beta - logZ) of a near-certain tag can round to
        a few ulp above it (alpha, beta and logZ are ~100 with an ulp of ~8e-6)."""
        E, sp = self._inputs(emissions, spans)
        P = self.ops.crf_marginals(E, sp.starts, sp.lengths, *self._weights(allowed, FORBIDDEN))
        return np.minimum(np.asarray(self.ops.to_numpy(P)), 1)

    def nbest(self, emissions, spans, k, allowed=None):
        """The k best paths of each row: (paths (B, k, T) int64, scores (B, k), logZ (B,)) as
        NumPy, best first; a row with fewer than k paths (within `allowed`) has score -inf
        for the rest. p(path | x) = exp(score - logZ)."""
        E, sp = self._inputs(emissions, spans)
        return self.ops.crf_nbest(E, sp.starts, sp.lengths, *self._weights(allowed, -np.inf), k)
