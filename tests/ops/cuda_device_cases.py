"""CUDA backend vs the NumPy reference, on a device: the CUDA simulator or a real GPU.

Not collected by a plain `pytest` run (the file name does not match test_*.py):
tests/ops/test_cuda.py runs it in a subprocess with NUMBA_ENABLE_CUDASIM=1 (the variable
must be set before numba is imported, and other test modules import numba first), and,
on a machine with a GPU, once more without the simulator. Direct use:

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q -p no:cacheprovider tests/ops/cuda_device_cases.py

The simulator runs one Python thread per CUDA thread, so every shape here is tiny, and
the launch constants are patched down so tiny inputs still span several blocks and every
grid-stride loop goes round more than once.
"""
import numpy as np
import pytest

from tagger.errors import TaggerError
from tagger.ops import cuda as C
from tagger.ops import reference as R
from tests.gradcheck import assert_grad_close
from tests.ops import cases

if not C.is_available():
    pytest.skip("no CUDA device and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)

if C.is_simulator():
    # The simulator's device arrays refuse negative indexes into .shape (FakeShape);
    # real numba-cuda DeviceNDArray.shape is a plain tuple, and tagger.layers writes
    # x.shape[-1]. Make the simulator match the hardware API here.
    from numba.cuda.simulator.cudadrv import devicearray as _sim_devicearray

    _sim_devicearray.FakeShape.__getitem__ = tuple.__getitem__

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-6)}


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    monkeypatch.setattr(C, "THREADS_PER_BLOCK", 4)
    monkeypatch.setattr(C, "MAX_BLOCKS", 2)
    monkeypatch.setattr(C, "TILE", 2)
    monkeypatch.setattr(C, "MAX_GRID_2D", 2)
    monkeypatch.setattr(C, "REDUCE_THREADS", 4)
    monkeypatch.setattr(C, "REDUCE_BLOCKS", 2)
    monkeypatch.setattr(C, "RECURRENT_THREADS", 2)  # H = 3 units: a thread owns two


def close(dev, expect, dtype=np.float64, name=""):
    got = C.to_numpy(dev)
    assert got.shape == np.shape(expect), f"{name}: shape {got.shape} != {np.shape(expect)}"
    assert got.dtype == np.dtype(dtype), f"{name}: dtype {got.dtype}"
    np.testing.assert_allclose(got, expect, err_msg=name, **TOL[dtype])


# ----------------------------------------------------------------------------------------
# LSTM

B, T, I, H = 3, 4, 2, 3
LENGTHS = np.array([4, 1, 2])  # full length, length 1, in between


def spans(padding, lengths=LENGTHS):
    return cases.spans(padding, lengths, T)


def lstm_case(seed, dtype=np.float64):
    return cases.lstm_case(dtype, seed, B=B, I=I, H=H, T=T)


def masks(dropout, dtype):
    return cases.masks(dropout, dtype, B, I, H)


def run_lstm(ops, X, W, U, b, starts, lengths, reverse, in_mask, rec_mask, RY, Rh, Rc, dtype):
    dev = (lambda a: a) if ops is R else (lambda a: None if a is None else C.asarray(a))
    Y, h, c, cache = ops.lstm_forward(dev(X), dev(W), dev(U), dev(b), starts, lengths, reverse,
                                      dev(in_mask), dev(rec_mask))
    dW, dU, db = (ops.zeros(a.shape, dtype) for a in (W, U, b))
    dX = ops.lstm_backward(cache, dev(RY), dev(Rh), dev(Rc), dW, dU, db)
    return {k: ops.to_numpy(v) for k, v in dict(Y=Y, h=h, c=c, dX=dX, dW=dW, dU=dU, db=db).items()}


@pytest.mark.parametrize("recurrence", ["sequence", "step"])
@pytest.mark.parametrize("padding", ["post", "pre"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dropout", [False, True])
def test_lstm_matches_reference(padding, reverse, dropout, recurrence, monkeypatch):
    monkeypatch.setattr(C, "RECURRENCE", recurrence)
    dtype = np.float64
    X, W, U, b, RY, Rh, Rc = lstm_case(1, dtype)
    starts, lengths = spans(padding)
    im, rm = masks(dropout, dtype)
    ref = run_lstm(R, X, W, U, b, starts, lengths, reverse, im, rm, RY, Rh, Rc, dtype)
    got = run_lstm(C, X, W, U, b, starts, lengths, reverse, im, rm, RY, Rh, Rc, dtype)
    for k in ref:
        close(got[k], ref[k], dtype, k)
    # the masking rule on the device: padded outputs exactly 0
    for r, (s, n) in enumerate(zip(starts, lengths)):
        pad = np.ones(T, dtype=bool)
        pad[s : s + n] = False
        assert (got["Y"][r, pad] == 0).all() and (got["dX"][r, pad] == 0).all()


def test_lstm_float32_starts_lengths_on_device_and_no_upstream_state_grads():
    dtype = np.float32
    X, W, U, b, RY, Rh, Rc = lstm_case(2, dtype)
    starts, lengths = spans("pre")
    im, rm = masks(True, dtype)
    Y, h, c, cache = R.lstm_forward(X, W, U, b, starts, lengths, True, im, rm)
    dW, dU, db = (np.zeros_like(a) for a in (W, U, b))
    dX = R.lstm_backward(cache, RY, None, None, dW, dU, db)
    Yc, hc, cc, cache_c = C.lstm_forward(C.asarray(X), C.asarray(W), C.asarray(U), C.asarray(b),
                                         C.asarray(starts), C.asarray(lengths), True, C.asarray(im), C.asarray(rm))
    gW, gU, gb = (C.zeros(a.shape, dtype) for a in (W, U, b))
    dXc = C.lstm_backward(cache_c, C.asarray(RY), None, None, gW, gU, gb)
    for name, got, exp in [("Y", Yc, Y), ("h", hc, h), ("c", cc, c), ("dX", dXc, dX), ("dW", gW, dW),
                           ("dU", gU, dU), ("db", gb, db)]:
        close(got, exp, dtype, name)


def test_lstm_zero_length_row_and_accumulation():
    dtype = np.float64
    X, W, U, b, RY, Rh, Rc = lstm_case(3, dtype)
    starts, lengths = np.array([0, 0, 1]), np.array([4, 0, 2])
    Y, h, c, cache = C.lstm_forward(X, W, U, b, starts, lengths)
    assert (C.to_numpy(Y)[1] == 0).all() and (C.to_numpy(h)[1] == 0).all() and (C.to_numpy(c)[1] == 0).all()
    _, _, _, rcache = R.lstm_forward(X, W, U, b, starts, lengths)
    # backward accumulates into what the buffers already hold
    dW0 = np.full(W.shape, 0.5)
    dW = dW0.copy()
    R.lstm_backward(rcache, RY, Rh, None, dW, np.zeros_like(U), np.zeros_like(b))
    gW = C.asarray(dW0)
    C.lstm_backward(cache, C.asarray(RY), C.asarray(Rh), None, gW, C.zeros(U.shape, dtype), C.zeros(b.shape, dtype))
    close(gW, dW, dtype, "dW accumulated")


def test_lstm_backward_finite_differences_on_device():
    """The CUDA backward against central differences of the CUDA forward (float64), along
    one random direction per input (cheap on the simulator; jax.test_util.check_grads
    style). The reference comparison above checks every element."""
    dtype = np.float64
    X, W, U, b, RY, Rh, Rc = lstm_case(4, dtype)
    starts, lengths = spans("pre")
    im, rm = masks(True, dtype)
    args = dict(X=X, W=W, U=U, b=b)

    def loss(a):
        Y, h, c, _ = C.lstm_forward(a["X"], a["W"], a["U"], a["b"], starts, lengths, True, im, rm)
        return float((C.to_numpy(Y) * RY).sum() + (C.to_numpy(h) * Rh).sum() + (C.to_numpy(c) * Rc).sum())

    got = run_lstm(C, X, W, U, b, starts, lengths, True, im, rm, RY, Rh, Rc, dtype)
    rng = np.random.default_rng(9)
    eps = 1e-6
    for name in args:
        d = rng.normal(size=args[name].shape)
        up = loss({**args, name: args[name] + eps * d})
        down = loss({**args, name: args[name] - eps * d})
        numeric = np.array([(up - down) / (2 * eps)])
        analytic = np.array([(got["d" + name] * d).sum()])
        assert_grad_close(analytic, numeric, f"d{name}", rtol=1e-6)


def test_lstm_is_deterministic(monkeypatch):
    """Same inputs twice: bitwise the same outputs and gradients. The per-step and the
    persistent recurrence do the same arithmetic in the same order: bitwise equal too."""
    dtype = np.float32
    X, W, U, b, RY, Rh, Rc = lstm_case(5, dtype)
    starts, lengths = spans("post")
    im, rm = masks(True, dtype)
    a = run_lstm(C, X, W, U, b, starts, lengths, False, im, rm, RY, Rh, Rc, dtype)
    b2 = run_lstm(C, X, W, U, b, starts, lengths, False, im, rm, RY, Rh, Rc, dtype)
    monkeypatch.setattr(C, "RECURRENCE", "step")
    c3 = run_lstm(C, X, W, U, b, starts, lengths, False, im, rm, RY, Rh, Rc, dtype)
    for k in a:
        np.testing.assert_array_equal(a[k], b2[k], err_msg=k)
        np.testing.assert_array_equal(a[k], c3[k], err_msg=k)


def test_lstm_pair_ops_equal_two_single_calls():
    dtype = np.float64
    X, W, U, b, RY, Rh, Rc = lstm_case(6, dtype)
    starts, lengths = spans("pre")
    fwd, bwd = (X, W, U, b, starts, lengths, False), (X, W * 0.5, U, b, starts, lengths, True)
    (Yf, _, _, kf), (Yb, hb, _, kb) = C.lstm_forward_pair(fwd, bwd)
    ref_f, ref_b = R.lstm_forward(*fwd), R.lstm_forward(*bwd)
    close(Yf, ref_f[0], dtype, "Yf")
    close(Yb, ref_b[0], dtype, "Yb")
    close(hb, ref_b[1], dtype, "hb")
    grads = [[C.zeros(a.shape, dtype) for a in (W, U, b)] for _ in range(2)]
    dXf, dXb = C.lstm_backward_pair((kf, C.asarray(RY), None, None, *grads[0]), (kb, None, C.asarray(Rh), None, *grads[1]))
    want = [[np.zeros_like(a) for a in (W, U, b)] for _ in range(2)]
    close(dXf, R.lstm_backward(ref_f[3], RY, None, None, *want[0]), dtype, "dXf")
    close(dXb, R.lstm_backward(ref_b[3], None, Rh, None, *want[1]), dtype, "dXb")
    for got, exp in zip(grads[0] + grads[1], want[0] + want[1]):
        close(got, exp, dtype, "pair grads")


def test_lstm_forward_ids_equals_embedding_then_lstm():
    """Reverse, pre-padding (the harder index arithmetic; the simulator is slow)."""
    dtype, reverse = np.float64, True
    X, W, U, b, *_ = lstm_case(7, dtype)
    starts, lengths = spans("pre")
    rng = np.random.default_rng(7)
    table = rng.normal(size=(5, I))
    ids = rng.integers(0, 5, size=(B, T))
    want = R.lstm_forward(R.embedding_forward(table, ids), W, U, b, starts, lengths, reverse)
    P = C.lstm_input_table(C.asarray(table), C.asarray(W))
    close(P, R.lstm_input_table(table, W), dtype, "P")
    args = (P, ids, C.asarray(U), C.asarray(b), starts, lengths, reverse)
    (Y, h, c, cache), _ = C.lstm_forward_ids_pair(args, args)
    assert cache is None
    for name, got, exp in (("Y", Y, want[0]), ("h", h, want[1]), ("c", c, want[2])):
        close(got, exp, dtype, name)


def test_bad_input_gives_the_reference_message():
    """Every op, one bad argument at a time (tests/ops/cases.py): the same TaggerError
    text as the reference, and nothing launched with it."""
    want, got = cases.bad_calls(R), cases.bad_calls(C)
    assert set(want) == set(got) and len(want) > 50
    for label in want:
        assert cases.message(got[label][1]) == cases.message(want[label][1]), label
    # device arrays (ints too) are read the same way as host ones
    X, W, U, b, *_ = lstm_case(8)
    starts, lengths = spans("post")
    with pytest.raises(TaggerError, match="lstm_forward: a span runs past the 4 padded timesteps"):
        C.lstm_forward(C.asarray(X), C.asarray(W), C.asarray(U), C.asarray(b), C.asarray(starts + 1), C.asarray(lengths))
    cache = C.lstm_forward(X, W, U, b, starts, lengths)[3]
    with pytest.raises(TaggerError, match="lstm_backward: dW must be a device array"):
        C.lstm_backward(cache, None, None, None, np.zeros_like(W), C.zeros(U.shape, U.dtype), C.zeros(b.shape, b.dtype))


# ----------------------------------------------------------------------------------------
# Embedding, dense, activations, loss, merge


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_embedding(dtype):
    rng = np.random.default_rng(0)
    table = rng.normal(size=(7, 3)).astype(dtype)
    ids = np.array([[3, 1, 3, 0], [2, 0, 3, 0]])
    mask = ids != 0
    dE = rng.normal(size=(2, 4, 3)).astype(dtype)
    close(C.embedding_forward(C.asarray(table), ids), R.embedding_forward(table, ids), dtype, "E")
    for m in (mask, None):
        start = rng.normal(size=table.shape).astype(dtype)
        dt_ref = start.copy()
        rows_ref = R.embedding_backward(dt_ref, dE, ids, m)
        dt_dev = C.asarray(start)
        rows = C.embedding_backward(dt_dev, C.asarray(dE), C.asarray(ids), m)
        np.testing.assert_array_equal(rows, rows_ref)
        assert rows.dtype == np.int64
        # same additions in the same order as np.add.at: bit-identical
        np.testing.assert_array_equal(C.to_numpy(dt_dev), dt_ref)


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense(shape, dtype, use_bias):
    rng = np.random.default_rng(5)
    X = rng.normal(size=shape).astype(dtype)
    W = rng.normal(size=(4, 5)).astype(dtype)
    b = rng.normal(size=(5,)).astype(dtype) if use_bias else None
    dY = rng.normal(size=shape[:-1] + (5,)).astype(dtype)
    dev = lambda a: None if a is None else C.asarray(a)  # noqa: E731
    close(C.dense_forward(C.asarray(X), C.asarray(W), dev(b)), R.dense_forward(X, W, b), dtype, "Y")
    dW, db = np.ones_like(W), (np.ones_like(b) if use_bias else None)
    dX = R.dense_backward(dY, X, W, dW, db)
    gW, gb = C.asarray(np.ones_like(W)), (C.asarray(np.ones_like(b)) if use_bias else None)
    gX = C.dense_backward(C.asarray(dY), C.asarray(X), C.asarray(W), gW, gb)
    close(gX, dX, dtype, "dX")
    close(gW, dW, dtype, "dW")
    if use_bias:
        close(gb, db, dtype, "db")


@pytest.mark.parametrize("name", ["linear", "relu", "tanh", "sigmoid", "softmax"])
def test_activations(name):
    rng = np.random.default_rng(6)
    dtype = np.float64
    X = rng.normal(scale=3, size=(2, 3, 4))
    X[0, 0, 0] = -200.0  # sigmoid must not overflow
    dY = rng.normal(size=X.shape)
    Y = R.activation_forward(X, name)
    Yc = C.activation_forward(C.asarray(X), name)
    close(Yc, Y, dtype, "Y")
    close(C.activation_backward(C.asarray(dY), Yc, name), R.activation_backward(dY, Y, name), dtype, "dX")
    with pytest.raises(TaggerError, match="unknown activation 'swish'"):
        C.activation_forward(C.asarray(X), "swish")


def test_softmax():
    logits = np.random.default_rng(1).normal(size=(2, 3, 5)).astype(np.float32)
    close(C.softmax(C.asarray(logits)), R.softmax(logits), np.float32, "softmax")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("per", ["token", "sequence", "all_masked"])
def test_softmax_xent(per, dtype):
    rng = np.random.default_rng(6)
    if per == "sequence":
        logits, labels, mask = rng.normal(size=(3, 5)), rng.integers(0, 5, size=(3,)), None
    else:
        logits, labels = rng.normal(size=(2, 4, 5)), rng.integers(0, 5, size=(2, 4))
        mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=bool)
        if per == "all_masked":
            mask[:] = False
    logits = logits.astype(dtype)
    loss, d = R.softmax_xent(logits, labels, mask)
    lc, dc = C.softmax_xent(C.asarray(logits), C.asarray(labels), mask)
    assert isinstance(lc, float)
    assert lc == pytest.approx(loss, rel=TOL[dtype]["rtol"], abs=TOL[dtype]["atol"])
    close(dc, d, dtype, "dlogits")
    if mask is not None:
        assert (C.to_numpy(dc)[~mask] == 0).all()
    # deterministic reduction: bitwise the same loss and gradient again
    lc2, dc2 = C.softmax_xent(C.asarray(logits), C.asarray(labels), mask)
    assert lc2 == lc
    np.testing.assert_array_equal(C.to_numpy(dc2), C.to_numpy(dc))


@pytest.mark.parametrize("mode", ["concat", "sum", "ave", "mul"])
def test_merge(mode):
    rng = np.random.default_rng(7)
    dtype = np.float64
    Yf, Yb = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    Y = R.merge_forward(Yf, Yb, mode)
    dY = rng.normal(size=Y.shape)
    close(C.merge_forward(C.asarray(Yf), C.asarray(Yb), mode), Y, dtype, "Y")
    dYf, dYb = R.merge_backward(dY, Yf, Yb, mode)
    gf, gb = C.merge_backward(C.asarray(dY), C.asarray(Yf), C.asarray(Yb), mode)
    close(gf, dYf, dtype, "dYf")
    close(gb, dYb, dtype, "dYb")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("padding", ["post", "pre"])
@pytest.mark.parametrize("mode", ["max", "mean"])
def test_pool(mode, padding, dtype):
    """Global pooling over time: lengths T, 1, 0 and in between; the padding holds NaN and
    huge values on the device and zeros for the reference, and must not matter."""
    rng = np.random.default_rng(12)
    lengths = np.array([T, 1, 0, 2])
    starts = np.zeros_like(lengths) if padding == "post" else T - lengths
    X = rng.normal(size=(4, T, 3)).astype(dtype)
    real = (np.arange(T)[None, :] >= starts[:, None]) & (np.arange(T)[None, :] < (starts + lengths)[:, None])
    X[~real] = 0
    Xp = X.copy()
    Xp[~real] = np.where(rng.random(size=(int((~real).sum()), 3)) < 0.5, np.nan, 1e30).astype(dtype)
    dY = rng.normal(size=(4, 3)).astype(dtype)
    Y, argmax = R.pool_forward(X, starts, lengths, mode)
    Yc, argc = C.pool_forward(C.asarray(Xp), starts, lengths, mode)
    close(Yc, Y, dtype, "Y")
    if mode == "max":
        np.testing.assert_array_equal(C.to_numpy(argc), argmax)
    else:
        assert argc is None
    dX = R.pool_backward(dY, argmax, starts, lengths, T, mode)
    dXc = C.pool_backward(C.asarray(dY), argc, C.asarray(starts), C.asarray(lengths), T, mode)
    close(dXc, dX, dtype, "dX")
    assert (C.to_numpy(dXc)[~real] == 0).all()



# ----------------------------------------------------------------------------------------
# dropout, mul


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,rate,seed", [((5, 7), 0.25, 11), ((3, 2, 5), 0.5, 0), ((13,), 0.1, 2**40 + 3)])
def test_dropout_mask_bit_identical(shape, rate, seed, dtype):
    got = C.to_numpy(C.dropout_mask(shape, rate, seed, dtype))
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, R.dropout_mask(shape, rate, seed, dtype))


@pytest.mark.parametrize("mshape", [(2, 3, 4), (3, 4), (4,), (2, 1, 4)])
def test_mul_broadcasts(mshape):
    rng = np.random.default_rng(3)
    X, M = rng.normal(size=(2, 3, 4)), rng.normal(size=mshape)
    close(C.mul(C.asarray(X), C.asarray(M)), R.mul(X, M), np.float64, "mul")


# ----------------------------------------------------------------------------------------
# optimisers and buffer ops


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rows", [None, np.array([1, 4])])
@pytest.mark.parametrize("shape", [(6, 3), (5,)])
def test_adam_and_sgd(rows, dtype, shape):
    if rows is not None and len(shape) == 1:
        rows = np.array([0, 3])
    rng = np.random.default_rng(8)
    p, g, m, v = (rng.normal(size=shape).astype(dtype) for _ in range(4))
    v = np.abs(v)
    dp, dm, dv = C.asarray(p), C.asarray(m), C.asarray(v)
    for step in (1, 2):
        R.adam_update(p, g, m, v, 0.1, 0.9, 0.999, 1e-8, 0.01, step, rows=rows)
        C.adam_update(dp, C.asarray(g), dm, dv, 0.1, 0.9, 0.999, 1e-8, 0.01, step, rows=rows)
    for name, got, exp in [("p", dp, p), ("m", dm, m), ("v", dv, v)]:
        close(got, exp, dtype, name)
    vel = rng.normal(size=shape).astype(dtype)
    dvel, dp = C.asarray(vel), C.asarray(p)
    R.sgd_update(p, g, vel, 0.05, 0.9, 0.01, rows=rows)
    C.sgd_update(dp, C.asarray(g), dvel, 0.05, 0.9, 0.01, rows=rows)
    close(dp, p, dtype, "sgd p")
    close(dvel, vel, dtype, "sgd velocity")
    avg = rng.normal(size=shape).astype(dtype)
    davg = C.asarray(avg)
    for momentum in (0.9, 0.5):
        R.ema_update(avg, p, momentum)
        C.ema_update(davg, C.asarray(p), momentum)
    close(davg, avg, dtype, "ema average")


@pytest.mark.parametrize("rows", [None, np.array([0, 2, 5])])
def test_sum_of_squares_scale_fill(rows):
    rng = np.random.default_rng(9)
    for dtype in (np.float64, np.float32):
        g = rng.normal(size=(6, 5)).astype(dtype)
        s = C.sum_of_squares(C.asarray(g), rows)
        assert isinstance(s, float)
        assert s == pytest.approx(R.sum_of_squares(g, rows), rel=1e-12)
        assert C.sum_of_squares(C.asarray(g), rows) == s  # fixed reduction order
        a, d = g.copy(), C.asarray(g)
        R.scale_(a, 0.3, rows)
        C.scale_(d, 0.3, rows)
        close(d, a, dtype, "scale_")
        R.fill_(a, 0.0, rows)
        C.fill_(d, 0.0, rows)
        close(d, a, dtype, "fill_")


def test_memory_helpers():
    z = C.zeros((2, 3), np.float64)
    assert C.to_numpy(z).dtype == np.float64 and (C.to_numpy(z) == 0).all()
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    d = C.asarray(a)
    assert C.asarray(d) is d
    np.testing.assert_array_equal(C.to_numpy(C.asarray(d, np.float64)), a.astype(np.float64))
    np.testing.assert_array_equal(C.to_numpy(d), a)


# ----------------------------------------------------------------------------------------
# one whole training step, composed from the ops


def training_step(ops, params, ids, labels, mask, steps=2):
    """Embedding -> BiLSTM (concat) -> Dense -> per-token xent -> backward -> Adam."""
    dev = (lambda a: a.copy()) if ops is R else C.asarray
    P = {k: dev(v) for k, v in params.items()}
    M = {k: ops.zeros(v.shape, np.float64) for k, v in params.items()}
    V = {k: ops.zeros(v.shape, np.float64) for k, v in params.items()}
    lengths = mask.sum(axis=1).astype(np.int64)
    starts = np.zeros_like(lengths)
    Bn = ids.shape[0]
    losses = []
    for step in range(1, steps + 1):
        G = {k: ops.zeros(v.shape, np.float64) for k, v in params.items()}
        E = ops.embedding_forward(P["table"], ids)
        in_mask = ops.dropout_mask((Bn, params["table"].shape[1]), 0.25, seed=step, dtype=np.float64)
        Yf, _, _, cf = ops.lstm_forward(E, P["Wf"], P["Uf"], P["bf"], starts, lengths, False, in_mask, None)
        Yb, _, _, cb = ops.lstm_forward(E, P["Wb"], P["Ub"], P["bb"], starts, lengths, True, None, None)
        Yc = ops.merge_forward(Yf, Yb, "concat")
        logits = ops.dense_forward(Yc, P["Wd"], P["bd"])
        loss, dlogits = ops.softmax_xent(logits, labels, mask)
        losses.append(loss)
        dYc = ops.dense_backward(dlogits, Yc, P["Wd"], G["Wd"], G["bd"])
        dYf, dYb = ops.merge_backward(dYc, Yf, Yb, "concat")
        dEf = ops.lstm_backward(cf, dYf, None, None, G["Wf"], G["Uf"], G["bf"])
        dEb = ops.lstm_backward(cb, dYb, None, None, G["Wb"], G["Ub"], G["bb"])
        dE = ops.merge_forward(dEf, dEb, "sum")
        rows = ops.embedding_backward(G["table"], dE, ids, mask)
        for k in params:
            ops.adam_update(P[k], G[k], M[k], V[k], 0.01, 0.9, 0.999, 1e-8, 0.001, step,
                            rows=rows if k == "table" else None)
    return losses, {k: ops.to_numpy(v) for k, v in P.items()}


def test_training_step_matches_reference():
    rng = np.random.default_rng(11)
    Vn, En, Hn, Kn = 8, 3, 2, 3
    params = dict(
        table=rng.normal(size=(Vn, En)),
        Wf=rng.normal(scale=0.5, size=(En, 4 * Hn)), Uf=rng.normal(scale=0.5, size=(Hn, 4 * Hn)),
        bf=rng.normal(scale=0.5, size=(4 * Hn,)),
        Wb=rng.normal(scale=0.5, size=(En, 4 * Hn)), Ub=rng.normal(scale=0.5, size=(Hn, 4 * Hn)),
        bb=rng.normal(scale=0.5, size=(4 * Hn,)),
        Wd=rng.normal(size=(2 * Hn, Kn)), bd=rng.normal(size=(Kn,)),
    )
    ids = np.array([[1, 5, 2, 7], [3, 3, 0, 0], [6, 0, 0, 0]])
    mask = ids != 0
    labels = rng.integers(0, Kn, size=ids.shape)
    ref_losses, ref_params = training_step(R, params, ids, labels, mask)
    losses, got = training_step(C, params, ids, labels, mask)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-9)
    for k in params:
        np.testing.assert_allclose(got[k], ref_params[k], rtol=1e-9, atol=1e-12, err_msg=k)
        assert not np.array_equal(got[k], params[k]), f"{k} did not move"


def test_layers_on_cuda_match_reference():
    """tagger.layers with ops='cuda': Embedding -> BiLSTM (input and recurrent dropout)
    -> Dropout -> Dense -> per-token loss, forward and every gradient vs ops='reference'."""
    from tagger.layers import LSTM, Bidirectional, Dense, Dropout, Embedding, Sequential
    from tagger.ops import get_ops

    ids = np.array([[3, 1, 4, 1], [0, 0, 0, 2], [0, 6, 5, 3]])  # pre-padded, lengths 4, 1, 3
    labels = np.random.default_rng(0).integers(0, 4, size=ids.shape)
    out = {}
    for backend in ("reference", "cuda"):
        ops = get_ops(backend)
        model = Sequential(
            [Embedding(7, 3),
             Bidirectional(LSTM(2, return_sequences=True, dropout=0.2, recurrent_dropout=0.2), merge_mode="concat"),
             Dropout(0.25), Dense(4)],
            seed=1, ops=backend, dtype=np.float64,
        )
        y, backprop = model.forward(ids, train=True)
        loss, dy = ops.softmax_xent(y, labels, ids != 0)
        model.zero_grad()
        backprop(dy)
        out[backend] = (loss, np.array(ops.to_numpy(y)),
                        [np.array(ops.to_numpy(g)) for leaf in model.leaves() for g in leaf.grads])
    (l_ref, y_ref, g_ref), (l_dev, y_dev, g_dev) = out["reference"], out["cuda"]
    assert l_dev == pytest.approx(l_ref, rel=1e-10)
    np.testing.assert_allclose(y_dev, y_ref, rtol=1e-10, atol=1e-12)
    assert len(g_ref) == len(g_dev) > 0
    for k, (a, b) in enumerate(zip(g_dev, g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=f"grad {k}")


@pytest.mark.parametrize("pooling", ["GlobalMaxPooling1D", "GlobalAveragePooling1D"])
def test_pooled_classifier_on_cuda_matches_reference(pooling):
    """Embedding -> BiLSTM (return_sequences) -> global pooling -> Dense -> per-sequence
    loss with ops='cuda': forward and every gradient vs ops='reference'."""
    from tagger import layers as L
    from tagger.ops import get_ops

    ids = np.array([[3, 1, 4, 1], [0, 0, 0, 2], [0, 6, 5, 3]])  # pre-padded, lengths 4, 1, 3
    labels = np.array([1, 0, 2])
    out = {}
    for backend in ("reference", "cuda"):
        ops = get_ops(backend)
        model = L.Sequential(
            [L.Embedding(7, 3), L.Bidirectional(L.LSTM(2, return_sequences=True)), getattr(L, pooling)(), L.Dense(3)],
            seed=3, ops=backend, dtype=np.float64,
        )
        y, backprop = model.forward(ids, train=True)
        loss, dy = ops.softmax_xent(y, labels)
        model.zero_grad()
        backprop(dy)
        out[backend] = (loss, np.array(ops.to_numpy(y)),
                        [np.array(ops.to_numpy(g)) for leaf in model.leaves() for g in leaf.grads])
    (l_ref, y_ref, g_ref), (l_dev, y_dev, g_dev) = out["reference"], out["cuda"]
    assert y_dev.shape == (3, 3)
    assert l_dev == pytest.approx(l_ref, rel=1e-10)
    np.testing.assert_allclose(y_dev, y_ref, rtol=1e-10, atol=1e-12)
    for k, (a, b) in enumerate(zip(g_dev, g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=f"grad {k}")


def test_crf_layer_on_cuda_matches_reference():
    """The CRF output layer with ops='cuda': emissions come to the host, the gradient goes
    back, weight gradients accumulate into device arrays; an Adam step moves them."""
    from tagger.layers import CRF, Dense, Embedding, Sequential
    from tagger.ops import get_ops
    from tagger.optim import make_optimizer

    ids = np.array([[3, 1, 4, 1], [2, 0, 0, 0], [6, 5, 3, 0]])  # post-padded, lengths 4, 1, 3
    lengths = (ids != 0).sum(axis=1)
    labels = np.random.default_rng(1).integers(0, 3, size=ids.shape)
    out = {}
    for backend in ("reference", "cuda"):
        ops = get_ops(backend)
        model = Sequential([Embedding(7, 3), Dense(3), CRF(3, initializer="uniform")], seed=2, ops=backend,
                           dtype=np.float64, input_shape=(None,))
        crf = model.layers[-1]
        for _ in range(2):  # the second call accumulates onto the first
            y, backprop = model.forward(ids, train=True)
            loss, dy = crf.loss(y, labels, lengths)
            backprop(ops.asarray(dy))
        grads = [np.array(ops.to_numpy(g)) for leaf in model.leaves() for g in leaf.grads]
        paths, marg = crf.decode(y, lengths), crf.marginals(y, lengths)
        make_optimizer("adam", 0.01).step(model)
        out[backend] = (loss, grads, paths, marg, model.get_weights())
    ref, dev = out["reference"], out["cuda"]
    assert dev[0] == pytest.approx(ref[0], rel=1e-10)
    for k, (a, b) in enumerate(zip(dev[1], ref[1])):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=f"grad {k}")
    np.testing.assert_array_equal(dev[2], ref[2])
    np.testing.assert_allclose(dev[3], ref[3], rtol=1e-10, atol=1e-12)
    for k, (a, b) in enumerate(zip(dev[4], ref[4])):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=f"weight {k}")
