"""The CRF ops as an interface: the same signatures and the same input checks (one-line
TaggerErrors, word for word) on every backend, cached njit kernels, the import cycle
between the backends and their CRF modules, and the CUDA kernels (compiled to sm_90 PTX;
run under the simulator in a subprocess: tests/ops/cuda_crf_cases.py). The numerics of
the reference and cpu backends are tested in tests/layers/test_crf.py."""
import inspect
from pathlib import Path

import numpy as np
import pytest

from tagger.errors import TaggerError
from tagger.ops import _crf_cpu, get_ops
from tagger.ops import _cuda_kernels as K
from tagger.ops import _cuda_ptxas as P
from tagger.ops import cuda as C
from tests.ops.cuda_subprocess import assert_cases_pass

BACKENDS = ("reference", "cpu", "cuda")
CRF_OPS = ("crf_nll", "crf_marginals", "crf_viterbi", "crf_nbest")
CRF_KERNELS = ("crf_fb", "crf_grad", "crf_reduce", "crf_marg", "crf_viterbi")
CRF_VARIANTS = [(n, d) for n, d in P.all_variants() if n in CRF_KERNELS]


@pytest.mark.parametrize("name", CRF_OPS)
def test_signatures_are_identical_on_every_backend(name):
    sigs = {b: inspect.signature(getattr(get_ops(b), name)) for b in BACKENDS}
    assert len(set(sigs.values())) == 1, sigs


def good(B=2, T=3, K=3):
    """Valid arguments: E, y, starts, lengths, A, s, e, dA, ds, de."""
    rng = np.random.default_rng(0)
    A, s, e = rng.normal(size=(K, K)), rng.normal(size=K), rng.normal(size=K)
    return dict(E=rng.normal(size=(B, T, K)), y=np.zeros((B, T), dtype=np.int64), starts=np.array([0, 1]),
                lengths=np.array([3, 2]), A=A, s=s, e=e, dA=np.zeros((K, K)), ds=np.zeros(K), de=np.zeros(K), k=2)


def call(ops, name, a):
    spans = (a["starts"], a["lengths"], a["A"], a["s"], a["e"])
    if name == "crf_nll":
        return ops.crf_nll(a["E"], a["y"], *spans, a["dA"], a["ds"], a["de"])
    if name == "crf_nbest":
        return ops.crf_nbest(a["E"], *spans, a["k"])
    return getattr(ops, name)(a["E"], *spans)


BAD = {  # what to change -> a fragment of the message
    "E 2-D": (dict(E=np.zeros((2, 3))), "emissions E must be a float32 or float64 array"),
    "E ints": (dict(E=np.zeros((2, 3, 3), dtype=np.int64)), "emissions E must be a float32 or float64"),
    "E float16": (dict(E=np.zeros((2, 3, 3), dtype=np.float16)), "float32 or float64"),
    "no tags": (dict(E=np.zeros((2, 3, 0)), A=np.zeros((0, 0)), s=np.zeros(0), e=np.zeros(0)), "at least one"),
    "A shape": (dict(A=np.zeros((3, 2))), r"transitions A must have shape \(3, 3\) and dtype float64"),
    "s dtype": (dict(s=np.zeros(3, dtype=np.float32)), "start s must have shape"),
    "e shape": (dict(e=np.zeros(4)), "end e must have shape"),
    "lengths shape": (dict(lengths=np.array([3])), r"starts and lengths must have shape \(2,\)"),
    "span past T": (dict(starts=np.array([1, 1])), "a span runs past the 3 padded timesteps"),
    "negative start": (dict(starts=np.array([-1, 0])), "must be >= 0"),
    "float lengths": (dict(lengths=np.array([3.0, 2.0])), "must be integers"),
}
BAD_NLL = {
    "dA shape": (dict(dA=np.zeros((3, 1))), "gradient buffer dA must have shape"),
    "de dtype": (dict(de=np.zeros(3, dtype=np.float32)), "gradient buffer de must have shape"),
    "y shape": (dict(y=np.zeros((2, 2), dtype=np.int64)), r"labels y must be integers of shape \(2, 3\)"),
    "y floats": (dict(y=np.zeros((2, 3))), "labels y must be integers"),
    "y too big": (dict(y=np.array([[0, 1, 3], [0, 0, 0]])), r"labels must lie in 0\.\.2"),
    "y negative": (dict(y=np.array([[0, 0, 0], [0, -1, 0]])), r"labels must lie in 0\.\.2"),
}
BAD_NBEST = {
    "k zero": (dict(k=0), r"k \(paths per sentence\) must be a positive integer, got 0"),
    "k float": (dict(k=2.0), "must be a positive integer, got 2.0"),
}
CASES = ([(op, k) for op in CRF_OPS for k in BAD] + [("crf_nll", k) for k in BAD_NLL]
         + [("crf_nbest", k) for k in BAD_NBEST])


@pytest.mark.parametrize("name,bad", CASES, ids=[f"{op}-{k}" for op, k in CASES])
def test_bad_input_gives_the_same_one_line_error_on_every_backend(name, bad):
    change, fragment = {**BAD, **BAD_NLL, **BAD_NBEST}[bad]
    args = {**good(), **change}
    messages = set()
    for backend in BACKENDS:  # cuda checks on the host before touching a device: runs anywhere
        with pytest.raises(TaggerError, match=fragment) as err:
            call(get_ops(backend), name, args)
        messages.add(str(err.value))
    assert len(messages) == 1, messages
    msg = messages.pop()
    assert "\n" not in msg and msg.startswith(f"{name}: ")


def test_labels_at_padded_steps_are_not_checked():
    """Padding may hold anything (here -1 and 99), as batches pad labels with a filler."""
    args = {**good(), "y": np.array([[0, 1, 2], [-1, 2, 0]]), "E": np.full((2, 3, 3), np.nan)}
    args["E"][0] = 0.0
    args["E"][1, 1:] = 0.0
    loss, dE = call(get_ops("cpu"), "crf_nll", args)
    args["y"][1, 0] = 99
    assert np.isfinite(loss) and call(get_ops("reference"), "crf_nll", args)[0] == pytest.approx(loss, rel=1e-12)


def test_every_cpu_kernel_is_cached():
    from numba.core.caching import NullCache

    kernels = _crf_cpu._dispatchers()
    assert len(kernels) == 10, sorted(kernels)
    for name, disp in kernels.items():
        assert not isinstance(disp._cache, NullCache), f"{name} lacks cache=True"
    _crf_cpu.warmup()  # compiles (or loads) the entry kernels for float32 and float64
    for name in ("_forward_backward", "_crf_nll_kernel", "_crf_marginals_kernel", "_crf_viterbi_kernel",
                 "_crf_nbest_kernel"):
        assert len(kernels[name].signatures) >= 2, name


def test_the_crf_ops_are_part_of_every_backend():
    # cpu re-exports the kernels' module; cuda defines them beside its other ops (no cycle:
    # tests/test_imports.py checks the whole import graph)
    from tagger.ops import _crf_cpu, cpu, cuda, reference
    from tagger.ops import _crf_reference
    assert cpu.crf_nll is _crf_cpu.crf_nll and reference.crf_nll is _crf_reference.crf_nll
    assert cuda.crf_viterbi.__module__ == "tagger.ops.cuda"


def test_cuda_kernels_are_registered_so_test_ptx_compiles_them_too():
    assert set(CRF_KERNELS) <= set(K.KERNELS)
    assert len(CRF_VARIANTS) == 2 * len(CRF_KERNELS)  # float32 and float64


@pytest.mark.slow
@pytest.mark.parametrize("name,dtype", CRF_VARIANTS, ids=[f"{n}-{d}" for n, d in CRF_VARIANTS])
def test_cuda_kernels_compile_to_sm90_ptx_without_spills(name, dtype):
    ptx = P.compile_kernel(name, dtype, cc=(9, 0))
    assert ".target sm_90" in ptx and ".entry" in ptx
    if P.assembler() is not None:
        info = P.ptxas_info(ptx, "sm_90")
        assert info["spill_stores"] == 0 and info["spill_loads"] == 0 and info["registers"] <= 255, info


CRF_CASES = Path(__file__).with_name("cuda_crf_cases.py")


@pytest.mark.slow
def test_cuda_crf_matches_reference_on_simulator():
    """tests/ops/cuda_crf_cases.py under NUMBA_ENABLE_CUDASIM=1 (about 10 s)."""
    assert_cases_pass(CRF_CASES)


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(C.is_simulator() or not C.is_available(), reason="needs a real CUDA GPU")
def test_cuda_crf_matches_reference_on_gpu():
    assert_cases_pass(CRF_CASES, simulator=False)
