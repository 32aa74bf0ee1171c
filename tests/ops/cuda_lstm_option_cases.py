"""CUDA LSTM options (activation, recurrent_activation, h0/c0) vs the NumPy reference.

Not collected by a plain `pytest` run (the file name does not match test_*.py):
tests/ops/test_lstm_options.py runs it in a subprocess with NUMBA_ENABLE_CUDASIM=1 (set
before numba is imported). On a machine with a GPU it runs as is:

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q -p no:cacheprovider tests/ops/cuda_lstm_option_cases.py

The simulator runs one Python thread per CUDA thread: shapes are tiny and the launch
constants are patched down so several blocks and grid-stride rounds are exercised.
"""
import numpy as np
import pytest

from tagger.ops import cuda as C
from tagger.ops import reference as R
from tests.gradcheck import assert_grad_close
from tests.ops.cuda_device_cases import small_launches  # noqa: F401  (autouse: tiny launch shapes)

if not C.is_available():
    pytest.skip("no CUDA device and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)

if C.is_simulator():
    # as in cuda_device_cases.py: the simulator's FakeShape refuses negative indexes
    from numba.cuda.simulator.cudadrv import devicearray as _sim_devicearray

    _sim_devicearray.FakeShape.__getitem__ = tuple.__getitem__

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-5)}
B, T, I, H = 3, 4, 2, 3
LENGTHS = np.array([4, 0, 1])  # full, empty, one step
# every activation once as `activation` and once as `recurrent_activation`
PAIRS = [("tanh", "sigmoid"), ("sigmoid", "hard_sigmoid"), ("hard_sigmoid", "relu"), ("relu", "linear"),
         ("linear", "tanh")]


def case(seed, dtype):
    rng = np.random.default_rng(seed)
    shapes = dict(X=(B, T, I), W=(I, 4 * H), U=(H, 4 * H), b=(4 * H,), h0=(B, H), c0=(B, H), RY=(B, T, H),
                  Rh=(B, H), Rc=(B, H))
    scale = dict(X=1.5, W=1.0, U=0.7, b=0.5)
    return {k: rng.normal(scale=scale.get(k, 1.0), size=s).astype(dtype) for k, s in shapes.items()}


def run(ops, a, starts, reverse, pair, rec_mask, dtype, state=True):
    dev = (lambda x: x) if ops is R else (lambda x: None if x is None else C.asarray(x))
    h0, c0 = (dev(a["h0"]), dev(a["c0"])) if state else (None, None)
    Y, h, c, cache = ops.lstm_forward(dev(a["X"]), dev(a["W"]), dev(a["U"]), dev(a["b"]), starts, LENGTHS,
                                      reverse, None, dev(rec_mask), pair[0], pair[1], h0, c0)
    g = {k: ops.zeros(a[k].shape, dtype) for k in ("W", "U", "b")}
    # backward accumulates: the state gradients start from a non-zero buffer
    g.update({k: ops.asarray(np.full(a[k].shape, 0.5, dtype)) for k in ("h0", "c0")})
    dX = ops.lstm_backward(cache, dev(a["RY"]), dev(a["Rh"]), dev(a["Rc"]), g["W"], g["U"], g["b"], g["h0"],
                           g["c0"])
    out = dict(Y=Y, h=h, c=c, dX=dX, dW=g["W"], dU=g["U"], db=g["b"], dh0=g["h0"], dc0=g["c0"])
    return {k: ops.to_numpy(v) for k, v in out.items()}


@pytest.mark.parametrize("recurrence", ["sequence", "step"])
@pytest.mark.parametrize("pair", PAIRS, ids=[f"{a}-{r}" for a, r in PAIRS])
def test_options_match_reference(pair, recurrence, monkeypatch):
    monkeypatch.setattr(C, "RECURRENCE", recurrence)
    dtype = np.float64
    a = case(1, dtype)
    rm = R.dropout_mask((B, H), 0.3, seed=4, dtype=dtype)
    # pre-padding forward with recurrent dropout, post-padding reverse without
    for starts, reverse, mask in ((T - LENGTHS, False, rm), (np.zeros_like(LENGTHS), True, None)):
        want = run(R, a, starts, reverse, pair, mask, dtype)
        got = run(C, a, starts, reverse, pair, mask, dtype)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], err_msg=f"{pair} rev={reverse} {k}", **TOL[dtype])
        # length-0 row: final state = initial state, its gradients pass straight through
        np.testing.assert_array_equal(got["h"][1], a["h0"][1])
        np.testing.assert_array_equal(got["dc0"][1], a["Rc"][1] + 0.5)


def test_float32_and_no_initial_state():
    dtype = np.float32
    a = case(2, dtype)
    starts = T - LENGTHS
    for pair, state in ((("hard_sigmoid", "hard_sigmoid"), True), (("relu", "sigmoid"), False)):
        want = run(R, a, starts, True, pair, None, dtype, state)
        got = run(C, a, starts, True, pair, None, dtype, state)
        for k in want:
            assert got[k].dtype == np.dtype(dtype), k
            np.testing.assert_allclose(got[k], want[k], err_msg=f"{pair} {k}", **TOL[dtype])


def test_state_gradients_finite_differences_on_device():
    """dh0, dc0 of the CUDA backward against central differences of the CUDA forward
    (float64), along one random direction each."""
    dtype = np.float64
    a = case(3, dtype)
    starts = T - LENGTHS
    pair = ("hard_sigmoid", "tanh")
    rm = R.dropout_mask((B, H), 0.3, seed=4, dtype=dtype)

    def loss(h0, c0):
        Y, h, c, _ = C.lstm_forward(a["X"], a["W"], a["U"], a["b"], starts, LENGTHS, True, None, rm, *pair, h0, c0)
        return float((C.to_numpy(Y) * a["RY"]).sum() + (C.to_numpy(h) * a["Rh"]).sum()
                     + (C.to_numpy(c) * a["Rc"]).sum())

    got = run(C, a, starts, True, pair, rm, dtype)
    rng = np.random.default_rng(9)
    eps = 1e-6
    for name in ("h0", "c0"):
        d = rng.normal(size=(B, H))
        args = lambda sign: {**{k: a[k] for k in ("h0", "c0")}, name: a[name] + sign * eps * d}  # noqa: E731
        numeric = np.array([(loss(**args(1)) - loss(**args(-1))) / (2 * eps)])
        analytic = np.array([((got["d" + name] - 0.5) * d).sum()])
        assert_grad_close(analytic, numeric, f"d{name}", rtol=1e-6)


def test_recurrences_agree_bitwise_with_options(monkeypatch):
    """The persistent and the per-step kernels do the same arithmetic in the same order."""
    dtype = np.float32
    a = case(4, dtype)
    starts = np.zeros_like(LENGTHS)
    pair = ("relu", "hard_sigmoid")
    first = run(C, a, starts, False, pair, None, dtype)
    monkeypatch.setattr(C, "RECURRENCE", "step")
    second = run(C, a, starts, False, pair, None, dtype)
    for k in first:
        np.testing.assert_array_equal(first[k], second[k], err_msg=k)
