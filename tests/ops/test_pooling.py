"""Global pooling over time (pool_forward / pool_backward) on the reference and cpu backends:
float64 finite differences, the masking rule (pre-, post- and mixed padding, lengths 0 .. T),
padding that holds huge values or NaN, cpu against the reference, a sequence alone against
its row in a padded batch. (Bad modes, spans and argmax: test_interface.py.)"""
import numpy as np
import pytest

from tagger.ops import cpu
from tagger.ops import reference as ref
from tests.gradcheck import assert_grad_close, numeric_grad
from tests.ops.cases import LENGTHS, T, real_steps, spans

BACKENDS = {"reference": ref, "cpu": cpu}
MODES = ["max", "mean"]


def case(seed, dtype=np.float64, F=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(len(LENGTHS), T, F)).astype(dtype)
    R = rng.normal(size=(len(LENGTHS), F)).astype(dtype)
    return X, R


def poison(X, starts, lengths, value):
    """X with `value` at every padded step."""
    X = X.copy()
    X[~real_steps(starts, lengths)] = value
    return X


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", ["post", "pre", "mixed"])
def test_backward_matches_finite_differences(backend, mode, padding):
    ops = BACKENDS[backend]
    X, R = case(1)
    starts, lengths = spans(padding)

    def loss():
        return float((ops.pool_forward(X, starts, lengths, mode)[0] * R).sum())

    Y, argmax = ops.pool_forward(X, starts, lengths, mode)
    dX = ops.pool_backward(R, argmax, starts, lengths, T, mode)
    assert dX.shape == X.shape and dX.dtype == X.dtype
    assert_grad_close(dX, numeric_grad(loss, X), f"{backend} {mode} dX")
    # padded steps and the length-0 row: exactly 0
    assert (dX[~real_steps(starts, lengths)] == 0).all()
    assert (Y[lengths == 0] == 0).all() and (dX[lengths == 0] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", ["post", "pre", "mixed"])
def test_padding_never_reaches_the_result(backend, mode, padding):
    """Padded steps set to huge values, -huge or NaN change neither Y nor dX."""
    ops = BACKENDS[backend]
    X, R = case(2)
    starts, lengths = spans(padding)
    Y, argmax = ops.pool_forward(poison(X, starts, lengths, 0.0), starts, lengths, mode)
    dX = ops.pool_backward(R, argmax, starts, lengths, T, mode)
    for value in (1e30, -1e30, np.nan, np.inf):
        Yp, ap = ops.pool_forward(poison(X, starts, lengths, value), starts, lengths, mode)
        np.testing.assert_array_equal(Yp, Y, err_msg=str(value))
        if mode == "max":
            np.testing.assert_array_equal(ap, argmax)
        np.testing.assert_array_equal(ops.pool_backward(R, ap, starts, lengths, T, mode), dX)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", ["post", "pre", "mixed"])
def test_a_sequence_alone_equals_its_row_in_the_padded_batch(backend, mode, padding):
    ops = BACKENDS[backend]
    X, R = case(3)
    starts, lengths = spans(padding)
    Y, argmax = ops.pool_forward(X, starts, lengths, mode)
    dX = ops.pool_backward(R, argmax, starts, lengths, T, mode)
    for r, (s, n) in enumerate(zip(starts, lengths)):
        alone = np.ascontiguousarray(X[r : r + 1, s : s + n])
        Ya, aa = ops.pool_forward(alone, [0], [n], mode)
        np.testing.assert_array_equal(Ya[0], Y[r])
        dXa = ops.pool_backward(R[r : r + 1], aa, [0], [n], n, mode)
        np.testing.assert_array_equal(dXa[0], dX[r, s : s + n])


@pytest.mark.parametrize("mode", MODES)
def test_the_definition(mode):
    """Against a direct NumPy formula: max / mean of the real steps, the max's gradient at
    its first maximum."""
    X, R = case(4)
    X[1, 2, 0] = X[1, 4, 0] = X[1].max() + 1  # a tie: the first step wins
    starts, lengths = spans("pre")
    Y, argmax = ref.pool_forward(X, starts, lengths, mode)
    for r, (s, n) in enumerate(zip(starts, lengths)):
        if n == 0:
            continue
        steps = X[r, s : s + n]
        np.testing.assert_allclose(Y[r], steps.max(axis=0) if mode == "max" else steps.mean(axis=0), rtol=1e-14)
    if mode == "max":
        assert argmax[1, 0] == 2 and argmax[3].tolist() == [-1, -1, -1]
        dX = ref.pool_backward(R, argmax, starts, lengths, T, mode)
        assert dX[1, 2, 0] == R[1, 0] and dX[1, 4, 0] == 0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", ["post", "pre", "mixed"])
def test_cpu_equals_reference(dtype, mode, padding):
    X, R = case(5, dtype, F=17)  # wider than a vector register: the vectorised loops and their tails
    starts, lengths = spans(padding)
    Yr, ar = ref.pool_forward(X, starts, lengths, mode)
    Yc, ac = cpu.pool_forward(X, starts, lengths, mode)
    assert Yc.dtype == np.dtype(dtype) and Yc.shape == Yr.shape
    np.testing.assert_allclose(Yc, Yr, rtol=1e-12 if dtype == np.float64 else 1e-6)
    if mode == "max":
        np.testing.assert_array_equal(ac, ar)
    else:
        assert ac is None and ar is None
    dXr = ref.pool_backward(R, ar, starts, lengths, T, mode)
    dXc = cpu.pool_backward(R, ac, starts, lengths, T, mode)
    assert dXc.dtype == np.dtype(dtype)
    np.testing.assert_allclose(dXc, dXr, rtol=1e-12 if dtype == np.float64 else 1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nan_at_a_real_step_propagates_like_np_max(backend):
    ops = BACKENDS[backend]
    X, _ = case(6)
    starts, lengths = spans("post")
    X[1, 3, 2] = np.nan
    Y, argmax = ops.pool_forward(X, starts, lengths, "max")
    assert np.isnan(Y[1, 2]) and argmax[1, 2] == 3
    assert np.isfinite(np.delete(Y.ravel(), 1 * 3 + 2)).all()
    assert np.isnan(ops.pool_forward(X, starts, lengths, "mean")[0][1, 2])


def test_empty_batch_and_all_empty_rows():
    for ops in BACKENDS.values():
        for mode in MODES:
            Y, a = ops.pool_forward(np.zeros((0, 4, 2)), np.zeros(0, int), np.zeros(0, int), mode)
            assert Y.shape == (0, 2)
            assert ops.pool_backward(np.zeros((0, 2)), a, np.zeros(0, int), np.zeros(0, int), 4, mode).shape == (0, 4, 2)
            X = np.full((2, 3, 2), np.nan)
            Y, a = ops.pool_forward(X, [0, 3], [0, 0], mode)
            assert (Y == 0).all()
            assert (ops.pool_backward(np.ones((2, 2)), a, [0, 3], [0, 0], 3, mode) == 0).all()
