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

LSTM options (Keras LSTM arguments, the same on every backend)
--------------------------------------------------------------
    activation            "tanh" (default): the candidate g and the output act(c)
    recurrent_activation  "sigmoid" (default): the gates i, f, o
        each one of LSTM_ACTIVATIONS:
            tanh          tanh(x)
            sigmoid       1 / (1 + exp(-x))
            hard_sigmoid  clip(x / 6 + 0.5, 0, 1)    (Keras 3; Keras 2 used 0.2 x + 0.5)
            relu          max(x, 0)
            linear        x
        Backward takes each derivative from the stored activation a = act(x):
            tanh 1 - a^2, sigmoid a (1 - a), hard_sigmoid 1/6 where 0 < a < 1 else 0,
            relu 1 where a > 0 else 0, linear 1.
        At the kinks (hard_sigmoid at x = +-3, relu at x = 0) this is the one-sided
        derivative of the flat side: 0.
    h0, c0 (B, H) or None  the initial state (Keras initial_state=[h, c]); None = zeros.
        Each sequence starts its first real step from its own row (rec_mask applies to h0
        as to every h_prev, as Keras's recurrent dropout does to h_tm1). A length-0 row
        takes no step, so its final (h, c) is (h0, c0), as in Keras, where a masked step
        carries the state over unchanged; its outputs stay 0.

Backward passes *accumulate* into the gradient buffers they are handed
(dW, dU, db, dtable, ...) and return the input gradient.

Every op checks its arguments first (tagger/ops/_checks.py, shared by every backend):
bad shapes, dtypes, spans, ids or modes raise one-line TaggerErrors, the same on every
backend. Beyond the single ops, the interface (OP_NAMES) holds the two-direction pair
ops and inference from token ids; here they are plain sequential calls and a table
lookup followed by the ordinary recurrence.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tagger.errors import TaggerError
from tagger.ops import _checks as chk
# ACTIVATIONS, MERGE_MODES, POOL_MODES are read from here by the layers (the spec's names)
from tagger.ops._common import ACTIVATIONS, GATES, MERGE_MODES, POOL_MODES, dropout_key, splitmix64  # noqa: F401

# Capabilities (tagger.ops.CAPABILITIES): the pair ops run one call after the other, and
# inference through lstm_input_table saves nothing here (the spec does the same work).
PROJECTED_INFERENCE = False
CONCURRENT_PAIR = False

LSTM_ACTIVATIONS = ("tanh", "sigmoid", "hard_sigmoid", "relu", "linear")
# integer codes the kernels dispatch on (cpu.py, _cuda_kernels.py); 0-3 match
# _cuda_kernels.ACT_CODES, 4 is softmax there (never an LSTM activation)
LSTM_ACT_CODES = {"linear": 0, "relu": 1, "tanh": 2, "sigmoid": 3, "hard_sigmoid": 5}


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


def lstm_act_codes(activation, recurrent_activation):
    """(cell code, gate code) of LSTM_ACT_CODES for the two LSTM activation names."""
    for arg, name in (("activation", activation), ("recurrent_activation", recurrent_activation)):
        if name not in LSTM_ACT_CODES:
            raise TaggerError(f"LSTM {arg}={name!r} is not supported; choose one of {', '.join(LSTM_ACTIVATIONS)}")
    return LSTM_ACT_CODES[activation], LSTM_ACT_CODES[recurrent_activation]


def lstm_act(x, name):
    """The LSTM activation `name` (LSTM_ACTIVATIONS) of x."""
    if name == "tanh":
        return np.tanh(x)
    if name == "sigmoid":
        return sigmoid(x)
    if name == "hard_sigmoid":
        return np.clip(x / 6 + 0.5, 0, 1).astype(x.dtype, copy=False)
    if name == "relu":
        return np.maximum(x, 0)
    return x  # linear


def lstm_dact(a, name):
    """Derivative of lstm_act(x, name), from its output a (kinks: 0, see the legend)."""
    if name == "tanh":
        return 1 - a * a
    if name == "sigmoid":
        return a * (1 - a)
    if name == "hard_sigmoid":
        return ((a > 0) & (a < 1)) * a.dtype.type(1 / 6)
    if name == "relu":
        return (a > 0).astype(a.dtype)
    return np.ones_like(a)  # linear


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
    activation: str = "tanh"  # of g and of the output act(c)
    recurrent_activation: str = "sigmoid"  # of i, f, o
    h0: np.ndarray | None = None  # (B, H) initial state, or None (zeros)
    c0: np.ndarray | None = None  # (B, H)


def _initial_state(s0, B, H, dtype):
    return np.zeros((B, H), dtype=dtype) if s0 is None else np.array(s0, dtype=dtype)


def lstm_forward(X, W, U, b, starts, lengths, reverse=False, in_mask=None, rec_mask=None,
                 activation="tanh", recurrent_activation="sigmoid", h0=None, c0=None, for_backward=True):
    """One LSTM direction over a padded batch.

    X (B, T, I), W (I, G), U (H, G), b (G,), starts/lengths (B,) int,
    in_mask (B, I) or None, rec_mask (B, H) or None, h0/c0 (B, H) or None;
    activation, recurrent_activation in LSTM_ACTIVATIONS (see the legend).
    Returns Y (B, T, H), h_last (B, H), c_last (B, H), cache; with for_backward False
    (inference: no lstm_backward will follow) the cache is None.
    """
    lstm_act_codes(activation, recurrent_activation)
    starts, lengths = chk.check_lstm_forward(X, W, U, b, starts, lengths, in_mask, rec_mask, h0=h0, c0=c0)
    B, T, _ = X.shape
    H = U.shape[0]
    if in_mask is not None:
        X = X * in_mask[:, None, :]
    acts = np.zeros((B, T, GATES * H), dtype=X.dtype)
    C = np.zeros((B, T, H), dtype=X.dtype)
    Y = np.zeros((B, T, H), dtype=X.dtype)
    h = _initial_state(h0, B, H, X.dtype)
    c = _initial_state(c0, B, H, X.dtype)
    max_len = int(lengths.max()) if B else 0
    for s in range(max_len):
        rows, times = step_times(starts, lengths, s, reverse)
        h_in = h[rows] if rec_mask is None else h[rows] * rec_mask[rows]
        z = X[rows, times] @ W + h_in @ U + b  # (n, G)
        i = lstm_act(z[:, 0 * H : 1 * H], recurrent_activation)
        f = lstm_act(z[:, 1 * H : 2 * H], recurrent_activation)
        g = lstm_act(z[:, 2 * H : 3 * H], activation)
        o = lstm_act(z[:, 3 * H : 4 * H], recurrent_activation)
        c[rows] = f * c[rows] + i * g
        h[rows] = o * lstm_act(c[rows], activation)
        acts[rows, times] = np.concatenate([i, f, g, o], axis=1)
        C[rows, times] = c[rows]
        Y[rows, times] = h[rows]
    cache = LSTMCache(X, W, U, starts, lengths, bool(reverse), in_mask, rec_mask, acts, C, Y,
                      activation, recurrent_activation, h0, c0)
    return Y, h, c, (cache if for_backward else None)


def _state_before(cache, rows, times, s, h_init, c_init):
    """(h_prev * rec_mask, c_prev) entering step s of `rows`: the previous step's outputs
    (consecutive steps of one sequence read adjacent time indices), or the initial state."""
    if s > 0:
        prev_times = times + 1 if cache.reverse else times - 1
        h_prev, c_prev = cache.Y[rows, prev_times], cache.C[rows, prev_times]
    else:
        h_prev, c_prev = h_init[rows], c_init[rows]
    if cache.rec_mask is not None:
        h_prev = h_prev * cache.rec_mask[rows]
    return h_prev, c_prev


def lstm_backward(cache, dY, dh_last, dc_last, dW, dU, db, dh0=None, dc0=None):
    """Backward of lstm_forward. dY (B, T, H) or None; dh_last, dc_last (B, H) or None.

    Accumulates into dW (I, G), dU (H, G), db (G,), and into dh0, dc0 (B, H) when given
    (the gradient w.r.t. the initial state: h0/c0, or the zeros used without them);
    returns dX (B, T, I). Gradients arriving at padded positions of dY are ignored (those
    outputs are constants).
    """
    chk.check_cache("lstm_backward", cache, LSTMCache)
    chk.check_lstm_backward(cache.X.shape + cache.U.shape[:1], cache.X.dtype, dY, dh_last, dc_last, dW, dU, db,
                            dh0=dh0, dc0=dc0)
    X, W, U = cache.X, cache.W, cache.U
    starts, lengths, reverse = cache.starts, cache.lengths, cache.reverse
    act, rec_act = cache.activation, cache.recurrent_activation
    B, T, _ = X.shape
    H = U.shape[0]
    dX = np.zeros_like(X)
    h_init = _initial_state(cache.h0, B, H, X.dtype)
    c_init = _initial_state(cache.c0, B, H, X.dtype)
    dh_next = np.zeros((B, H), dtype=X.dtype) if dh_last is None else dh_last.astype(X.dtype, copy=True)
    dc_next = np.zeros((B, H), dtype=X.dtype) if dc_last is None else dc_last.astype(X.dtype, copy=True)
    max_len = int(lengths.max()) if B else 0
    for s in range(max_len - 1, -1, -1):
        rows, times = step_times(starts, lengths, s, reverse)
        # 1. state before this step
        h_prev, c_prev = _state_before(cache, rows, times, s, h_init, c_init)
        a = cache.acts[rows, times]
        i, f, g, o = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
        tc = lstm_act(cache.C[rows, times], act)
        # 2. h = o * act(c)
        dh = dh_next[rows] + (0 if dY is None else dY[rows, times])
        do = dh * tc
        dc = dc_next[rows] + dh * o * lstm_dact(tc, act)
        # 3. c = f * c_prev + i * g
        di, dg, df, dc_prev = dc * g, dc * i, dc * c_prev, dc * f
        # 4. gate nonlinearities
        dz = np.concatenate([di * lstm_dact(i, rec_act), df * lstm_dact(f, rec_act), dg * lstm_dact(g, act),
                             do * lstm_dact(o, rec_act)], axis=1)
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
    # 6. what is left is the gradient w.r.t. the state before each row's first step (for a
    #    length-0 row: dh_last, dc_last, its final state being the initial one)
    if dh0 is not None:
        dh0 += dh_next
    if dc0 is not None:
        dc0 += dc_next
    if cache.in_mask is not None:
        dX *= cache.in_mask[:, None, :]
    return dX


# ----------------------------------------------------------------------------------------
# LSTM: both directions (pair ops) and inference from token ids


def lstm_input_table(table, W):
    """P (V, G) = table (V, E) @ W (E, G): every vocabulary row's input projection."""
    chk.check_lstm_input_table(table, W)
    return table @ W


def lstm_forward_ids(P, ids, U, b, starts, lengths, reverse=False, activation="tanh",
                     recurrent_activation="sigmoid", h0=None, c0=None):
    """lstm_forward(embedding_forward(table, ids), W, U, b, starts, lengths, reverse) for
    P = lstm_input_table(table, W): each step's projection x W is looked up in P.
    Inference only (no dropout masks); the cache is None (no backward).

    P (V, G), ids (B, T) int, U (H, G), b (G,), starts/lengths (B,) int.
    Returns Y (B, T, H), h_last (B, H), c_last (B, H), None.
    """
    ids, starts, lengths = chk.check_lstm_forward_ids(P, ids, U, b, starts, lengths)
    XW = P[ids]  # (B, T, G) the looked-up projections
    # the recurrence itself is lstm_forward's: an identity kernel passes XW through unchanged
    # (x @ I == x exactly), so this stays the one spec of the recurrence
    Y, h, c, _ = lstm_forward(XW, np.eye(P.shape[1], dtype=P.dtype), U, b, starts, lengths, reverse, None, None, activation,
                              recurrent_activation, h0, c0)
    return Y, h, c, None


# the directions one after the other (CONCURRENT_PAIR False), through this module's own ops
lstm_forward_pair, lstm_backward_pair, lstm_forward_ids_pair = chk.sequential_pair_ops(
    lstm_forward, lstm_backward, lstm_forward_ids)


# ----------------------------------------------------------------------------------------
# Embedding


def embedding_forward(table, ids):
    """table (V, E), ids (B, T) int -> (B, T, E). Every id is looked up (padding id 0 too)."""
    ids = chk.check_embedding_forward(table, ids)
    return table[ids]


def embedding_backward(dtable, dE, ids, mask=None):
    """Scatter-add dE (B, T, E) into dtable (V, E) at ids where mask (B, T) is true.

    Returns the sorted unique rows touched (int64), so sparse optimisers update only those.
    """
    ids, mask = chk.check_embedding_backward(dtable, dE, ids, mask)
    mask = np.ones(ids.shape, dtype=bool) if mask is None else mask.astype(bool)
    sel_ids = ids[mask]
    np.add.at(dtable, sel_ids, dE[mask])
    return np.unique(sel_ids).astype(np.int64)


# ----------------------------------------------------------------------------------------
# Dense and activations


def dense_forward(X, W, b):
    """X (..., I) @ W (I, K) + b (K,) -> (..., K); 2-D and 3-D input alike. b None: no bias."""
    chk.check_dense_forward(X, W, b)
    Y = X @ W
    return Y if b is None else Y + b


def dense_backward(dY, X, W, dW, db):
    """Accumulates dW (I, K) and db (K,) (db None: no bias); returns dX shaped like X."""
    chk.check_dense_backward(dY, X, W, dW, db)
    I, K = W.shape
    X2 = X.reshape(-1, I)
    dY2 = dY.reshape(-1, K)
    dW += X2.T @ dY2
    if db is not None:
        db += dY2.sum(axis=0)
    return (dY2 @ W.T).reshape(X.shape)


def activation_forward(X, name):
    chk.check_activation_forward(X, name)
    if name in (None, "linear"):
        return X
    if name == "relu":
        return np.maximum(X, 0)
    if name == "tanh":
        return np.tanh(X)
    if name == "sigmoid":
        return sigmoid(X)
    return softmax(X)


def activation_backward(dY, Y, name):
    """Gradient through the activation, from its output Y."""
    chk.check_activation_backward(dY, Y, name)
    if name in (None, "linear"):
        return dY
    if name == "relu":
        return dY * (Y > 0)
    if name == "tanh":
        return dY * (1 - Y * Y)
    if name == "sigmoid":
        return dY * Y * (1 - Y)
    return Y * (dY - (dY * Y).sum(axis=-1, keepdims=True))  # softmax


# ----------------------------------------------------------------------------------------
# Loss


def softmax(logits):
    chk.check_softmax(logits)
    return _softmax(logits)


def _softmax(logits):
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
    labels, mask = chk.check_softmax_xent(logits, labels, mask)
    K = logits.shape[-1]
    flat = logits.reshape(-1, K)
    y = labels.reshape(-1).astype(np.int64)
    m = np.ones(y.shape, dtype=bool) if mask is None else mask.reshape(-1).astype(bool)
    n = int(m.sum())
    p = _softmax(flat)
    d = p.copy()
    rows = np.arange(len(y))
    logp = np.log(np.maximum(p[rows, np.where(m, y, 0)], np.finfo(p.dtype).tiny))
    loss = float(-(logp * m).sum() / max(n, 1))
    d[rows, np.where(m, y, 0)] -= 1.0
    d *= (m / max(n, 1))[:, None]
    return loss, d.reshape(logits.shape).astype(logits.dtype)


# ----------------------------------------------------------------------------------------
# Bidirectional merge


def merge_forward(Yf, Yb, mode):
    """Merge the two directions step by step: (..., H) x 2 -> (..., 2H) or (..., H)."""
    chk.check_merge_forward(Yf, Yb, mode)
    if mode == "concat":
        return np.concatenate([Yf, Yb], axis=-1)
    if mode == "sum":
        return Yf + Yb
    if mode == "ave":
        return (Yf + Yb) * 0.5
    return Yf * Yb  # mul


def merge_backward(dY, Yf, Yb, mode):
    """Returns (dYf, dYb)."""
    chk.check_merge_backward(dY, Yf, Yb, mode)
    if mode == "concat":
        H = Yf.shape[-1]
        return np.ascontiguousarray(dY[..., :H]), np.ascontiguousarray(dY[..., H:])
    if mode == "sum":
        return dY, dY
    if mode == "ave":
        return dY * 0.5, dY * 0.5
    return dY * Yb, dY * Yf  # mul


# ----------------------------------------------------------------------------------------
# Concatenation along the last axis, unequal widths (word embedding ++ character features)


def concat_forward(Ys):
    """[(..., W_0), (..., W_1), ...] -> (..., W_0 + W_1 + ...), in list order."""
    chk.check_concat_forward(Ys)
    return np.concatenate([np.asarray(y) for y in Ys], axis=-1)


def concat_backward(dY, widths):
    """dY (..., sum(widths)) -> [dY_k (..., W_k)]: the slices, fresh contiguous arrays."""
    widths = chk.check_concat_backward(dY, widths)
    edges = np.cumsum([0, *widths])
    return [np.ascontiguousarray(dY[..., a:b]) for a, b in zip(edges[:-1], edges[1:])]


# ----------------------------------------------------------------------------------------
# Global pooling over time: one vector per sequence (sentence classification)


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
    starts, lengths = chk.check_pool_forward(X, starts, lengths, mode)
    B, T, F = X.shape
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
    argmax, starts, lengths = chk.check_pool_backward(dY, argmax, starts, lengths, T, mode)
    B, F = dY.shape
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


def dropout_mask(shape, rate, seed, dtype=np.float32):
    """Inverted-dropout scale: 0 with probability `rate`, else 1 / (1 - rate).

    Element k keeps iff uniform(hash(seed, k)) >= rate, with hash = splitmix64, so the
    mask is a pure function of (seed, k) and identical on every backend.
    """
    shape = chk.check_dropout_mask(shape, rate, seed, dtype)
    n = int(np.prod(shape))
    key = dropout_key(seed)
    with np.errstate(over="ignore"):
        u = (splitmix64(key + np.arange(n, dtype=np.uint64)) >> np.uint64(11)).astype(np.float64) * (
            1.0 / 9007199254740992.0
        )
    keep = u >= rate
    return (keep * (1.0 / (1.0 - rate))).astype(dtype).reshape(shape)


def mul(X, M):
    """Elementwise product (dropout apply and its backward); M broadcasts against X."""
    chk.check_mul(X, M)
    return X * M


# ----------------------------------------------------------------------------------------
# Optimiser updates (in place). `rows`: update only these rows of a 2-D parameter (lazy).


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step, rows=None):
    """AdamW: decoupled weight decay, bias-corrected moments; step counts from 1."""
    chk.check_step("adam_update", step)
    rows = chk.check_update("adam_update", rows, param=param, grad=grad, m=m, v=v)
    idx = slice(None) if rows is None else rows
    g = grad[idx]
    m[idx] = beta1 * m[idx] + (1 - beta1) * g
    v[idx] = beta2 * v[idx] + (1 - beta2) * g * g
    mhat = m[idx] / (1 - beta1**step)
    vhat = v[idx] / (1 - beta2**step)
    param[idx] = param[idx] - lr * (mhat / (np.sqrt(vhat) + eps) + weight_decay * param[idx])


def sgd_update(param, grad, velocity, lr, momentum, weight_decay, rows=None):
    """SGD with (heavy-ball) momentum and decoupled weight decay."""
    rows = chk.check_update("sgd_update", rows, param=param, grad=grad, velocity=velocity)
    idx = slice(None) if rows is None else rows
    velocity[idx] = momentum * velocity[idx] + grad[idx]
    param[idx] = param[idx] - lr * (velocity[idx] + weight_decay * param[idx])


def ema_update(average, param, momentum):
    """In place: average = momentum * average + (1 - momentum) * param, every element
    (Keras' use_ema formula). Dense on purpose: a row of an embedding that a batch does not
    touch still moves its average towards its (unchanged) weights."""
    chk.check_ema_update(average, param, momentum)
    t = average.dtype.type
    average *= t(momentum)
    average += t(1 - momentum) * param


def sum_of_squares(grad, rows=None):
    rows = chk.check_update("sum_of_squares", rows, grad=grad)
    g = grad if rows is None else grad[rows]
    return float(np.sum(g.astype(np.float64) ** 2))


def scale_(arr, factor, rows=None):
    """In-place arr *= factor (on rows only, if given)."""
    rows = chk.check_buffer("scale_", arr, rows)
    if rows is None:
        arr *= factor
    else:
        arr[rows] *= factor


def fill_(arr, value, rows=None):
    """In-place fill (gradient zeroing; on rows only, if given)."""
    rows = chk.check_buffer("fill_", arr, rows)
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


from tagger.ops._crf_reference import crf_marginals, crf_nbest, crf_nll, crf_viterbi  # noqa: E402,F401  (the CRF ops)
from tagger.ops._conv_reference import conv1d_backward, conv1d_forward  # noqa: E402,F401  (issue 10: the char CNN)
