"""Elementwise float math the compiled CPU kernels share (tagger/ops/cpu.py, _crf_cpu.py).

A plain-Python version of each function (used when kernels run uncompiled) plus a Numba
overload chosen by dtype: float32 gets a Cephes-style polynomial exp that vectorises,
float64 the libm one.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload


@intrinsic
def i32_as_f32(typingctx, x):
    """Reinterpret the bits of an int32 as a float32 (free; vectorisable)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


F32_LOG2E = np.float32(1.44269504088896341)
F32_C1 = np.float32(0.693359375)
F32_C2 = np.float32(-2.12194440e-4)
F32_P0 = np.float32(1.9875691500e-4)
F32_P1 = np.float32(1.3981999507e-3)
F32_P2 = np.float32(8.3334519073e-3)
F32_P3 = np.float32(4.1665795894e-2)
F32_P4 = np.float32(1.6666665459e-1)
F32_P5 = np.float32(5.0000001201e-1)
F32_ONE = np.float32(1.0)
F32_HALF = np.float32(0.5)
F32_LO = np.float32(-87.0)


def expneg(x):
    """exp(x) for x <= 0 (results below ~1e-38 flush towards tiny values, never inf)."""
    return math.exp(x)


@overload(expneg)
def expneg_impl(x):
    if x == types.float32:

        def impl(x):
            # Cephes expf: x = n ln2 + r, |r| <= ln2/2, exp(r) by a degree-7 polynomial,
            # 2^n from the exponent bits. Max error ~2 ulp on [-87, 0].
            x = max(x, F32_LO)
            n = np.floor(x * F32_LOG2E + F32_HALF)
            r = x - n * F32_C1 - n * F32_C2
            z = r * r
            p = ((((F32_P0 * r + F32_P1) * r + F32_P2) * r + F32_P3) * r + F32_P4) * r + F32_P5
            p = p * z + r + F32_ONE
            return p * i32_as_f32((np.int32(n) + np.int32(127)) << np.int32(23))

        return impl
    return lambda x: math.exp(x)
