"""Every backward pass of the host backends (reference, cpu) against float64 finite
differences: ragged lengths, pre-, post- and mixed padding, both directions, dropout masks.
(The CUDA backward is checked the same way, along random directions, in
cuda_device_cases.py; pooling's in test_pooling.py.)"""
import numpy as np
import pytest

from tagger.ops import get_ops
from tests.gradcheck import assert_grad_close, numeric_grad
from tests.ops.cases import lstm_case, masks, spans

HOST = ["reference", "cpu"]


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("padding", ["post", "pre", "mixed"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dropout", [False, True])
def test_lstm_backward(backend, padding, reverse, dropout):
    ops = get_ops(backend)
    X, W, U, b, RY, Rh, Rc = lstm_case(np.float64, seed=10, I=2, H=3)
    starts, lengths = spans(padding)
    B, _, I = X.shape
    in_mask, rec_mask = masks(dropout, np.float64, B, I, U.shape[0])

    def loss():
        Y, h, c, _ = ops.lstm_forward(X, W, U, b, starts, lengths, reverse, in_mask, rec_mask)
        return float((Y * RY).sum() + (h * Rh).sum() + (c * Rc).sum())

    cache = ops.lstm_forward(X, W, U, b, starts, lengths, reverse, in_mask, rec_mask)[3]
    dW, dU, db = np.zeros_like(W), np.zeros_like(U), np.zeros_like(b)
    dX = ops.lstm_backward(cache, RY, Rh, Rc, dW, dU, db)
    for name, analytic, arr in [("dX", dX, X), ("dW", dW, W), ("dU", dU, U), ("db", db, b)]:
        assert_grad_close(analytic, numeric_grad(loss, arr), f"{backend} {name}")


@pytest.mark.parametrize("backend", HOST)
def test_lstm_backward_pair(backend):
    """The pair op's gradients are the two directions' own (finite differences of both)."""
    ops = get_ops(backend)
    X, W, U, b, RY, Rh, Rc = lstm_case(np.float64, seed=11, B=3, I=2, H=2, T=4)
    starts, lengths = spans("pre", np.array([4, 1, 3]), T=4)
    W2 = W[:, ::-1].copy()

    def loss():
        (Yf, _, _, _), (Yb, hb, _, _) = ops.lstm_forward_pair((X, W, U, b, starts, lengths, False),
                                                              (X, W2, U, b, starts, lengths, True))
        return float((Yf * RY).sum() + (Yb * RY[..., ::-1]).sum() + (hb * Rh).sum())

    (_, _, _, kf), (_, _, _, kb) = ops.lstm_forward_pair((X, W, U, b, starts, lengths, False),
                                                         (X, W2, U, b, starts, lengths, True))
    gf = [np.zeros_like(a) for a in (W, U, b)]
    gb = [np.zeros_like(a) for a in (W2, U, b)]
    dXf, dXb = ops.lstm_backward_pair((kf, RY, None, None, *gf), (kb, RY[..., ::-1].copy(), Rh, None, *gb))
    assert_grad_close(dXf + dXb, numeric_grad(loss, X), f"{backend} dX")
    assert_grad_close(gf[0], numeric_grad(loss, W), f"{backend} dW forward")
    assert_grad_close(gb[0], numeric_grad(loss, W2), f"{backend} dW backward")


@pytest.mark.parametrize("backend", HOST)
def test_embedding_backward(backend):
    ops = get_ops(backend)
    rng = np.random.default_rng(11)
    table = rng.normal(size=(9, 3))
    ids = np.array([[3, 1, 3, 0], [2, 0, 7, 0]])
    mask = np.array([[1, 1, 1, 0], [1, 0, 1, 1]], dtype=bool)
    R = rng.normal(size=(2, 4, 3))

    def loss():
        return float((ops.embedding_forward(table, ids) * R * mask[..., None]).sum())

    dtable = np.zeros_like(table)
    rows = ops.embedding_backward(dtable, R, ids, mask)
    np.testing.assert_array_equal(rows, [0, 1, 2, 3, 7])
    assert rows.dtype == np.int64
    assert_grad_close(dtable, numeric_grad(loss, table), "dtable")
    assert (dtable[np.setdiff1d(np.arange(9), rows)] == 0).all()


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("activation", ["linear", "relu", "tanh", "sigmoid", "softmax"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_backward(backend, ndim, activation, use_bias):
    ops = get_ops(backend)
    rng = np.random.default_rng(12)
    shape = (3, 4) if ndim == 2 else (2, 3, 4)
    X = rng.normal(size=shape)
    W = rng.normal(size=(4, 5))
    b = rng.normal(size=(5,)) if use_bias else None
    R = rng.normal(size=shape[:-1] + (5,))

    def loss():
        return float((ops.activation_forward(ops.dense_forward(X, W, b), activation) * R).sum())

    Y = ops.activation_forward(ops.dense_forward(X, W, b), activation)
    dW = np.zeros_like(W)
    db = np.zeros_like(b) if use_bias else None
    dX = ops.dense_backward(ops.activation_backward(R, Y, activation), X, W, dW, db)
    grads = [("dX", dX, X), ("dW", dW, W)] + ([("db", db, b)] if use_bias else [])
    for name, analytic, arr in grads:
        assert_grad_close(analytic, numeric_grad(loss, arr), f"{backend} {name}")


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("mode", ["concat", "sum", "ave", "mul"])
def test_merge_backward(backend, mode):
    ops = get_ops(backend)
    rng = np.random.default_rng(13)
    Yf, Yb = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    R = rng.normal(size=ops.merge_forward(Yf, Yb, mode).shape)
    dYf, dYb = ops.merge_backward(R, Yf, Yb, mode)

    def loss():
        return float((ops.merge_forward(Yf, Yb, mode) * R).sum())

    assert_grad_close(dYf, numeric_grad(loss, Yf), "dYf")
    assert_grad_close(dYb, numeric_grad(loss, Yb), "dYb")


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("per", ["token", "token-nomask", "sequence"])
def test_softmax_xent(backend, per):
    ops = get_ops(backend)
    rng = np.random.default_rng(14)
    if per == "sequence":
        logits, labels, mask = rng.normal(size=(3, 5)), rng.integers(0, 5, size=(3,)), None
    else:
        logits, labels = rng.normal(size=(2, 4, 5)) * 3, rng.integers(0, 5, size=(2, 4))
        mask = None if per == "token-nomask" else np.array([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=bool)
    loss, d = ops.softmax_xent(logits, labels, mask)
    assert isinstance(loss, float)
    assert_grad_close(d, numeric_grad(lambda: ops.softmax_xent(logits, labels, mask)[0], logits), "dlogits")
    if mask is not None:
        assert (d[~mask] == 0).all()
    # against the definition
    picked = np.take_along_axis(ops.softmax(logits), labels[..., None], -1)[..., 0]
    assert loss == pytest.approx(-np.log(picked if mask is None else picked[mask]).mean(), rel=1e-12)
