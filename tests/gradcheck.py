"""Finite-difference gradient checking in float64, shared by the op and layer tests."""
from __future__ import annotations

import numpy as np


def numeric_grad(f, x, eps=1e-6):
    """Central differences of the scalar f() w.r.t. every element of x (modified in place)."""
    grad = np.zeros_like(x, dtype=np.float64)
    flat = x.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + eps
        up = f()
        flat[k] = old - eps
        down = f()
        flat[k] = old
        grad.reshape(-1)[k] = (up - down) / (2 * eps)
    return grad


def assert_grad_close(analytic, numeric, name, rtol=1e-6, atol=1e-8):
    """Relative error on the whole array, so one tiny element cannot hide a wrong sign."""
    analytic = np.asarray(analytic, dtype=np.float64)
    scale = max(np.abs(numeric).max(), np.abs(analytic).max(), 1e-12)
    err = np.abs(analytic - numeric).max() / scale
    assert np.isfinite(analytic).all(), f"{name}: non-finite analytic gradient"
    assert err < rtol or np.allclose(analytic, numeric, rtol=rtol, atol=atol), (
        f"{name}: max relative error {err:.3g}\nanalytic={analytic.ravel()[:8]}\nnumeric={numeric.ravel()[:8]}"
    )
    # a check that cannot fail is no check: the gradient must not be identically zero
    assert np.abs(numeric).max() > 0, f"{name}: numeric gradient is all zero; test is vacuous"
