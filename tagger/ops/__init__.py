"""The numeric kernels behind one interface, chosen by name.

    reference  NumPy, any float dtype: the executable spec (tagger/ops/reference.py)
    cpu        numba.njit kernels, cache=True (tagger/ops/cpu.py)
    cuda       numba.cuda kernels; arrays live on the device (tagger/ops/cuda.py)

Every backend is a module exposing every function named in OP_NAMES, with the same
signatures, and every constant named in CAPABILITIES (tests/ops/test_interface.py checks
both), so callers decide by reading a constant, never by probing for a function. Every op
validates its arguments at entry with the shared checks of tagger/ops/_checks.py: the same
bad input raises the same one-line TaggerError on every backend. The legend of shapes and
the one masking rule are in reference.py's docstring.
"""
from __future__ import annotations

import importlib

from tagger.errors import TaggerError

OP_NAMES = (
    "lstm_forward",
    "lstm_backward",
    # both directions of a Bidirectional layer: (args_fwd, args_bwd, threads=None)
    "lstm_forward_pair",
    "lstm_backward_pair",
    # inference from token ids through P = lstm_input_table(embedding, W)
    "lstm_input_table",
    "lstm_forward_ids",
    "lstm_forward_ids_pair",
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
    # along the last axis, unequal widths: Ys list -> Y; dY, widths -> list of dY_k
    "concat_forward",
    "concat_backward",
    "pool_forward",
    "pool_backward",
    "crf_nll",
    "crf_marginals",
    "crf_viterbi",
    "crf_nbest",
    "conv1d_forward",
    "conv1d_backward",
    "dropout_mask",
    "mul",
    "adam_update",
    "sgd_update",
    # the moving average of the weights (Keras' use_ema): (average, param, momentum)
    "ema_update",
    "sum_of_squares",
    "scale_",
    "fill_",
    "asarray",
    "to_numpy",
    "zeros",
)

# Module constants (bool) every backend defines, for layers to choose a path:
#   CONCURRENT_PAIR      the pair ops run the two directions at the same time
#   PROJECTED_INFERENCE  inference through lstm_input_table + lstm_forward_ids is faster
#                        than embedding_forward + lstm_forward once the table is built
CAPABILITIES = ("CONCURRENT_PAIR", "PROJECTED_INFERENCE")

BACKENDS = ("reference", "cpu", "cuda")


def get_ops(name: str = "cpu"):
    """Return the backend module called `name` ('reference', 'cpu' or 'cuda')."""
    if name not in BACKENDS:
        raise TaggerError(f"unknown ops backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return importlib.import_module(f"tagger.ops.{name}")
