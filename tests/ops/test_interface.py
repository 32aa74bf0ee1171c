"""One interface for every backend: the same ops with the same signatures, the declared
capabilities, and the same one-line TaggerError for the same bad input (checked at the
entry of every op, so nothing invalid reaches a kernel). The CUDA backend's bad-input
cases run in the simulator subprocess (cuda_device_cases.py)."""
import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from tagger.errors import TaggerError
from tagger.ops import BACKENDS, CAPABILITIES, OP_NAMES, get_ops
from tests.ops.cases import UNCHECKED_OPS, bad_calls, message

ROOT = Path(__file__).resolve().parents[2]
REF_CASES = bad_calls(get_ops("reference"))


@pytest.mark.parametrize("name", OP_NAMES)
def test_every_backend_has_every_op_with_one_signature(name):
    sigs = {}
    for backend in BACKENDS:  # importing tagger.ops.cuda touches no driver
        fn = getattr(get_ops(backend), name, None)
        assert callable(fn), f"tagger.ops.{backend} lacks {name}"
        sigs[backend] = inspect.signature(fn)
    assert len(set(sigs.values())) == 1, sigs


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_declares_its_capabilities(backend):
    ops = get_ops(backend)
    for name in CAPABILITIES:
        assert isinstance(getattr(ops, name, None), bool), f"tagger.ops.{backend}.{name} must be a bool"
    # the declared values: only the CPU backend gains from threads and projected tables
    assert (ops.CONCURRENT_PAIR, ops.PROJECTED_INFERENCE) == ((True, True) if backend == "cpu" else (False, False))


def test_unknown_backend_is_refused():
    with pytest.raises(TaggerError, match="unknown ops backend 'tpu'"):
        get_ops("tpu")


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_backend_imports_another_backends_private_names(backend):
    """Shared helpers live in tagger.ops._common / _checks; no backend reaches into another's
    underscore names (reference's spec functions are public, cpu may reuse those)."""
    tree = ast.parse((ROOT / "tagger" / "ops" / f"{backend}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in {f"tagger.ops.{b}" for b in BACKENDS}:
            bad = [a.name for a in node.names if a.name.startswith("_")]
            assert not bad, f"{backend} imports {bad} from {node.module}"
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "_ref":
            assert not node.attr.startswith("_"), f"{backend} uses reference.{node.attr}"


def test_every_checked_op_has_a_bad_input_case():
    covered = {label.split()[0] for label in REF_CASES}
    # the CRF ops (tagger/ops/_crf_*.py) keep their bad-input cases in tests/ops/*crf* files
    wanted = {name for name in OP_NAMES if "crf" not in name} - set(UNCHECKED_OPS)
    assert covered == wanted, wanted ^ covered


@pytest.mark.parametrize("label", list(REF_CASES))
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_bad_input_gives_the_same_tagger_error_on_every_backend(backend, label):
    expect, _ = REF_CASES[label]
    want = message(REF_CASES[label][1])
    got = message(bad_calls(get_ops(backend))[label][1])
    assert want.startswith(expect), want
    assert got == want
    assert "\n" not in got


HEAP_CASE = """
import numpy as np
from tagger.errors import TaggerError
from tagger.ops import cpu
B, T, I, H = 3, 4, 2, 5
X = np.ones((B, T, I), np.float32)
W, U, b = np.ones((I, 4 * H), np.float32), np.ones((H, 4 * H), np.float32), np.zeros(4 * H, np.float32)
for starts, lengths in [([2, 0, 0], [4, 4, 1]), ([0, 0, 0], [4, 9, 2]), ([4, 0, 0], [1, 0, 0]), ([0, -1, 0], [4, 4, 1])]:
    for reverse in (False, True):
        try:
            cpu.lstm_forward(X, W, U, b, np.array(starts), np.array(lengths), reverse)
        except TaggerError as err:
            print("refused", err)
        else:
            print("accepted", starts, lengths)
"""


def test_cpu_lstm_span_past_T_is_refused_not_a_heap_corruption():
    """The reported crash: cpu.lstm_forward with starts + lengths > T wrote past Y and the
    process aborted later. Run in a subprocess so an abort fails this test, not pytest."""
    out = subprocess.run([sys.executable, "-c", HEAP_CASE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 8 and all(line.startswith("refused lstm_forward: ") for line in lines), out.stdout
