"""Shared cases of concat_forward / concat_backward (tests/ops/test_concat.py and the CUDA
simulator cases in cuda_concat_cases.py): unequal widths, 2-D and 3-D, a zero-width piece."""
from __future__ import annotations

import numpy as np

# (leading shape, widths): the word-features shape (B, T) with E and F, a flat (N,) case,
# three pieces, a zero-width piece and an empty batch
SHAPES = [((2, 3), (4, 3)), ((5,), (1, 6)), ((2, 2), (2, 1, 3)), ((3, 2), (0, 2)), ((0, 4), (2, 3))]


def pieces(lead, widths, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=lead + (w,)).astype(dtype) for w in widths]
