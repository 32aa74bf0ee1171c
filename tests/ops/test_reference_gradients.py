"""The reference ops' backward passes against float64 finite differences."""
import numpy as np
import pytest

from tagger.ops import reference as ref
from tests.gradcheck import assert_grad_close, numeric_grad

# ragged lengths: a full-length row, a length-1 row, and one in between (T = 5)
LENGTHS = np.array([5, 1, 3])


def spans(padding, T=5, lengths=LENGTHS):
    starts = np.zeros_like(lengths) if padding == "post" else T - lengths
    return starts, lengths


def lstm_case(seed, I=3, H=4, T=5):
    rng = np.random.default_rng(seed)
    B = len(LENGTHS)
    X = rng.normal(size=(B, T, I))
    W = rng.normal(scale=0.5, size=(I, 4 * H))
    U = rng.normal(scale=0.5, size=(H, 4 * H))
    b = rng.normal(scale=0.5, size=(4 * H,))
    RY = rng.normal(size=(B, T, H))
    Rh = rng.normal(size=(B, H))
    Rc = rng.normal(size=(B, H))
    return X, W, U, b, RY, Rh, Rc


@pytest.mark.parametrize("padding", ["post", "pre"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dropout", [False, True])
def test_lstm_backward_matches_finite_differences(padding, reverse, dropout):
    X, W, U, b, RY, Rh, Rc = lstm_case(seed=1)
    starts, lengths = spans(padding)
    B, T, I = X.shape
    H = U.shape[0]
    in_mask = ref.dropout_mask((B, I), 0.3, seed=3, dtype=np.float64) if dropout else None
    rec_mask = ref.dropout_mask((B, H), 0.3, seed=4, dtype=np.float64) if dropout else None

    def loss():
        Y, h, c, _ = ref.lstm_forward(X, W, U, b, starts, lengths, reverse, in_mask, rec_mask)
        return float((Y * RY).sum() + (h * Rh).sum() + (c * Rc).sum())

    Y, h, c, cache = ref.lstm_forward(X, W, U, b, starts, lengths, reverse, in_mask, rec_mask)
    dW, dU, db = np.zeros_like(W), np.zeros_like(U), np.zeros_like(b)
    dX = ref.lstm_backward(cache, RY, Rh, Rc, dW, dU, db)
    for name, analytic, arr in [("dX", dX, X), ("dW", dW, W), ("dU", dU, U), ("db", db, b)]:
        assert_grad_close(analytic, numeric_grad(loss, arr), name)


@pytest.mark.parametrize("padding", ["post", "pre"])
@pytest.mark.parametrize("reverse", [False, True])
def test_lstm_masking_rule(padding, reverse):
    """Each sequence alone equals its row in the padded batch; padded outputs are exactly 0."""
    X, W, U, b, *_ = lstm_case(seed=2)
    starts, lengths = spans(padding)
    Y, h, c, _ = ref.lstm_forward(X, W, U, b, starts, lengths, reverse)
    for r, (s, n) in enumerate(zip(starts, lengths)):
        alone = X[r : r + 1, s : s + n]
        Ya, ha, ca, _ = ref.lstm_forward(alone, W, U, b, [0], [n], reverse)
        np.testing.assert_allclose(Y[r, s : s + n], Ya[0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(h[r], ha[0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(c[r], ca[0], rtol=1e-12, atol=1e-14)
        pad = np.ones(X.shape[1], dtype=bool)
        pad[s : s + n] = False
        assert (Y[r, pad] == 0).all()
    # final state: at the last real token (forward) or after the first (reverse)
    r = 2
    edge = starts[r] if reverse else starts[r] + lengths[r] - 1
    np.testing.assert_array_equal(h[r], Y[r, edge])


def test_lstm_zero_length_sequence():
    X, W, U, b, *_ = lstm_case(seed=3)
    Y, h, c, cache = ref.lstm_forward(X, W, U, b, [0, 0, 0], [5, 0, 2])
    assert (Y[1] == 0).all() and (h[1] == 0).all() and (c[1] == 0).all()


def test_embedding_backward_scatter_adds_touched_rows_only():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(7, 3))
    ids = np.array([[3, 1, 3, 0], [2, 0, 0, 0]])
    mask = ids != 0
    R = rng.normal(size=(2, 4, 3))

    def loss():
        return float((ref.embedding_forward(table, ids) * R * mask[..., None]).sum())

    dtable = np.zeros_like(table)
    rows = ref.embedding_backward(dtable, R, ids, mask)
    np.testing.assert_array_equal(rows, [1, 2, 3])
    assert_grad_close(dtable, numeric_grad(loss, table), "dtable")
    assert (dtable[[0, 4, 5, 6]] == 0).all()


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("activation", ["linear", "relu", "tanh", "sigmoid", "softmax"])
def test_dense_backward(ndim, activation):
    rng = np.random.default_rng(5)
    shape = (3, 4) if ndim == 2 else (2, 3, 4)
    X = rng.normal(size=shape)
    W = rng.normal(size=(4, 5))
    b = rng.normal(size=(5,))
    R = rng.normal(size=shape[:-1] + (5,))

    def loss():
        return float((ref.activation_forward(ref.dense_forward(X, W, b), activation) * R).sum())

    Y = ref.activation_forward(ref.dense_forward(X, W, b), activation)
    dW, db = np.zeros_like(W), np.zeros_like(b)
    dX = ref.dense_backward(ref.activation_backward(R, Y, activation), X, W, dW, db)
    for name, analytic, arr in [("dX", dX, X), ("dW", dW, W), ("db", db, b)]:
        assert_grad_close(analytic, numeric_grad(loss, arr), name)


@pytest.mark.parametrize("per", ["token", "sequence"])
def test_softmax_xent(per):
    rng = np.random.default_rng(6)
    if per == "token":
        logits = rng.normal(size=(2, 4, 5))
        labels = rng.integers(0, 5, size=(2, 4))
        mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=bool)
    else:
        logits = rng.normal(size=(3, 5))
        labels = rng.integers(0, 5, size=(3,))
        mask = None
    loss, d = ref.softmax_xent(logits, labels, mask)
    assert_grad_close(d, numeric_grad(lambda: ref.softmax_xent(logits, labels, mask)[0], logits), "dlogits")
    if mask is not None:
        assert (d[~mask] == 0).all()
    # against the definition
    p = ref.softmax(logits)
    picked = np.take_along_axis(p, labels[..., None], -1)[..., 0]
    expect = -np.log(picked[mask] if mask is not None else picked).mean()
    assert loss == pytest.approx(expect, rel=1e-12)


@pytest.mark.parametrize("mode", ["concat", "sum", "ave", "mul"])
def test_merge_backward(mode):
    rng = np.random.default_rng(7)
    Yf, Yb = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    R = rng.normal(size=ref.merge_forward(Yf, Yb, mode).shape)
    dYf, dYb = ref.merge_backward(R, Yf, Yb, mode)

    def loss():
        return float((ref.merge_forward(Yf, Yb, mode) * R).sum())

    assert_grad_close(dYf, numeric_grad(loss, Yf), "dYf")
    assert_grad_close(dYb, numeric_grad(loss, Yb), "dYb")


def test_dropout_mask_is_a_seeded_function():
    a = ref.dropout_mask((50, 40), 0.25, seed=11)
    b = ref.dropout_mask((50, 40), 0.25, seed=11)
    c = ref.dropout_mask((50, 40), 0.25, seed=12)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert set(np.unique(a)) == {0.0, np.float32(1 / 0.75)}
    assert abs((a == 0).mean() - 0.25) < 0.03


def test_adam_lazy_rows_leave_other_rows_alone():
    rng = np.random.default_rng(8)
    p = rng.normal(size=(6, 3))
    g = rng.normal(size=(6, 3))
    m, v = np.zeros_like(p), np.zeros_like(p)
    before = p.copy()
    ref.adam_update(p, g, m, v, 0.1, 0.9, 0.999, 1e-8, 0.0, 1, rows=np.array([1, 4]))
    assert (p[[0, 2, 3, 5]] == before[[0, 2, 3, 5]]).all()
    # first Adam step moves each touched element by lr * sign(g)
    np.testing.assert_allclose(p[[1, 4]], before[[1, 4]] - 0.1 * np.sign(g[[1, 4]]), rtol=1e-6)
