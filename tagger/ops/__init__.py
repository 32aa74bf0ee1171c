"""The numeric kernels behind one interface, chosen by name.

    reference  NumPy, any float dtype: the executable spec (tagger/ops/reference.py)
    cpu        numba.njit kernels, cache=True (tagger/ops/cpu.py)
    cuda       numba.cuda kernels; arrays live on the device (tagger/ops/cuda.py)

Every backend is a module exposing the functions named in OP_NAMES with the same
signatures (tests/ops/test_interface.py checks it). The legend of shapes and the one
masking rule are in reference.py's docstring.
"""
from __future__ import annotations

import importlib

from tagger.errors import TaggerError

OP_NAMES = (
    "lstm_forward",
    "lstm_backward",
    "embedding_forward",
    "embedding_backward",
    "dense_forward",
    "dense_backward",
    "activation_forward",
    "activation_backward",
    "softmax",
    "softmax_xent",
    "merge_forward",
    "merge_backward",
    "pool_forward",
    "pool_backward",
    "conv1d_forward",
    "conv1d_backward",
    "dropout_mask",
    "mul",
    "adam_update",
    "sgd_update",
    "sum_of_squares",
    "scale_",
    "fill_",
    "asarray",
    "to_numpy",
    "zeros",
)

BACKENDS = ("reference", "cpu", "cuda")


def get_ops(name: str = "cpu"):
    """Return the backend module called `name` ('reference', 'cpu' or 'cuda')."""
    if name not in BACKENDS:
        raise TaggerError(f"unknown ops backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return importlib.import_module(f"tagger.ops.{name}")
