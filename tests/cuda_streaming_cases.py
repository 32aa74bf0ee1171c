"""Blockwise inference of long sentences on the cuda backend: the CUDA simulator or a GPU.

Not collected by a plain `pytest` run (the file name does not match test_*.py):
tests/test_streaming.py runs it in a subprocess with NUMBA_ENABLE_CUDASIM=1 (set before
numba is imported). Direct use:

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q -p no:cacheprovider tests/cuda_streaming_cases.py

Tiny shapes (the simulator runs one Python thread per CUDA thread): 4 units, sentences of
9 and 12 tokens in blocks of 5, launch constants patched down.
"""
import numpy as np
import pytest

from tagger import streaming
from tagger.ops import cuda as C
from tests.test_streaming import PROBS, SCORES, blocked_scores, make_model, sentence, whole_scores

if not C.is_available():
    pytest.skip("no CUDA device and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)


@pytest.fixture(autouse=True)
def small(monkeypatch):
    monkeypatch.setattr(C, "THREADS_PER_BLOCK", 4)
    monkeypatch.setattr(C, "MAX_BLOCKS", 2)
    monkeypatch.setattr(streaming, "THRESHOLD", 7)
    monkeypatch.setattr(streaming, "BLOCK", 5)


@pytest.mark.parametrize("model", [{"layers": 2}, {"crf": True}, {"task": "classify", "pooling": "mean"},
                                   {"task": "classify", "pooling": "last"}])
def test_blockwise_equals_whole_on_cuda(model, monkeypatch):
    net = make_model("cuda", units=4, **model)
    ids = np.asarray(net.words.encode_batch([sentence(12, 3).tokens]), dtype=np.int64)
    np.testing.assert_allclose(blocked_scores(net, ids), whole_scores(net, ids), **SCORES)
    examples = [sentence(9, 1), sentence(3, 2)]
    blocked = net.predict_examples(examples)
    monkeypatch.setattr(streaming, "THRESHOLD", 10**9)
    whole = net.predict_examples(examples)
    assert [w[0] for w in whole] == [b[0] for b in blocked]
    for w, b in zip(whole, blocked):
        np.testing.assert_allclose(b[1], w[1], **PROBS)
