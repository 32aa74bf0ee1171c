"""What every ops backend shares besides the checks: the names of the modes and the dropout hash.

Public names (reference, cpu and cuda import them from here, never from each other's
private helpers):
    GATES          4: gates per LSTM unit (G = 4H), order i, f, c, o
    ACTIVATIONS    the activation names activation_forward / activation_backward accept
    MERGE_MODES    Bidirectional merge modes of merge_forward / merge_backward
    POOL_MODES     global pooling modes of pool_forward / pool_backward
    splitmix64     the counter hash behind dropout_mask (identical bits on every backend)
    dropout_key    the per-seed key of that hash
"""
from __future__ import annotations

import numpy as np

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
