"""NumPy reference ops: the executable spec every fast backend is tested against.

Runs in the dtype of its inputs (float64 in the gradient checks). Written for
clarity, vectorised over the batch only where that keeps it obvious.

Legend (shared by every backend)
--------------------------------
    B  batch            T  timesteps (padded)     I  input features
    H  LSTM units       G  = 4H (gates)           V  vocabulary rows
    E  embedding width  K  dense output units     N  rows of a 2-D input
    F  features per step of a pooled sequence (2H after a concat Bidirectional)
    X  (B, T, I)   input sequence, batch-major like Keras
    W  (I, G)      kernel            U (H, G) recurrent_kernel     b (G,) bias
    gate order along G: i, f, c (candidate, "g"), o   (Keras layout)
    starts, lengths (B,) int: sequence b occupies X[b, starts[b] : starts[b] + lengths[b]]
        (post-padding: starts = 0; pre-padding: starts = T - lengths)
    `d`-prefix: gradient of the loss w.r.t. that array.

The masking rule (identical on every backend)
---------------------------------------------
Step s = 0 .. lengths[b]-1 of sequence b reads time index
    t = starts[b] + s                    (forward)
    t = starts[b] + lengths[b] - 1 - s   (reverse)
so the reverse direction starts at each sequence's own last real token.
Padded steps never touch the state; padded outputs are exactly 0; the final
(h, c) is the state after the last step taken (for the reverse direction: after
the first token). A length-0 sequence has all-zero outputs and final state.

Backward passes *accumulate* into the gradient buffers they are handed
(dW, dU, db, dtable, ...) and return the input gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GATES = 4


# ----------------------------------------------------------------------------------------
# helpers


def sigmoid(x):
    # Split by sign so exp never overflows (float32 inputs of -100 are common early on).
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def step_times(starts, lengths, s, reverse):
    """Rows still running at step s and the time index each of them reads."""
    active = np.nonzero(lengths > s)[0]
    if reverse:
        times = starts[active] + lengths[active] - 1 - s
    else:
        times = starts[active] + s
    return active, times


# ----------------------------------------------------------------------------------------
# LSTM


@dataclass
class LSTMCache:
    """What the backward pass needs from the forward pass (backend-specific contents)."""

    X: np.ndarray  # (B, T, I) input, after the input dropout mask
    W: np.ndarray  # (I, G)
    U: np.ndarray  # (H, G)
    starts: np.ndarray  # (B,)
    lengths: np.ndarray  # (B,)
    reverse: bool
    in_mask: np.ndarray | None  # (B, I) dropout scale on the input, or None
    rec_mask: np.ndarray | None  # (B, H) dropout scale on h before U, or None
    acts: np.ndarray  # (B, T, G) gate activations i, f, g, o after their nonlinearity
    C: np.ndarray  # (B, T, H) cell state after each step
    Y: np.ndarray  # (B, T, H) hidden state after each step (0 at padding)


def lstm_forward(X, W, U, b, starts, lengths, reverse=False, in_mask=None, rec_mask=None):
    """One LSTM direction over a padded batch.

    X (B, T, I), W (I, G), U (H, G), b (G,), starts/lengths (B,) int,
    in_mask (B, I) or None, rec_mask (B, H) or None.
    Returns Y (B, T, H), h_last (B, H), c_last (B, H), cache.
    """
    B, T, _ = X.shape
    H = U.shape[0]
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if in_mask is not None:
        X = X * in_mask[:, None, :]
    acts = np.zeros((B, T, GATES * H), dtype=X.dtype)
    C = np.zeros((B, T, H), dtype=X.dtype)
    Y = np.zeros((B, T, H), dtype=X.dtype)
    h = np.zeros((B, H), dtype=X.dtype)
    c = np.zeros((B, H), dtype=X.dtype)
    max_len = int(lengths.max()) if B else 0
    for s in range(max_len):
        rows, times = step_times(starts, lengths, s, reverse)
        h_in = h[rows] if rec_mask is None else h[rows] * rec_mask[rows]
        z = X[rows, times] @ W + h_in @ U + b  # (n, G)
        i = sigmoid(z[:, 0 * H : 1 * H])
        f = sigmoid(z[:, 1 * H : 2 * H])
        g = np.tanh(z[:, 2 * H : 3 * H])
        o = sigmoid(z[:, 3 * H : 4 * H])
        c[rows] = f * c[rows] + i * g
        h[rows] = o * np.tanh(c[rows])
        acts[rows, times] = np.concatenate([i, f, g, o], axis=1)
        C[rows, times] = c[rows]
        Y[rows, times] = h[rows]
    cache = LSTMCache(X, W, U, starts, lengths, bool(reverse), in_mask, rec_mask, acts, C, Y)
    return Y, h, c, cache


def lstm_backward(cache, dY, dh_last, dc_last, dW, dU, db):
    """Backward of lstm_forward. dY (B, T, H) or None; dh_last, dc_last (B, H) or None.

    Accumulates into dW (I, G), dU (H, G), db (G,); returns dX (B, T, I).
    Gradients arriving at padded positions of dY are ignored (those outputs are constants).
    """
    X, W, U = cache.X, cache.W, cache.U
    starts, lengths, reverse = cache.starts, cache.lengths, cache.reverse
    B, T, _ = X.shape
    H = U.shape[0]
    dX = np.zeros_like(X)
    dh_next = np.zeros((B, H), dtype=X.dtype) if dh_last is None else dh_last.astype(X.dtype, copy=True)
    dc_next = np.zeros((B, H), dtype=X.dtype) if dc_last is None else dc_last.astype(X.dtype, copy=True)
    max_len = int(lengths.max()) if B else 0
    for s in range(max_len - 1, -1, -1):
        rows, times = step_times(starts, lengths, s, reverse)
        # 1. state before this step (zeros at the first step)
        if s > 0:
            # consecutive steps of one sequence read adjacent time indices
            prev_times = times + 1 if reverse else times - 1
            h_prev = cache.Y[rows, prev_times]
            c_prev = cache.C[rows, prev_times]
        else:
            h_prev = np.zeros((len(rows), H), dtype=X.dtype)
            c_prev = np.zeros((len(rows), H), dtype=X.dtype)
        if cache.rec_mask is not None:
            h_prev = h_prev * cache.rec_mask[rows]
        a = cache.acts[rows, times]
        i, f, g, o = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
        c = cache.C[rows, times]
        tc = np.tanh(c)
        # 2. h = o * tanh(c)
        dh = dh_next[rows] + (0 if dY is None else dY[rows, times])
        do = dh * tc
        dc = dc_next[rows] + dh * o * (1.0 - tc * tc)
        # 3. c = f * c_prev + i * g
        di = dc * g
        dg = dc * i
        df = dc * c_prev
        dc_prev = dc * f
        # 4. gate nonlinearities
        dz = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g * g), do * o * (1 - o)], axis=1)
        # 5. z = x W + h_prev U + b
        x = X[rows, times]
        dW += x.T @ dz
        dU += h_prev.T @ dz
        db += dz.sum(axis=0)
        dX[rows, times] = dz @ W.T
        dh_prev = dz @ U.T
        if cache.rec_mask is not None:
            dh_prev = dh_prev * cache.rec_mask[rows]
        dh_next[rows] = dh_prev
        dc_next[rows] = dc_prev
    if cache.in_mask is not None:
        dX *= cache.in_mask[:, None, :]
    return dX


# ----------------------------------------------------------------------------------------
# Embedding


def embedding_forward(table, ids):
    """table (V, E), ids (B, T) int -> (B, T, E). Every id is looked up (padding id 0 too)."""
    return table[ids]


def embedding_backward(dtable, dE, ids, mask=None):
    """Scatter-add dE (B, T, E) into dtable (V, E) at ids where mask (B, T) is true.

    Returns the sorted unique rows touched (int64), so sparse optimisers update only those.
    """
    if mask is None:
        mask = np.ones(ids.shape, dtype=bool)
    sel_ids = ids[mask]
    np.add.at(dtable, sel_ids, dE[mask])
    return np.unique(sel_ids).astype(np.int64)


# ----------------------------------------------------------------------------------------
# Dense and activations


def dense_forward(X, W, b):
    """X (..., I) @ W (I, K) + b (K,) -> (..., K); 2-D and 3-D input alike."""
    return X @ W + b


def dense_backward(dY, X, W, dW, db):
    """Accumulates dW (I, K) and db (K,); returns dX shaped like X."""
    I, K = W.shape
    X2 = X.reshape(-1, I)
    dY2 = dY.reshape(-1, K)
    dW += X2.T @ dY2
    db += dY2.sum(axis=0)
    return (dY2 @ W.T).reshape(X.shape)


ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid", "softmax")


def activation_forward(X, name):
    if name in (None, "linear"):
        return X
    if name == "relu":
        return np.maximum(X, 0)
    if name == "tanh":
        return np.tanh(X)
    if name == "sigmoid":
        return sigmoid(X)
    if name == "softmax":
        return softmax(X)
    raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")


def activation_backward(dY, Y, name):
    """Gradient through the activation, from its output Y."""
    if name in (None, "linear"):
        return dY
    if name == "relu":
        return dY * (Y > 0)
    if name == "tanh":
        return dY * (1 - Y * Y)
    if name == "sigmoid":
        return dY * Y * (1 - Y)
    if name == "softmax":
        return Y * (dY - (dY * Y).sum(axis=-1, keepdims=True))
    raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")


# ----------------------------------------------------------------------------------------
# Loss


def softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def softmax_xent(logits, labels, mask=None):
    """Mean softmax cross-entropy over the counted items.

    Per token:    logits (B, T, K), labels (B, T) int, mask (B, T) bool.
    Per sequence: logits (B, K), labels (B,) int, mask None (or (B,) bool).
    Returns (loss, dlogits): loss is the mean over items where mask is true, dlogits its
    gradient, exactly 0 at masked items. With no counted item the loss is 0.
    """
    K = logits.shape[-1]
    flat = logits.reshape(-1, K)
    y = labels.reshape(-1).astype(np.int64)
    m = np.ones(y.shape, dtype=bool) if mask is None else mask.reshape(-1).astype(bool)
    n = int(m.sum())
    p = softmax(flat)
    d = p.copy()
    rows = np.arange(len(y))
    logp = np.log(np.maximum(p[rows, np.where(m, y, 0)], np.finfo(p.dtype).tiny))
    loss = float(-(logp * m).sum() / max(n, 1))
    d[rows, np.where(m, y, 0)] -= 1.0
    d *= (m / max(n, 1))[:, None]
    return loss, d.reshape(logits.shape).astype(logits.dtype)


# ----------------------------------------------------------------------------------------
# Bidirectional merge


MERGE_MODES = ("concat", "sum", "ave", "mul")


def merge_forward(Yf, Yb, mode):
    """Merge the two directions step by step: (..., H) x 2 -> (..., 2H) or (..., H)."""
    if mode == "concat":
        return np.concatenate([Yf, Yb], axis=-1)
    if mode == "sum":
        return Yf + Yb
    if mode == "ave":
        return (Yf + Yb) * 0.5
    if mode == "mul":
        return Yf * Yb
    raise ValueError(f"unknown merge_mode {mode!r}; choose one of {MERGE_MODES}")


def merge_backward(dY, Yf, Yb, mode):
    """Returns (dYf, dYb)."""
    if mode == "concat":
        H = Yf.shape[-1]
        return np.ascontiguousarray(dY[..., :H]), np.ascontiguousarray(dY[..., H:])
    if mode == "sum":
        return dY, dY
    if mode == "ave":
        return dY * 0.5, dY * 0.5
    if mode == "mul":
        return dY * Yb, dY * Yf
    raise ValueError(f"unknown merge_mode {mode!r}; choose one of {MERGE_MODES}")


# ----------------------------------------------------------------------------------------
# Global pooling over time: one vector per sequence (sentence classification)


POOL_MODES = ("max", "mean")


def check_spans(starts, lengths, B, T, what):
    """starts, lengths as int64 (B,) arrays, refusing any sequence outside [0, T)."""
    starts = np.asarray(starts, dtype=np.int64).reshape(-1)
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    if starts.shape != (B,) or lengths.shape != (B,):
        raise ValueError(f"{what}: starts and lengths must have shape ({B},)")
    if B and ((lengths < 0).any() or (starts < 0).any() or (starts + lengths > T).any()):
        raise ValueError(f"{what}: every sequence must lie inside [0, {T})")
    return starts, lengths


def _check_pool(mode):
    if mode not in POOL_MODES:
        raise ValueError(f"unknown pooling mode {mode!r}; choose one of {POOL_MODES}")


def pool_forward(X, starts, lengths, mode):
    """Pool the real steps of each sequence into one vector: X (B, T, F) -> Y (B, F).

    Only X[b, starts[b] : starts[b] + lengths[b]] is read (the masking rule above), so
    whatever the padding holds, NaN included, never reaches Y; pre- and post-padding alike.
        max   Y[b, f] = max over the real steps t of X[b, t, f]
              argmax (B, F) int64: that t (the first one on ties; a NaN at a real step
              wins, as in np.max), -1 for a length-0 row
        mean  Y[b, f] = (sum over the real steps of X[b, t, f]) / lengths[b]
              argmax None
    A length-0 row gives Y[b] = 0.
    Returns (Y, argmax).
    """
    _check_pool(mode)
    B, T, F = X.shape
    starts, lengths = check_spans(starts, lengths, B, T, "pool_forward")
    Y = np.zeros((B, F), dtype=X.dtype)
    argmax = np.full((B, F), -1, dtype=np.int64) if mode == "max" else None
    for b in range(B):
        s, n = int(starts[b]), int(lengths[b])
        if n == 0:
            continue
        steps = X[b, s : s + n]  # (n, F) the real steps, in time order
        if mode == "max":
            k = steps.argmax(axis=0)  # (F,) first maximum; NaN counts as the maximum
            argmax[b] = s + k
            Y[b] = steps[k, np.arange(F)]
        else:
            Y[b] = steps.sum(axis=0) / n
    return Y, argmax


def pool_backward(dY, argmax, starts, lengths, T, mode):
    """Backward of pool_forward: dY (B, F), argmax (B, F) int64 (mode max) or None.

    Returns dX (B, T, F):
        max   dX[b, argmax[b, f], f] = dY[b, f], 0 elsewhere
        mean  dX[b, t, f] = dY[b, f] / lengths[b] at the real steps, 0 elsewhere
    Padded steps and length-0 rows get exactly 0.
    """
    _check_pool(mode)
    B, F = dY.shape
    starts, lengths = check_spans(starts, lengths, B, T, "pool_backward")
    dX = np.zeros((B, T, F), dtype=dY.dtype)
    for b in range(B):
        s, n = int(starts[b]), int(lengths[b])
        if n == 0:
            continue
        if mode == "max":
            dX[b, argmax[b], np.arange(F)] = dY[b]
        else:
            dX[b, s : s + n] = dY[b] / n
    return dX


# ----------------------------------------------------------------------------------------
# Dropout: a counter-based hash, so every backend draws the same mask from the same seed


_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x):
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def dropout_mask(shape, rate, seed, dtype=np.float32):
    """Inverted-dropout scale: 0 with probability `rate`, else 1 / (1 - rate).

    Element k keeps iff uniform(hash(seed, k)) >= rate, with hash = splitmix64, so the
    mask is a pure function of (seed, k) and identical on every backend.
    """
    n = int(np.prod(shape))
    with np.errstate(over="ignore"):
        key = _splitmix64(np.uint64(seed) * np.uint64(0x100000001B3))
        u = (_splitmix64(key + np.arange(n, dtype=np.uint64)) >> np.uint64(11)).astype(np.float64) * (
            1.0 / 9007199254740992.0
        )
    keep = u >= rate
    return (keep * (1.0 / (1.0 - rate))).astype(dtype).reshape(shape)


def mul(X, M):
    """Elementwise product (dropout apply and its backward)."""
    return X * M


# ----------------------------------------------------------------------------------------
# Optimiser updates (in place). `rows`: update only these rows of a 2-D parameter (lazy).


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step, rows=None):
    """AdamW: decoupled weight decay, bias-corrected moments; step counts from 1."""
    idx = slice(None) if rows is None else rows
    g = grad[idx]
    m[idx] = beta1 * m[idx] + (1 - beta1) * g
    v[idx] = beta2 * v[idx] + (1 - beta2) * g * g
    mhat = m[idx] / (1 - beta1**step)
    vhat = v[idx] / (1 - beta2**step)
    param[idx] = param[idx] - lr * (mhat / (np.sqrt(vhat) + eps) + weight_decay * param[idx])


def sgd_update(param, grad, velocity, lr, momentum, weight_decay, rows=None):
    """SGD with (heavy-ball) momentum and decoupled weight decay."""
    idx = slice(None) if rows is None else rows
    velocity[idx] = momentum * velocity[idx] + grad[idx]
    param[idx] = param[idx] - lr * (velocity[idx] + weight_decay * param[idx])


def sum_of_squares(grad, rows=None):
    g = grad if rows is None else grad[rows]
    return float(np.sum(g.astype(np.float64) ** 2))


def scale_(arr, factor, rows=None):
    """In-place arr *= factor (on rows only, if given)."""
    if rows is None:
        arr *= factor
    else:
        arr[rows] *= factor


def fill_(arr, value, rows=None):
    """In-place fill (gradient zeroing; on rows only, if given)."""
    if rows is None:
        arr[...] = value
    else:
        arr[rows] = value


# ----------------------------------------------------------------------------------------
# Memory: host arrays on this backend


def asarray(a, dtype=None):
    return np.ascontiguousarray(a, dtype=dtype)


def to_numpy(a):
    return np.asarray(a)


def zeros(shape, dtype=np.float32):
    return np.zeros(shape, dtype=dtype)

from tagger.ops._conv_reference import conv1d_backward, conv1d_forward  # noqa: E402,F401  (issue 10: the char CNN)
