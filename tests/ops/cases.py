"""Shared cases of the op tests: ragged spans, random arrays, and one bad call per argument.

Used by every tests/ops module and by cuda_device_cases.py (the simulator subprocess), so
each case is written once and run on every backend.

Legend as in tagger/ops/reference.py. The default batch (T = 6) is unsorted and ragged:
lengths 3, full, 1, 0 and 4.
"""
from __future__ import annotations

import numpy as np

from tagger.errors import TaggerError
from tagger.ops import reference as ref
from tests.ops.conv_cases import bad_calls as conv_bad_calls  # issue 10: conv1d_forward/backward

LENGTHS = np.array([3, 6, 1, 0, 4])
T = 6
PADDINGS = ("post", "pre", "mixed")


def spans(padding, lengths=LENGTHS, T=T):
    """(starts, lengths) int64 for post-, pre- or mixed padding (each row inside 0..T)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if padding == "post":
        starts = np.zeros_like(lengths)
    elif padding == "pre":
        starts = T - lengths
    else:  # "mixed": each row somewhere inside the padded span
        starts = np.minimum(np.resize(np.array([1, 0, 3, 2, 2]), len(lengths)), T - lengths)
    return starts, lengths


def real_steps(starts, lengths, T=T):
    """(B, T) bool: the real steps."""
    t = np.arange(T)[None, :]
    return (t >= starts[:, None]) & (t < (starts + lengths)[:, None])


def rel_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = max(np.abs(a).max(initial=0), np.abs(b).max(initial=0), 1e-30)
    return np.abs(a - b).max(initial=0) / scale


def lstm_case(dtype=np.float64, seed=0, B=len(LENGTHS), I=3, H=4, T=T, scale=0.5):
    """X, W, U, b and random upstream gradients RY (B, T, H), Rh, Rc (B, H)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(B, T, I))
    W = rng.normal(scale=scale, size=(I, 4 * H))
    U = rng.normal(scale=scale, size=(H, 4 * H))
    b = rng.normal(scale=scale, size=(4 * H,))
    RY = rng.normal(size=(B, T, H))
    Rh = rng.normal(size=(B, H))
    Rc = rng.normal(size=(B, H))
    return [a.astype(dtype) for a in (X, W, U, b, RY, Rh, Rc)]


def masks(dropout, dtype, B, I, H):
    """(in_mask (B, I), rec_mask (B, H)) of rate 0.3, or (None, None)."""
    if not dropout:
        return None, None
    return ref.dropout_mask((B, I), 0.3, seed=3, dtype=dtype), ref.dropout_mask((B, H), 0.3, seed=4, dtype=dtype)


def zeros_like_weights(ops, *arrays):
    """Gradient buffers of this backend for the given host arrays."""
    return [ops.zeros(a.shape, a.dtype) for a in arrays]


def message(call):
    """The TaggerError text of call() (fails when it raises nothing or something else)."""
    try:
        call()
    except TaggerError as err:
        return str(err)
    raise AssertionError("accepted a bad argument")


# ----------------------------------------------------------------------------------------
# bad input: one call per bad argument, for every op that takes arrays


def bad_calls(ops):
    """{label: (expected message start, thunk)}: each thunk calls one op of `ops` with
    exactly one bad argument. Arguments are host arrays (every backend takes them; the
    checks run before anything is copied). Labels start with the op's name."""
    a = _arrays(ops)
    return {**_bad_lstm(ops, a), **_bad_layers(ops, a), **_bad_rest(ops, a), **conv_bad_calls(ops)}


class _A:
    """The good arguments the bad calls start from (B = 2, T = 3, I = 2, H = 2)."""


def _arrays(ops):
    a, rng = _A(), np.random.default_rng(0)
    a.B, a.T, a.I, a.H = 2, 3, 2, 2
    a.X, a.Y3 = rng.normal(size=(a.B, a.T, a.I)), rng.normal(size=(a.B, a.T, a.H))
    a.W, a.U, a.b = rng.normal(size=(a.I, 4 * a.H)), rng.normal(size=(a.H, 4 * a.H)), np.zeros(4 * a.H)
    a.st, a.ln = np.array([0, 1]), np.array([3, 2])
    a.cache = ops.lstm_forward(a.X, a.W, a.U, a.b, a.st, a.ln)[3]
    a.gW, a.gU, a.gb = (np.zeros_like(x) for x in (a.W, a.U, a.b))
    a.table, a.ids = rng.normal(size=(5, a.I)), np.array([[1, 2, 0], [4, 0, 0]])
    a.P = a.table @ a.W
    a.logits, a.labels = rng.normal(size=(a.B, a.T, 4)), np.array([[0, 1, 3], [2, 0, 0]])
    a.D, a.Dw = rng.normal(size=(a.B, 4)), rng.normal(size=(4, 3))
    a.p, a.rows = rng.normal(size=(4, 3)), np.array([0, 9])
    return a


def _bad_lstm(ops, a):
    """lstm_forward / lstm_backward and the pair and ids ops."""
    return {
        # -- lstm_forward: spans (the heap corruption), shapes, dtypes
        "lstm_forward span past T": ("lstm_forward: a span runs past the 3 padded",
            lambda: ops.lstm_forward(a.X, a.W, a.U, a.b, a.st, a.ln + 1)),
        "lstm_forward negative start": ("lstm_forward: starts and lengths must be >= 0",
            lambda: ops.lstm_forward(a.X, a.W, a.U, a.b, a.st - 1, a.ln - 1)),
        "lstm_forward one span for two rows": ("lstm_forward: starts and lengths must have shape (2,)",
            lambda: ops.lstm_forward(a.X, a.W, a.U, a.b, a.st[:1], a.ln[:1])),
        "lstm_forward float starts": ("lstm_forward: starts and lengths must be integers",
            lambda: ops.lstm_forward(a.X, a.W, a.U, a.b, a.st.astype(np.float64), a.ln)),
        "lstm_forward 2-D X": ("lstm_forward: X must be 3-D (B, T, I)",
            lambda: ops.lstm_forward(a.X[0], a.W, a.U, a.b, a.st, a.ln)),
        "lstm_forward W rows": ("lstm_forward: W has shape (3, 8), expected (I, 4H)",
            lambda: ops.lstm_forward(a.X, np.zeros((3, 8)), a.U, a.b, a.st, a.ln)),
        "lstm_forward U not (H, 4H)": ("lstm_forward: U has shape (2, 6), expected (H, 4H)",
            lambda: ops.lstm_forward(a.X, a.W, a.U[:, :6], a.b, a.st, a.ln)),
        "lstm_forward b": ("lstm_forward: b has shape (7,)",
            lambda: ops.lstm_forward(a.X, a.W, a.U, a.b[:7], a.st, a.ln)),
        "lstm_forward mixed dtypes": ("lstm_forward: W is float32 but X is float64",
            lambda: ops.lstm_forward(a.X, a.W.astype(np.float32), a.U, a.b, a.st, a.ln)),
        "lstm_forward int X": ("lstm_forward: X must be a float array, got int64",
            lambda: ops.lstm_forward(a.X.astype(np.int64), a.W, a.U, a.b, a.st, a.ln)),
        "lstm_forward in_mask": ("lstm_forward: in_mask has shape (2, 3)",
            lambda: ops.lstm_forward(a.X, a.W, a.U, a.b, a.st, a.ln, False, np.ones((a.B, 3)))),
        "lstm_forward rec_mask": ("lstm_forward: rec_mask has shape (1, 2)",
            lambda: ops.lstm_forward(a.X, a.W, a.U, a.b, a.st, a.ln, False, None, np.ones((1, a.H)))),
        # -- lstm_backward
        "lstm_backward foreign cache": ("lstm_backward: cache must be what this backend's lstm_forward returned",
            lambda: ops.lstm_backward(None, a.Y3, None, None, a.gW, a.gU, a.gb)),
        "lstm_backward dY": ("lstm_backward: dY has shape (2, 2, 2)",
            lambda: ops.lstm_backward(a.cache, a.Y3[:, :2], None, None, a.gW, a.gU, a.gb)),
        "lstm_backward dh_last": ("lstm_backward: dh_last has shape (2, 3)",
            lambda: ops.lstm_backward(a.cache, None, np.ones((a.B, 3)), None, a.gW, a.gU, a.gb)),
        "lstm_backward dW": ("lstm_backward: dW has shape (8, 2)",
            lambda: ops.lstm_backward(a.cache, a.Y3, None, None, a.gW.T, a.gU, a.gb)),
        "lstm_backward dtype": ("lstm_backward: gradients are float32 but the forward ran in float64",
            lambda: ops.lstm_backward(a.cache, None, None, None, *(x.astype(np.float32) for x in (a.gW, a.gU, a.gb)))),
        # -- pair and ids ops
        "lstm_forward_pair not a tuple": ("lstm_forward_pair: args_bwd must be a tuple",
            lambda: ops.lstm_forward_pair((a.X, a.W, a.U, a.b, a.st, a.ln), None)),
        "lstm_forward_pair span past T": ("lstm_forward: a span runs past",
            lambda: ops.lstm_forward_pair((a.X, a.W, a.U, a.b, a.st, a.ln), (a.X, a.W, a.U, a.b, a.st + 1, a.ln))),
        "lstm_backward_pair shared buffers": ("lstm_backward_pair: both directions accumulate into the same dW",
            lambda: ops.lstm_backward_pair((a.cache, a.Y3, None, None, a.gW, a.gU, a.gb),
                                           (a.cache, a.Y3, None, None, a.gW, a.gU.copy(), a.gb.copy()))),
        "lstm_input_table W rows": ("lstm_input_table: W has shape (3, 8), expected (E, 4H)",
            lambda: ops.lstm_input_table(a.table, np.zeros((3, 8)))),
        "lstm_forward_ids id out of range": ("lstm_forward_ids: ids out of range 0..4",
            lambda: ops.lstm_forward_ids(a.P, a.ids + 1, a.U, a.b, a.st, a.ln)),
        "lstm_forward_ids span past T": ("lstm_forward_ids: a span runs past",
            lambda: ops.lstm_forward_ids(a.P, a.ids, a.U, a.b, a.st + 1, a.ln)),
        "lstm_forward_ids P width": ("lstm_forward_ids: P has shape (5, 2), expected (V, 4H)",
            lambda: ops.lstm_forward_ids(a.P[:, :2], a.ids, a.U, a.b, a.st, a.ln)),
        "lstm_forward_ids_pair bad ids": ("lstm_forward_ids: ids out of range 0..4",
            lambda: ops.lstm_forward_ids_pair((a.P, a.ids, a.U, a.b, a.st, a.ln), (a.P, -a.ids, a.U, a.b, a.st, a.ln))),
    }


def _bad_layers(ops, a):
    """Embedding, dense, activations and the loss."""
    return {
        # -- embedding
        "embedding_forward id too big": ("embedding_forward: ids out of range 0..4",
            lambda: ops.embedding_forward(a.table, a.ids + 1)),
        "embedding_forward negative id": ("embedding_forward: ids out of range 0..4",
            lambda: ops.embedding_forward(a.table, -a.ids)),
        "embedding_forward float ids": ("embedding_forward: ids must be integers",
            lambda: ops.embedding_forward(a.table, a.ids.astype(np.float64))),
        "embedding_forward 1-D table": ("embedding_forward: table must be 2-D (V, E)",
            lambda: ops.embedding_forward(a.table[0], a.ids)),
        "embedding_backward dE": ("embedding_backward: dE has shape (2, 3, 3)",
            lambda: ops.embedding_backward(np.zeros((5, 2)), np.zeros((a.B, a.T, 3)), a.ids)),
        "embedding_backward mask": ("embedding_backward: mask has shape (2, 2)",
            lambda: ops.embedding_backward(np.zeros((5, 2)), np.zeros((a.B, a.T, 2)), a.ids, a.ids[:, :2] > 0)),
        "embedding_backward id": ("embedding_backward: ids out of range 0..4",
            lambda: ops.embedding_backward(np.zeros((5, 2)), np.zeros((a.B, a.T, 2)), a.ids + 1)),
        # -- dense and activations
        "dense_forward X width": ("dense_forward: X has shape (2, 3, 2), expected (..., I), I = W's rows = 4",
            lambda: ops.dense_forward(a.X, a.Dw, None)),
        "dense_forward b": ("dense_forward: b has shape (4,), expected (K,)",
            lambda: ops.dense_forward(a.D, a.Dw, np.zeros(4))),
        "dense_forward int X": ("dense_forward: X must be a float array",
            lambda: ops.dense_forward(a.D.astype(np.int32), a.Dw, None)),
        "dense_backward dY": ("dense_backward: dY has shape (2, 4)",
            lambda: ops.dense_backward(a.D, a.D, a.Dw, np.zeros((4, 3)), None)),
        "dense_backward db": ("dense_backward: db has shape (2,)",
            lambda: ops.dense_backward(a.D @ a.Dw, a.D, a.Dw, np.zeros((4, 3)), np.zeros(2))),
        "activation_forward name": ("activation_forward: unknown activation 'swish'",
            lambda: ops.activation_forward(a.D, "swish")),
        "activation_forward int X": ("activation_forward: X must be a float array",
            lambda: ops.activation_forward(a.ids, "relu")),
        "activation_backward shapes": ("activation_backward: dY has shape (2, 3)",
            lambda: ops.activation_backward(a.D[:, :3], a.D, "tanh")),
        "activation_backward name": ("activation_backward: unknown activation 'gelu'",
            lambda: ops.activation_backward(a.D, a.D, "gelu")),
        # -- loss
        "softmax int logits": ("softmax: logits must be a float array",
            lambda: ops.softmax(a.ids)),
        "softmax_xent label out of range": ("softmax_xent: labels out of range 0..3",
            lambda: ops.softmax_xent(a.logits, a.labels + 1, None)),
        "softmax_xent labels shape": ("softmax_xent: labels has shape (2, 2)",
            lambda: ops.softmax_xent(a.logits, a.labels[:, :2], None)),
        "softmax_xent mask shape": ("softmax_xent: mask has shape (2,)",
            lambda: ops.softmax_xent(a.logits, a.labels, np.ones(a.B, bool))),
    }


def _bad_rest(ops, a):
    """Merge, pooling, dropout, mul, optimisers and buffers."""
    return {
        # -- merge and pooling
        "merge_forward mode": ("merge_forward: unknown merge_mode 'max'",
            lambda: ops.merge_forward(a.Y3, a.Y3, "max")),
        "merge_forward shapes": ("merge_forward: Yb has shape (2, 3, 1)",
            lambda: ops.merge_forward(a.Y3, a.Y3[..., :1], "sum")),
        "merge_backward concat dY": ("merge_backward: dY has shape (2, 3, 2), expected Yf.shape[:-1] + (2H,)",
            lambda: ops.merge_backward(a.Y3, a.Y3, a.Y3, "concat")),
        "concat_forward empty": ("concat_forward: Ys must be a non-empty list of arrays",
            lambda: ops.concat_forward([])),
        "concat_forward leading shape": ("concat_forward: Ys[1] has shape (2, 2, 2), expected Ys[0].shape[:-1]",
            lambda: ops.concat_forward([a.Y3, a.Y3[:, :2]])),
        "concat_forward dtype": ("concat_forward: Ys[1] is float32 but Ys[0] is float64",
            lambda: ops.concat_forward([a.Y3, a.Y3.astype(np.float32)])),
        "concat_backward widths": ("concat_backward: dY has shape (2, 3, 2), expected (..., sum(widths)), sum(widths) = 3",
            lambda: ops.concat_backward(a.Y3, [1, 2])),
        "concat_backward bad width": ("concat_backward: widths must be a non-empty list of ints >= 0",
            lambda: ops.concat_backward(a.Y3, [-1, 2])),
        "pool_forward mode": ("pool_forward: unknown pooling mode 'sum'",
            lambda: ops.pool_forward(a.Y3, a.st, a.ln, "sum")),
        "pool_forward span past T": ("pool_forward: a span runs past",
            lambda: ops.pool_forward(a.Y3, a.st + 1, a.ln, "max")),
        "pool_forward 2-D X": ("pool_forward: X must be 3-D (B, T, F)",
            lambda: ops.pool_forward(a.Y3[0], a.st, a.ln, "mean")),
        "pool_backward argmax": ("pool_backward: argmax outside its row's real steps",
            lambda: ops.pool_backward(a.D[:, :a.H], np.full((a.B, a.H), 7), a.st, a.ln, a.T, "max")),
        "pool_backward T": ("pool_backward: T must be an int >= 0",
            lambda: ops.pool_backward(a.D[:, :a.H], None, a.st, a.ln, -1, "mean")),
        "pool_backward mode": ("pool_backward: unknown pooling mode 'min'",
            lambda: ops.pool_backward(a.D[:, :a.H], None, a.st, a.ln, a.T, "min")),
        # -- dropout, mul, optimisers, buffers
        "dropout_mask rate": ("dropout_mask: rate must lie in [0, 1)",
            lambda: ops.dropout_mask((2, 3), 1.0, 0)),
        "dropout_mask seed": ("dropout_mask: seed must be an int >= 0",
            lambda: ops.dropout_mask((2, 3), 0.5, -1)),
        "mul broadcast": ("mul: M of shape (3,) does not broadcast",
            lambda: ops.mul(a.D, np.ones(3))),
        "adam_update grad shape": ("adam_update: grad has shape (3, 4)",
            lambda: ops.adam_update(a.p, a.p.T, a.p, a.p, 0.1, 0.9, 0.999, 1e-8, 0.0, 1)),
        "adam_update rows": ("adam_update: rows out of range 0..3",
            lambda: ops.adam_update(a.p, a.p, a.p, a.p, 0.1, 0.9, 0.999, 1e-8, 0.0, 1, a.rows)),
        "adam_update step": ("adam_update: step must be an int >= 1",
            lambda: ops.adam_update(a.p, a.p, a.p, a.p, 0.1, 0.9, 0.999, 1e-8, 0.0, 0)),
        "ema_update shape": ("ema_update: param has shape (3, 4)",
            lambda: ops.ema_update(a.p, a.p.T, 0.99)),
        "ema_update momentum": ("ema_update: momentum must be a number in [0, 1), got 1.0",
            lambda: ops.ema_update(a.p, a.p, 1.0)),
        "sgd_update rows": ("sgd_update: rows out of range 0..3",
            lambda: ops.sgd_update(a.p, a.p, a.p, 0.1, 0.9, 0.0, a.rows)),
        "sgd_update dtype": ("sgd_update: velocity is float32 but param is float64",
            lambda: ops.sgd_update(a.p, a.p, a.p.astype(np.float32), 0.1, 0.9, 0.0)),
        "sum_of_squares rows": ("sum_of_squares: rows out of range 0..3",
            lambda: ops.sum_of_squares(a.p, a.rows)),
        "scale_ rows": ("scale_: rows out of range 0..3",
            lambda: ops.scale_(a.p, 2.0, a.rows)),
        "fill_ rows": ("fill_: rows out of range 0..3",
            lambda: ops.fill_(a.p, 0.0, a.rows)),    }


# ops that only move or allocate memory: nothing for a kernel to index with
UNCHECKED_OPS = ("asarray", "to_numpy", "zeros")
