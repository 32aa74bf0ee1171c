"""The Numba CPU backend against the NumPy reference: its kernels (cached, compiled and
uncompiled alike), float32 approximations, bigger batches and optimisers. What every host
backend must do is in test_ops.py, the finite differences in test_gradients.py."""
import numpy as np
import pytest
from numba.core.caching import NullCache
from numba.core.registry import CPUDispatcher

from tagger.ops import cpu
from tagger.ops import reference as ref
from tests.ops.cases import lstm_case, masks, rel_err, spans

TOL = {np.float64: 1e-10, np.float32: 1e-5}


# ----------------------------------------------------------------------------------------
# Interface and compilation


def test_every_kernel_is_cached():
    """cache=True on every njit dispatcher: a second process compiles nothing."""
    kernels = {n: o for n, o in vars(cpu).items() if isinstance(o, CPUDispatcher)}
    assert len(kernels) >= 10  # the check must not be vacuous
    for name, disp in kernels.items():
        assert not isinstance(disp._cache, NullCache), f"{name} lacks cache=True"
    assert set(kernels) == set(cpu._dispatchers())


def test_warmup_then_cache_is_warm():
    cpu.warmup()
    assert cpu.compile_notice() is False


# ----------------------------------------------------------------------------------------
# LSTM against the reference


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("padding", ["post", "pre", "mixed"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dropout", [False, True])
def test_lstm_matches_reference(dtype, padding, reverse, dropout):
    X, W, U, b, RY, Rh, Rc = lstm_case(dtype, seed=1)
    starts, lengths = spans(padding)
    B, _, I = X.shape
    H = U.shape[0]
    in_mask, rec_mask = masks(dropout, dtype, B, I, H)
    want = ref.lstm_forward(X, W, U, b, starts, lengths, reverse, in_mask, rec_mask)
    got = cpu.lstm_forward(X, W, U, b, starts, lengths, reverse, in_mask, rec_mask)
    for name, w, g in zip(("Y", "h_last", "c_last"), want[:3], got[:3]):
        assert g.dtype == dtype and g.shape == w.shape
        assert rel_err(w, g) < TOL[dtype], name
    gw = [np.zeros_like(W), np.zeros_like(U), np.zeros_like(b)]
    gg = [np.zeros_like(W), np.zeros_like(U), np.zeros_like(b)]
    dXw = ref.lstm_backward(want[3], RY, Rh, Rc, *gw)
    dXg = cpu.lstm_backward(got[3], RY, Rh, Rc, *gg)
    assert dXg.dtype == dtype
    for name, w, g in zip(("dX", "dW", "dU", "db"), [dXw] + gw, [dXg] + gg):
        assert rel_err(w, g) < TOL[dtype], name


def test_lstm_float32_saturated_gates_stay_finite():
    X, W, U, b, RY, Rh, Rc = lstm_case(np.float32, seed=3, scale=60.0)
    starts, lengths = spans("post")
    Y, h, c, cache = cpu.lstm_forward(X, W, U, b, starts, lengths)
    want = ref.lstm_forward(X, W, U, b, starts, lengths)
    assert np.isfinite(Y).all() and np.isfinite(c).all()
    assert rel_err(want[0], Y) < 1e-5 and rel_err(want[2], c) < 1e-5
    dW = np.zeros_like(W)
    dX = cpu.lstm_backward(cache, RY, Rh, Rc, dW, np.zeros_like(U), np.zeros_like(b))
    assert np.isfinite(dX).all() and np.isfinite(dW).all()


def test_lstm_bigger_unsorted_batch_float32():
    """Shapes closer to real use (several GEMM rows per step, many distinct lengths)."""
    rng = np.random.default_rng(4)
    B, T, I, H = 19, 23, 10, 16
    lengths = rng.integers(0, T + 1, size=B)
    lengths[3] = T
    starts = rng.integers(0, T - lengths + 1)
    X, W, U, b, RY, Rh, Rc = lstm_case(np.float32, seed=5, B=B, I=I, H=H, T=T, scale=0.3)
    for reverse in (False, True):
        im, rm = masks(True, np.float32, B, I, H)
        want = ref.lstm_forward(X, W, U, b, starts, lengths, reverse, im, rm)
        got = cpu.lstm_forward(X, W, U, b, starts, lengths, reverse, im, rm)
        for w, g in zip(want[:3], got[:3]):
            assert rel_err(w, g) < 1e-5
        gw = [np.zeros_like(W), np.zeros_like(U), np.zeros_like(b)]
        gg = [np.zeros_like(W), np.zeros_like(U), np.zeros_like(b)]
        dXw = ref.lstm_backward(want[3], RY, Rh, Rc, *gw)
        dXg = cpu.lstm_backward(got[3], RY, Rh, Rc, *gg)
        for w, g in zip([dXw] + gw, [dXg] + gg):
            assert rel_err(w, g) < 1e-5


def test_uncompiled_kernels_agree(monkeypatch):
    """The kernels' plain-Python bodies (py_func) give the same answer as the compiled ones."""
    X, W, U, b, RY, Rh, Rc = lstm_case(np.float64, seed=9)
    starts, lengths = spans("mixed")
    im, rm = masks(True, np.float64, X.shape[0], X.shape[2], U.shape[0])
    compiled = cpu.lstm_forward(X, W, U, b, starts, lengths, True, im, rm)
    gc = [np.zeros_like(W), np.zeros_like(U), np.zeros_like(b)]
    dXc = cpu.lstm_backward(compiled[3], RY, Rh, Rc, *gc)
    for name, disp in cpu._dispatchers().items():
        monkeypatch.setattr(cpu, name, disp.py_func)
    plain = cpu.lstm_forward(X, W, U, b, starts, lengths, True, im, rm)
    gp = [np.zeros_like(W), np.zeros_like(U), np.zeros_like(b)]
    dXp = cpu.lstm_backward(plain[3], RY, Rh, Rc, *gp)
    for a, p in zip(list(compiled[:3]) + [dXc] + gc, list(plain[:3]) + [dXp] + gp):
        assert rel_err(a, p) < 1e-12


@pytest.mark.parametrize("per", ["token", "sequence", "token-nomask", "all-masked"])
def test_softmax_xent_matches_reference(per):
    rng = np.random.default_rng(14)
    if per == "sequence":
        logits = rng.normal(size=(3, 5))
        labels = rng.integers(0, 5, size=(3,))
        mask = None
    else:
        logits = rng.normal(size=(2, 4, 5)) * 3
        labels = rng.integers(0, 5, size=(2, 4))
        mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=bool)
        if per == "token-nomask":
            mask = None
        if per == "all-masked":
            mask = np.zeros((2, 4), dtype=bool)
    loss, d = cpu.softmax_xent(logits, labels, mask)
    want_loss, want_d = ref.softmax_xent(logits, labels, mask)
    assert isinstance(loss, float)
    assert loss == pytest.approx(want_loss, rel=1e-12, abs=1e-300)
    assert d.shape == logits.shape and rel_err(want_d, d) < 1e-12
    if mask is not None:
        assert (d[~mask] == 0).all()
    # float32 in, float32 out
    l32, d32 = cpu.softmax_xent(logits.astype(np.float32), labels, mask)
    assert d32.dtype == np.float32 and abs(l32 - want_loss) <= 1e-5 * max(1.0, abs(want_loss))
    np.testing.assert_allclose(cpu.softmax(logits), ref.softmax(logits), rtol=1e-13)


def test_embedding_matches_reference():
    """Forward bit-identical; the scatter-add into a non-zero buffer, with and without mask."""
    rng = np.random.default_rng(11)
    table = rng.normal(size=(9, 3))
    ids = np.array([[3, 1, 3, 0], [2, 0, 7, 0]])
    mask = np.array([[1, 1, 1, 0], [1, 0, 1, 1]], dtype=bool)
    R = rng.normal(size=(2, 4, 3))
    np.testing.assert_array_equal(cpu.embedding_forward(table, ids), ref.embedding_forward(table, ids))
    for m in (mask, None):
        want, got = np.ones_like(table), np.ones_like(table)
        np.testing.assert_array_equal(ref.embedding_backward(want, R, ids, m), cpu.embedding_backward(got, R, ids, m))
        np.testing.assert_allclose(got, want, rtol=1e-14)


def test_float32_sigmoid_approximation():
    x = np.concatenate([np.linspace(-120, 120, 20001), [-1e4, 1e4, -np.inf, np.inf, 0.0, -0.0, 1e-8]])
    x32 = x.astype(np.float32)
    got = cpu.activation_forward(x32, "sigmoid")
    assert got.dtype == np.float32 and np.isfinite(got).all()
    want = ref.activation_forward(x32.astype(np.float64), "sigmoid")  # exact, on the same inputs
    assert np.abs(got - want).max() < 2e-7
    # relative accuracy deep into the tail; below ~1e-38 the float32 exp flushes to its floor
    assert (np.abs(got - want) <= 4e-7 * want + 2e-38).all()


# ----------------------------------------------------------------------------------------
# Optimiser updates and gradient utilities


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rows", [None, np.array([1, 4, 5])])
def test_adam_matches_reference_and_is_lazy(dtype, rows):
    rng = np.random.default_rng(15)
    p0 = rng.normal(size=(7, 3)).astype(dtype)
    states = {}
    for name, ops in (("ref", ref), ("cpu", cpu)):
        p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
        for step in (1, 2, 3):
            g = np.random.default_rng(step).normal(size=p0.shape).astype(dtype)
            ops.adam_update(p, g, m, v, 0.01, 0.9, 0.999, 1e-8, 0.01, step, rows=rows)
        states[name] = (p, m, v)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    for w, g in zip(states["ref"], states["cpu"]):
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * 1e-3)
    if rows is not None:
        others = np.setdiff1d(np.arange(7), rows)
        p, m, v = states["cpu"]
        assert (p[others] == p0[others]).all() and not m[others].any() and not v[others].any()
    # a 1-D parameter (a bias) takes the dense path
    b = rng.normal(size=5).astype(dtype)
    bw, bg = b.copy(), b.copy()
    gb = rng.normal(size=5).astype(dtype)
    ref.adam_update(bw, gb, np.zeros_like(b), np.zeros_like(b), 0.1, 0.9, 0.999, 1e-8, 0.0, 1)
    cpu.adam_update(bg, gb, np.zeros_like(b), np.zeros_like(b), 0.1, 0.9, 0.999, 1e-8, 0.0, 1)
    np.testing.assert_allclose(bg, bw, rtol=tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(7, 3), (5,)])
def test_ema_update_is_the_references_bits_and_the_formula(dtype, shape):
    rng = np.random.default_rng(16)
    avg0 = rng.normal(size=shape).astype(dtype)
    ours, theirs = avg0.copy(), avg0.copy()
    for step in range(3):
        p = rng.normal(size=shape).astype(dtype)
        ref.ema_update(theirs, p, 0.9)
        cpu.ema_update(ours, p, 0.9)
        assert ours.tobytes() == theirs.tobytes()  # the same products and sum, so the same bits
    # and the formula itself, in float64 with a momentum of 0.75 (exact in binary)
    avg, p = np.array([1.0, -2.0]), np.array([3.0, 2.0])
    cpu.ema_update(avg, p, 0.75)
    assert avg.tolist() == [1.5, -1.0]
    cpu.ema_update(avg, np.asfortranarray(p), 0.0)  # momentum 0: the weights themselves
    assert avg.tolist() == p.tolist()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rows", [None, np.array([0, 2])])
def test_sgd_matches_reference_and_is_lazy(dtype, rows):
    rng = np.random.default_rng(16)
    p0 = rng.normal(size=(4, 3)).astype(dtype)
    out = {}
    for name, ops in (("ref", ref), ("cpu", cpu)):
        p, vel = p0.copy(), np.zeros_like(p0)
        for step in range(3):
            g = np.random.default_rng(step).normal(size=p0.shape).astype(dtype)
            ops.sgd_update(p, g, vel, 0.1, 0.9, 0.01, rows=rows)
        out[name] = (p, vel)
    tol = 1e-13 if dtype == np.float64 else 1e-6
    for w, g in zip(out["ref"], out["cpu"]):
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol)
    if rows is not None:
        p, vel = out["cpu"]
        assert (p[[1, 3]] == p0[[1, 3]]).all() and not vel[[1, 3]].any()


def test_lazy_update_touches_only_given_rows_of_a_large_table():
    """The lazy path never reads or writes untouched rows: NaN there must stay NaN-free elsewhere."""
    V, E = 2000, 8
    p = np.zeros((V, E), dtype=np.float32)
    g = np.full((V, E), np.nan, dtype=np.float32)  # untouched rows hold garbage
    m, v = np.zeros_like(p), np.zeros_like(p)
    rows = np.array([5, 17, 1999])
    g[rows] = 1.0
    cpu.adam_update(p, g, m, v, 0.1, 0.9, 0.999, 1e-8, 0.0, 1, rows=rows)
    assert np.isfinite(p).all() and np.isfinite(m).all()
    np.testing.assert_allclose(p[rows], -0.1, rtol=1e-5)
    assert not np.delete(p, rows, axis=0).any()


def test_gradient_utilities():
    rng = np.random.default_rng(17)
    g = rng.normal(size=(6, 3)).astype(np.float32)
    rows = np.array([0, 3])
    assert cpu.sum_of_squares(g) == pytest.approx(ref.sum_of_squares(g), rel=1e-12)
    assert cpu.sum_of_squares(g, rows) == pytest.approx(ref.sum_of_squares(g, rows), rel=1e-12)
    assert cpu.sum_of_squares(g[0]) == pytest.approx(ref.sum_of_squares(g[0]), rel=1e-12)
    for op, args in (("scale_", (0.5,)), ("fill_", (0.0,))):
        for r in (None, rows):
            a, b = g.copy(), g.copy()
            getattr(ref, op)(a, *args, rows=r)
            getattr(cpu, op)(b, *args, rows=r)
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(cpu.mul(g, g), ref.mul(g, g))
    np.testing.assert_array_equal(cpu.dropout_mask((4, 5), 0.5, 3), ref.dropout_mask((4, 5), 0.5, 3))
    z = cpu.zeros((2, 3))
    assert z.dtype == np.float32 and not z.any()
    assert cpu.to_numpy(cpu.asarray([1, 2], dtype=np.float64)).dtype == np.float64


def test_float32_gate_approximations():
    """The LSTM kernels' float32 tanh/sigmoid (rational, vectorisable) against libm in float64."""
    from numba import njit

    @njit
    def gates(x, t, s):
        for n in range(x.shape[0]):
            t[n] = cpu._gate_tanh(x[n])
            s[n] = cpu._gate_sigmoid(x[n])

    x = np.concatenate([np.linspace(-30, 30, 60001), [-1e4, 1e4, 0.0, 1e-6, -1e-6]]).astype(np.float32)
    t, s = np.empty_like(x), np.empty_like(x)
    gates(x, t, s)
    x64 = x.astype(np.float64)
    assert np.abs(t - np.tanh(x64)).max() < 3e-7
    assert np.abs(s - ref.activation_forward(x64, "sigmoid")).max() < 3e-7
    assert (np.abs(t) <= 1).all() and (s >= 0).all() and (s <= 1).all()
    small = np.abs(x64) < 1e-3  # near 0 the error is relative
    np.testing.assert_allclose(t[small], np.tanh(x64[small]), rtol=1e-6, atol=1e-12)


# ----------------------------------------------------------------------------------------
# Speed-only changes that must not move a bit


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_dropout_mask_is_the_reference_bit_for_bit(dtype):
    """The one-pass njit mask against the NumPy spec: every shape, rate, seed (large ones
    wrap the uint64 key) and dtype (float16 goes to the reference itself)."""
    for shape in [(0,), (1,), (3, 4), (50, 40), (7, 11, 13), (61, 9, 25)]:
        for rate in (0.0, 0.1, 0.5, 0.999):
            for seed in (0, 1, 12345, 2**40 + 7, 2**63 - 1):
                got = cpu.dropout_mask(shape, rate, seed, dtype)
                want = ref.dropout_mask(shape, rate, seed, dtype)
                assert got.dtype == want.dtype and got.shape == want.shape
                np.testing.assert_array_equal(got, want)
    kept = cpu.dropout_mask((200, 50), 0.3, 5, dtype)
    assert 0.65 < (kept != 0).mean() < 0.75  # not vacuous: a real mask


def _with_refcounts(kernel):
    """The same Python function compiled as before _nrt=False (NRT on, not cached)."""
    from numba import njit

    opts = dict(kernel.targetoptions)
    opts.pop("_nrt", None)
    opts.pop("nopython", None)  # njit sets it itself
    opts.pop("cache", None)
    return njit(**opts)(kernel.py_func)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_without_refcounts_are_bitwise_the_refcounted_ones(dtype, monkeypatch):
    """_JIT_VIEWS only drops NRT reference counting: the LSTM forward and backward (masks,
    reverse, initial state, other activations, the char LSTM's H = 25) give the same bits
    as the kernels compiled with it."""
    names = ["_pack_rows", "_unpack_rows", "_zero_padding", "_lstm_fwd_step", "_lstm_bwd_step"]
    assert all(cpu._dispatchers()[n].targetoptions.get("_nrt") is False for n in names)
    rng = np.random.default_rng(3)

    def run():
        out = []
        for H in (25, 6):
            for reverse, opts in ((False, "plain"), (True, "masks"), (False, "state"), (True, "acts")):
                B, T, I = 9, 7, 5
                lengths = rng.integers(0, T + 1, size=B)
                starts = np.where(rng.random(B) < 0.3, T - lengths, 0)
                X, W, U = (rng.normal(size=s).astype(dtype) * 0.5 for s in ((B, T, I), (I, 4 * H), (H, 4 * H)))
                b = rng.normal(size=4 * H).astype(dtype)
                kw = {"masks": dict(zip(("in_mask", "rec_mask"), masks(True, dtype, B, I, H))),
                      "state": dict(h0=rng.normal(size=(B, H)).astype(dtype), c0=rng.normal(size=(B, H)).astype(dtype)),
                      "acts": dict(activation="relu", recurrent_activation="hard_sigmoid")}.get(opts, {})
                Y, h, c, cache = cpu.lstm_forward(X, W, U, b, starts, lengths, reverse, **kw)
                g = [np.zeros_like(W), np.zeros_like(U), np.zeros_like(b)]
                dX = cpu.lstm_backward(cache, rng.normal(size=Y.shape).astype(dtype), rng.normal(size=h.shape).astype(dtype),
                                       None, *g)
                out += [Y, h, c, dX, *g]
        return out

    state = rng.bit_generator.state
    fast = run()
    for n in names:
        monkeypatch.setattr(cpu, n, _with_refcounts(cpu._dispatchers()[n]))
    rng.bit_generator.state = state
    slow = run()
    assert len(fast) == len(slow) == 56
    for a, b in zip(fast, slow):
        np.testing.assert_array_equal(a, b)


def test_backward_scratch_buffers_never_leak_between_calls():
    """lstm_backward's dZ / dXp live in reusable per-thread buffers: a call after a larger
    one, and the same call again, give the bits of the first time, and what it returns
    shares no memory with them."""
    rng = np.random.default_rng(5)

    def case(B, T, I, H):
        lengths = rng.integers(1, T + 1, size=B)
        X, W, U = (rng.normal(size=s).astype(np.float32) for s in ((B, T, I), (I, 4 * H), (H, 4 * H)))
        b = rng.normal(size=4 * H).astype(np.float32)
        Y, h, c, cache = cpu.lstm_forward(X, W, U, b, np.zeros(B, np.int64), lengths)
        dY = rng.normal(size=Y.shape).astype(np.float32)

        def grads():
            g = [np.zeros_like(W), np.zeros_like(U), np.zeros_like(b)]
            return [cpu.lstm_backward(cache, dY, None, None, *g), *g]

        return grads

    small, big = case(3, 4, 5, 6), case(40, 30, 20, 16)
    first = small()
    big()  # grows the buffers and fills them with other values
    for again in (small(), small()):
        for a, b in zip(first, again):
            np.testing.assert_array_equal(a, b)
    bufs = cpu._SCRATCH.bufs.values()
    assert len(bufs) >= 2 and not any(np.shares_memory(first[0], s) for s in bufs)
