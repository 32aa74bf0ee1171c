"""What every ops backend shares besides the checks: the names of the modes and the dropout hash.

Public names (reference, cpu and cuda import them from here, never from each other's
private helpers):
    GATES          4: gates per LSTM unit (G = 4H), order i, f, c, o
    ACTIVATIONS    the activation names activation_forward / activation_backward accept
    MERGE_MODES    Bidirectional merge modes of merge_forward / merge_backward
    POOL_MODES     global pooling modes of pool_forward / pool_backward
    splitmix64     the counter hash behind dropout_mask (identical bits on every backend)
    dropout_key    the per-seed key of that hash
    run_pair       the two directions' calls of a pair op, one after the other or concurrently
"""
from __future__ import annotations

import numpy as np

from tagger.ops import _checks  # module import: _checks imports the constants below

GATES = 4
ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid", "softmax")
MERGE_MODES = ("concat", "sum", "ave", "mul")
POOL_MODES = ("max", "mean")


def splitmix64(x):
    """splitmix64 finaliser of uint64 x (scalar or array); wraps modulo 2**64."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def dropout_key(seed):
    """The uint64 key of seed: element k of a mask hashes key + k."""
    with np.errstate(over="ignore"):
        return splitmix64(np.uint64(seed) * np.uint64(0x100000001B3))


def run_pair(where, op, args_fwd, args_bwd, accumulates=False, submit=None):
    """(op(*args_fwd), op(*args_bwd)): sequential, or with the second call handed to
    submit (an executor's submit) so the two directions run at the same time.
    accumulates: a backward op, whose two calls must not share gradient buffers."""
    _checks.check_pair(where, args_fwd, args_bwd, accumulates)
    if submit is None:
        return op(*args_fwd), op(*args_bwd)
    second = submit(op, *args_bwd)
    first = op(*args_fwd)
    return first, second.result()
