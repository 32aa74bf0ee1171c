"""LSTM options: activation, recurrent_activation and the initial state (h0, c0).

The semantics are in tagger/ops/reference.py's legend ("LSTM options"). Here:
  * float64 finite differences of every input, h0 and c0 included, on reference and cpu,
    for each activation as `activation` (sigmoid gates) and as `recurrent_activation`
    (tanh), ragged lengths with 0 and 1, pre- and post-padding, both directions;
  * cpu against reference in float64 (1e-10) and float32 (1e-5), the pair and ids helpers;
  * both against a plain NumPy transcription of Keras's LSTM equations;
  * the CUDA kernels: simulator cases (tests/ops/cuda_lstm_option_cases.py, in a fresh
    interpreter with NUMBA_ENABLE_CUDASIM=1) and sm_90 PTX (both slow).
"""
import os
from pathlib import Path

import numpy as np
import pytest

from tagger.errors import TaggerError
from tagger.ops import cpu as CPU
from tagger.ops import reference as R
from tests.gradcheck import assert_grad_close, numeric_grad
from tests.ops.cuda_subprocess import assert_cases_pass

SIM_CASES = Path(__file__).with_name("cuda_lstm_option_cases.py")
BACKENDS = {"reference": R, "cpu": CPU}

ACTS = R.LSTM_ACTIVATIONS
# each activation as `activation` with sigmoid gates, and as `recurrent_activation` with tanh
PAIRS = [(a, "sigmoid") for a in ACTS] + [("tanh", r) for r in ACTS if r != "sigmoid"]
PAIR_IDS = [f"{a}-{r}" for a, r in PAIRS]

B, T, I, H = 4, 5, 2, 2
LENGTHS = np.array([5, 0, 1, 3])  # full, empty, one step, in between
TOL = {np.float64: 1e-10, np.float32: 1e-5}


def spans(padding, lengths=LENGTHS):
    starts = np.zeros_like(lengths) if padding == "post" else T - lengths
    return starts, lengths


def case(seed, dtype=np.float64, wide=True):
    """wide: inputs large enough that hard_sigmoid saturates on both sides and relu cuts
    (checked by test_cases_reach_both_sides_of_every_kink). Not for float32 comparisons:
    with linear gates such inputs amplify float32 rounding (and the cpu kernels' tanh
    approximation, 3e-7) past 1e-5."""
    rng = np.random.default_rng(seed)
    wx, ww = (2.0, 1.5) if wide else (1.0, 0.5)
    a = dict(
        X=rng.normal(scale=wx, size=(B, T, I)),
        W=rng.normal(scale=ww, size=(I, 4 * H)),
        U=rng.normal(scale=0.7, size=(H, 4 * H)),
        b=rng.normal(scale=0.5, size=(4 * H,)),
        h0=rng.normal(size=(B, H)),
        c0=rng.normal(size=(B, H)),
        RY=rng.normal(size=(B, T, H)),
        Rh=rng.normal(size=(B, H)),
        Rc=rng.normal(size=(B, H)),
    )
    return {k: v.astype(dtype) for k, v in a.items()}


def forward(ops, a, starts, reverse, pair, rec_mask=None, in_mask=None, h0=True, c0=True):
    return ops.lstm_forward(a["X"], a["W"], a["U"], a["b"], starts, LENGTHS, reverse, in_mask, rec_mask,
                            pair[0], pair[1], a["h0"] if h0 else None, a["c0"] if c0 else None)


def run(ops, a, starts, reverse, pair, rec_mask=None, in_mask=None, h0=True, c0=True, fill=0.0):
    """Forward and backward; gradient buffers start at `fill` (backward accumulates)."""
    Y, h, c, cache = forward(ops, a, starts, reverse, pair, rec_mask, in_mask, h0, c0)
    g = {k: np.full_like(a[k], fill) for k in ("W", "U", "b", "h0", "c0")}
    dX = ops.lstm_backward(cache, a["RY"], a["Rh"], a["Rc"], g["W"], g["U"], g["b"], g["h0"], g["c0"])
    return dict(Y=Y, h=h, c=c, dX=dX, dW=g["W"], dU=g["U"], db=g["b"], dh0=g["h0"], dc0=g["c0"])


# ----------------------------------------------------------------------------------------
# gradients


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("padding", ["post", "pre"])
@pytest.mark.parametrize("reverse", [False, True])
def test_gradients_match_finite_differences(backend, pair, padding, reverse):
    ops = BACKENDS[backend]
    a = case(1)
    starts, _ = spans(padding)
    # recurrent dropout on one direction: it scales h0 as it scales every h_prev
    rm = R.dropout_mask((B, H), 0.3, seed=5, dtype=np.float64) if reverse else None

    def loss():
        Y, h, c, _ = forward(ops, a, starts, reverse, pair, rm)
        return float((Y * a["RY"]).sum() + (h * a["Rh"]).sum() + (c * a["Rc"]).sum())

    got = run(ops, a, starts, reverse, pair, rm)
    for name in ("X", "W", "U", "b", "h0", "c0"):
        assert_grad_close(got["d" + name], numeric_grad(loss, a[name]), f"{backend} {pair} d{name}")
    # the length-0 row: its final state is its initial state, and their gradients are equal
    for k, s0 in (("h", "h0"), ("c", "c0")):
        np.testing.assert_array_equal(got[k][1], a[s0][1])
        np.testing.assert_array_equal(got["d" + s0][1], a["R" + k][1])
    assert (got["Y"][1] == 0).all()


def test_cases_reach_both_sides_of_every_kink():
    """The finite-difference inputs exercise hard_sigmoid's flat and sloped parts and relu's
    zero and positive parts, in gates and in the cell, so a wrong derivative on any side
    would be seen."""
    a = case(1)
    starts, _ = spans("post")
    for pair in (("hard_sigmoid", "sigmoid"), ("tanh", "hard_sigmoid"), ("relu", "sigmoid"), ("tanh", "relu")):
        _, _, _, cache = forward(R, a, starts, False, pair)
        real = np.zeros((B, T), dtype=bool)
        for r, n in enumerate(LENGTHS):
            real[r, :n] = True
        acts = cache.acts[real]  # (N, G)
        parts = [acts[:, 2 * H : 3 * H], R.lstm_act(cache.C[real], pair[0])] if pair[0] != "tanh" else \
            [acts[:, : 2 * H], acts[:, 3 * H :]]
        v = np.concatenate([p.ravel() for p in parts])
        assert (v == 0).any() and ((v > 0) & (v < 1)).any(), pair
        if "hard_sigmoid" in pair:
            assert (v == 1).any(), pair


def test_dh0_dc0_accumulate_and_are_optional():
    a = case(2)
    starts, _ = spans("pre")
    for ops in BACKENDS.values():
        base = run(ops, a, starts, True, ("tanh", "sigmoid"))
        acc = run(ops, a, starts, True, ("tanh", "sigmoid"), fill=0.5)
        for k in ("dh0", "dc0", "dW"):
            np.testing.assert_allclose(acc[k], base[k] + 0.5, rtol=1e-12, atol=1e-12)
        # without dh0/dc0 buffers the other gradients are unchanged
        _, _, _, cache = forward(ops, a, starts, True, ("tanh", "sigmoid"))
        dW = np.zeros_like(a["W"])
        dX = ops.lstm_backward(cache, a["RY"], a["Rh"], a["Rc"], dW, np.zeros_like(a["U"]), np.zeros_like(a["b"]))
        np.testing.assert_allclose(dX, base["dX"], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(dW, base["dW"], rtol=1e-12, atol=1e-14)


def test_state_gradients_without_initial_state():
    """dh0/dc0 buffers with h0 = c0 = None: the gradient w.r.t. the zero state, equal to
    the one with explicit zero h0, c0."""
    a = case(3)
    starts, _ = spans("post")
    z = dict(a, h0=np.zeros((B, H)), c0=np.zeros((B, H)))
    for ops in BACKENDS.values():
        want = run(ops, z, starts, False, ("tanh", "sigmoid"))
        got = run(ops, a, starts, False, ("tanh", "sigmoid"), h0=False, c0=False)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-14, err_msg=k)


# ----------------------------------------------------------------------------------------
# cpu against the reference


def assert_close(got, want, dtype, name):
    scale = max(float(np.abs(want).max()), 1.0)
    np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype] * scale, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("state", ["none", "h0", "c0", "both"])
def test_cpu_matches_reference(dtype, pair, state):
    a = case(4, dtype, wide=dtype == np.float64)
    h0, c0 = state in ("h0", "both"), state in ("c0", "both")
    im = R.dropout_mask((B, I), 0.2, seed=1, dtype=dtype)
    rm = R.dropout_mask((B, H), 0.2, seed=2, dtype=dtype)
    for padding in ("post", "pre"):
        starts, _ = spans(padding)
        for reverse in (False, True):
            masks = (rm, im) if reverse else (None, None)
            want = run(R, a, starts, reverse, pair, *masks, h0=h0, c0=c0, fill=0.25)
            got = run(CPU, a, starts, reverse, pair, *masks, h0=h0, c0=c0, fill=0.25)
            for k in want:
                assert got[k].dtype == np.dtype(dtype), k
                assert_close(got[k], want[k], dtype, f"{pair} {state} {padding} rev={reverse} {k}")


def test_cpu_default_options_explicit_or_as_zero_state():
    """Naming the defaults is the default path itself (bitwise); a zero h0/c0 takes the
    general path and gives the same forward bits (0 @ U adds exact zeros) and the same
    gradients up to the summation order of dU."""
    for dtype in (np.float32, np.float64):
        a = case(5, dtype, wide=False)
        starts, _ = spans("pre")
        rm = R.dropout_mask((B, H), 0.2, seed=2, dtype=dtype)
        args = (a["X"], a["W"], a["U"], a["b"], starts, LENGTHS, True, None, rm)
        plain = CPU.lstm_forward(*args)
        named = CPU.lstm_forward(*args, "tanh", "sigmoid", None, None)
        zero = CPU.lstm_forward(*args, "tanh", "sigmoid", np.zeros((B, H), dtype), np.zeros((B, H), dtype))
        for k in range(3):
            np.testing.assert_array_equal(named[k], plain[k])
            np.testing.assert_array_equal(zero[k], plain[k])
        grads = []
        for res in (plain, zero):
            g = [np.zeros_like(a[k]) for k in ("W", "U", "b")]
            grads.append([CPU.lstm_backward(res[3], a["RY"], a["Rh"], a["Rc"], *g)] + g)
        for want, got in zip(*grads):
            assert_close(got, want, dtype, "zero-state gradient")


def test_pair_and_ids_helpers_take_the_options():
    a = case(6)
    starts, _ = spans("post")
    pair = ("hard_sigmoid", "relu")
    single = [run(CPU, a, starts, rev, pair) for rev in (False, True)]
    fwd_args = [(a["X"], a["W"], a["U"], a["b"], starts, LENGTHS, rev, None, None, *pair, a["h0"], a["c0"])
                for rev in (False, True)]
    for threads in (1, 2):
        (rf, rb) = CPU.lstm_forward_pair(fwd_args[0], fwd_args[1], threads=threads)
        bufs = [{k: np.zeros_like(a[k]) for k in ("W", "U", "b", "h0", "c0")} for _ in range(2)]
        bargs = [(res[3], a["RY"], a["Rh"], a["Rc"], g["W"], g["U"], g["b"], g["h0"], g["c0"])
                 for res, g in zip((rf, rb), bufs)]
        dXs = CPU.lstm_backward_pair(bargs[0], bargs[1], threads=threads)
        for want, res, g, dX in zip(single, (rf, rb), bufs, dXs):
            np.testing.assert_array_equal(res[0], want["Y"])
            np.testing.assert_array_equal(res[1], want["h"])
            np.testing.assert_array_equal(dX, want["dX"])
            np.testing.assert_array_equal(g["h0"], want["dh0"])
            np.testing.assert_array_equal(g["c0"], want["dc0"])
    # ids: the input projection looked up instead of computed (same numbers up to rounding)
    rng = np.random.default_rng(7)
    table = rng.normal(size=(9, I))
    ids = rng.integers(0, 9, size=(B, T))
    X = table[ids]
    P = CPU.lstm_input_table(table, a["W"])
    ids_args = [(P, ids, a["U"], a["b"], starts, LENGTHS, rev, *pair, a["h0"], a["c0"]) for rev in (False, True)]
    for rev, res in zip((False, True), CPU.lstm_forward_ids_pair(ids_args[0], ids_args[1], threads=2)):
        want = R.lstm_forward(X, a["W"], a["U"], a["b"], starts, LENGTHS, rev, None, None, *pair, a["h0"], a["c0"])
        solo = CPU.lstm_forward_ids(*ids_args[int(rev)])
        for k in range(3):
            assert_close(res[k], want[k], np.float64, f"ids rev={rev} {k}")
            np.testing.assert_array_equal(res[k], solo[k])


@pytest.mark.parametrize("ops", list(BACKENDS.values()), ids=list(BACKENDS))
def test_unknown_activation_is_refused_with_its_name(ops):
    a = case(8)
    starts, _ = spans("post")
    for pair, arg in ((("softmax", "sigmoid"), "activation"), (("tanh", "hard_tanh"), "recurrent_activation")):
        with pytest.raises(TaggerError, match=f"{arg}="):
            forward(ops, a, starts, False, pair)


# ----------------------------------------------------------------------------------------
# Keras's equations, transcribed plainly (keras/src/layers/rnn/lstm.py LSTMCell.call and
# the masked loop of keras.ops.rnn: a masked step keeps the previous state and, with
# zero_output_for_mask, outputs 0; go_backwards walks the padded sequence from its end)

KERAS_ACT = {
    "tanh": np.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    # keras.activations.hard_sigmoid (Keras 3): 0 if x <= -3, 1 if x >= 3, x / 6 + 0.5 between
    "hard_sigmoid": lambda x: np.where(x <= -3, 0.0, np.where(x >= 3, 1.0, x / 6 + 0.5)),
    "relu": lambda x: np.maximum(x, 0.0),
    "linear": lambda x: x,
}


def keras_lstm(x, mask, kernel, recurrent_kernel, bias, activation, recurrent_activation, h, c, go_backwards):
    """Returns (outputs in processing order (B, T, H), h, c)."""
    act, rec = KERAS_ACT[activation], KERAS_ACT[recurrent_activation]
    if go_backwards:
        x, mask = x[:, ::-1], mask[:, ::-1]
    units = recurrent_kernel.shape[0]
    outputs = []
    for t in range(x.shape[1]):
        z = x[:, t] @ kernel + h @ recurrent_kernel + bias
        z0, z1, z2, z3 = (z[:, k * units : (k + 1) * units] for k in range(4))
        i = rec(z0)
        f = rec(z1)
        c_new = f * c + i * act(z2)
        o = rec(z3)
        h_new = o * act(c_new)
        m = mask[:, t][:, None]
        h = np.where(m, h_new, h)
        c = np.where(m, c_new, c)
        outputs.append(np.where(m, h_new, 0.0))
    return np.stack(outputs, axis=1), h, c


@pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)
def test_matches_keras_equations(pair):
    a = case(9)
    for padding in ("post", "pre"):
        starts, _ = spans(padding)
        mask = (np.arange(T)[None, :] >= starts[:, None]) & (np.arange(T)[None, :] < (starts + LENGTHS)[:, None])
        for reverse in (False, True):
            out, kh, kc = keras_lstm(a["X"], mask, a["W"], a["U"], a["b"], *pair, a["h0"], a["c0"], reverse)
            if reverse:
                out = out[:, ::-1]  # back to time order
            for name, ops in BACKENDS.items():
                Y, h, c, _ = forward(ops, a, starts, reverse, pair)
                where = f"{name} {pair} {padding} rev={reverse}"
                np.testing.assert_allclose(Y, out, rtol=1e-12, atol=1e-12, err_msg=where)
                np.testing.assert_allclose(h, kh, rtol=1e-12, atol=1e-12, err_msg=where)
                np.testing.assert_allclose(c, kc, rtol=1e-12, atol=1e-12, err_msg=where)


# ----------------------------------------------------------------------------------------
# CUDA


@pytest.mark.slow
def test_cuda_options_match_reference_on_simulator():
    """tests/ops/cuda_lstm_option_cases.py under NUMBA_ENABLE_CUDASIM=1, in a fresh
    interpreter (the variable must be set before numba is imported)."""
    assert_cases_pass(SIM_CASES, timeout=900)


LSTM_KERNELS = ("lstm_seq", "lstm_step", "lstm_bseq", "lstm_bstep", "lstm_last", "lstm_dstate0")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", LSTM_KERNELS)
def test_lstm_kernels_compile_to_sm90_ptx(name, dtype):
    """The LSTM kernels, with the option arguments, as sm_90 PTX; assembled without
    spills when an assembler (nvJitLink or ptxas) is installed."""
    assert os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0"), "PTX needs the real numba.cuda target"
    from tagger.ops import _cuda_ptxas as P

    ptx = P.compile_kernel(name, dtype, cc=(9, 0))
    assert ".target sm_90" in ptx and ".entry" in ptx
    if P.assembler() is not None:
        info = P.ptxas_info(ptx, "sm_90")
        assert info["spill_stores"] == 0 and info["spill_loads"] == 0, info
        assert info["registers"] <= 255, info
