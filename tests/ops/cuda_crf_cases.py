"""The CUDA CRF ops vs the NumPy reference, on a device: the CUDA simulator or a real GPU.

Not collected by a plain `pytest` run (the file name does not match test_*.py):
tests/ops/test_crf_ops.py runs it in a subprocess with NUMBA_ENABLE_CUDASIM=1 (set before
numba is imported), and on a machine with a GPU once more without the simulator. Direct use:

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q -p no:cacheprovider tests/ops/cuda_crf_cases.py

Shapes are tiny (the simulator runs one Python thread per CUDA thread) and the launch
constants are patched down so that rows are grid-strided over blocks and every thread of
a per-sentence kernel owns more than one tag.
"""
import numpy as np
import pytest

from tagger.ops import cuda as X  # the CRF ops and their launch constants
from tagger.ops import cuda as C
from tagger.ops import reference as R
from tagger.spans import Spans
from tests.gradcheck import assert_grad_close, numeric_grad
from tests.layers.test_crf import PADDINGS, case, nll

if not C.is_available():
    pytest.skip("no CUDA device and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-6)}


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    monkeypatch.setattr(X, "CRF_THREADS", 2)  # K = 3 tags: thread 0 owns two
    monkeypatch.setattr(X, "CRF_MAX_BLOCKS", 2)  # 4 rows on 2 blocks
    monkeypatch.setattr(C, "THREADS_PER_BLOCK", 4)
    monkeypatch.setattr(C, "MAX_BLOCKS", 2)


def device_nll(E, y, sp, A, s, e, calls=1, host=False):
    """crf_nll on the device (inputs and buffers as device arrays unless host), `calls` times."""
    put = (lambda a: a) if host else C.asarray
    grads = [np.zeros_like(a) if host else C.zeros(a.shape, a.dtype) for a in (A, s, e)]
    args = [put(a) for a in (E, y, sp.starts, sp.lengths, A, s, e)]
    for _ in range(calls):
        loss, dE = C.crf_nll(*args, *grads)
    return loss, dE, grads


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("padding", PADDINGS)
def test_ops_match_reference(dtype, padding):
    E, y, sp, A, s, e = case(seed=1, B=4, T=5, lengths=(5, 1, 0, 3), padding=padding, dtype=dtype)
    ref = nll(R, E, y, sp, A, s, e)
    loss, dE, grads = device_nll(E, y, sp, A, s, e, calls=2)  # the second call accumulates
    assert C._is_device(dE) and all(C._is_device(g) for g in grads)
    assert loss == pytest.approx(ref[0], rel=TOL[dtype]["rtol"])
    np.testing.assert_allclose(C.to_numpy(dE), ref[1], **TOL[dtype])
    for g, want in zip(grads, ref[2:]):
        np.testing.assert_allclose(C.to_numpy(g), 2 * want, **TOL[dtype])
    args = [C.asarray(a) for a in (E, sp.starts, sp.lengths, A, s, e)]
    P = C.crf_marginals(*args)
    assert C._is_device(P) and P.dtype == np.dtype(dtype)
    np.testing.assert_allclose(C.to_numpy(P), R.crf_marginals(E, sp.starts, sp.lengths, A, s, e), **TOL[dtype])
    paths, scores = C.crf_viterbi(*args)
    assert isinstance(paths, np.ndarray) and paths.dtype == np.int64 and isinstance(scores, np.ndarray)
    want_paths, want_scores = R.crf_viterbi(E, sp.starts, sp.lengths, A, s, e)
    np.testing.assert_array_equal(paths, want_paths)
    np.testing.assert_allclose(scores, want_scores, **TOL[dtype])


def test_host_inputs_and_host_gradient_buffers():
    """Host arrays are copied in; host buffers still accumulate (through a device copy)."""
    E, y, sp, A, s, e = case(seed=2, B=3, T=4, lengths=(2, 4, 1), padding="pre")
    ref = nll(R, E, y, sp, A, s, e)
    loss, dE, grads = device_nll(E, y, sp, A, s, e, host=True)
    assert loss == pytest.approx(ref[0], rel=1e-10)
    np.testing.assert_allclose(C.to_numpy(dE), ref[1], **TOL[np.float64])
    for g, want in zip(grads, ref[2:]):
        assert isinstance(g, np.ndarray)
        np.testing.assert_allclose(g, want, **TOL[np.float64])


def test_deterministic():
    E, y, sp, A, s, e = case(seed=3, B=4, T=4, lengths=(4, 3, 2, 4), padding="mid", dtype=np.float32)
    runs = [device_nll(E, y, sp, A, s, e) for _ in range(2)]
    assert runs[0][0] == runs[1][0]
    for a, b in zip([runs[0][1], *runs[0][2]], [runs[1][1], *runs[1][2]]):
        np.testing.assert_array_equal(C.to_numpy(a), C.to_numpy(b))


def test_finite_differences_on_device():
    E, y, sp, A, s, e = case(seed=4, B=3, T=3, K=2, lengths=(3, 0, 2), padding="pre")
    loss, dE, grads = device_nll(E, y, sp, A, s, e)

    def f():
        return device_nll(E, y, sp, A, s, e)[0]

    for name, x, analytic in (("emissions", E, dE), ("transitions", A, grads[0]), ("start", s, grads[1]),
                              ("end", e, grads[2])):
        assert_grad_close(C.to_numpy(analytic), numeric_grad(f, x), name)


def test_length_zero_rows_and_empty_batches():
    E, y, sp, A, s, e = case(seed=5, B=2, T=3, lengths=(0, 0))
    loss, dE, grads = device_nll(E, y, sp, A, s, e)
    assert loss == 0 and not C.to_numpy(dE).any() and not any(C.to_numpy(g).any() for g in grads)
    for B, T in ((0, 3), (2, 0)):
        empty = Spans.full(B, T)
        E0 = np.zeros((B, T, 3))
        loss, dE, _ = device_nll(E0, np.zeros((B, T), dtype=np.int64), empty, A, s, e)
        assert loss == 0 and tuple(dE.shape) == (B, T, 3)
        assert tuple(C.crf_marginals(E0, empty.starts, empty.lengths, A, s, e).shape) == (B, T, 3)
        assert C.crf_viterbi(E0, empty.starts, empty.lengths, A, s, e)[0].shape == (B, T)


def test_crf_layer_keeps_everything_on_the_device():
    """CRF(ops='cuda') with pre-padded Spans: d_emissions and the weight gradients are
    device arrays, decode and marginals NumPy; all equal to CRF(ops='reference')."""
    from tagger.layers import CRF

    E, y, sp, A, s, e = case(seed=6, B=3, T=4, lengths=(4, 1, 3), padding="pre")
    out = {}
    for backend in ("reference", "cuda"):
        layer = CRF(3, dtype=np.float64, ops=backend)
        layer.ensure_built((None, None, 3))
        layer.set_weights([A, s, e])
        ops = layer.ops
        loss, dE = layer.loss(ops.asarray(E), y, sp)
        if backend == "cuda":
            assert C._is_device(dE) and all(C._is_device(g) for g in layer.grads)
        out[backend] = (loss, ops.to_numpy(dE), [ops.to_numpy(g) for g in layer.grads],
                        layer.decode(E, sp), layer.marginals(E, sp))
    ref, dev = out["reference"], out["cuda"]
    assert dev[0] == pytest.approx(ref[0], rel=1e-10)
    np.testing.assert_allclose(dev[1], ref[1], **TOL[np.float64])
    for a, b in zip(dev[2], ref[2]):
        np.testing.assert_allclose(a, b, **TOL[np.float64])
    assert isinstance(dev[3], np.ndarray) and isinstance(dev[4], np.ndarray)
    np.testing.assert_array_equal(dev[3], ref[3])
    np.testing.assert_allclose(dev[4], ref[4], **TOL[np.float64])


@pytest.mark.parametrize("scheme", ["bio", "bioes"])
def test_the_crf_layer_within_a_grammar_on_the_device(scheme):
    """Constrained decode, marginals, nll (forbidden gradients exactly 0, in place in the
    device buffers) and n-best lists (host k-best from the device emissions) on cuda equal
    the reference's, which tests/layers/test_crf_grammar.py checks against enumeration."""
    from tagger.data.schemes import allowed_transitions
    from tagger.layers import CRF
    from tagger.ops._crf_reference import weight_masks

    tags = {"bio": ["O", "B-X", "I-X"], "bioes": ["O", "B-X", "I-X", "E-X", "S-X"]}[scheme]
    K = len(tags)
    allowed = allowed_transitions(tags, scheme)
    E, y, sp, A, s, e = case(seed=7, B=3, T=4, K=K, lengths=(4, 1, 3), padding="mid")
    y[:] = 0  # all O: a gold path within every grammar
    out = {}
    for backend in ("reference", "cuda"):
        layer = CRF(K, dtype=np.float64, ops=backend)
        layer.ensure_built((None, None, K))
        layer.set_weights([A * 3, s * 3, e * 3])
        ops = layer.ops
        loss, dE = layer.loss(ops.asarray(E), y, sp, allowed)
        if backend == "cuda":
            assert C._is_device(dE) and all(C._is_device(g) for g in layer.grads)
        out[backend] = (loss, ops.to_numpy(dE), [ops.to_numpy(g) for g in layer.grads], layer.decode(E, sp, allowed),
                        layer.marginals(E, sp, allowed), layer.nbest(ops.asarray(E), sp, 4, allowed))
    ref, dev = out["reference"], out["cuda"]
    assert dev[0] == pytest.approx(ref[0], rel=1e-10)
    np.testing.assert_allclose(dev[1], ref[1], **TOL[np.float64])
    for g, want, ok in zip(dev[2], ref[2], weight_masks(allowed)):
        np.testing.assert_allclose(g, want, **TOL[np.float64])
        assert (g[~ok] == 0).all()
    np.testing.assert_array_equal(dev[3], ref[3])
    np.testing.assert_allclose(dev[4], ref[4], **TOL[np.float64])
    np.testing.assert_array_equal(dev[5][0], ref[5][0])
    for a, b in zip(dev[5][1:], ref[5][1:]):
        np.testing.assert_allclose(a, b, **TOL[np.float64])
    np.testing.assert_array_equal(dev[5][0][:, 0], dev[3])  # the 1-best of the list is Viterbi's
