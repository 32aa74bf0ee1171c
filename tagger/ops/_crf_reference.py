"""Linear-chain CRF ops, NumPy reference: the executable spec of crf_nll, crf_marginals and
crf_viterbi on every backend (re-exported by tagger/ops/reference.py).

Legend
------
    B  batch            T  timesteps (padded)     K  tags
    E        (B, T, K)  emissions: per-token tag scores from the layer below (Dense "output")
    A        (K, K)     transitions: A[i, j] scores tag i at one step followed by tag j at the next
    s, e     (K,)       start / end: scores of the first / the last tag of a sentence
    y        (B, T) int gold tags (values at padded steps are ignored)
    starts, lengths (B,) int   row b occupies steps starts[b] .. starts[b] + lengths[b] - 1
                        (the one masking rule of reference.py: post-padding starts = 0,
                        pre-padding starts = T - lengths); lengths 0 allowed
    alpha    (B, T, K)  forward log-scores:  log sum over y_0..y_t with y_t = j of exp(score so far)
    beta     (B, T, K)  backward log-scores: log sum over y_{t+1}..y_{n-1} given y_t = i
    logZ     (B,)       log partition function; P (B, T, K) tag marginals p(y_t = j | x)
    `d`-prefix: gradient of the loss w.r.t. that array.

Below, t counts the steps of one sentence (0 .. n-1, n = lengths[b]); step t of row b is
time index starts[b] + t. The score of a path y_0 .. y_{n-1}:

    score(y) = s[y_0] + sum_t E[t, y_t] + sum_{t >= 1} A[y_{t-1}, y_t] + e[y_{n-1}]
    p(y | x) = exp(score(y) - logZ),   logZ = log sum over all K^n paths of exp(score)

The loss is sum_b (logZ_b - score_b(y_b)) / N with N = max(sum(lengths), 1) real tokens:
the scale of `softmax_xent` (a mean over real tokens), so learning rates carry over. Its
gradient, with xi the pairwise marginals p(y_{t-1} = i, y_t = j | x):

    dE[b, t, j] = (P[b, t, j] - [y_t = j]) / N                    0 at padded steps
    dA[i, j]    = sum_b sum_{1 <= t < n_b} (xi[b, t, i, j] - [y_{t-1} = i, y_t = j]) / N
    ds          = sum_b (P[b, 0] - onehot(y_0)) / N
    de          = sum_b (P[b, n_b - 1] - onehot(y_{n_b - 1})) / N

The ops (same signatures and the same checks, with the same messages, on every backend)
-----------------------------------------------------------------------------------------
    crf_nll(E, y, starts, lengths, A, s, e, dA, ds, de) -> (loss: float, dE (B, T, K))
        accumulates into dA, ds, de (like every backward); dE is a new backend array
    crf_marginals(E, starts, lengths, A, s, e) -> P (B, T, K), a backend array
    crf_viterbi(E, starts, lengths, A, s, e) -> (paths (B, T) int64, scores (B,))
        both host NumPy arrays on every backend (decoding continues on the host); ties go
        to the lowest tag id, as np.argmax
    crf_nbest(E, starts, lengths, A, s, e, k) -> (paths (B, k, T) int64, scores (B, k), logZ (B,))
        the k best paths of each row in decreasing score, host NumPy on every backend (the
        cuda backend copies E to the host and runs the cpu kernel: k-best lists are a
        prediction-time extra, and K x k x T is small); a row with fewer than k paths fills
        the rest with score -inf and path 0. Ties go to the path that is smaller read
        backwards (last tag first), so entry 0 is crf_viterbi's path. A length-0 row has one
        (empty) path of score 0.
Grammar constraints (tagger/data/schemes.allowed_transitions) reach every op as weights:
`constrained(A, s, e, allowed, fill)` puts `fill` at the forbidden entries. crf_viterbi and
crf_nbest take fill = -inf and never return a path through a -inf entry (crf_nbest's logZ
is then the exact constrained partition function; it alone handles -inf in logsumexp);
crf_nll and crf_marginals take fill = FORBIDDEN (-1e4, finite so that no logsumexp meets
-inf - -inf): a path through it weighs exp(-1e4) = 0 against any allowed path.

E, A, s, e (and dA, ds, de) share one dtype, float32 or float64; y, starts, lengths are
host or backend integer arrays. Padding never changes a result: a row's recursion runs
over its own span only (whatever the padded emissions and labels hold, NaN included);
its marginals and gradient at padded steps are exactly 0 and its path there is 0. A
length-0 row has loss 0, gradient 0, score 0 and an all-zero path.

Everything runs in log space with max-shifted logsumexp, in the dtype of E. This module
is vectorised over the batch with a Python loop over time, on post-padded copies of the
rows (_to_post moves each span to the front; _from_post puts results back), so the
recursions below only ever meet post-padding.
"""
from __future__ import annotations

import numpy as np

from tagger.errors import TaggerError
from tagger.spans import check_spans

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
FORBIDDEN = -1.0e4  # the score of a forbidden transition in crf_nll / crf_marginals


def weight_masks(allowed):
    """allowed = (start_ok (K,), trans_ok (K, K), end_ok (K,)) in the order of the weights
    and their gradients: (trans_ok, start_ok, end_ok), as host bool arrays."""
    start_ok, trans_ok, end_ok = allowed
    return tuple(np.asarray(ok, dtype=bool) for ok in (trans_ok, start_ok, end_ok))


def constrained(A, s, e, allowed, fill):
    """Host copies of A (K, K), s, e (K,) with `fill` where allowed = (start_ok, trans_ok,
    end_ok) is False; the arrays themselves when allowed is None."""
    if allowed is None:
        return A, s, e
    return tuple(np.where(ok, np.asarray(w), np.asarray(w).dtype.type(fill))
                 for w, ok in zip((A, s, e), weight_masks(allowed)))


# ----------------------------------------------------------------------------------------
# validation, shared by every backend (so the messages are the same everywhere)


def _check_float(where, name, a, shape, dtype):
    if tuple(a.shape) != shape or np.dtype(a.dtype) != dtype:
        raise TaggerError(
            f"{where}: {name} must have shape {shape} and dtype {dtype} (those of the emissions), "
            f"got {tuple(a.shape)} {np.dtype(a.dtype)}"
        )


def check_k(where, k):
    """crf_nbest's k: a positive int."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise TaggerError(f"{where}: k (paths per sentence) must be a positive integer, got {k!r}")
    return int(k)


def check_crf(where, E, starts, lengths, A, s, e, y=None, grads=None):
    """Validate a CRF op's arguments before any kernel runs; raise TaggerError otherwise.

    E, A, s, e, grads = (dA, ds, de): any arrays with .shape and .dtype (host or device).
    starts, lengths, y: host integer arrays. Returns (starts, lengths) as int64 host
    arrays and y as int64 (B, T) with 0 outside the spans (None when y is None).
    """
    if len(E.shape) != 3 or np.dtype(E.dtype) not in FLOATS:
        raise TaggerError(
            f"{where}: emissions E must be a float32 or float64 array (batch, timesteps, tags), "
            f"got shape {tuple(E.shape)} dtype {np.dtype(E.dtype)}"
        )
    B, T, K = (int(n) for n in E.shape)
    if K == 0:
        raise TaggerError(f"{where}: emissions E have 0 tags; a CRF needs at least one")
    dt = np.dtype(E.dtype)
    for name, a, shape in (("transitions A", A, (K, K)), ("start s", s, (K,)), ("end e", e, (K,))):
        _check_float(where, name, a, shape, dt)
    if grads is not None:
        for name, a, shape in zip(("dA", "ds", "de"), grads, ((K, K), (K,), (K,))):
            _check_float(where, f"gradient buffer {name}", a, shape, dt)
    starts, lengths = np.asarray(starts), np.asarray(lengths)
    check_spans(starts, lengths, B, T, where)
    starts, lengths = starts.astype(np.int64), lengths.astype(np.int64)
    if y is None:
        return starts, lengths, None
    y = np.asarray(y)
    if y.shape != (B, T) or (y.size and y.dtype.kind not in "iu"):
        raise TaggerError(f"{where}: labels y must be integers of shape {(B, T)}, got {y.shape} {y.dtype}")
    real = _mask(starts, lengths, T)
    if real.any() and (y[real].min() < 0 or y[real].max() >= K):
        raise TaggerError(f"{where}: labels must lie in 0..{K - 1} (the tags) at every real step")
    return starts, lengths, np.where(real, y, 0).astype(np.int64)


def _mask(starts, lengths, T):
    """(B, T) bool, True on real steps."""
    t = np.arange(T)[None, :]
    return (t >= starts[:, None]) & (t < (starts + lengths)[:, None])


# ----------------------------------------------------------------------------------------
# spans <-> post-padding


def _to_post(X, starts, lengths):
    """X (B, T, ...) with row b's span moved to steps 0 .. lengths[b]-1; padding zeroed."""
    T = X.shape[1]
    s = np.arange(T)[None, :]
    real = s < lengths[:, None]
    idx = np.where(real, starts[:, None] + s, 0)
    out = X[np.arange(X.shape[0])[:, None], idx]
    zero = real.reshape(real.shape + (1,) * (X.ndim - 2))
    return np.where(zero, out, 0).astype(X.dtype)


def _from_post(Xp, starts, lengths):
    """Inverse of _to_post: step t of row b back at time index starts[b] + t; 0 elsewhere."""
    out = np.zeros_like(Xp)
    rows, steps = np.nonzero(np.arange(Xp.shape[1])[None, :] < lengths[:, None])
    out[rows, starts[rows] + steps] = Xp[rows, steps]
    return out


def _logsumexp(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.exp(x - m).sum(axis=axis))


# ----------------------------------------------------------------------------------------
# the recursions, on post-padded rows (padding already zero)


def _forward_backward_post(E, lengths, A, s, e):
    """(logZ (B,), alpha, beta (B, T, K)); rows keep their last value past their end."""
    B, T, K = E.shape
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
    return np.where(lengths > 0, logZ, 0).astype(E.dtype), alpha, beta


def _score_post(E, y, lengths, A, s, e):
    """score(y) (B,) of the given tag paths; 0 for a length-0 row."""
    B, T, K = E.shape
    if T == 0:
        return np.zeros(B, dtype=E.dtype)
    mask = np.arange(T)[None, :] < lengths[:, None]
    rows = np.arange(B)
    total = (np.take_along_axis(E, y[:, :, None], axis=2)[:, :, 0] * mask).sum(axis=1)
    if T > 1:
        total = total + (A[y[:, :-1], y[:, 1:]] * mask[:, 1:]).sum(axis=1)
    last = y[rows, np.maximum(lengths - 1, 0)]
    total = total + s[y[:, 0]] + e[last]
    return np.where(lengths > 0, total, 0).astype(E.dtype)


def _marginals_post(E, lengths, A, s, e):
    logZ, alpha, beta = _forward_backward_post(E, lengths, A, s, e)
    mask = np.arange(E.shape[1])[None, :] < lengths[:, None]
    return np.exp(alpha + beta - logZ[:, None, None]) * mask[:, :, None], (logZ, alpha, beta, mask)


def _nll_post(E, y, lengths, A, s, e):
    """(loss, dE (B, T, K), dA (K, K), ds (K,), de (K,)): see the module docstring."""
    B, T, K = E.shape
    N = max(int(lengths.sum()), 1)
    if T == 0:
        return 0.0, np.zeros_like(E), np.zeros((K, K), E.dtype), np.zeros(K, E.dtype), np.zeros(K, E.dtype)
    P, (logZ, alpha, beta, mask) = _marginals_post(E, lengths, A, s, e)
    loss = float((logZ - _score_post(E, y, lengths, A, s, e)).sum() / N)
    onehot = (y[:, :, None] == np.arange(K)) & mask[:, :, None]
    dE = ((P - onehot) / N).astype(E.dtype)
    dA = np.zeros((K, K), dtype=E.dtype)
    if T > 1:
        # xi[b, t-1, i, j] = p(y_{t-1} = i, y_t = j), t = 1 .. T-1
        xi = np.exp(
            alpha[:, :-1, :, None] + A[None, None] + (E[:, 1:] + beta[:, 1:])[:, :, None, :] - logZ[:, None, None, None]
        ) * mask[:, 1:, None, None]
        dA += xi.sum(axis=(0, 1))
        pairs = mask[:, 1:]
        np.add.at(dA, (y[:, :-1][pairs], y[:, 1:][pairs]), -1.0)
        dA /= N
    real = (lengths > 0)[:, None]
    rows, last = np.arange(B), np.maximum(lengths - 1, 0)
    ds = ((P[:, 0] - onehot[:, 0]) * real).sum(axis=0) / N
    de = ((P[rows, last] - onehot[rows, last]) * real).sum(axis=0) / N
    return loss, dE, dA, ds.astype(E.dtype), de.astype(E.dtype)


def _viterbi_post(E, lengths, A, s, e):
    B, T, K = E.shape
    paths = np.zeros((B, T), dtype=np.int64)
    if T == 0:
        return paths, np.zeros(B, dtype=E.dtype)
    back = np.zeros((B, T, K), dtype=np.int64)
    d = s[None, :] + E[:, 0]
    for t in range(1, T):
        cand = d[:, :, None] + A[None, :, :]  # (B, i, j)
        arg = cand.argmax(axis=1)
        nxt = np.take_along_axis(cand, arg[:, None, :], axis=1)[:, 0] + E[:, t]
        d = np.where((t < lengths)[:, None], nxt, d)
        back[:, t] = arg
    final = d + e[None, :]
    rows = np.arange(B)
    tag = final.argmax(axis=1)
    score = final[rows, tag]
    paths[rows, np.maximum(lengths - 1, 0)] = tag
    for t in range(T - 1, 0, -1):
        live = t < lengths  # rows whose step t is real: step t-1 follows the back-pointer
        tag = np.where(live, back[rows, t, tag], tag)
        paths[:, t - 1] = np.where(live, tag, paths[:, t - 1])
    paths[lengths == 0] = 0
    return paths, np.where(lengths > 0, score, 0).astype(E.dtype)


# ----------------------------------------------------------------------------------------
# the ops


def crf_nll(E, y, starts, lengths, A, s, e, dA, ds, de):
    """Mean negative log-likelihood per real token of the gold paths y, and its gradient.

    E (B, T, K), y (B, T) int, starts/lengths (B,) int, A (K, K), s (K,), e (K,).
    Accumulates into dA (K, K), ds (K,), de (K,); returns (loss: float, dE (B, T, K)).
    """
    starts, lengths, y = check_crf("crf_nll", E, starts, lengths, A, s, e, y=y, grads=(dA, ds, de))
    Ep, yp = _to_post(np.asarray(E), starts, lengths), _to_post(y, starts, lengths)
    loss, dEp, gA, gs, ge = _nll_post(Ep, yp, lengths, A, s, e)
    dA += gA
    ds += gs
    de += ge
    return loss, _from_post(dEp, starts, lengths)


def crf_marginals(E, starts, lengths, A, s, e):
    """P (B, T, K): p(y_t = j | x); sums to 1 over j at real steps, 0 at padded steps."""
    starts, lengths, _ = check_crf("crf_marginals", E, starts, lengths, A, s, e)
    P, _ = _marginals_post(_to_post(np.asarray(E), starts, lengths), lengths, A, s, e)
    return _from_post(P, starts, lengths)


def crf_viterbi(E, starts, lengths, A, s, e):
    """Best paths (B, T) int64 (0 at padded steps) and their scores (B,), host NumPy."""
    starts, lengths, _ = check_crf("crf_viterbi", E, starts, lengths, A, s, e)
    paths, scores = _viterbi_post(_to_post(np.asarray(E), starts, lengths), lengths, A, s, e)
    return _from_post(paths, starts, lengths), scores


def _nbest_row(E, A, s, e, k):
    """The m <= k best paths (m, n) of one row's span E (n, K), n >= 1, and their scores (m,).

    delta[j, r] is the r-th best score of a path over steps 0..t ending in tag j (-inf:
    none); back[t, j, r] = (tag, rank) at step t-1 of that path. Candidates for (t, j) are
    numbered c = i * k + r; a stable sort keeps equal scores in that order, which makes ties
    go to the path smaller read backwards (see the module docstring)."""
    n, K = E.shape
    delta = np.full((K, k), -np.inf, dtype=E.dtype)
    delta[:, 0] = s + E[0]
    back = np.zeros((n, K, k), dtype=np.int64)  # c = i * k + r
    for t in range(1, n):
        cand = (delta[:, :, None] + A[:, None, :]).reshape(K * k, K)  # (c, j)
        order = np.argsort(-cand, axis=0, kind="stable")[:k]  # (k, K)
        delta = (np.take_along_axis(cand, order, axis=0) + E[t][None, :]).T
        back[t] = order.T
    final = (delta + e[:, None]).reshape(K * k)
    order = [c for c in np.argsort(-final, kind="stable")[:k] if np.isfinite(final[c])]
    paths = np.zeros((len(order), n), dtype=np.int64)
    for m, c in enumerate(order):
        j, r = divmod(int(c), k)
        paths[m, n - 1] = j
        for t in range(n - 1, 0, -1):
            j, r = divmod(int(back[t, j, r]), k)
            paths[m, t - 1] = j
    return paths, final[order]


def _logz_row(E, A, s, e):
    """log sum over the paths of one row's span E (n, K) of exp(score); -inf entries of the
    weights are paths that do not exist (a tag no path reaches has alpha -inf)."""
    def lse(x, axis):
        m = x.max(axis=axis)
        shift = np.where(np.isfinite(m), m, 0)
        with np.errstate(divide="ignore"):
            return shift + np.log(np.exp(x - np.expand_dims(shift, axis)).sum(axis=axis))

    a = s + E[0]
    for t in range(1, E.shape[0]):
        a = lse(a[:, None] + A, axis=0) + E[t]
    return lse(a + e, axis=0)


def crf_nbest(E, starts, lengths, A, s, e, k):
    """The k best paths (B, k, T) int64 (0 at padded steps and for missing paths), their
    scores (B, k) (-inf: missing) and logZ (B,), host NumPy: p(path) = exp(score - logZ)."""
    starts, lengths, _ = check_crf("crf_nbest", E, starts, lengths, A, s, e)
    k = check_k("crf_nbest", k)
    E = np.asarray(E)
    B, T, K = E.shape
    paths = np.zeros((B, k, T), dtype=np.int64)
    scores = np.full((B, k), -np.inf, dtype=E.dtype)
    logZ = np.zeros(B, dtype=E.dtype)
    for b in range(B):
        st, n = int(starts[b]), int(lengths[b])
        if n == 0:
            scores[b, 0] = 0
            continue
        Eb = E[b, st : st + n]
        p, sc = _nbest_row(Eb, A, s, e, k)
        paths[b, : len(p), st : st + n] = p
        scores[b, : len(sc)] = sc
        logZ[b] = _logz_row(Eb, A, s, e)
    return paths, scores, logZ


# the pieces, for tests that check them against brute-force enumeration


def crf_forward_backward(E, starts, lengths, A, s, e):
    """(logZ (B,), alpha, beta (B, T, K) at each row's real steps, 0 elsewhere)."""
    starts, lengths, _ = check_crf("crf_forward_backward", E, starts, lengths, A, s, e)
    logZ, alpha, beta = _forward_backward_post(_to_post(np.asarray(E), starts, lengths), lengths, A, s, e)
    return logZ, _from_post(alpha, starts, lengths), _from_post(beta, starts, lengths)


def crf_score(E, y, starts, lengths, A, s, e):
    """score(y) (B,) of the given tag paths; 0 for a length-0 row."""
    starts, lengths, y = check_crf("crf_score", E, starts, lengths, A, s, e, y=y)
    return _score_post(_to_post(np.asarray(E), starts, lengths), _to_post(y, starts, lengths), lengths, A, s, e)
