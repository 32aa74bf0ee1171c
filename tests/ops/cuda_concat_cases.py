"""CUDA concat_forward / concat_backward vs the NumPy reference, on a device (the CUDA
simulator or a real GPU).

Not collected by a plain `pytest` run: tests/ops/test_concat.py runs it in a subprocess
with NUMBA_ENABLE_CUDASIM=1 (set before numba is imported). Direct use:

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q -p no:cacheprovider tests/ops/cuda_concat_cases.py

Launch constants are patched down (small_launches) so every grid-stride loop goes round
more than once.
"""
import numpy as np
import pytest

from tagger.ops import cuda as C
from tagger.ops import reference as R
from tests.ops.concat_cases import SHAPES, pieces
from tests.ops.cuda_device_cases import small_launches  # noqa: F401  (autouse: tiny launch shapes)

if not C.is_available():
    pytest.skip("no CUDA device and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("lead,widths", SHAPES)
def test_concat_matches_reference_and_stays_on_device(lead, widths, dtype):
    Ys = pieces(lead, widths, dtype)
    want = R.concat_forward(Ys)
    got = C.concat_forward([C.asarray(y) for y in Ys])
    assert hasattr(got, "copy_to_host")  # a device array: nothing went through the host
    np.testing.assert_array_equal(C.to_numpy(got), want)
    dY = np.random.default_rng(1).normal(size=want.shape).astype(dtype)
    back = C.concat_backward(C.asarray(dY), list(widths))
    for k, (g, w) in enumerate(zip(back, R.concat_backward(dY, list(widths)))):
        assert hasattr(g, "copy_to_host")
        assert C.to_numpy(g).dtype == np.dtype(dtype)
        np.testing.assert_array_equal(C.to_numpy(g), w, err_msg=f"dY_{k}")


def test_bad_input_is_the_reference_error():
    Ys = pieces((2, 3), (2, 2))
    for call in (lambda ops: ops.concat_forward([Ys[0], Ys[1][:1]]), lambda ops: ops.concat_backward(Ys[0], [1, 2])):
        with pytest.raises(Exception) as ref_err:
            call(R)
        with pytest.raises(type(ref_err.value)) as dev_err:
            call(C)
        assert str(dev_err.value) == str(ref_err.value)


@pytest.mark.parametrize("kind", ["lstm", "cnn"])
def test_word_features_on_cuda_matches_reference(kind):
    """WordFeatures (word Embedding ++ CharEncoder through concat_forward) on the device:
    outputs and every weight's gradient as the reference gives them."""
    from tagger.layers import CharEncoder, Embedding, WordFeatures, WordInputs
    from tagger.spans import Spans

    def stage(backend):
        enc = CharEncoder(kind, char_vocab_size=7, char_dim=2, units=2, filters=3, width=3, ops=backend, dtype=np.float64)
        return WordFeatures(Embedding(6, 3, ops=backend, dtype=np.float64), enc, ops=backend, dtype=np.float64, seed=4)

    ids = np.array([[1, 5, 2], [3, 4, 0]])
    chars = np.array([[[2, 3, 0], [4, 0, 0], [5, 6, 2]], [[1, 2, 0], [6, 0, 0], [0, 0, 0]]])
    x = WordInputs(ids, chars, (chars != 0).sum(-1))
    spans = Spans.from_lengths(np.array([3, 2]), 3)
    dY = np.random.default_rng(3).normal(size=(2, 3, 3 + (4 if kind == "lstm" else 3)))
    results = []
    for backend, ops in (("reference", R), ("cuda", C)):
        layer = stage(backend)
        y, back = layer.forward(x, spans, train=True)
        back(ops.asarray(dY))
        if backend == "cuda":
            assert hasattr(y, "copy_to_host")  # the concatenation stayed on the device
        results.append((np.asarray(ops.to_numpy(y)), [np.asarray(ops.to_numpy(g)) for g in layer.grads]))
    (y_ref, g_ref), (y_dev, g_dev) = results
    np.testing.assert_allclose(y_dev, y_ref, rtol=1e-10, atol=1e-12)
    assert len(g_dev) == len(g_ref) > 2
    for k, (a, b) in enumerate(zip(g_dev, g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=f"grad {k}")
