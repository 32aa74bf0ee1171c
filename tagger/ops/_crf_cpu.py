"""Linear-chain CRF ops, numba.njit kernels (re-exported by tagger/ops/cpu.py).

Legend, the score, the loss, its gradient and the op signatures: tagger/ops/_crf_reference.py
(the spec these kernels are tested against). Here, per row b (one loop over the batch in
one compiled call; each row only touches its own span):

    st, n    starts[b], lengths[b]: the row's steps are time indices st .. st + n - 1
    Eb       (n, K) view E[b, st : st + n]; alpha, beta (B, T, K), logZ (B,) from
             _forward_backward, shared by the loss and the marginals kernels
    m, acc, v (K,) scratch; AT (K, K) = A transposed (contiguous) for the backward

The exponentials all take x - max <= 0: expneg is libm's exp in float64 and a Cephes
polynomial in float32 (max error ~2 ulp, vectorised by LLVM; tagger/ops/cpu.py). Inner
loops run along contiguous rows (of A in the forward, of A transposed in the backward),
elementwise rather than as reductions, so that LLVM vectorises them. Measured when these
kernels lived in tagger/layers/crf.py (post-padding only; not re-measured since): about
1 ms per batch of 32 x 15 tokens and 17 tags, 5x the NumPy reference.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from tagger.ops._cpu_math import expneg
from tagger.ops._crf_reference import check_crf, check_k

# cached, GIL released, and error_model="numpy" (no exception paths in the inner loops), as
# every kernel in tagger/ops/cpu.py; no fastmath
_JIT = dict(cache=True, nogil=True, error_model="numpy")


@njit(**_JIT)
def _forward_row(alpha, m, acc, E, A, s, e):
    """alpha (n, K) of one row's span E (n, K), n >= 1; returns logZ."""
    n, K = E.shape
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
                acc[j] += expneg(alpha[t - 1, i] + A[i, j] - m[j])
        for j in range(K):
            alpha[t, j] = m[j] + math.log(acc[j]) + E[t, j]
    mx = alpha[n - 1, 0] + e[0]
    for j in range(1, K):
        mx = max(mx, alpha[n - 1, j] + e[j])
    tot = alpha.dtype.type(0)
    for j in range(K):
        tot += expneg(alpha[n - 1, j] + e[j] - mx)
    return mx + math.log(tot)


@njit(**_JIT)
def _backward_row(beta, v, m, acc, E, AT, e):
    """beta (n, K) of one row's span E (n, K). AT = A transposed, so that the inner loops
    run over i along contiguous rows, as in the forward."""
    n, K = E.shape
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
                acc[i] += expneg(AT[j, i] + v[j] - m[i])
        for i in range(K):
            beta[t, i] = m[i] + math.log(acc[i])


@njit(**_JIT)
def _forward_backward(alpha, beta, logZ, E, starts, lengths, A, s, e):
    """alpha, beta (B, T, K) at each row's real steps (untouched elsewhere), logZ (B,)
    (0 for a length-0 row): what the loss and the marginals both start from."""
    B, T, K = E.shape
    m = np.empty(K, dtype=E.dtype)
    acc = np.empty(K, dtype=E.dtype)
    v = np.empty(K, dtype=E.dtype)
    AT = np.ascontiguousarray(A.T)
    for b in range(B):
        st, n = starts[b], lengths[b]
        logZ[b] = 0
        if n == 0:
            continue
        Eb = E[b, st : st + n]
        logZ[b] = _forward_row(alpha[b, st : st + n], m, acc, Eb, A, s, e)
        _backward_row(beta[b, st : st + n], v, m, acc, Eb, AT, e)


@njit(**_JIT)
def _crf_nll_kernel(dE, dA, ds, de, alpha, beta, logZ, E, y, starts, lengths, A, s, e, inv_n):
    """From _forward_backward's alpha, beta, logZ: fills dE (B, T, K) at real steps (the
    caller zeroes it), accumulates dA, ds, de; returns the loss (float64)."""
    B, T, K = E.shape
    m = np.empty(K, dtype=E.dtype)
    loss = 0.0
    for b in range(B):
        st, n = starts[b], lengths[b]
        if n == 0:
            continue
        Eb, yb, dEb = E[b, st : st + n], y[b, st : st + n], dE[b, st : st + n]
        ab, bb, z = alpha[b, st : st + n], beta[b, st : st + n], logZ[b]
        # 1. the gold path's score
        gold = s[yb[0]] + e[yb[n - 1]]
        for t in range(n):
            gold += Eb[t, yb[t]]
        for t in range(1, n):
            gold += A[yb[t - 1], yb[t]]
        loss += z - gold
        # 2. dE = (marginals - onehot) / N; ds, de from the first and last step
        for t in range(n):
            for j in range(K):
                dEb[t, j] = expneg(ab[t, j] + bb[t, j] - z) * inv_n
            dEb[t, yb[t]] -= inv_n
        for j in range(K):
            ds[j] += dEb[0, j]
            de[j] += dEb[n - 1, j]
        # 3. dA = (pairwise marginals - gold transitions) / N
        for t in range(1, n):
            for j in range(K):
                m[j] = Eb[t, j] + bb[t, j] - z
            for i in range(K):
                for j in range(K):
                    dA[i, j] += expneg(ab[t - 1, i] + A[i, j] + m[j]) * inv_n
            dA[yb[t - 1], yb[t]] -= inv_n
    return loss * inv_n


@njit(**_JIT)
def _crf_marginals_kernel(P, alpha, beta, logZ, starts, lengths):
    """From _forward_backward's alpha, beta, logZ: P (B, T, K) at real steps (the caller
    zeroes it)."""
    B, T, K = P.shape
    for b in range(B):
        for t in range(starts[b], starts[b] + lengths[b]):
            for j in range(K):
                P[b, t, j] = expneg(alpha[b, t, j] + beta[b, t, j] - logZ[b])


@njit(**_JIT)
def _crf_viterbi_kernel(paths, scores, E, starts, lengths, A, s, e):
    """paths (B, T) int64 at real steps (the caller zeroes it), scores (B,). Ties go to the
    lowest tag id, as np.argmax."""
    B, T, K = E.shape
    back = np.zeros((max(T, 1), K), dtype=np.int64)
    d = np.empty(K, dtype=E.dtype)
    best = np.empty(K, dtype=E.dtype)
    for b in range(B):
        st, n = starts[b], lengths[b]
        if n == 0:
            continue
        Eb, pb = E[b, st : st + n], paths[b, st : st + n]
        for j in range(K):
            d[j] = s[j] + Eb[0, j]
        for t in range(1, n):
            for j in range(K):
                best[j] = d[0] + A[0, j]
                back[t, j] = 0
            for i in range(1, K):
                for j in range(K):
                    val = d[i] + A[i, j]
                    if val > best[j]:
                        best[j] = val
                        back[t, j] = i
            for j in range(K):
                d[j] = best[j] + Eb[t, j]
        tag = 0
        top = d[0] + e[0]
        for j in range(1, K):
            if d[j] + e[j] > top:
                top = d[j] + e[j]
                tag = j
        scores[b] = top
        pb[n - 1] = tag
        for t in range(n - 1, 0, -1):
            tag = back[t, tag]
            pb[t - 1] = tag


@njit(**_JIT)
def _nbest_row(paths, scores, E, A, s, e, k):
    """The k best paths of one row's span E (n, K), n >= 1, into paths (k, n) and scores
    (k,) (left as they are past the m <= k paths that exist: the caller fills -inf / 0).
    As _crf_reference._nbest_row: delta (K, k) r-th best scores ending in tag j, -inf none;
    back (n, K, k) candidate c = i * k + r at step t-1; a stable sort of each (t, j)'s K*k
    candidates, so ties go to the path smaller read backwards."""
    n, K = E.shape
    delta = np.full((K, k), -np.inf, dtype=E.dtype)
    nxt = np.empty((K, k), dtype=E.dtype)
    for j in range(K):
        delta[j, 0] = s[j] + E[0, j]
    back = np.zeros((n, K, k), dtype=np.int64)
    cand = np.empty(K * k, dtype=E.dtype)
    for t in range(1, n):
        for j in range(K):
            for i in range(K):
                for r in range(k):
                    cand[i * k + r] = -(delta[i, r] + A[i, j])
            order = np.argsort(cand, kind="mergesort")
            for r in range(k):
                back[t, j, r] = order[r]
                nxt[j, r] = -cand[order[r]] + E[t, j]
        delta[:, :] = nxt
    for j in range(K):
        for r in range(k):
            cand[j * k + r] = -(delta[j, r] + e[j])
    order = np.argsort(cand, kind="mergesort")
    m = 0
    for q in range(k):
        c = order[q]
        if cand[c] == np.inf:  # -inf score: this and every later candidate do not exist
            break
        scores[m] = -cand[c]
        j, r = c // k, c % k
        paths[m, n - 1] = j
        for t in range(n - 1, 0, -1):
            c = back[t, j, r]
            j, r = c // k, c % k
            paths[m, t - 1] = j
        m += 1


@njit(**_JIT)
def _lse_plus(a, w):
    """log sum_i exp(a[i] + w[i]) (K,), -inf when every term is -inf (no path), not NaN."""
    m = -np.inf
    for i in range(a.shape[0]):
        m = max(m, a[i] + w[i])
    if m == -np.inf:
        return m
    acc = 0.0
    for i in range(a.shape[0]):
        acc += math.exp(a[i] + w[i] - m)
    return m + math.log(acc)


@njit(**_JIT)
def _logz_row(E, A, s, e):
    """logZ of one row's span E (n, K) where -inf weights are paths that do not exist (the
    forward recursion with a -inf-safe logsumexp; only crf_nbest needs it)."""
    n, K = E.shape
    a = np.empty(K, dtype=E.dtype)
    nxt = np.empty(K, dtype=E.dtype)
    for j in range(K):
        a[j] = s[j] + E[0, j]
    for t in range(1, n):
        for j in range(K):
            nxt[j] = _lse_plus(a, A[:, j]) + E[t, j]
        a[:] = nxt
    return _lse_plus(a, e)


@njit(**_JIT)
def _crf_nbest_kernel(paths, scores, logZ, E, starts, lengths, A, s, e):
    """paths (B, k, T) (the caller zeroes it), scores (B, k) (the caller fills -inf), logZ (B,)."""
    B, k = scores.shape
    for b in range(B):
        st, n = starts[b], lengths[b]
        if n == 0:
            scores[b, 0] = 0
            logZ[b] = 0
            continue
        Eb = E[b, st : st + n]
        _nbest_row(paths[b, :, st : st + n], scores[b], Eb, A, s, e, k)
        logZ[b] = _logz_row(Eb, A, s, e)


# ----------------------------------------------------------------------------------------
# the ops (signatures and semantics: tagger/ops/_crf_reference.py)


def crf_nll(E, y, starts, lengths, A, s, e, dA, ds, de):
    """Mean NLL per real token; accumulates into dA, ds, de; returns (loss, dE)."""
    starts, lengths, y = check_crf("crf_nll", E, starts, lengths, A, s, e, y=y, grads=(dA, ds, de))
    E, A, s, e = _contiguous(E, A, s, e)
    dt = E.dtype
    dE = np.zeros_like(E)
    inv_n = dt.type(1.0 / max(int(lengths.sum()), 1))
    # the kernel accumulates into contiguous buffers; a strided view gets a copy and back
    gA, gs, ge = _contiguous(dA, ds, de)
    alpha, beta, logZ = _run_forward_backward(E, starts, lengths, A, s, e)
    loss = _crf_nll_kernel(dE, gA, gs, ge, alpha, beta, logZ, E, y, starts, lengths, A, s, e, inv_n)
    for buf, g in zip((dA, ds, de), (gA, gs, ge)):
        if g is not buf:
            buf[...] = g
    return float(loss), dE


def crf_marginals(E, starts, lengths, A, s, e):
    """P (B, T, K): tag marginals, 0 at padded steps."""
    starts, lengths, _ = check_crf("crf_marginals", E, starts, lengths, A, s, e)
    E, A, s, e = _contiguous(E, A, s, e)
    P = np.zeros_like(E)
    _crf_marginals_kernel(P, *_run_forward_backward(E, starts, lengths, A, s, e), starts, lengths)
    return P


def crf_viterbi(E, starts, lengths, A, s, e):
    """(paths (B, T) int64, 0 at padded steps; scores (B,)), host NumPy."""
    starts, lengths, _ = check_crf("crf_viterbi", E, starts, lengths, A, s, e)
    E, A, s, e = _contiguous(E, A, s, e)
    paths = np.zeros(E.shape[:2], dtype=np.int64)
    scores = np.zeros(E.shape[0], dtype=E.dtype)
    _crf_viterbi_kernel(paths, scores, E, starts, lengths, A, s, e)
    return paths, scores


def crf_nbest(E, starts, lengths, A, s, e, k):
    """(paths (B, k, T) int64, scores (B, k), -inf for missing paths; logZ (B,)), host NumPy."""
    starts, lengths, _ = check_crf("crf_nbest", E, starts, lengths, A, s, e)
    k = check_k("crf_nbest", k)
    E, A, s, e = _contiguous(E, A, s, e)
    B, T, _ = E.shape
    paths = np.zeros((B, k, T), dtype=np.int64)
    scores = np.full((B, k), -np.inf, dtype=E.dtype)
    logZ = np.zeros(B, dtype=E.dtype)
    _crf_nbest_kernel(paths, scores, logZ, E, starts, lengths, A, s, e)
    return paths, scores, logZ


def _run_forward_backward(E, starts, lengths, A, s, e):
    alpha, beta, logZ = np.empty_like(E), np.empty_like(E), np.empty(E.shape[0], dtype=E.dtype)
    _forward_backward(alpha, beta, logZ, E, starts, lengths, A, s, e)
    return alpha, beta, logZ


def _contiguous(*arrays):
    return [np.ascontiguousarray(a) for a in arrays]


def _dispatchers():
    """Every njit dispatcher defined in this module (cpu.py's own list covers its module)."""
    from numba.core.registry import CPUDispatcher

    return {name: obj for name, obj in globals().items() if isinstance(obj, CPUDispatcher)}


def warmup(dtypes=(np.float32, np.float64)):
    """Compile (or load from cache) every CRF kernel for the given dtypes on tiny inputs."""
    for dt in dtypes:
        E = np.zeros((2, 3, 2), dtype=dt)
        w = [np.zeros(shape, dtype=dt) for shape in ((2, 2), (2,), (2,))]
        starts, lengths = np.array([0, 1]), np.array([3, 2])
        crf_nll(E, np.zeros((2, 3), dtype=np.int64), starts, lengths, *w, *(np.zeros_like(a) for a in w))
        crf_marginals(E, starts, lengths, *w)
        crf_viterbi(E, starts, lengths, *w)
        crf_nbest(E, starts, lengths, *w, 2)


# Bound last, on purpose: tagger/ops/cpu.py re-exports the ops above, so the two modules
# import each other. Importing this one at the end lets either be imported first (njit
# resolves `expneg` when a kernel first compiles, not when it is defined).
