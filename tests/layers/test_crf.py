"""The CRF: gradients against float64 finite differences, logZ / gold score / Viterbi /
marginals against brute-force enumeration of all K^T paths, padding (post, pre and
arbitrary starts, NaN in the padding) and float32. Every check runs on each CPU backend
("backend" fixture: the NumPy reference and the njit kernels); the CUDA kernels run the
same comparisons under the simulator (tests/ops/cuda_crf_cases.py)."""
import itertools

import numpy as np
import pytest

from tagger.errors import TaggerError
from tagger.layers import CRF, Bidirectional, Dense, Embedding, LSTM, Sequential
from tagger.ops import _crf_reference as CR
from tagger.ops import get_ops
from tagger.ops import reference as R
from tagger.spans import Spans
from tests.gradcheck import assert_grad_close, numeric_grad

PADDINGS = ("post", "pre", "mid")  # mid: each row starts somewhere inside the padded width


def make_spans(lengths, T, padding, seed=0):
    lengths = np.asarray(lengths, dtype=np.int64)
    if padding == "mid":
        starts = np.random.default_rng(seed).integers(0, T - lengths + 1)
        return Spans(starts, lengths, T)
    return Spans.from_lengths(lengths, T, padding)


def case(seed, B=4, T=4, K=3, lengths=(4, 1, 2, 3), padding="post", dtype=np.float64):
    """Random emissions and weights; padded steps hold garbage emissions (NaN) and labels."""
    rng = np.random.default_rng(seed)
    sp = make_spans(lengths, T, padding, seed)
    E = rng.normal(size=(B, T, K))
    A, s, e = rng.normal(size=(K, K)), rng.normal(size=K), rng.normal(size=K)
    y = rng.integers(0, K, size=(B, T))
    pad = ~sp.mask()
    E[pad] = np.nan
    y[pad] = K - 1
    return E.astype(dtype), y, sp, A.astype(dtype), s.astype(dtype), e.astype(dtype)


def nll(ops, E, y, sp, A, s, e):
    """(loss, dE, dA, ds, de) of ops.crf_nll with fresh zero gradient buffers."""
    grads = [np.zeros_like(a) for a in (A, s, e)]
    loss, dE = ops.crf_nll(E, y, sp.starts, sp.lengths, A, s, e, *grads)
    return (loss, np.asarray(dE), *grads)


def rows(sp):
    """(b, slice of row b's real steps) for every row."""
    return [(b, slice(st, st + n)) for b, (st, n) in enumerate(zip(sp.starts, sp.lengths))]


def path_score(E, path, A, s, e):
    """score(y) of one sentence, written out as in the module docstring."""
    total = s[path[0]] + e[path[-1]]
    for t, tag in enumerate(path):
        total += E[t, tag]
        if t:
            total += A[path[t - 1], tag]
    return total


def enumerate_paths(E, A, s, e):
    """{path: score} over all K^n paths of one sentence's emissions E (n, K)."""
    n, K = E.shape
    return {p: path_score(E, p, A, s, e) for p in itertools.product(range(K), repeat=n)}


@pytest.mark.parametrize("padding", PADDINGS)
def test_loss_gradients_match_finite_differences(backend, padding):
    ops = get_ops(backend)
    E, y, sp, A, s, e = case(seed=1, B=4, T=5, lengths=(5, 1, 3, 0), padding=padding)
    loss, dE, dA, ds, de = nll(ops, E, y, sp, A, s, e)

    def f():
        return nll(ops, E, y, sp, A, s, e)[0]

    for name, x, analytic in (("emissions", E, dE), ("transitions", A, dA), ("start", s, ds), ("end", e, de)):
        assert_grad_close(analytic, numeric_grad(f, x), name)
    assert (dE[~sp.mask()] == 0).all()


def test_layer_loss_accumulates_weight_gradients(backend):
    E, y, sp, A, s, e = case(seed=2, B=3, T=4, lengths=(4, 1, 2), padding="pre")
    layer = CRF(3, dtype=np.float64, ops=backend)
    layer.ensure_built((None, None, 3))
    layer.set_weights([A, s, e])

    def f():
        return layer.loss(E, y, sp)[0]

    loss, dE = layer.loss(E, y, sp)
    grads = [g.copy() for g in layer.grads]
    layer.loss(E, y, sp)  # a second call accumulates, zero_grad clears
    for g, g1 in zip(layer.grads, grads):
        np.testing.assert_allclose(g, 2 * g1, rtol=1e-12)
    layer.zero_grad()
    assert all((g == 0).all() for g in layer.grads)
    for k, name in enumerate(layer.param_names):
        assert_grad_close(grads[k], numeric_grad(f, layer.params[k]), name)
    assert_grad_close(dE, numeric_grad(f, E), "emissions")
    layer.zero_grad()
    layer.trainable = False  # a frozen CRF still returns the emission gradient, keeps its own at 0
    np.testing.assert_array_equal(layer.loss(E, y, sp)[1], dE)
    assert all((g == 0).all() for g in layer.grads)


@pytest.mark.parametrize("padding", PADDINGS)
def test_against_brute_force_enumeration(backend, padding):
    ops = get_ops(backend)
    for seed in range(3):
        E, y, sp, A, s, e = case(seed=10 + seed, lengths=(4, 1, 2, 3), padding=padding)
        B, T, K = E.shape
        loss, *_ = nll(ops, E, y, sp, A, s, e)
        paths, best_scores = ops.crf_viterbi(E, sp.starts, sp.lengths, A, s, e)
        P = np.asarray(ops.crf_marginals(E, sp.starts, sp.lengths, A, s, e))
        pad = ~sp.mask()
        total = 0.0
        for b, real in rows(sp):
            n = sp.lengths[b]
            scores = enumerate_paths(E[b, real], A, s, e)
            values = np.array(list(scores.values()))
            logZ = np.log(np.exp(values - values.max()).sum()) + values.max()
            gold = scores[tuple(y[b, real])]
            total += logZ - gold
            best = max(scores, key=scores.get)
            assert tuple(paths[b, real]) == best
            assert best_scores[b] == pytest.approx(scores[best], rel=1e-12)
            want = np.zeros((n, K))
            for p, v in scores.items():
                want[np.arange(n), p] += np.exp(v - logZ)
            np.testing.assert_allclose(P[b, real], want, rtol=1e-10, atol=1e-14)
            if backend == "reference":  # the pieces, not only their combination in the loss
                np.testing.assert_allclose(CR.crf_forward_backward(E, sp.starts, sp.lengths, A, s, e)[0][b], logZ,
                                           rtol=1e-12)
                np.testing.assert_allclose(CR.crf_score(E, y, sp.starts, sp.lengths, A, s, e)[b], gold, rtol=1e-12)
        assert (paths[pad] == 0).all() and (P[pad] == 0).all()
        assert loss == pytest.approx(total / sp.lengths.sum(), rel=1e-12)


@pytest.mark.parametrize("padding", PADDINGS)
def test_a_sentence_alone_equals_the_same_sentence_in_a_padded_batch(backend, padding):
    ops = get_ops(backend)
    E, y, sp, A, s, e = case(seed=3, B=4, T=6, K=4, lengths=(6, 1, 4, 2), padding=padding)
    N = sp.lengths.sum()
    loss, dE, dA, ds, de = nll(ops, E, y, sp, A, s, e)
    paths, _ = ops.crf_viterbi(E, sp.starts, sp.lengths, A, s, e)
    P = np.asarray(ops.crf_marginals(E, sp.starts, sp.lengths, A, s, e))
    sums = [np.zeros_like(g) for g in (dA, ds, de)]
    total = 0.0
    for b, real in rows(sp):
        n = int(sp.lengths[b])
        alone = Spans.full(1, n)
        one = (E[b : b + 1, real], y[b : b + 1, real])
        l1, dE1, *dw = nll(ops, *one, alone, A, s, e)
        total += l1 * n
        np.testing.assert_allclose(dE[b, real] * N, dE1[0] * n, rtol=1e-10, atol=1e-14)
        for acc, g in zip(sums, dw):
            acc += g * n
        args = (one[0], alone.starts, alone.lengths, A, s, e)
        np.testing.assert_array_equal(paths[b, real], ops.crf_viterbi(*args)[0][0])
        np.testing.assert_allclose(P[b, real], np.asarray(ops.crf_marginals(*args))[0], rtol=1e-12)
    assert loss * N == pytest.approx(total, rel=1e-12)
    for got, want in zip((dA, ds, de), sums):
        np.testing.assert_allclose(got * N, want, rtol=1e-10, atol=1e-14)
    pad = ~sp.mask()
    assert (dE[pad] == 0).all() and (P[pad] == 0).all() and (paths[pad] == 0).all()


def test_post_pre_and_arbitrary_starts_give_the_same_results(backend):
    """The same sentences laid out three ways: every result moves with its span, unchanged."""
    ops = get_ops(backend)
    E, y, post, A, s, e = case(seed=9, B=4, T=6, K=3, lengths=(6, 0, 4, 2))
    results = {}
    for padding in PADDINGS:
        sp = make_spans(post.lengths, 6, padding, seed=4)
        Ep, yp = np.full_like(E, np.nan), np.full_like(y, 2)
        for (b, src), (_, dst) in zip(rows(post), rows(sp)):
            Ep[b, dst], yp[b, dst] = E[b, src], y[b, src]
        loss, dE, *dw = nll(ops, Ep, yp, sp, A, s, e)
        paths, scores = ops.crf_viterbi(Ep, sp.starts, sp.lengths, A, s, e)
        P = np.asarray(ops.crf_marginals(Ep, sp.starts, sp.lengths, A, s, e))
        back = [np.concatenate([x[b, real] for b, real in rows(sp)]) for x in (dE, paths, P)]
        results[padding] = (loss, *dw, scores, *back)
    for padding in ("pre", "mid"):
        for got, want in zip(results[padding], results["post"]):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15, err_msg=padding)


def test_length_zero_rows(backend):
    ops = get_ops(backend)
    E, y, sp, A, s, e = case(seed=4, B=3, T=3, lengths=(3, 0, 1), padding="pre")
    loss, dE, *_ = nll(ops, E, y, sp, A, s, e)
    kept = np.array([0, 2])
    assert loss == pytest.approx(nll(ops, E[kept], y[kept], sp.take(kept), A, s, e)[0], rel=1e-12)
    assert (dE[1] == 0).all() and (np.asarray(ops.crf_marginals(E, sp.starts, sp.lengths, A, s, e))[1] == 0).all()
    paths, scores = ops.crf_viterbi(E, sp.starts, sp.lengths, A, s, e)
    assert (paths[1] == 0).all() and scores[1] == 0
    zero = Spans.from_lengths(np.zeros(3, dtype=np.int64), 3)
    loss, dE, dA, ds, de = nll(ops, E, y, zero, A, s, e)
    assert loss == 0 and not dE.any() and not dA.any() and not ds.any() and not de.any()
    for B, T in ((0, 3), (2, 0)):  # an empty batch, no timesteps
        empty = Spans.full(B, T)
        loss, dE, *_ = nll(ops, np.zeros((B, T, 3)), np.zeros((B, T), dtype=np.int64), empty, A, s, e)
        assert loss == 0 and dE.shape == (B, T, 3)
        assert ops.crf_viterbi(np.zeros((B, T, 3)), empty.starts, empty.lengths, A, s, e)[0].shape == (B, T)


@pytest.mark.parametrize("padding", PADDINGS)
def test_njit_kernels_equal_the_numpy_reference(padding):
    cpu = get_ops("cpu")
    rng = np.random.default_rng(5)
    B, T, K = 6, 9, 17
    sp = make_spans([9, 9, 7, 4, 1, 0], T, padding, seed=5)
    E = rng.normal(scale=3.0, size=(B, T, K))
    A, s, e = rng.normal(size=(K, K)), rng.normal(size=K), rng.normal(size=K)
    y = rng.integers(0, K, size=(B, T))
    ref = nll(R, E, y, sp, A, s, e)
    fast = nll(cpu, E, y, sp, A, s, e)
    assert fast[0] == pytest.approx(ref[0], rel=1e-12)
    for name, a, b in zip(("dE", "dA", "ds", "de"), ref[1:], fast[1:]):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-14, err_msg=name)
    args = (E, sp.starts, sp.lengths, A, s, e)
    np.testing.assert_allclose(cpu.crf_marginals(*args), R.crf_marginals(*args), rtol=1e-10, atol=1e-14)
    for got, want in zip(cpu.crf_viterbi(*args), R.crf_viterbi(*args)):
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_float32_is_close_to_float64(backend):
    ops = get_ops(backend)
    rng = np.random.default_rng(6)
    B, T, K = 5, 12, 9
    sp = make_spans([12, 10, 5, 1, 0], T, "mid", seed=6)
    E = rng.normal(scale=3.0, size=(B, T, K))
    A, s, e = rng.normal(size=(K, K)), rng.normal(size=K), rng.normal(size=K)
    y = rng.integers(0, K, size=(B, T))
    f32 = [a.astype(np.float32) for a in (E, A, s, e)]
    r64 = nll(ops, E, y, sp, A, s, e)
    r32 = nll(ops, f32[0], y, sp, *f32[1:])
    assert r32[0] == pytest.approx(r64[0], rel=1e-5)
    for a, b in zip(r64[1:], r32[1:]):
        assert b.dtype == np.float32
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    m32 = np.asarray(ops.crf_marginals(f32[0], sp.starts, sp.lengths, *f32[1:]))
    assert m32.dtype == np.float32
    np.testing.assert_allclose(m32, ops.crf_marginals(E, sp.starts, sp.lengths, A, s, e), atol=1e-5)
    np.testing.assert_array_equal(ops.crf_viterbi(f32[0], sp.starts, sp.lengths, *f32[1:])[0],
                                  ops.crf_viterbi(E, sp.starts, sp.lengths, A, s, e)[0])


@pytest.mark.parametrize("padding", ("post", "pre"))
def test_zero_transitions_reduce_to_the_per_token_softmax(backend, padding):
    """With the default zeros init an untrained CRF decodes like the softmax argmax."""
    E, y, sp, *_ = case(seed=7, B=3, T=5, K=4, lengths=(5, 2, 3), padding=padding)
    layer = CRF(4, dtype=np.float64, ops=backend)
    mask = sp.mask()
    P = layer.marginals(E, sp)
    np.testing.assert_allclose(P[mask], R.softmax(E)[mask], rtol=1e-12)
    np.testing.assert_array_equal(layer.decode(E, sp)[mask], E.argmax(-1)[mask])


def test_the_layer_takes_spans_lengths_or_a_mask(backend):
    """Spans, a (B,) lengths array (post-padding, as models.py passes batch.lengths) and a
    (B, T) bool mask describe the same padding; results are NumPy (decode, marginals)."""
    E, y, sp, A, s, e = case(seed=12, B=3, T=4, lengths=(4, 1, 2))
    layer = CRF(3, dtype=np.float64, ops=backend)
    layer.ensure_built((None, None, 3))
    layer.set_weights([A, s, e])
    out = []
    for spans in (sp, sp.lengths, sp.mask()):
        loss, dE = layer.loss(E, y, spans)
        out.append((loss, np.asarray(dE), layer.decode(E, spans), layer.marginals(E, spans)))
    for other in out[1:]:
        for got, want in zip(other, out[0]):
            np.testing.assert_array_equal(got, want)
    assert out[0][2].dtype == np.int64 and isinstance(out[0][3], np.ndarray)
    with pytest.raises(TaggerError, match="gap"):
        layer.decode(E, np.array([[1, 0, 1, 0]] * 3, dtype=bool))


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
    assert y is x and backprop(x) is x
    spans = Spans.from_mask(ids != 0, 2, 3)
    assert layer.output_spans(spans) is spans  # the spans pass through to the loss


def test_uniform_init_is_seeded_and_errors_are_clear(backend):
    a, b = CRF(4, initializer="uniform", seed=1), CRF(4, initializer="uniform", seed=1)
    for layer in (a, b):
        layer.ensure_built((None, None, 4))
    assert all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))
    assert 0 < np.abs(a.get_weights()[0]).max() <= 0.05
    with pytest.raises(TaggerError, match="initializer"):
        CRF(4, initializer="glorot")
    with pytest.raises(TaggerError, match="4 tags"):
        Sequential([Embedding(10, 3), Dense(5), CRF(4)], input_shape=(None,))
    E, y, sp, *_ = case(seed=8, K=3)
    layer = CRF(3, dtype=np.float64, ops=backend)
    with pytest.raises(TaggerError, match=r"labels must lie in 0\.\.2"):
        layer.loss(E, np.full_like(y, 3), sp)
    with pytest.raises(TaggerError, match="lengths must lie"):
        layer.decode(E, np.array([5, 1, 1, 1]))
    with pytest.raises(TaggerError, match=r"expects emissions \(batch, timesteps, 3\)"):
        layer.marginals(E[..., :2], sp)
    with pytest.raises(TaggerError, match="spans for"):
        layer.decode(E, sp.take([0, 1]))
