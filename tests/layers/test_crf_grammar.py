"""The CRF within a tag grammar and its k-best lists, against brute-force enumeration of
all K^T paths: constrained Viterbi, marginals and nll (with finite-difference gradients and
exactly-zero gradients at the forbidden entries) for each span scheme, and crf_nbest's
scores, order, ties, probabilities, length-1 rows and k beyond the number of paths. Every
check runs on the NumPy reference and the njit kernels ("backend" fixture); the CUDA
backend runs the same under the simulator (tests/ops/cuda_crf_cases.py)."""
import itertools

import numpy as np
import pytest

from tagger.data.schemes import allowed_transitions
from tagger.errors import TaggerError
from tagger.layers import CRF
from tagger.ops import _crf_reference as CR
from tagger.ops import get_ops
from tests.gradcheck import assert_grad_close, numeric_grad
from tests.layers.test_crf import PADDINGS, case, path_score, rows

# tag sets of each scheme (K = 4 or 5, T <= 4: at most 625 paths per sentence)
TAGS = {
    "bio": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"],
    "iob1": ["O", "I-PER", "B-PER", "I-LOC"],
    "bioes": ["O", "B-PER", "I-PER", "E-PER", "S-PER"],
    "none": ["NOUN", "VERB", "DET"],
}


def fits(path, allowed):
    start_ok, trans_ok, end_ok = allowed
    return bool(start_ok[path[0]] and end_ok[path[-1]] and all(trans_ok[a, b] for a, b in zip(path, path[1:])))


def allowed_paths(E, A, s, e, allowed):
    """{path: score} over the K^n paths of E (n, K) that fit the grammar."""
    n, K = E.shape
    return {p: path_score(E, p, A, s, e) for p in itertools.product(range(K), repeat=n) if fits(p, allowed)}


def grammar_case(scheme, seed, lengths=(4, 1, 3, 0), padding="post", scale=3.0):
    K = len(TAGS[scheme])
    E, y, sp, A, s, e = case(seed=seed, B=len(lengths), T=4, K=K, lengths=lengths, padding=padding)
    allowed = allowed_transitions(TAGS[scheme], scheme)
    return E * scale, sp, A * scale, s * scale, e * scale, allowed


def logsumexp(values):
    values = np.asarray(list(values))
    return values.max() + np.log(np.exp(values - values.max()).sum())


@pytest.mark.parametrize("scheme", list(TAGS))
@pytest.mark.parametrize("padding", PADDINGS)
def test_constrained_viterbi_and_marginals_against_enumeration(backend, scheme, padding):
    ops = get_ops(backend)
    for seed in range(3):
        E, sp, A, s, e, allowed = grammar_case(scheme, 20 + seed, padding=padding)
        K = E.shape[2]
        layer = CRF(K, dtype=np.float64, ops=backend)
        layer.ensure_built((None, None, K))
        layer.set_weights([A, s, e])
        paths = layer.decode(E, sp, allowed)
        P = layer.marginals(E, sp, allowed)
        _, scores = ops.crf_viterbi(E, sp.starts, sp.lengths, *CR.constrained(A, s, e, allowed, -np.inf))
        for b, real in rows(sp):
            n = sp.lengths[b]
            if n == 0:
                continue
            legal = allowed_paths(E[b, real], A, s, e, allowed)
            best = max(legal, key=legal.get)
            assert tuple(paths[b, real]) == best and fits(best, allowed)
            assert scores[b] == pytest.approx(legal[best], rel=1e-12)
            logZ = logsumexp(legal.values())
            want = np.zeros((n, K))
            for p, v in legal.items():
                want[np.arange(n), p] += np.exp(v - logZ)
            np.testing.assert_allclose(P[b, real], want, rtol=1e-9, atol=1e-12)


def test_the_grammar_changes_the_decoding():
    """Emissions that favour O I-PER: unconstrained Viterbi takes it, BIO never does."""
    K = len(TAGS["bio"])
    E = np.full((1, 2, K), -5.0)
    E[0, 0, 0], E[0, 1, 2] = 5.0, 5.0  # O, then I-PER
    layer = CRF(K, dtype=np.float64, ops="reference")
    allowed = allowed_transitions(TAGS["bio"], "bio")
    assert layer.decode(E, np.array([2])).tolist() == [[0, 2]]
    assert layer.decode(E, np.array([2]), allowed).tolist() != [[0, 2]]


@pytest.mark.parametrize("scheme", ["bio", "iob1", "bioes"])
def test_constrained_loss_gradients_and_masked_entries(backend, scheme):
    E, sp, A, s, e, allowed = grammar_case(scheme, 31, lengths=(4, 1, 3), padding="mid", scale=1.0)
    K = E.shape[2]
    rng = np.random.default_rng(3)
    # gold paths within the grammar (as the train scheme's canonical tags are)
    y = np.zeros(E.shape[:2], dtype=np.int64)
    for b, real in rows(sp):
        legal = list(allowed_paths(E[b, real], A, s, e, allowed))
        y[b, real] = legal[rng.integers(len(legal))]
    layer = CRF(K, dtype=np.float64, ops=backend)
    layer.ensure_built((None, None, K))
    layer.set_weights([A, s, e])

    def f():
        layer.zero_grad()
        return layer.loss(E, y, sp, allowed)[0]

    loss, dE = layer.loss(E, y, sp, allowed)
    want = 0.0
    for b, real in rows(sp):
        legal = allowed_paths(E[b, real], A, s, e, allowed)
        want += logsumexp(legal.values()) - legal[tuple(y[b, real])]
    assert loss == pytest.approx(want / sp.lengths.sum(), rel=1e-10)
    grads = [g.copy() for g in layer.grads]
    for g, ok in zip(grads, CR.weight_masks(allowed)):
        assert (g[~ok] == 0).all()  # exactly: the forbidden entries are no parameters
    for k, name in enumerate(layer.param_names):
        assert_grad_close(grads[k], numeric_grad(f, layer.params[k]), name)
    assert_grad_close(dE, numeric_grad(f, E), "emissions")


@pytest.mark.parametrize("scheme", list(TAGS))
@pytest.mark.parametrize("padding", PADDINGS)
def test_nbest_against_enumeration(backend, scheme, padding):
    """Scores, order and probabilities of the k best paths; k = 7 and k beyond the count."""
    ops = get_ops(backend)
    E, sp, A, s, e, allowed = grammar_case(scheme, 40, lengths=(3, 1, 2, 0), padding=padding)
    weights = CR.constrained(A, s, e, allowed, -np.inf) if scheme != "none" else (A, s, e)
    for k in (7, 200):
        paths, scores, logZ = ops.crf_nbest(E, sp.starts, sp.lengths, *weights, k)
        assert paths.shape == (4, k, 4) and scores.shape == (4, k) and logZ.shape == (4,)
        for b, real in rows(sp):
            n = sp.lengths[b]
            if n == 0:
                assert scores[b, 0] == 0 and np.isneginf(scores[b, 1:]).all() and logZ[b] == 0
                continue
            legal = allowed_paths(E[b, real], A, s, e, allowed)
            ranked = sorted(legal, key=lambda p: (-legal[p], p[::-1]))[:k]
            m = len(ranked)
            assert np.isfinite(scores[b, :m]).all() and np.isneginf(scores[b, m:]).all()
            assert [tuple(p) for p in paths[b, :m, real]] == ranked
            assert (paths[b, m:] == 0).all() and (paths[b][:, ~sp.mask()[b]] == 0).all()
            np.testing.assert_allclose(scores[b, :m], [legal[p] for p in ranked], rtol=1e-12)
            assert logZ[b] == pytest.approx(logsumexp(legal.values()), rel=1e-12)
            if k > len(legal):  # every path, and their probabilities sum to 1
                assert np.exp(scores[b, :m] - logZ[b]).sum() == pytest.approx(1.0, rel=1e-12)


def test_nbest_ties_go_to_the_path_smaller_read_backwards(backend):
    """Integer scores tie exactly: all-zero weights make every path score equal."""
    ops = get_ops(backend)
    K, n = 3, 3
    E = np.zeros((1, n, K))
    E[0, 1, 2] = 1.0  # the paths through tag 2 at step 1 lead, then ties
    A, s, e = np.zeros((K, K)), np.zeros(K), np.zeros(K)
    paths, scores, _ = ops.crf_nbest(E, np.array([0]), np.array([n]), A, s, e, K**n)
    everything = {p: float(p[1] == 2) for p in itertools.product(range(K), repeat=n)}
    want = sorted(everything, key=lambda p: (-everything[p], p[::-1]))
    assert [tuple(p) for p in paths[0]] == want
    best, _ = ops.crf_viterbi(E, np.array([0]), np.array([n]), A, s, e)
    assert tuple(best[0]) == want[0]  # entry 0 is Viterbi's path, ties included


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nbest_first_entry_is_viterbi_and_njit_equals_reference(dtype):
    E, sp, A, s, e, allowed = grammar_case("bioes", 50, lengths=(4, 2, 1, 3), padding="mid")
    E, A, s, e = (x.astype(dtype) for x in (E, A, s, e))
    weights = CR.constrained(A, s, e, allowed, -np.inf)
    ref = get_ops("reference").crf_nbest(E, sp.starts, sp.lengths, *weights, 5)
    got = get_ops("cpu").crf_nbest(E, sp.starts, sp.lengths, *weights, 5)
    np.testing.assert_array_equal(got[0], ref[0])
    tol = dict(rtol=1e-5) if dtype == np.float32 else dict(rtol=1e-12)
    for a, b in zip(got[1:], ref[1:]):
        assert a.dtype == np.dtype(dtype)
        np.testing.assert_allclose(a, b, **tol)
    paths, scores = get_ops("cpu").crf_viterbi(E, sp.starts, sp.lengths, *weights)
    np.testing.assert_array_equal(got[0][:, 0], paths)
    np.testing.assert_allclose(got[1][:, 0], scores, **tol)


def test_nbest_refuses_a_bad_k(backend):
    E, sp, A, s, e, _ = grammar_case("none", 1)
    for k in (0, -2, 1.5, True):
        with pytest.raises(TaggerError, match=r"crf_nbest: k \(paths per sentence\) must be a positive integer"):
            get_ops(backend).crf_nbest(E, sp.starts, sp.lengths, A, s, e, k)


def test_forbidden_gradients_are_exactly_zero_in_float32_too(backend):
    """float32's exp of -1e4 is a tiny positive number in the njit kernels, not 0: the
    layer zeroes the forbidden entries itself, in place, so accumulation stays exact."""
    E, sp, A, s, e, allowed = grammar_case("bioes", 60, lengths=(4, 2, 3), padding="post")
    K = E.shape[2]
    layer = CRF(K, dtype=np.float32, ops=backend)
    layer.ensure_built((None, None, K))
    layer.set_weights([A, s, e])
    buffers = [id(g) for g in layer.grads]
    y = np.zeros(E.shape[:2], dtype=np.int64)  # all O
    for _ in range(2):
        layer.loss(E.astype(np.float32), y, sp, allowed)
    assert [id(g) for g in layer.grads] == buffers
    for g, ok in zip(layer.grads, CR.weight_masks(allowed)):
        assert (g[~ok] == 0).all() and (g[ok] != 0).any()
