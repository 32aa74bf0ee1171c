"""Optimisers, clipping, Patience and ReduceOnPlateau, checked against their formulas
on the reference backend in float64."""
import math

import numpy as np
import pytest

from tagger.errors import TaggerError
from tagger.layers import Dense, Embedding
from tagger.optim import SGD, Adam, Patience, ReduceOnPlateau, clip_by_global_norm, global_norm, make_optimizer

V, E = 8, 3


def embedding(seed=0):
    layer = Embedding(V, E, ops="reference", dtype=np.float64, seed=seed, name="embedding")
    layer.ensure_built((None, None))
    return layer


def dense(seed=0, units=2, inputs=3):
    layer = Dense(units, ops="reference", dtype=np.float64, seed=seed, name="output")
    layer.ensure_built((None, inputs))
    return layer


def backprop_rows(layer, ids, seed):
    """Run the embedding on `ids` and backprop a random dY: gradients on those rows only."""
    ids = np.asarray(ids, dtype=np.int32)
    y, backprop = layer.forward(ids, train=True)
    backprop(np.random.default_rng(seed).normal(size=y.shape))


def set_grads(layer, grads):
    for k, g in enumerate(grads):
        layer.grads[k][...] = g


# ----------------------------------------------------------------------------------------
# Adam and SGD


def test_lazy_and_dense_adam_agree_where_rows_are_touched_and_differ_where_not():
    lazy_layer, dense_layer = embedding(), embedding()
    start = lazy_layer.get_weights()[0]
    lazy, full = Adam(lr=0.1, lazy=True), Adam(lr=0.1, lazy=False)
    for step, ids in enumerate(([[1, 2, 3]], [[2, 3, 4]])):
        for layer, opt in ((lazy_layer, lazy), (dense_layer, full)):
            backprop_rows(layer, ids, seed=step)
            assert list(layer.grad_rows[0]) == sorted(set(ids[0]))
            opt.step([layer])
        a, b = lazy_layer.get_weights()[0], dense_layer.get_weights()[0]
        if step == 0:  # zero moments: the dense update of an untouched row is exactly 0
            np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a[[2, 3, 4]], b[[2, 3, 4]], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(a[[0, 5, 6, 7]], start[[0, 5, 6, 7]])  # never touched
    np.testing.assert_array_equal(b[[0, 5, 6, 7]], start[[0, 5, 6, 7]])
    assert np.abs(a[1] - b[1]).min() > 1e-3  # row 1: dense keeps moving it on its old moment, lazy not


def test_adam_matches_its_formula():
    layer = dense()
    p0 = [w.copy() for w in layer.get_weights()]
    rng = np.random.default_rng(0)
    grads = [[rng.normal(size=w.shape) for w in p0] for _ in range(3)]
    opt = Adam(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-7, lazy=False)
    m = [np.zeros_like(w) for w in p0]
    v = [np.zeros_like(w) for w in p0]
    want = [w.copy() for w in p0]
    for t, g in enumerate(grads, start=1):
        set_grads(layer, g)
        opt.step([layer])
        for k in range(2):
            m[k] = 0.9 * m[k] + 0.1 * g[k]
            v[k] = 0.999 * v[k] + 0.001 * g[k] ** 2
            want[k] = want[k] - 0.01 * (m[k] / (1 - 0.9**t)) / (np.sqrt(v[k] / (1 - 0.999**t)) + 1e-7)
    for got, w in zip(layer.get_weights(), want):
        np.testing.assert_allclose(got, w, rtol=1e-12)


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_weight_decay_is_decoupled_from_the_gradient(name):
    """AdamW / SGDW: the decay lr*wd*p is added to the step, not to the gradient, so the
    moments never see it: wd > 0 minus wd = 0 is exactly lr*wd*p, whatever the gradient."""
    lr, wd = 0.05, 0.1
    plain, decayed = dense(seed=1), dense(seed=1)
    p0 = [w.copy() for w in plain.get_weights()]
    g = [np.random.default_rng(2).normal(size=w.shape) * 100 for w in p0]
    for layer, decay in ((plain, 0.0), (decayed, wd)):
        set_grads(layer, g)
        opt = make_optimizer(name, lr, weight_decay=decay, momentum=0.9)
        opt.lazy = False
        opt.step([layer])
    for a, b, w in zip(plain.get_weights(), decayed.get_weights(), p0):
        np.testing.assert_allclose(a - b, lr * wd * w, rtol=1e-9, atol=1e-15)
    # a zero gradient with Adam: the weights only shrink, by exactly (1 - lr*wd)
    layer = dense(seed=3)
    w0 = layer.get_weights()[0].copy()
    Adam(lr=lr, weight_decay=wd, lazy=False).step([layer])
    np.testing.assert_allclose(layer.get_weights()[0], w0 * (1 - lr * wd), rtol=1e-12)


def test_sgd_heavy_ball_momentum():
    layer = dense(seed=4)
    p0 = layer.get_weights()[0].copy()
    g = np.random.default_rng(5).normal(size=p0.shape)
    opt = SGD(lr=0.1, momentum=0.5)
    for _ in range(3):
        set_grads(layer, [g, np.zeros(layer.params[1].shape)])
        opt.step([layer])
    # v1 = g, v2 = 1.5 g, v3 = 1.75 g: the parameter moved by lr * (1 + 1.5 + 1.75) g
    np.testing.assert_allclose(layer.get_weights()[0], p0 - 0.1 * 4.25 * g, rtol=1e-12)
    assert all(not np.any(grad) for grad in layer.grads)  # step zeroes the gradients


def test_unknown_optimizer_and_bad_lr_are_one_line_errors():
    with pytest.raises(TaggerError, match="unknown optimizer 'adamw'"):
        make_optimizer("adamw", 0.1)
    with pytest.raises(TaggerError, match="learning rate must be positive"):
        Adam(lr=0)


# ----------------------------------------------------------------------------------------
# clipping


def test_clip_by_global_norm_counts_sparse_rows_and_scales_everything():
    emb, out = embedding(seed=6), dense(seed=7)
    backprop_rows(emb, [[1, 5, 5, 2]], seed=8)
    g = [np.random.default_rng(9).normal(size=p.shape) for p in out.params]
    set_grads(out, g)
    rows = emb.grad_rows[0]
    expected = math.sqrt(float(np.sum(emb.grads[0][rows] ** 2)) + sum(float(np.sum(x**2)) for x in g))
    assert global_norm([emb, out]) == pytest.approx(expected, rel=1e-12)
    before = [np.array(emb.grads[0])] + [np.array(x) for x in out.grads]
    assert clip_by_global_norm([emb, out], 10 * expected) == pytest.approx(expected)  # below: untouched
    for a, b in zip(before, [emb.grads[0], *out.grads]):
        np.testing.assert_array_equal(a, b)
    assert clip_by_global_norm([emb, out], expected / 4) == pytest.approx(expected)
    assert global_norm([emb, out]) == pytest.approx(expected / 4, rel=1e-9)
    for a, b in zip(before, [emb.grads[0], *out.grads]):
        np.testing.assert_allclose(b, a * (expected / 4) / (expected + 1e-12), rtol=1e-12)


# ----------------------------------------------------------------------------------------
# optimizer state


def _run(opt, layers, steps, seed):
    for k in range(steps):
        backprop_rows(layers[0], [[1 + k, 2]], seed=seed + k)
        set_grads(layers[1], [np.full(p.shape, 0.1 * (k + 1)) for p in layers[1].params])
        opt.step(layers)


@pytest.mark.parametrize("name,slots", [("adam", ("m", "v")), ("sgd", ("velocity",))])
def test_optimizer_state_round_trips_as_named_numpy_arrays(name, slots):
    layers = [embedding(seed=10), dense(seed=11)]
    opt = make_optimizer(name, 0.01)
    _run(opt, layers, 2, seed=0)
    state = opt.get_state()
    assert int(state["step"]) == 2 and float(state["lr"]) == 0.01
    names = {f"{layer}/{param}/{slot}" for layer, param in (("embedding", "embeddings"), ("output", "kernel"), ("output", "bias")) for slot in slots}
    assert set(state) - {"step", "lr"} == names
    assert all(type(a) is np.ndarray for a in state.values())
    # resume: a fresh optimizer from the state continues exactly like the original
    twins = [embedding(seed=12), dense(seed=13)]
    for layer, twin in zip(layers, twins):
        twin.set_weights(layer.get_weights())
    resumed = make_optimizer(name, 1.0)
    resumed.set_state(state)
    assert resumed.get_state().keys() == state.keys()  # not yet placed, still reported
    _run(opt, layers, 1, seed=5)
    _run(resumed, twins, 1, seed=5)
    for layer, twin in zip(layers, twins):
        for a, b in zip(layer.get_weights(), twin.get_weights()):
            np.testing.assert_array_equal(a, b)
    for key, value in opt.get_state().items():
        np.testing.assert_array_equal(value, resumed.get_state()[key], err_msg=key)


# ----------------------------------------------------------------------------------------
# the moving average of the weights (use_ema)


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_moving_average_is_kerases_formula_over_every_weight(name):
    layers = [embedding(seed=20), dense(seed=21)]
    opt = make_optimizer(name, 0.05, ema_momentum=0.75)
    snapshots = [[w for layer in layers for w in layer.get_weights()]]  # before the first update
    for k in range(4):
        _run(opt, layers, 1, seed=30 + k)  # the embedding rows 1 + k and 2 only
        snapshots.append([w for layer in layers for w in layer.get_weights()])
    expected = [w.copy() for w in snapshots[0]]  # the average starts as the weights
    for weights in snapshots[1:]:
        expected = [0.75 * a + 0.25 * w for a, w in zip(expected, weights)]
    state = opt.get_state()
    names = ["embedding/embeddings", "output/kernel", "output/bias"]
    for n, want in zip(names, expected):
        np.testing.assert_allclose(state[f"{n}/ema"], want, rtol=1e-13, atol=1e-15, err_msg=n)
    # row 7 was never touched: its weights never moved, and neither did its average
    np.testing.assert_array_equal(state["embedding/embeddings/ema"][7], snapshots[0][0][7])
    # row 1 was touched once, at the first step: its average still moved towards it after
    assert not np.array_equal(state["embedding/embeddings/ema"][1], snapshots[1][0][1])
    np.testing.assert_allclose(state["embedding/embeddings/ema"][1], expected[0][1], rtol=1e-13)


def test_averaged_swaps_the_averages_in_and_the_weights_back_bit_for_bit():
    layers = [embedding(seed=22), dense(seed=23)]
    opt = Adam(lr=0.05, ema_momentum=0.5)
    _run(opt, layers, 3, seed=40)
    weights = [w for layer in layers for w in layer.get_weights()]
    versions = [layer.version for layer in layers]
    state = opt.get_state()
    with opt.averaged(layers):
        inside = [w for layer in layers for w in layer.get_weights()]
        for n, got in zip(["embedding/embeddings", "output/kernel", "output/bias"], inside):
            np.testing.assert_array_equal(got, state[f"{n}/ema"])
        assert all(layer.version > v for layer, v in zip(layers, versions))  # cached tables are stale
        assert not np.array_equal(inside[1], weights[1])
    for got, want in zip([w for layer in layers for w in layer.get_weights()], weights):
        assert got.tobytes() == want.tobytes()
    with Adam(lr=0.05).averaged(layers):  # no moving average: the weights stay
        assert all(np.array_equal(a, b) for a, b in zip([w for layer in layers for w in layer.get_weights()], weights))


def test_moving_average_state_round_trips_and_resumes_exactly():
    layers, twins = [embedding(seed=24), dense(seed=25)], [embedding(seed=26), dense(seed=27)]
    opt = Adam(lr=0.05, ema_momentum=0.9)
    _run(opt, layers, 2, seed=50)
    for layer, twin in zip(layers, twins):
        twin.set_weights(layer.get_weights())
    resumed = Adam(lr=0.05, ema_momentum=0.9)
    resumed.set_state(opt.get_state())
    _run(opt, layers, 2, seed=60)
    _run(resumed, twins, 2, seed=60)
    for key, value in opt.get_state().items():
        np.testing.assert_array_equal(value, resumed.get_state()[key], err_msg=key)
    assert {k for k in opt.get_state() if k.endswith("/ema")} == {
        "embedding/embeddings/ema", "output/kernel/ema", "output/bias/ema"}
    with pytest.raises(TaggerError, match="ema_momentum must lie in"):
        Adam(ema_momentum=1.0)


def test_bad_optimizer_state_is_refused_by_name():
    with pytest.raises(TaggerError, match="needs 'step' and 'lr'"):
        Adam().set_state({"lr": np.array(0.1)})
    with pytest.raises(TaggerError, match="output/kernel/velocity: not a Adam slot"):
        Adam().set_state({"step": np.array(1), "lr": np.array(0.1), "output/kernel/velocity": np.zeros((3, 2))})
    opt = Adam(lazy=False)
    opt.set_state({"step": np.array(1), "lr": np.array(0.1), "output/kernel/m": np.zeros((4, 2))})
    layer = dense()
    with pytest.raises(TaggerError, match=r"output/kernel/m: shape \(4, 2\), the parameter is \(3, 2\)"):
        opt.step([layer])


# ----------------------------------------------------------------------------------------
# Patience and ReduceOnPlateau


def test_patience_improves_strictly_and_is_exhausted_after_limit_bad_evaluations():
    p = Patience(2)
    assert p.observe(0.5) and not p.exhausted  # the first score always improves
    assert not p.observe(0.5) and p.bad == 1 and not p.exhausted  # equal is not better
    assert p.observe(0.6) and p.bad == 0
    assert not p.observe(0.1) and not p.exhausted
    assert not p.observe(0.59) and p.exhausted  # bad >= limit
    assert p.best == 0.6
    never = Patience(None)
    for _ in range(50):
        never.observe(-1.0)
    assert not never.exhausted


def test_reduce_on_plateau_keeps_its_historical_meaning():
    """lr_patience n tolerates n evaluations without improvement and reduces at the
    n+1-th (PyTorch's ReduceLROnPlateau), then counts again; at min_lr it stops."""
    opt = Adam(lr=1.0)
    plateau = ReduceOnPlateau(opt, factor=0.5, patience=1, min_lr=0.2)
    lrs, reduced = [], []
    for score in [1.0, 0.9, 0.9, 0.9, 0.8, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]:
        reduced.append(plateau.observe(score))
        lrs.append(opt.lr)
    assert reduced == [False, False, True, False, True, False, False, True, False, False, False, False]
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.25, 0.2, 0.2, 0.2, 0.2, 0.2]
