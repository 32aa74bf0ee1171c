"""Linear-chain CRF output layer: learned tag transitions, Viterbi decoding, marginals.

Legend
------
    B  batch            T  timesteps (padded)     K  tags
    E        (B, T, K)  emissions: per-token tag scores from the layer below (Dense "output")
    A        (K, K)     transitions: A[i, j] scores tag i at step t-1 followed by tag j at t
    s, e     (K,)       start / end: scores of the first / the last tag of a sentence
    y        (B, T) int gold tags (values at padded steps are ignored)
    lengths  (B,) int   row b occupies steps 0 .. lengths[b]-1 (post-padding); 0 allowed
    alpha    (B, T, K)  forward log-scores:  log sum over y_0..y_t with y_t = j of exp(score so far)
    beta     (B, T, K)  backward log-scores: log sum over y_{t+1}..y_{n-1} given y_t = i
    logZ     (B,)       log partition function; P (B, T, K) tag marginals p(y_t = j | x)
    `d`-prefix: gradient of the loss w.r.t. that array.

The score of a path y_0 .. y_{n-1} of a sentence of n tokens:

    score(y) = s[y_0] + sum_t E[t, y_t] + sum_{t >= 1} A[y_{t-1}, y_t] + e[y_{n-1}]
    p(y | x) = exp(score(y) - logZ),   logZ = log sum over all K^n paths of exp(score)

The loss is sum_b (logZ_b - score_b(y_b)) / N with N the number of real tokens: the same
scale as `softmax_xent` (a mean over real tokens), so learning rates carry over. Its
gradient, with xi the pairwise marginals p(y_{t-1} = i, y_t = j | x):

    dE[b, t, j] = (P[b, t, j] - [y_t = j]) / N                    0 at padded steps
    dA[i, j]    = sum_b sum_{1 <= t < n_b} (xi[b, t, i, j] - [y_{t-1} = i, y_t = j]) / N
    ds          = sum_b (P[b, 0] - onehot(y_0)) / N
    de          = sum_b (P[b, n_b - 1] - onehot(y_{n_b - 1})) / N

Everything runs in log space with max-shifted logsumexp, in the dtype of E, on host NumPy
arrays. Padding does not change any result: a row's recursion stops at its own last token
(whatever the padded emissions and labels hold), its marginals and gradient at padded
steps are exactly 0 and its decoded path there is 0. A length-0 row has loss 0, gradient
0 and an empty path.

Two implementations: the NumPy functions (crf_nll, crf_viterbi, crf_marginals: vectorised
over the batch, a Python loop over time; the executable spec, tested against brute-force
enumeration of all paths) and the njit kernels behind crf_*_fast (a loop over rows, steps
and tags in one compiled call; ~5x faster, about 1 ms per batch of 32 x 15 tokens and 17
tags), which the layer uses. They agree to rounding in float64; in float32 the kernels'
exp is a polynomial (tests/layers/test_crf.py checks both against float64).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from tagger.errors import TaggerError
from tagger.ops.cpu import _expneg

from .base import Layer, uniform

# cached, GIL released, and error_model="numpy" (no exception paths in the inner loops), as
# every kernel in tagger/ops/cpu.py; no fastmath
_JIT = dict(cache=True, nogil=True, error_model="numpy")


# ----------------------------------------------------------------------------------------
# NumPy reference


def _real_steps(E, lengths):
    """(E with padded steps zeroed, mask (B, T) bool): padding never reaches a result."""
    mask = np.arange(E.shape[1])[None, :] < np.asarray(lengths)[:, None]
    return np.where(mask[:, :, None], E, 0).astype(E.dtype), mask


def _logsumexp(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.exp(x - m).sum(axis=axis))


def crf_forward_backward(E, lengths, A, s, e):
    """(logZ (B,), alpha (B, T, K), beta (B, T, K)); rows keep their last value past their end."""
    B, T, K = E.shape
    E, _ = _real_steps(E, lengths)
    alpha = np.zeros((B, T, K), dtype=E.dtype)
    beta = np.zeros((B, T, K), dtype=E.dtype)
    if T == 0:
        return np.zeros(B, dtype=E.dtype), alpha, beta
    a = s[None, :] + E[:, 0]  # (B, K)
    alpha[:, 0] = a
    for t in range(1, T):
        nxt = _logsumexp(a[:, :, None] + A[None, :, :], axis=1) + E[:, t]  # (B, K): over i
        a = np.where((t < lengths)[:, None], nxt, a)
        alpha[:, t] = a
    logZ = _logsumexp(a + e[None, :], axis=1)
    b = np.broadcast_to(e, (B, K)).astype(E.dtype)
    beta[:, T - 1] = b
    for t in range(T - 2, -1, -1):
        nxt = _logsumexp(A[None, :, :] + (E[:, t + 1] + b)[:, None, :], axis=2)  # (B, K): over j
        b = np.where((t + 1 < lengths)[:, None], nxt, b)
        beta[:, t] = b
    real = lengths > 0
    return np.where(real, logZ, 0).astype(E.dtype), alpha, beta


def crf_score(E, y, lengths, A, s, e):
    """score(y) (B,) of the given tag paths; 0 for a length-0 row."""
    B, T, K = E.shape
    E, mask = _real_steps(E, lengths)
    y = np.where(mask, y, 0).astype(np.int64)
    rows = np.arange(B)
    total = (np.take_along_axis(E, y[:, :, None], axis=2)[:, :, 0] * mask).sum(axis=1)
    if T > 1:
        total = total + (A[y[:, :-1], y[:, 1:]] * mask[:, 1:]).sum(axis=1)
    last = y[rows, np.maximum(lengths - 1, 0)]
    total = total + s[y[:, 0]] + e[last]
    return np.where(lengths > 0, total, 0).astype(E.dtype)


def crf_marginals(E, lengths, A, s, e):
    """P (B, T, K): p(y_t = j | x); rows sum to 1 at real steps, 0 at padded steps."""
    logZ, alpha, beta = crf_forward_backward(E, lengths, A, s, e)
    mask = np.arange(E.shape[1])[None, :] < lengths[:, None]
    return np.exp(alpha + beta - logZ[:, None, None]) * mask[:, :, None]


def crf_nll(E, y, lengths, A, s, e):
    """(loss, dE (B, T, K), dA (K, K), ds (K,), de (K,)): see the module docstring."""
    B, T, K = E.shape
    N = max(int(lengths.sum()), 1)
    logZ, alpha, beta = crf_forward_backward(E, lengths, A, s, e)
    gold = crf_score(E, y, lengths, A, s, e)
    loss = float((logZ - gold).sum() / N)
    E, mask = _real_steps(E, lengths)
    P = np.exp(alpha + beta - logZ[:, None, None]) * mask[:, :, None]
    yy = np.where(mask, y, 0).astype(np.int64)
    onehot = (yy[:, :, None] == np.arange(K)) & mask[:, :, None]
    dE = ((P - onehot) / N).astype(E.dtype)
    dA = np.zeros((K, K), dtype=E.dtype)
    if T > 1:
        # xi[b, t-1, i, j] = p(y_{t-1} = i, y_t = j), t = 1 .. T-1
        xi = np.exp(
            alpha[:, :-1, :, None] + A[None, None] + (E[:, 1:] + beta[:, 1:])[:, :, None, :] - logZ[:, None, None, None]
        ) * mask[:, 1:, None, None]
        dA += xi.sum(axis=(0, 1))
        pairs = mask[:, 1:]
        np.add.at(dA, (yy[:, :-1][pairs], yy[:, 1:][pairs]), -1.0)
        dA /= N
    real = lengths > 0
    last = np.maximum(lengths - 1, 0)
    rows = np.arange(B)
    ds = ((P[:, 0] - onehot[:, 0]) * real[:, None]).sum(axis=0) / N
    de = ((P[rows, last] - onehot[rows, last]) * real[:, None]).sum(axis=0) / N
    return loss, dE, dA, ds.astype(E.dtype), de.astype(E.dtype)


def crf_viterbi(E, lengths, A, s, e):
    """Best paths (B, T) int64, 0 at padded steps, and their scores (B,)."""
    B, T, K = E.shape
    paths = np.zeros((B, T), dtype=np.int64)
    if T == 0:
        return paths, np.zeros(B, dtype=E.dtype)
    back = np.zeros((B, T, K), dtype=np.int64)
    E, _ = _real_steps(E, lengths)
    d = s[None, :] + E[:, 0]
    for t in range(1, T):
        cand = d[:, :, None] + A[None, :, :]  # (B, i, j)
        arg = cand.argmax(axis=1)
        nxt = np.take_along_axis(cand, arg[:, None, :], axis=1)[:, 0] + E[:, t]
        live = (t < lengths)[:, None]
        d = np.where(live, nxt, d)
        back[:, t] = arg
    final = d + e[None, :]
    best = final.argmax(axis=1)
    score = final[np.arange(B), best]
    rows = np.arange(B)
    last = np.maximum(lengths - 1, 0)
    paths[rows, last] = best
    tag = best
    for t in range(T - 1, 0, -1):
        live = t < lengths  # rows whose step t is real: step t-1 follows the back-pointer
        prev = back[rows, t, tag]
        tag = np.where(live, prev, tag)
        paths[:, t - 1] = np.where(live, tag, paths[:, t - 1])
    paths[lengths == 0] = 0
    return paths, np.where(lengths > 0, score, 0).astype(E.dtype)


# ----------------------------------------------------------------------------------------
# njit kernels: one call per batch, a loop over rows; each row stops at its own length.
# The exponentials all take x - max <= 0: _expneg is libm's exp in float64 and a Cephes
# polynomial in float32 (max error ~2 ulp, vectorised by LLVM; see tagger/ops/cpu.py).
# Inner loops run along contiguous rows (of A in the forward, of A transposed in the
# backward), elementwise rather than as reductions, so that LLVM vectorises them.


@njit(**_JIT)
def _forward_row(alpha, m, acc, E, n, A, s, e):
    """alpha[:n] (T, K) of one row; returns logZ. m, acc: (K,) scratch."""
    K = E.shape[1]
    for j in range(K):
        alpha[0, j] = s[j] + E[0, j]
    for t in range(1, n):
        for j in range(K):
            m[j] = alpha[t - 1, 0] + A[0, j]
        for i in range(1, K):
            for j in range(K):
                m[j] = max(m[j], alpha[t - 1, i] + A[i, j])
        for j in range(K):
            acc[j] = 0
        for i in range(K):
            for j in range(K):
                acc[j] += _expneg(alpha[t - 1, i] + A[i, j] - m[j])
        for j in range(K):
            alpha[t, j] = m[j] + math.log(acc[j]) + E[t, j]
    mx = alpha[n - 1, 0] + e[0]
    for j in range(1, K):
        mx = max(mx, alpha[n - 1, j] + e[j])
    tot = alpha.dtype.type(0)
    for j in range(K):
        tot += _expneg(alpha[n - 1, j] + e[j] - mx)
    return mx + math.log(tot)


@njit(**_JIT)
def _backward_row(beta, v, m, acc, E, n, AT, e):
    """beta[:n] (T, K) of one row. AT (K, K) = A transposed, so that the inner loops run
    over i along contiguous rows, as in the forward. v, m, acc: (K,) scratch."""
    K = E.shape[1]
    for i in range(K):
        beta[n - 1, i] = e[i]
    for t in range(n - 2, -1, -1):
        for j in range(K):
            v[j] = E[t + 1, j] + beta[t + 1, j]
        for i in range(K):
            m[i] = AT[0, i] + v[0]
        for j in range(1, K):
            for i in range(K):
                m[i] = max(m[i], AT[j, i] + v[j])
        for i in range(K):
            acc[i] = 0
        for j in range(K):
            for i in range(K):
                acc[i] += _expneg(AT[j, i] + v[j] - m[i])
        for i in range(K):
            beta[t, i] = m[i] + math.log(acc[i])


@njit(**_JIT)
def _crf_nll_kernel(dE, dA, ds, de, alpha, beta, E, y, lengths, A, s, e, inv_n):
    """Fills dE (B, T, K) at real steps (the caller zeroes it), accumulates dA, ds, de;
    returns the loss (float64). alpha, beta (B, T, K): scratch."""
    B, T, K = E.shape
    m = np.empty(K, dtype=E.dtype)
    acc = np.empty(K, dtype=E.dtype)
    v = np.empty(K, dtype=E.dtype)
    AT = np.ascontiguousarray(A.T)
    loss = 0.0
    for b in range(B):
        n = lengths[b]
        if n == 0:
            continue
        Eb, ab, bb, yb = E[b], alpha[b], beta[b], y[b]
        logZ = _forward_row(ab, m, acc, Eb, n, A, s, e)
        _backward_row(bb, v, m, acc, Eb, n, AT, e)
        # 1. the gold path's score
        gold = s[yb[0]] + e[yb[n - 1]]
        for t in range(n):
            gold += Eb[t, yb[t]]
        for t in range(1, n):
            gold += A[yb[t - 1], yb[t]]
        loss += logZ - gold
        # 2. dE = (marginals - onehot) / N; ds, de from the first and last step
        for t in range(n):
            for j in range(K):
                dE[b, t, j] = _expneg(ab[t, j] + bb[t, j] - logZ) * inv_n
            dE[b, t, yb[t]] -= inv_n
        for j in range(K):
            ds[j] += dE[b, 0, j]
            de[j] += dE[b, n - 1, j]
        # 3. dA = (pairwise marginals - gold transitions) / N
        for t in range(1, n):
            for j in range(K):
                m[j] = Eb[t, j] + bb[t, j] - logZ
            for i in range(K):
                for j in range(K):
                    dA[i, j] += _expneg(ab[t - 1, i] + A[i, j] + m[j]) * inv_n
            dA[yb[t - 1], yb[t]] -= inv_n
    return loss * inv_n


@njit(**_JIT)
def _crf_marginals_kernel(P, alpha, beta, E, lengths, A, s, e):
    """P (B, T, K) at real steps (the caller zeroes it); alpha, beta: scratch."""
    B, T, K = E.shape
    m = np.empty(K, dtype=E.dtype)
    acc = np.empty(K, dtype=E.dtype)
    v = np.empty(K, dtype=E.dtype)
    AT = np.ascontiguousarray(A.T)
    for b in range(B):
        n = lengths[b]
        if n == 0:
            continue
        logZ = _forward_row(alpha[b], m, acc, E[b], n, A, s, e)
        _backward_row(beta[b], v, m, acc, E[b], n, AT, e)
        for t in range(n):
            for j in range(K):
                P[b, t, j] = _expneg(alpha[b, t, j] + beta[b, t, j] - logZ)


@njit(**_JIT)
def _crf_viterbi_kernel(paths, scores, E, lengths, A, s, e):
    """paths (B, T) int64 at real steps (the caller zeroes it), scores (B,). Ties go to the
    lowest tag id, as np.argmax."""
    B, T, K = E.shape
    back = np.zeros((max(T, 1), K), dtype=np.int64)
    d = np.empty(K, dtype=E.dtype)
    best = np.empty(K, dtype=E.dtype)
    for b in range(B):
        n = lengths[b]
        if n == 0:
            continue
        for j in range(K):
            d[j] = s[j] + E[b, 0, j]
        for t in range(1, n):
            for j in range(K):
                best[j] = d[0] + A[0, j]
                back[t, j] = 0
            for i in range(1, K):
                for j in range(K):
                    v = d[i] + A[i, j]
                    if v > best[j]:
                        best[j] = v
                        back[t, j] = i
            for j in range(K):
                d[j] = best[j] + E[b, t, j]
        tag = 0
        top = d[0] + e[0]
        for j in range(1, K):
            if d[j] + e[j] > top:
                top = d[j] + e[j]
                tag = j
        scores[b] = top
        paths[b, n - 1] = tag
        for t in range(n - 1, 0, -1):
            tag = back[t, tag]
            paths[b, t - 1] = tag


def _check(E, lengths, y=None):
    """Validate shapes and ranges before the kernels (they do not bounds-check)."""
    if E.ndim != 3:
        raise TaggerError(f"CRF emissions must be (batch, timesteps, tags), got shape {E.shape}")
    B, T, K = E.shape
    lengths = np.ascontiguousarray(lengths, dtype=np.int64).reshape(-1)
    if lengths.shape != (B,):
        raise TaggerError(f"CRF lengths has {lengths.shape[0]} entries for a batch of {B}")
    if (lengths < 0).any() or (lengths > T).any():
        raise TaggerError(f"CRF lengths must lie in 0..{T} (the padded timesteps)")
    if y is None:
        return lengths, None
    y = np.ascontiguousarray(y, dtype=np.int64)
    if y.shape != (B, T):
        raise TaggerError(f"CRF labels have shape {y.shape}, expected {(B, T)}")
    real = np.arange(T)[None, :] < lengths[:, None]
    if real.any() and (y[real].min() < 0 or y[real].max() >= K):
        raise TaggerError(f"CRF labels must lie in 0..{K - 1}")
    return lengths, np.where(real, y, 0)


def crf_nll_fast(E, y, lengths, A, s, e):
    """crf_nll through the njit kernel; same arguments and results."""
    E = np.ascontiguousarray(E)
    lengths, y = _check(E, lengths, y)
    B, T, K = E.shape
    dt = E.dtype
    dE = np.zeros_like(E)
    dA = np.zeros((K, K), dtype=dt)
    ds = np.zeros(K, dtype=dt)
    de = np.zeros(K, dtype=dt)
    alpha = np.empty_like(E)
    beta = np.empty_like(E)
    inv_n = dt.type(1.0 / max(int(lengths.sum()), 1))
    loss = _crf_nll_kernel(dE, dA, ds, de, alpha, beta, E, y, lengths, *_cast(dt, A, s, e), inv_n)
    return float(loss), dE, dA, ds, de


def crf_marginals_fast(E, lengths, A, s, e):
    E = np.ascontiguousarray(E)
    lengths, _ = _check(E, lengths)
    P = np.zeros_like(E)
    _crf_marginals_kernel(P, np.empty_like(E), np.empty_like(E), E, lengths, *_cast(E.dtype, A, s, e))
    return P


def crf_viterbi_fast(E, lengths, A, s, e):
    E = np.ascontiguousarray(E)
    lengths, _ = _check(E, lengths)
    B, T, K = E.shape
    paths = np.zeros((B, T), dtype=np.int64)
    scores = np.zeros(B, dtype=E.dtype)
    _crf_viterbi_kernel(paths, scores, E, lengths, *_cast(E.dtype, A, s, e))
    return paths, scores


def _cast(dtype, *arrays):
    return [np.ascontiguousarray(a, dtype=dtype) for a in arrays]


# ----------------------------------------------------------------------------------------
# the layer


class CRF(Layer):
    """Linear-chain CRF over per-token tag scores (B, T, K), like keras-contrib's CRF.

    Weights: `transitions` (K, K) [from tag i to tag j], `start` (K,), `end` (K,);
    initializer "zeros" (the default: before training, decoding equals the per-token
    argmax and the marginals equal the softmax) or "uniform" (+-0.05, seeded).

    In a Sequential the layer passes its input through unchanged (the mask too), so the
    network still outputs the emissions and summary() lists the K*K + 2K weights; the
    CRF itself runs on the host through `loss`, `decode` and `marginals`, which take
    post-padded emissions and lengths (B,). On the CUDA backend the emissions come over
    with ops.to_numpy and the gradient goes back with ops.asarray (B*T*K floats).
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

    # -- the CRF proper (host NumPy) ---------------------------------------------------
    def _host(self, emissions):
        """Emissions as a host array in the layer's dtype, and (A, s, e) in the same dtype."""
        E = np.ascontiguousarray(self.ops.to_numpy(emissions), dtype=self.dtype)
        if E.ndim != 3 or E.shape[-1] != self.units:
            raise TaggerError(f"layer {self.name!r} expects emissions (batch, timesteps, {self.units}), got {E.shape}")
        self.ensure_built((None, None, self.units))  # used on its own, outside a Sequential
        return E, [np.asarray(self.ops.to_numpy(p), dtype=self.dtype) for p in self.params]

    def loss(self, emissions, labels, lengths):
        """(mean negative log-likelihood per real token, d_emissions (B, T, K) on the host).

        Accumulates the gradients of the transitions, start and end into self.grads.
        """
        E, (A, s, e) = self._host(emissions)
        loss, dE, dA, ds, de = crf_nll_fast(E, self.ops.to_numpy(labels), lengths, A, s, e)
        if self.trainable:
            for k, g in enumerate((dA, ds, de)):
                host = np.asarray(self.ops.to_numpy(self.grads[k]))
                if host is self.grads[k]:  # NumPy backends: in place
                    host += g
                else:  # device arrays: add on the host, copy back
                    self.grads[k] = self.ops.asarray(host + g, dtype=self.dtype)
        return loss, dE

    def decode(self, emissions, lengths):
        """Viterbi best paths (B, T) int64, 0 at padded steps."""
        E, (A, s, e) = self._host(emissions)
        return crf_viterbi_fast(E, lengths, A, s, e)[0]

    def marginals(self, emissions, lengths):
        """Per-token tag marginals p(y_t = j | x) (B, T, K), 0 at padded steps."""
        E, (A, s, e) = self._host(emissions)
        return crf_marginals_fast(E, lengths, A, s, e)
