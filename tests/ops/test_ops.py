"""What every host backend (reference, cpu) must do, written once: the masking rule, empty
rows and batches, accumulation into gradient buffers, the pair and ids ops, dense without
bias, seeded dropout and lazy optimiser rows. (cuda_device_cases.py runs the CUDA side.)"""
import numpy as np
import pytest

from tagger.ops import get_ops
from tagger.ops import reference as ref
from tests.ops.cases import T, lstm_case, real_steps, rel_err, spans

HOST = ["reference", "cpu"]
TOL = {np.float64: 1e-10, np.float32: 1e-5}


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("padding", ["post", "pre", "mixed"])
@pytest.mark.parametrize("reverse", [False, True])
def test_lstm_masking_rule(backend, padding, reverse):
    """Each sequence alone equals its row in the padded batch; padded outputs and input
    gradients are exactly 0; the final state is the state at the edge step."""
    ops = get_ops(backend)
    X, W, U, b, RY, *_ = lstm_case(np.float64, seed=7)
    starts, lengths = spans(padding)
    Y, h, c, cache = ops.lstm_forward(X, W, U, b, starts, lengths, reverse)
    dX = ops.lstm_backward(cache, RY, None, None, np.zeros_like(W), np.zeros_like(U), np.zeros_like(b))
    pad = ~real_steps(starts, lengths)
    assert (Y[pad] == 0).all() and (dX[pad] == 0).all()
    for r, (s, n) in enumerate(zip(starts, lengths)):
        Ya, ha, ca, _ = ops.lstm_forward(X[r : r + 1, s : s + n], W, U, b, np.array([0]), np.array([n]), reverse)
        np.testing.assert_allclose(Y[r, s : s + n], Ya[0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(h[r], ha[0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(c[r], ca[0], rtol=1e-12, atol=1e-14)
        if n:
            np.testing.assert_array_equal(h[r], Y[r, s if reverse else s + n - 1])
        else:
            assert not h[r].any() and not c[r].any()


@pytest.mark.parametrize("backend", HOST)
def test_lstm_all_empty_rows_and_empty_batch(backend):
    ops = get_ops(backend)
    X, W, U, b, *_ = lstm_case(np.float64, seed=6)
    zero = np.zeros(5, dtype=np.int64)
    Y, h, c, cache = ops.lstm_forward(X, W, U, b, zero, zero)
    assert not Y.any() and not h.any() and not c.any()
    dW = np.zeros_like(W)
    dX = ops.lstm_backward(cache, np.ones_like(Y), None, None, dW, np.zeros_like(U), np.zeros_like(b))
    assert not dX.any() and not dW.any()
    Y, h, c, cache = ops.lstm_forward(X[:0], W, U, b, [], [])
    assert Y.shape == (0, T, 4) and h.shape == (0, 4)


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lstm_backward_accumulates_and_takes_none(backend, dtype):
    """Each upstream gradient alone (the others None), into buffers that already hold 0.5:
    0.5 plus the reference's gradient; a cache survives a backward pass."""
    ops = get_ops(backend)
    X, W, U, b, RY, Rh, Rc = lstm_case(dtype, seed=2)
    starts, lengths = spans("mixed")
    cache = ops.lstm_forward(X, W, U, b, starts, lengths)[3]
    cache_ref = ref.lstm_forward(X, W, U, b, starts, lengths)[3]
    for dY, dh, dc in [(RY, None, None), (None, Rh, None), (None, None, Rc)]:
        got = [np.full_like(a, 0.5) for a in (W, U, b)]
        want = [np.zeros_like(a) for a in (W, U, b)]
        dX = ops.lstm_backward(cache, dY, dh, dc, *got)
        dX_ref = ref.lstm_backward(cache_ref, dY, dh, dc, *want)
        assert rel_err(dX, dX_ref) < TOL[dtype]
        for g, w in zip(got, want):
            assert rel_err(g - dtype(0.5), w) < TOL[dtype]
    g1, g2 = ([np.zeros_like(a) for a in (W, U, b)] for _ in range(2))
    np.testing.assert_array_equal(ops.lstm_backward(cache, RY, Rh, Rc, *g1), ops.lstm_backward(cache, RY, Rh, Rc, *g2))


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("threads", [1, 2])
def test_lstm_pair_ops_equal_two_single_calls(backend, threads):
    ops = get_ops(backend)
    X, W, U, b, RY, Rh, Rc = lstm_case(np.float32, seed=8)
    starts, lengths = spans("post")
    fwd = (X, W, U, b, starts, lengths, False)
    bwd = (X, W * 0.5, U, b, starts, lengths, True)
    (Yf, hf, cf, kf), (Yb, hb, cb, kb) = ops.lstm_forward_pair(fwd, bwd, threads=threads)
    for got, args in ((Yf, fwd), (Yb, bwd)):
        np.testing.assert_array_equal(got, ops.lstm_forward(*args)[0])
    grads = [[np.zeros_like(a) for a in (W, U, b)] for _ in range(2)]
    dXf, dXb = ops.lstm_backward_pair((kf, RY, Rh, Rc, *grads[0]), (kb, RY, None, None, *grads[1]), threads=threads)
    for dX, cache, upstream, pair_grads in ((dXf, kf, (RY, Rh, Rc), grads[0]), (dXb, kb, (RY, None, None), grads[1])):
        solo = [np.zeros_like(a) for a in (W, U, b)]
        np.testing.assert_array_equal(dX, ops.lstm_backward(cache, *upstream, *solo))
        for a, s in zip(pair_grads, solo):
            np.testing.assert_array_equal(a, s)


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("padding", ["post", "pre"])
@pytest.mark.parametrize("reverse", [False, True])
def test_lstm_forward_ids_equals_embedding_then_lstm(backend, dtype, padding, reverse):
    """Inference from token ids through the projected table equals the two-op chain."""
    ops = get_ops(backend)
    rng = np.random.default_rng(18)
    X, W, U, b, *_ = lstm_case(dtype, seed=18)
    starts, lengths = spans(padding)
    table = rng.normal(size=(11, X.shape[2])).astype(dtype)
    ids = rng.integers(0, 11, size=(len(lengths), T))
    want = ops.lstm_forward(ops.embedding_forward(table, ids), W, U, b, starts, lengths, reverse)
    P = ops.lstm_input_table(table, W)
    assert P.shape == (11, W.shape[1]) and P.dtype == dtype
    got = ops.lstm_forward_ids(P, ids, U, b, starts, lengths, reverse)
    assert got[3] is None
    for w, g in zip(want[:3], got[:3]):
        assert g.dtype == dtype and rel_err(w, g) < TOL[dtype]
    assert (got[0][~real_steps(starts, lengths)] == 0).all()
    args = (P, ids, U, b, starts, lengths, reverse)
    for pair in ops.lstm_forward_ids_pair(args, args, threads=2):
        np.testing.assert_array_equal(pair[0], got[0])


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dense_without_bias_equals_a_zero_bias(backend, dtype):
    ops = get_ops(backend)
    rng = np.random.default_rng(3)
    X, W, dY = (rng.normal(size=s).astype(dtype) for s in ((2, 3, 4), (4, 5), (2, 3, 5)))
    zero = np.zeros(5, dtype)
    np.testing.assert_array_equal(ops.dense_forward(X, W, None), ops.dense_forward(X, W, zero))
    dW1, dW2, db = np.ones_like(W), np.ones_like(W), np.zeros(5, dtype)
    np.testing.assert_array_equal(ops.dense_backward(dY, X, W, dW1, None), ops.dense_backward(dY, X, W, dW2, db))
    np.testing.assert_array_equal(dW1, dW2)


@pytest.mark.parametrize("backend", HOST)
def test_dropout_mask_is_a_seeded_function(backend):
    ops = get_ops(backend)
    a = ops.dropout_mask((50, 40), 0.25, seed=11)
    np.testing.assert_array_equal(a, ops.dropout_mask((50, 40), 0.25, seed=11))
    np.testing.assert_array_equal(a, ref.dropout_mask((50, 40), 0.25, seed=11))
    assert (a != ops.dropout_mask((50, 40), 0.25, seed=12)).any()
    assert set(np.unique(a)) == {0.0, np.float32(1 / 0.75)}
    assert abs((a == 0).mean() - 0.25) < 0.03


@pytest.mark.parametrize("backend", HOST)
def test_adam_lazy_rows_leave_other_rows_alone(backend):
    ops = get_ops(backend)
    rng = np.random.default_rng(8)
    p, g = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    m, v = np.zeros_like(p), np.zeros_like(p)
    before = p.copy()
    ops.adam_update(p, g, m, v, 0.1, 0.9, 0.999, 1e-8, 0.0, 1, rows=np.array([1, 4]))
    assert (p[[0, 2, 3, 5]] == before[[0, 2, 3, 5]]).all()
    # first Adam step moves each touched element by lr * sign(g)
    np.testing.assert_allclose(p[[1, 4]], before[[1, 4]] - 0.1 * np.sign(g[[1, 4]]), rtol=1e-6)
