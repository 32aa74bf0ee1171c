"""The CRF layer: gradients against float64 finite differences, logZ / gold score /
Viterbi / marginals against brute-force enumeration of all K^T paths, padding and
float32. Every check runs both implementations: the NumPy reference ("numpy") and the
njit kernels the layer uses ("njit")."""
import itertools

import numpy as np
import pytest

from tagger.errors import TaggerError
from tagger.layers import CRF, Dense, Embedding, LSTM, Bidirectional, Sequential
from tagger.layers import crf as C
from tests.gradcheck import assert_grad_close, numeric_grad

IMPLS = {
    "numpy": (C.crf_nll, C.crf_viterbi, C.crf_marginals),
    "njit": (C.crf_nll_fast, C.crf_viterbi_fast, C.crf_marginals_fast),
}


def case(seed, B=4, T=4, K=3, lengths=(4, 1, 2, 3), dtype=np.float64):
    """Random emissions and weights; padded steps hold garbage emissions (NaN) and labels."""
    rng = np.random.default_rng(seed)
    lengths = np.array(lengths)
    E = rng.normal(size=(B, T, K))
    A, s, e = rng.normal(size=(K, K)), rng.normal(size=K), rng.normal(size=K)
    y = rng.integers(0, K, size=(B, T))
    pad = np.arange(T)[None, :] >= lengths[:, None]
    E[pad] = np.nan
    y[pad] = K - 1
    return E.astype(dtype), y, lengths, A.astype(dtype), s.astype(dtype), e.astype(dtype)


def path_score(E, path, A, s, e):
    """score(y) of one sentence, written out as in the module docstring."""
    total = s[path[0]] + e[path[-1]]
    for t, tag in enumerate(path):
        total += E[t, tag]
        if t:
            total += A[path[t - 1], tag]
    return total


def enumerate_paths(E, n, A, s, e):
    """{path: score} over all K^n paths of the first n steps of one row."""
    K = E.shape[-1]
    return {p: path_score(E, p, A, s, e) for p in itertools.product(range(K), repeat=n)}


@pytest.mark.parametrize("impl", IMPLS)
def test_loss_gradients_match_finite_differences(impl):
    nll = IMPLS[impl][0]
    E, y, lengths, A, s, e = case(seed=1, B=4, T=5, lengths=(5, 1, 3, 0))
    loss, dE, dA, ds, de = nll(E, y, lengths, A, s, e)

    def f():
        return nll(E, y, lengths, A, s, e)[0]

    for name, x, analytic in (("emissions", E, dE), ("transitions", A, dA), ("start", s, ds), ("end", e, de)):
        assert_grad_close(analytic, numeric_grad(f, x), name)
    pad = np.arange(5)[None, :] >= lengths[:, None]
    assert (dE[pad] == 0).all()


def test_layer_loss_accumulates_weight_gradients():
    E, y, lengths, A, s, e = case(seed=2, B=3, T=4, lengths=(4, 1, 2))
    layer = CRF(3, dtype=np.float64)
    layer.ensure_built((None, None, 3))
    layer.set_weights([A, s, e])

    def f():
        return layer.loss(E, y, lengths)[0]

    loss, dE = layer.loss(E, y, lengths)
    grads = [g.copy() for g in layer.grads]
    layer.loss(E, y, lengths)  # a second call accumulates, zero_grad clears
    for g, g1 in zip(layer.grads, grads):
        np.testing.assert_allclose(g, 2 * g1, rtol=1e-12)
    layer.zero_grad()
    assert all((g == 0).all() for g in layer.grads)
    for k, name in enumerate(layer.param_names):
        assert_grad_close(grads[k], numeric_grad(f, layer.params[k]), name)
    assert_grad_close(dE, numeric_grad(f, E), "emissions")


@pytest.mark.parametrize("impl", IMPLS)
def test_against_brute_force_enumeration(impl):
    nll, viterbi, marginals = IMPLS[impl]
    for seed in range(3):
        E, y, lengths, A, s, e = case(seed=10 + seed, lengths=(4, 1, 2, 3))
        B, T, K = E.shape
        loss, *_ = nll(E, y, lengths, A, s, e)
        paths, best_scores = viterbi(E, lengths, A, s, e)
        P = marginals(E, lengths, A, s, e)
        total = 0.0
        for b, n in enumerate(lengths):
            scores = enumerate_paths(E[b], n, A, s, e)
            values = np.array(list(scores.values()))
            logZ = np.log(np.exp(values - values.max()).sum()) + values.max()
            gold = scores[tuple(y[b, :n])]
            total += logZ - gold
            best = max(scores, key=scores.get)
            assert tuple(paths[b, :n]) == best and (paths[b, n:] == 0).all()
            assert best_scores[b] == pytest.approx(scores[best], rel=1e-12)
            want = np.zeros((n, K))
            for p, v in scores.items():
                want[np.arange(n), p] += np.exp(v - logZ)
            np.testing.assert_allclose(P[b, :n], want, rtol=1e-10, atol=1e-14)
            assert (P[b, n:] == 0).all()
            if impl == "numpy":  # the pieces, not only their combination in the loss
                np.testing.assert_allclose(C.crf_forward_backward(E, lengths, A, s, e)[0][b], logZ, rtol=1e-12)
                np.testing.assert_allclose(C.crf_score(E, y, lengths, A, s, e)[b], gold, rtol=1e-12)
        assert loss == pytest.approx(total / lengths.sum(), rel=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_a_sentence_alone_equals_the_same_sentence_in_a_padded_batch(impl):
    nll, viterbi, marginals = IMPLS[impl]
    E, y, lengths, A, s, e = case(seed=3, B=4, T=6, K=4, lengths=(6, 1, 4, 2))
    N = lengths.sum()
    loss, dE, dA, ds, de = nll(E, y, lengths, A, s, e)
    paths, _ = viterbi(E, lengths, A, s, e)
    P = marginals(E, lengths, A, s, e)
    sums = [np.zeros_like(g) for g in (dA, ds, de)]
    total = 0.0
    for b, n in enumerate(lengths):
        one = (E[b : b + 1, :n], y[b : b + 1, :n], np.array([n]))
        l1, dE1, *dw = nll(*one, A, s, e)
        total += l1 * n
        np.testing.assert_allclose(dE[b, :n] * N, dE1[0] * n, rtol=1e-10, atol=1e-14)
        for acc, g in zip(sums, dw):
            acc += g * n
        np.testing.assert_array_equal(paths[b, :n], viterbi(one[0], one[2], A, s, e)[0][0])
        np.testing.assert_allclose(P[b, :n], marginals(one[0], one[2], A, s, e)[0], rtol=1e-12)
    assert loss * N == pytest.approx(total, rel=1e-12)
    for got, want in zip((dA, ds, de), sums):
        np.testing.assert_allclose(got * N, want, rtol=1e-10, atol=1e-14)
    pad = np.arange(6)[None, :] >= lengths[:, None]
    assert (dE[pad] == 0).all() and (P[pad] == 0).all() and (paths[pad] == 0).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_length_zero_rows(impl):
    nll, viterbi, marginals = IMPLS[impl]
    E, y, lengths, A, s, e = case(seed=4, B=3, T=3, lengths=(3, 0, 1))
    loss, dE, *_ = nll(E, y, lengths, A, s, e)
    kept = np.array([0, 2])
    assert loss == pytest.approx(nll(E[kept], y[kept], lengths[kept], A, s, e)[0], rel=1e-12)
    assert (dE[1] == 0).all() and (marginals(E, lengths, A, s, e)[1] == 0).all()
    assert (viterbi(E, lengths, A, s, e)[0][1] == 0).all()
    zero = np.zeros(3, dtype=np.int64)
    loss, dE, dA, ds, de = nll(E, y, zero, A, s, e)
    assert loss == 0 and not dE.any() and not dA.any() and not ds.any() and not de.any()


def test_njit_kernels_equal_the_numpy_reference():
    rng = np.random.default_rng(5)
    B, T, K = 6, 9, 17
    lengths = np.array([9, 9, 7, 4, 1, 0])
    E = rng.normal(scale=3.0, size=(B, T, K))
    A, s, e = rng.normal(size=(K, K)), rng.normal(size=K), rng.normal(size=K)
    y = rng.integers(0, K, size=(B, T))
    ref = C.crf_nll(E, y, lengths, A, s, e)
    fast = C.crf_nll_fast(E, y, lengths, A, s, e)
    assert fast[0] == pytest.approx(ref[0], rel=1e-12)
    for name, a, b in zip(("dE", "dA", "ds", "de"), ref[1:], fast[1:]):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-14, err_msg=name)
    np.testing.assert_allclose(C.crf_marginals_fast(E, lengths, A, s, e), C.crf_marginals(E, lengths, A, s, e), rtol=1e-10, atol=1e-14)
    for got, want in zip(C.crf_viterbi_fast(E, lengths, A, s, e), C.crf_viterbi(E, lengths, A, s, e)):
        np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_float32_is_close_to_float64(impl):
    nll, viterbi, marginals = IMPLS[impl]
    rng = np.random.default_rng(6)
    B, T, K = 5, 12, 9
    lengths = np.array([12, 10, 5, 1, 0])
    E = rng.normal(scale=3.0, size=(B, T, K))
    A, s, e = rng.normal(size=(K, K)), rng.normal(size=K), rng.normal(size=K)
    y = rng.integers(0, K, size=(B, T))
    f32 = [a.astype(np.float32) for a in (E, A, s, e)]
    r64 = nll(E, y, lengths, A, s, e)
    r32 = nll(f32[0], y, lengths, *f32[1:])
    assert r32[0] == pytest.approx(r64[0], rel=1e-5)
    for a, b in zip(r64[1:], r32[1:]):
        assert b.dtype == np.float32
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(marginals(f32[0], lengths, *f32[1:]), marginals(E, lengths, A, s, e), atol=1e-5)
    np.testing.assert_array_equal(viterbi(f32[0], lengths, *f32[1:])[0], viterbi(E, lengths, A, s, e)[0])


def test_zero_transitions_reduce_to_the_per_token_softmax():
    """With the default zeros init an untrained CRF decodes like the softmax argmax."""
    from tagger.ops.reference import softmax

    E, y, lengths, *_ = case(seed=7, B=3, T=5, K=4, lengths=(5, 2, 3))
    layer = CRF(4, dtype=np.float64)
    mask = np.arange(5)[None, :] < lengths[:, None]
    P = layer.marginals(E, lengths)
    np.testing.assert_allclose(P[mask], softmax(E)[mask], rtol=1e-12)
    np.testing.assert_array_equal(layer.decode(E, lengths)[mask], E.argmax(-1)[mask])


def test_in_a_sequential_the_layer_is_the_identity_and_counts_its_weights():
    def build(crf):
        layers = [Embedding(30, 6), Bidirectional(LSTM(4, return_sequences=True)), Dense(5, name="output")]
        return Sequential(layers + ([CRF(5, name="crf")] if crf else []), input_shape=(None,), seed=3)

    with_crf, without = build(True), build(False)
    text = with_crf.summary(print_fn=None)
    assert "crf (CRF)" in text and " 35 " in text  # 5*5 + 5 + 5
    assert with_crf.count_params() == without.count_params() + 35
    named = dict(with_crf.named_weights())
    assert [k for k in named if k.startswith("crf/")] == ["crf/transitions", "crf/start", "crf/end"]
    for a, b in zip(with_crf.get_weights(), without.get_weights()):  # the layers before it keep their seeds
        np.testing.assert_array_equal(a, b)
    ids = np.array([[3, 4, 5], [6, 0, 0]])
    np.testing.assert_array_equal(with_crf(ids), without(ids))
    layer = with_crf.layers[-1]
    x = np.ones((2, 3, 5), dtype=np.float32)
    y, backprop = layer.forward(x, mask=ids != 0)
    assert y is x and backprop(x) is x and layer.compute_mask(x, ids != 0) is not None


def test_uniform_init_is_seeded_and_errors_are_clear():
    a, b = CRF(4, initializer="uniform", seed=1), CRF(4, initializer="uniform", seed=1)
    for layer in (a, b):
        layer.ensure_built((None, None, 4))
    assert all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))
    assert 0 < np.abs(a.get_weights()[0]).max() <= 0.05
    with pytest.raises(TaggerError, match="initializer"):
        CRF(4, initializer="glorot")
    with pytest.raises(TaggerError, match="4 tags"):
        Sequential([Embedding(10, 3), Dense(5), CRF(4)], input_shape=(None,))
    E, y, lengths, *_ = case(seed=8, K=3)
    layer = CRF(3, dtype=np.float64)
    with pytest.raises(TaggerError, match=r"labels must lie in 0\.\.2"):
        layer.loss(E, np.full_like(y, 3), lengths)
    with pytest.raises(TaggerError, match="lengths must lie"):
        layer.decode(E, np.array([5, 1, 1, 1]))
