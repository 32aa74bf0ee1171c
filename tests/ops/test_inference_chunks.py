"""Inference forwards (lstm_forward with for_backward=False, lstm_forward_ids) hold a few
steps of state at a time on the CPU backend (cpu._recurrence_in_chunks): the results are
the training forward's, for every chunk size down to one step.

  * lstm_forward_ids (a lookup per step): bitwise equal whatever the chunk size;
  * lstm_forward for_backward=False (one GEMM per chunk of steps instead of one for all):
    equal to the training forward to 1e-12 in float64 and 1e-6 in float32, with masks,
    an initial state, other activations, every padding side and both directions;
  * every backend accepts for_backward and then returns no cache;
  * the CPU pair ops write both directions into one (B, T, 2H) array, which merge_forward's
    concat returns as it is.
"""
from __future__ import annotations

import numpy as np
import pytest

from tagger.ops import cpu, get_ops
from tagger.ops import reference as ref
from tests.ops.cases import LENGTHS, lstm_case, masks, rel_err, spans

# CHUNK_BYTES small enough for chunks of 1, 2 and 3 steps of the default case's rows
# (B = 5, G = 16: 80 values a step), and the default (the whole sequence in one chunk)
CHUNKS = {"1 step": 1, "2 steps": 2 * 5 * 16 * 8, "3 steps": 3 * 5 * 16 * 8, "default": cpu.CHUNK_BYTES}


@pytest.mark.parametrize("chunk", list(CHUNKS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("padding", ["post", "pre", "mixed"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("options", ["plain", "masks", "state", "activations"])
def test_inference_forward_is_the_training_forward(monkeypatch, chunk, dtype, padding, reverse, options):
    monkeypatch.setattr(cpu, "CHUNK_BYTES", CHUNKS[chunk] * np.dtype(dtype).itemsize // 8)
    X, W, U, b, *_ = lstm_case(dtype, seed=2)
    starts, lengths = spans(padding)
    B, _, I = X.shape
    H = U.shape[0]
    rng = np.random.default_rng(5)
    kwargs = {}
    if options == "masks":
        kwargs["in_mask"], kwargs["rec_mask"] = masks(True, dtype, B, I, H)
    elif options == "state":
        kwargs["h0"], kwargs["c0"] = (rng.normal(size=(B, H)).astype(dtype) for _ in range(2))
    elif options == "activations":
        kwargs.update(activation="relu", recurrent_activation="hard_sigmoid")
    train = cpu.lstm_forward(X, W, U, b, starts, lengths, reverse, **kwargs)
    infer = cpu.lstm_forward(X, W, U, b, starts, lengths, reverse, **kwargs, for_backward=False)
    assert infer[3] is None
    for name, want, got in zip(("Y", "h_last", "c_last"), train[:3], infer[:3]):
        assert got.dtype == dtype and got.shape == want.shape, name
        assert rel_err(want, got) < (1e-12 if dtype == np.float64 else 1e-6), name
        assert np.isfinite(got).all(), name
    pad = np.ones(X.shape[:2], bool)
    for r, (a, n) in enumerate(zip(starts, lengths)):
        pad[r, a : a + n] = False
    assert (infer[0][pad] == 0).all()  # padding stays exactly 0


@pytest.mark.parametrize("chunk", list(CHUNKS))
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("state", [False, True])
def test_forward_from_ids_is_bitwise_the_same_for_every_chunk_size(monkeypatch, chunk, reverse, state):
    rng = np.random.default_rng(7)
    V, H, T = 30, 4, 6
    P = rng.normal(size=(V, 4 * H)).astype(np.float32)
    U = rng.normal(scale=0.5, size=(H, 4 * H)).astype(np.float32)
    b = rng.normal(size=(4 * H,)).astype(np.float32)
    starts, lengths = spans("mixed")
    ids = rng.integers(1, V, size=(len(LENGTHS), T))
    h0, c0 = (rng.normal(size=(len(LENGTHS), H)).astype(np.float32) for _ in range(2)) if state else (None, None)
    whole = cpu.lstm_forward_ids(P, ids, U, b, starts, lengths, reverse, h0=h0, c0=c0)
    monkeypatch.setattr(cpu, "CHUNK_BYTES", CHUNKS[chunk] // 2)  # float32
    chunked = cpu.lstm_forward_ids(P, ids, U, b, starts, lengths, reverse, h0=h0, c0=c0)
    for want, got in zip(whole[:3], chunked[:3]):
        np.testing.assert_array_equal(want, got)
    # and it is the forward over the embedded ids (here P is the "embedding" times I = identity)
    X = P[ids]
    plain = ref.lstm_forward(X.astype(np.float64), np.eye(4 * H), U.astype(np.float64), b.astype(np.float64),
                             starts, lengths, reverse, h0=None if h0 is None else h0.astype(np.float64),
                             c0=None if c0 is None else c0.astype(np.float64))
    assert rel_err(plain[0], chunked[0]) < 1e-5


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_every_backend_drops_the_cache_for_inference(backend):
    ops = get_ops(backend)
    X, W, U, b, *_ = lstm_case(np.float64, seed=3)
    starts, lengths = spans("post")
    Y, h, c, cache = ops.lstm_forward(X, W, U, b, starts, lengths, for_backward=False)
    assert cache is None
    want = ops.lstm_forward(X, W, U, b, starts, lengths)
    assert want[3] is not None
    assert rel_err(want[0], Y) < 1e-12 and rel_err(want[1], h) < 1e-12 and rel_err(want[2], c) < 1e-12


def test_a_layer_forward_without_training_keeps_no_cache(monkeypatch):
    """The LSTM layer asks for no cache at train=False (and for one at train=True)."""
    from tagger.layers import LSTM, Bidirectional

    seen = []
    real = cpu._lstm_forward  # what cpu.lstm_forward and the pair op run
    monkeypatch.setattr(cpu, "_lstm_forward", lambda *a, **k: seen.append(a[13]) or real(*a, **k))
    layer = Bidirectional(LSTM(3, return_sequences=True, ops="cpu", dtype=np.float64), seed=0)
    x = np.random.default_rng(0).normal(size=(2, 4, 5))
    layer.forward(x, train=False)
    layer.forward(x, train=True)
    assert seen == [False, False, True, True]


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("pair", ["lstm_forward_pair", "lstm_forward_ids_pair"])
def test_a_pair_writes_one_array_and_the_concat_is_it(pair, train):
    """The pair ops write both directions' Y into one (B, T, 2H) array; merge_forward's
    concat returns that array (no copy), bitwise the separate calls' concatenation. Any
    other pair of arrays (the halves swapped, a copy) is concatenated as before."""
    rng = np.random.default_rng(4)
    X, W, U, b, *_ = lstm_case(np.float32, seed=4)
    starts, lengths = spans("mixed")
    Wb, Ub = (rng.normal(scale=0.5, size=a.shape).astype(np.float32) for a in (W, U))
    if pair == "lstm_forward_pair":
        args = [(X, W, U, b, starts, lengths, False, None, None, "tanh", "sigmoid", None, None, train),
                (X, Wb, Ub, b, starts, lengths, True, None, None, "tanh", "sigmoid", None, None, train)]
        single = cpu.lstm_forward
    else:
        ids = rng.integers(1, 8, size=X.shape[:2])
        table = rng.normal(size=(8, X.shape[2])).astype(np.float32)
        args = [(cpu.lstm_input_table(table, W), ids, U, b, starts, lengths, False),
                (cpu.lstm_input_table(table, Wb), ids, Ub, b, starts, lengths, True)]
        single = cpu.lstm_forward_ids
    (Yf, *_), (Yb, *_) = getattr(cpu, pair)(*args)
    merged = cpu.merge_forward(Yf, Yb, "concat")
    assert merged.shape == Yf.shape[:-1] + (2 * Yf.shape[-1],) and np.shares_memory(merged, Yf)
    want = np.concatenate([single(*args[0])[0], single(*args[1])[0]], axis=-1)
    np.testing.assert_array_equal(merged, want)
    swapped = cpu.merge_forward(Yb, Yf, "concat")
    assert not np.shares_memory(swapped, Yf)
    np.testing.assert_array_equal(swapped, np.concatenate([Yb, Yf], axis=-1))
    np.testing.assert_array_equal(cpu.merge_forward(Yf.copy(), Yb.copy(), "concat"), want)
    np.testing.assert_array_equal(cpu.merge_forward(Yf, Yb, "sum"), Yf + Yb)
