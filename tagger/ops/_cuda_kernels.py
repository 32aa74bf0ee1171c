"""numba.cuda kernel bodies behind tagger/ops/cuda.py (private).

Legend as in reference.py: B batch, T steps, I input, H units, G = 4H, V rows, E width,
K classes, N rows of a 2-D view. Gate order i, f, g (candidate), o.

Every kernel here is a *plain Python function* (or a factory returning one, for the
kernels that need compile-time constants: a tile size, a block size, the float type of
a shared array or of literals). Nothing is compiled at import time: tagger/ops/cuda.py
wraps them with ``cuda.jit`` on first launch, and tests/ops/test_ptx.py compiles every
entry of KERNELS to sm_90 PTX with ``cuda.compile_ptx``.

Rules the kernels follow
  * no ``@cuda.jit(device=True)`` helpers: numba-cuda 0.30 compiles a called device
    function for ``get_current_device()``'s compute capability, which needs a driver, so
    ``compile_ptx`` of a kernel calling one fails on a machine without a GPU. The small
    amount of shared math (sigmoid) is written out inline instead.
  * grid-stride loops over a flat index, so any grid size is correct (tests launch
    tiny grids on purpose);
  * every output element is produced by exactly one thread summing in a fixed order:
    no atomics, so results are bitwise reproducible run to run;
  * integer flags (has_x, reverse, trans_a) are int64 scalars; absent optional arrays are
    passed as a 1x1 dummy and never read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from numba import cuda, types

from tagger.ops.reference import LSTM_ACT_CODES

# splitmix64 constants (reference._splitmix64), as uint64 so numba keeps uint64 arithmetic
_SM_ADD = np.uint64(0x9E3779B97F4A7C15)
_SM_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_SM_MUL2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_INV_2_53 = 1.0 / 9007199254740992.0


# ----------------------------------------------------------------------------------------
# registry


@dataclass
class KernelSpec:
    """How to build one kernel and the argument types it is launched with."""

    name: str
    build: Callable  # build(dtype, tile, block) -> python kernel function
    signature: Callable  # signature(dtype) -> tuple of numba types (launch argument types)
    dtypes: tuple = field(default=(np.float32, np.float64))


KERNELS: dict[str, KernelSpec] = {}


def _register(name, signature, dtypes=(np.float32, np.float64)):
    def deco(build):
        KERNELS[name] = KernelSpec(name, build, signature, dtypes)
        return build

    return deco


def _plain(fn):
    """build() for a kernel needing no compile-time constants."""
    return lambda dtype, tile, block: fn


def _ft(dtype):
    return types.float32 if np.dtype(dtype) == np.float32 else types.float64


def _arr(dtype, ndim):
    t = _ft(dtype) if dtype is not None else None
    return types.Array(t, ndim, "C")


i64 = types.int64
u8_1 = types.Array(types.uint8, 1, "C")
u8_2 = types.Array(types.uint8, 2, "C")
i64_1 = types.Array(types.int64, 1, "C")
i64_2 = types.Array(types.int64, 2, "C")
f64_1 = types.Array(types.float64, 1, "C")
f64_2 = types.Array(types.float64, 2, "C")


def _a(dt, nd):
    return types.Array(_ft(dt), nd, "C")


# ----------------------------------------------------------------------------------------
# elementwise and memory


def k_fill(out, value):
    # out (n,) flat view
    for k in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[k] = value


def k_fill_rows(arr, rows, value):
    # arr (R, C), rows (n,) int64
    C = arr.shape[1]
    for k in range(cuda.grid(1), rows.shape[0] * C, cuda.gridsize(1)):
        arr[rows[k // C], k % C] = value


def k_scale(out, factor):
    for k in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[k] = out[k] * factor


def k_scale_rows(arr, rows, factor):
    C = arr.shape[1]
    for k in range(cuda.grid(1), rows.shape[0] * C, cuda.gridsize(1)):
        r = rows[k // C]
        c = k % C
        arr[r, c] = arr[r, c] * factor


def k_copy(src, out):
    for k in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[k] = src[k]


def k_mul_bcast(X, M, out, d1, d2, d3, m0, m1, m2, m3):
    # X, out (n,) flat views of a 4-D (d0, d1, d2, d3) array; M flat with element strides
    # m0..m3 (0 along broadcast axes)
    for k in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        i3 = k % d3
        r = k // d3
        i2 = r % d2
        r = r // d2
        i1 = r % d1
        i0 = r // d1
        out[k] = X[k] * M[i0 * m0 + i1 * m1 + i2 * m2 + i3 * m3]


def k_scale_bt(X, M, out):
    # X, out (B, T, I); M (B, I): out[b, t, i] = X[b, t, i] * M[b, i]   (in_mask, dX mask)
    B, T, I = X.shape
    for k in range(cuda.grid(1), B * T * I, cuda.gridsize(1)):
        i = k % I
        bt = k // I
        b = bt // T
        t = bt % T
        out[b, t, i] = X[b, t, i] * M[b, i]


def k_dropout(out, key, rate, scale):
    # out (n,) flat; element k keeps iff uniform(splitmix64(key + k)) >= rate
    for k in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        x = key + np.uint64(k)
        x = x + _SM_ADD
        x = (x ^ (x >> _S30)) * _SM_MUL1
        x = (x ^ (x >> _S27)) * _SM_MUL2
        x = x ^ (x >> _S31)
        u = np.float64(x >> _S11) * _INV_2_53
        if u >= rate:
            out[k] = scale
        else:
            out[k] = 0


_register("fill", lambda d: (_a(d, 1), _ft(d)))(_plain(k_fill))
_register("fill_rows", lambda d: (_a(d, 2), i64_1, _ft(d)))(_plain(k_fill_rows))
_register("scale", lambda d: (_a(d, 1), _ft(d)))(_plain(k_scale))
_register("scale_rows", lambda d: (_a(d, 2), i64_1, _ft(d)))(_plain(k_scale_rows))
_register("copy", lambda d: (_a(d, 1), _a(d, 1)))(_plain(k_copy))
_register("mul_bcast", lambda d: (_a(d, 1),) * 3 + (i64,) * 7)(_plain(k_mul_bcast))
_register("scale_bt", lambda d: (_a(d, 3), _a(d, 2), _a(d, 3)))(_plain(k_scale_bt))
_register("dropout", lambda d: (_a(d, 1), types.uint64, types.float64, types.float64))(_plain(k_dropout))


# ----------------------------------------------------------------------------------------
# GEMM: C (M, N) = op(A) @ op(B) [+ bias] [+ C], tiled through shared memory


@_register(
    "gemm",
    lambda d: (_a(d, 2), _a(d, 2), _a(d, 2), _a(d, 1), i64, i64, i64, i64, i64, i64, i64),
)
def make_gemm(dtype, tile, block):
    """op(A) is A (M, K) or, with trans_a, A stored as (K, M); op(B) is B (K, N) or, with
    trans_b, B stored as (N, K). Block = (tile, tile) threads, one output element each;
    the block walks output tiles grid-stride. Each output element sums k = 0..K-1 in
    order (zero padding past K adds exact zeros), so the result is deterministic.
    Transposed operands are loaded with the fast index along memory (coalesced) and
    stored transposed into shared memory; the +1 padding avoids bank conflicts."""
    nbt = _ft(dtype)
    zero = np.dtype(dtype).type(0)
    padded = tile + 1  # shared array shapes must be compile-time constants (closure ints)

    def k_gemm(A, Bm, Cm, bias, M, N, K, trans_a, trans_b, accumulate, has_bias):
        sA = cuda.shared.array((tile, padded), nbt)
        sB = cuda.shared.array((tile, padded), nbt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        n_tr = (M + tile - 1) // tile
        n_tc = (N + tile - 1) // tile
        for tr in range(cuda.blockIdx.y, n_tr, cuda.gridDim.y):
            for tc in range(cuda.blockIdx.x, n_tc, cuda.gridDim.x):
                row = tr * tile + ty
                col = tc * tile + tx
                acc = zero
                for k0 in range(0, K, tile):
                    # sA[r, k] = op(A)[tr*tile + r, k0 + k]
                    if trans_a:
                        ka = k0 + ty
                        ra = tr * tile + tx
                        if ka < K and ra < M:
                            sA[tx, ty] = A[ka, ra]
                        else:
                            sA[tx, ty] = zero
                    else:
                        ka = k0 + tx
                        if ka < K and row < M:
                            sA[ty, tx] = A[row, ka]
                        else:
                            sA[ty, tx] = zero
                    # sB[k, c] = op(B)[k0 + k, tc*tile + c]
                    if trans_b:
                        kb = k0 + tx
                        cb = tc * tile + ty
                        if kb < K and cb < N:
                            sB[tx, ty] = Bm[cb, kb]
                        else:
                            sB[tx, ty] = zero
                    else:
                        kb = k0 + ty
                        if kb < K and col < N:
                            sB[ty, tx] = Bm[kb, col]
                        else:
                            sB[ty, tx] = zero
                    cuda.syncthreads()
                    for kk in range(tile):
                        acc += sA[ty, kk] * sB[kk, tx]
                    cuda.syncthreads()
                if row < M and col < N:
                    if has_bias:
                        acc += bias[col]
                    if accumulate:
                        Cm[row, col] = Cm[row, col] + acc
                    else:
                        Cm[row, col] = acc

    return k_gemm


def k_colsum(A, out):
    # out (N,) += sum over rows of A (M, N); one thread per column, rows in order
    M, N = A.shape
    for c in range(cuda.grid(1), N, cuda.gridsize(1)):
        acc = A[0, c] * 0
        for r in range(M):
            acc += A[r, c]
        out[c] = out[c] + acc


_register("colsum", lambda d: (_a(d, 2), _a(d, 1)))(_plain(k_colsum))


# ----------------------------------------------------------------------------------------
# deterministic reductions: a fixed grid of `block`-thread blocks writes one float64
# partial per block (tree in shared memory), then one block reduces the partials. The
# grid size is a constant of the wrapper, not of the device, so the order never changes.


@_register("sumsq_partial", lambda d: (_a(d, 2), i64_1, i64, f64_1))
def make_sumsq_partial(dtype, tile, block):
    def k_sumsq_partial(A, rows, has_rows, partial):
        # A (R, C); sum of squares over rows (or all rows) in float64
        sh = cuda.shared.array(block, types.float64)
        C = A.shape[1]
        nr = rows.shape[0] if has_rows else A.shape[0]
        acc = 0.0
        for k in range(cuda.grid(1), nr * C, cuda.gridsize(1)):
            r = k // C
            if has_rows:
                r = rows[r]
            v = np.float64(A[r, k % C])
            acc += v * v
        tid = cuda.threadIdx.x
        sh[tid] = acc
        cuda.syncthreads()
        s = block // 2
        while s > 0:
            if tid < s:
                sh[tid] += sh[tid + s]
            cuda.syncthreads()
            s //= 2
        if tid == 0:
            partial[cuda.blockIdx.x] = sh[0]

    return k_sumsq_partial


@_register("sum_partial", lambda d: (f64_2, i64, f64_2), dtypes=(np.float64,))
def make_sum_partial(dtype, tile, block):
    def k_sum_partial(x, col, partial):
        # partial[block_id, col] = this block's share of sum(x[:, col]); x (n, m) float64
        sh = cuda.shared.array(block, types.float64)
        acc = 0.0
        for k in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
            acc += x[k, col]
        tid = cuda.threadIdx.x
        sh[tid] = acc
        cuda.syncthreads()
        s = block // 2
        while s > 0:
            if tid < s:
                sh[tid] += sh[tid + s]
            cuda.syncthreads()
            s //= 2
        if tid == 0:
            partial[cuda.blockIdx.x, col] = sh[0]

    return k_sum_partial


# ----------------------------------------------------------------------------------------
# LSTM recurrence, one launch per step (the grid-wide dependency between steps is the
# launch boundary). Thread = (row b, unit j); it owns Y/C/acts/Hp[b, t, j-th unit] of its
# step. State is read from the previous step's outputs Y[b, tp], C[b, tp] (consecutive
# steps of one sequence read adjacent time indices), so there is no state buffer and no
# read/write race between threads of the same step.


# The LSTM options (reference.py legend): gate_code (recurrent_activation, for i, f, o) and
# cell_code (activation, for g and act(c)) are LSTM_ACT_CODES, uniform across the grid, so
# the branches on them never diverge. The activation is written out where it is used (no
# device functions, see the module docstring): once per kernel, in a loop over the five
# activations of a unit (i, f, g, o, then act(c) once c is known).
_A_RELU = LSTM_ACT_CODES["relu"]
_A_TANH = LSTM_ACT_CODES["tanh"]
_A_SIGMOID = LSTM_ACT_CODES["sigmoid"]
_A_HARD = LSTM_ACT_CODES["hard_sigmoid"]


def _lstm_fwd_sig(d, per_step):
    # XW, U, Y, C, acts, Hp, rec_mask, has_rm, h0, has_h0, c0, has_c0, gate_code, cell_code,
    # starts, lengths, [s,] reverse
    return ((_a(d, 3), _a(d, 2), _a(d, 3), _a(d, 3), _a(d, 3), _a(d, 3), _a(d, 2), i64, _a(d, 2), i64, _a(d, 2), i64,
             i64, i64, i64_1, i64_1) + ((i64,) if per_step else ()) + (i64,))


@_register("lstm_step", lambda d: _lstm_fwd_sig(d, True))
def make_lstm_step(dtype, tile, block):
    one = np.dtype(dtype).type(1)
    zero = np.dtype(dtype).type(0)
    half = np.dtype(dtype).type(0.5)
    six = np.dtype(dtype).type(6)

    def k_lstm_step(XW, U, Y, C, acts, Hp, rec_mask, has_rm, h0, has_h0, c0, has_c0, gate_code, cell_code,
                    starts, lengths, s, reverse):
        # XW (B, T, G) = X W + b; U (H, G); Y, C, Hp (B, T, H); acts (B, T, G); h0, c0 (B, H)
        # (initial state, read at s = 0 when has_h0 / has_c0)
        B = XW.shape[0]
        H = U.shape[0]
        for k in range(cuda.grid(1), B * H, cuda.gridsize(1)):
            b = k // H
            j = k % H
            L = lengths[b]
            if s >= L:
                continue  # padded step: state untouched, outputs stay 0
            if reverse:
                t = starts[b] + L - 1 - s
                tp = t + 1
            else:
                t = starts[b] + s
                tp = t - 1
            zi = XW[b, t, j]
            zf = XW[b, t, H + j]
            zg = XW[b, t, 2 * H + j]
            zo = XW[b, t, 3 * H + j]
            # h_prev, c_prev: the previous step's outputs, or the initial state at s = 0
            if s > 0 or has_h0:
                for q in range(H):
                    hq = Y[b, tp, q] if s > 0 else h0[b, q]
                    if has_rm:
                        hq = hq * rec_mask[b, q]
                    zi += hq * U[q, j]
                    zf += hq * U[q, H + j]
                    zg += hq * U[q, 2 * H + j]
                    zo += hq * U[q, 3 * H + j]
                hj = Y[b, tp, j] if s > 0 else h0[b, j]
                if has_rm:
                    hj = hj * rec_mask[b, j]
                Hp[b, t, j] = hj
            cp = zero
            if s > 0:
                cp = C[b, tp, j]
            elif has_c0:
                cp = c0[b, j]
            ig = zero
            fg = zero
            gg = zero
            og = zero
            c = zero
            for gi in range(5):
                code = gate_code
                if gi == 0:
                    z = zi
                elif gi == 1:
                    z = zf
                elif gi == 2:
                    z = zg
                    code = cell_code
                elif gi == 3:
                    z = zo
                else:
                    c = fg * cp + ig * gg
                    z = c
                    code = cell_code
                if code == _A_SIGMOID:
                    # split by sign so exp never overflows (as reference.sigmoid)
                    if z >= zero:
                        a = one / (one + math.exp(-z))
                    else:
                        e = math.exp(z)
                        a = e / (one + e)
                elif code == _A_TANH:
                    a = math.tanh(z)
                elif code == _A_HARD:
                    a = min(max(z / six + half, zero), one)
                elif code == _A_RELU:
                    a = max(z, zero)
                else:  # linear
                    a = z
                if gi == 0:
                    ig = a
                elif gi == 1:
                    fg = a
                elif gi == 2:
                    gg = a
                elif gi == 3:
                    og = a
                else:
                    Y[b, t, j] = og * a
            acts[b, t, j] = ig
            acts[b, t, H + j] = fg
            acts[b, t, 2 * H + j] = gg
            acts[b, t, 3 * H + j] = og
            C[b, t, j] = c

    return k_lstm_step


def k_lstm_last(Y, C, h, c, h0, has_h0, c0, has_c0, starts, lengths, reverse):
    # h, c (B, H) = state at the last step taken (the initial state, or zeros, for a
    # length-0 row)
    B, H = h.shape
    for k in range(cuda.grid(1), B * H, cuda.gridsize(1)):
        b = k // H
        j = k % H
        L = lengths[b]
        if L > 0:
            t = starts[b] if reverse else starts[b] + L - 1
            h[b, j] = Y[b, t, j]
            c[b, j] = C[b, t, j]
        else:
            h[b, j] = h0[b, j] if has_h0 else 0
            c[b, j] = c0[b, j] if has_c0 else 0


_register("lstm_last", lambda d: (_a(d, 3), _a(d, 3), _a(d, 2), _a(d, 2), _a(d, 2), i64, _a(d, 2), i64, i64_1, i64_1,
                                  i64))(_plain(k_lstm_last))


def _lstm_bwd_sig(d, per_step):
    # dZ, acts, C, U, rec_mask, has_rm, dY, has_dy, dh_last, has_dh, dc_carry, dc_last, has_dc,
    # c0, has_c0, gate_code, cell_code, starts, lengths, [s,] reverse
    return ((_a(d, 3), _a(d, 3), _a(d, 3), _a(d, 2), _a(d, 2), i64, _a(d, 3), i64, _a(d, 2), i64, _a(d, 2), _a(d, 2),
             i64, _a(d, 2), i64, i64, i64, i64_1, i64_1) + ((i64,) if per_step else ()) + (i64,))


@_register("lstm_bstep", lambda d: _lstm_bwd_sig(d, True))
def make_lstm_bstep(dtype, tile, block):
    one = np.dtype(dtype).type(1)
    zero = np.dtype(dtype).type(0)
    half = np.dtype(dtype).type(0.5)
    six = np.dtype(dtype).type(6)
    sixth = np.dtype(dtype).type(1.0 / 6.0)

    def k_lstm_bstep(dZ, acts, C, U, rec_mask, has_rm, dY, has_dy, dh_last, has_dh,
                     dc_carry, dc_last, has_dc, c0, has_c0, gate_code, cell_code, starts, lengths, s, reverse):
        # Step s (walking s = max_len-1 .. 0). Thread (b, j) forms dh for unit j from the
        # dZ of step s+1 (written by the previous launch): dh_prev = dz @ U^T (* rec_mask),
        # then writes the four dZ[b, t, gate*H + j] of this step and its dc carry.
        B = dZ.shape[0]
        H = U.shape[0]
        G = 4 * H
        for k in range(cuda.grid(1), B * H, cuda.gridsize(1)):
            b = k // H
            j = k % H
            L = lengths[b]
            if s >= L:
                continue
            if reverse:
                t = starts[b] + L - 1 - s
                tn = t - 1
                tp = t + 1
            else:
                t = starts[b] + s
                tn = t + 1
                tp = t - 1
            # 1. gradient arriving from the step after this one (or from the final state)
            if s + 1 < L:
                dh = zero
                for q in range(G):
                    dh += dZ[b, tn, q] * U[j, q]
                if has_rm:
                    dh = dh * rec_mask[b, j]
                dc = dc_carry[b, j]
            else:
                dh = dh_last[b, j] if has_dh else zero
                dc = dc_last[b, j] if has_dc else zero
            if has_dy:
                dh = dh + dY[b, t, j]
            ig = acts[b, t, j]
            fg = acts[b, t, H + j]
            gg = acts[b, t, 2 * H + j]
            og = acts[b, t, 3 * H + j]
            # act(c) of the output, recomputed (the forward keeps c, not act(c))
            cc = C[b, t, j]
            if cell_code == _A_SIGMOID:
                if cc >= zero:
                    tc = one / (one + math.exp(-cc))
                else:
                    e = math.exp(cc)
                    tc = e / (one + e)
            elif cell_code == _A_TANH:
                tc = math.tanh(cc)
            elif cell_code == _A_HARD:
                tc = min(max(cc / six + half, zero), one)
            elif cell_code == _A_RELU:
                tc = max(cc, zero)
            else:  # linear
                tc = cc
            # derivative of each activation from its output (reference.lstm_dact): i, f, g, o, act(c)
            di_z = zero
            df_z = zero
            dg_z = zero
            do_z = zero
            dtc = zero
            for gi in range(5):
                code = gate_code
                if gi == 0:
                    a = ig
                elif gi == 1:
                    a = fg
                elif gi == 2:
                    a = gg
                    code = cell_code
                elif gi == 3:
                    a = og
                else:
                    a = tc
                    code = cell_code
                if code == _A_SIGMOID:
                    d = a * (one - a)
                elif code == _A_TANH:
                    d = one - a * a
                elif code == _A_HARD:
                    d = sixth if (a > zero and a < one) else zero
                elif code == _A_RELU:
                    d = one if a > zero else zero
                else:  # linear
                    d = one
                if gi == 0:
                    di_z = d
                elif gi == 1:
                    df_z = d
                elif gi == 2:
                    dg_z = d
                elif gi == 3:
                    do_z = d
                else:
                    dtc = d
            # 2. h = o * act(c)
            do = dh * tc
            dc = dc + dh * og * dtc
            # 3. c = f * c_prev + i * g   (c_prev = c0 at the first step, when given)
            cp = zero
            if s > 0:
                cp = C[b, tp, j]
            elif has_c0:
                cp = c0[b, j]
            di = dc * gg
            dg = dc * ig
            df = dc * cp
            dc_carry[b, j] = dc * fg
            # 4. gate nonlinearities
            dZ[b, t, j] = di * di_z
            dZ[b, t, H + j] = df * df_z
            dZ[b, t, 2 * H + j] = dg * dg_z
            dZ[b, t, 3 * H + j] = do * do_z

    return k_lstm_bstep


@_register(
    "lstm_dstate0",
    lambda d: (_a(d, 3), _a(d, 2), _a(d, 2), i64, _a(d, 2), _a(d, 2), i64, _a(d, 2), i64, _a(d, 2), i64, _a(d, 2), i64,
               i64_1, i64_1, i64),
)
def make_lstm_dstate0(dtype, tile, block):
    zero = np.dtype(dtype).type(0)

    def k_lstm_dstate0(dZ, U, rec_mask, has_rm, dc_carry, dh_last, has_dh, dc_last, has_dc, dh0, has_dh0, dc0,
                       has_dc0, starts, lengths, reverse):
        # After the backward recurrence: dh0, dc0 (B, H) += the gradient w.r.t. the state
        # before each row's first step: (dz of that step) @ U^T (* rec_mask) and the dc
        # carried out of it; for a length-0 row (its final state is the initial one)
        # dh_last and dc_last themselves.
        B, H = dc_carry.shape
        G = 4 * H
        for k in range(cuda.grid(1), B * H, cuda.gridsize(1)):
            b = k // H
            j = k % H
            L = lengths[b]
            if L > 0:
                t = starts[b] + L - 1 if reverse else starts[b]
                dh = zero
                for q in range(G):
                    dh += dZ[b, t, q] * U[j, q]
                if has_rm:
                    dh = dh * rec_mask[b, j]
                dc = dc_carry[b, j]
            else:
                dh = dh_last[b, j] if has_dh else zero
                dc = dc_last[b, j] if has_dc else zero
            if has_dh0:
                dh0[b, j] = dh0[b, j] + dh
            if has_dc0:
                dc0[b, j] = dc0[b, j] + dc

    return k_lstm_dstate0


# ----------------------------------------------------------------------------------------
# embedding


def k_gather(table, ids, out):
    # out (N, E) = table[ids]; ids (N,) int64
    N, E = out.shape
    for k in range(cuda.grid(1), N * E, cuda.gridsize(1)):
        n = k // E
        e = k % E
        out[n, e] = table[ids[n], e]


def k_embed_bwd(dtable, dE, pos, offsets, uniq):
    # Thread (u, e): dtable[uniq[u], e] += dE[pos[p], e] for p in offsets[u] .. offsets[u+1]
    # in that order (pos sorted stably by id): the same additions, in the same order, as
    # np.add.at in the reference, so the result is bit-identical and deterministic.
    E = dE.shape[1]
    n_u = uniq.shape[0]
    for k in range(cuda.grid(1), n_u * E, cuda.gridsize(1)):
        u = k // E
        e = k % E
        r = uniq[u]
        acc = dtable[r, e]
        for p in range(offsets[u], offsets[u + 1]):
            acc += dE[pos[p], e]
        dtable[r, e] = acc


_register("gather", lambda d: (_a(d, 2), i64_1, _a(d, 2)))(_plain(k_gather))
_register("embed_bwd", lambda d: (_a(d, 2), _a(d, 2), i64_1, i64_1, i64_1))(_plain(k_embed_bwd))


# ----------------------------------------------------------------------------------------
# activations, softmax, loss. Row kernels: one thread per row of (N, K) (K is small).

ACT_CODES = {"linear": 0, None: 0, "relu": 1, "tanh": 2, "sigmoid": 3, "softmax": 4}


@_register("act_fwd", lambda d: (_a(d, 1), _a(d, 1), i64))
def make_act_fwd(dtype, tile, block):
    one = np.dtype(dtype).type(1)
    zero = np.dtype(dtype).type(0)

    def k_act_fwd(X, out, code):
        for k in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
            x = X[k]
            if code == 1:
                out[k] = x if x > zero else zero
            elif code == 2:
                out[k] = math.tanh(x)
            else:
                if x >= zero:
                    out[k] = one / (one + math.exp(-x))
                else:
                    e = math.exp(x)
                    out[k] = e / (one + e)

    return k_act_fwd


@_register("act_bwd", lambda d: (_a(d, 1), _a(d, 1), _a(d, 1), i64))
def make_act_bwd(dtype, tile, block):
    one = np.dtype(dtype).type(1)
    zero = np.dtype(dtype).type(0)

    def k_act_bwd(dY, Y, out, code):
        for k in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
            y = Y[k]
            if code == 1:
                out[k] = dY[k] if y > zero else zero * dY[k]
            elif code == 2:
                out[k] = dY[k] * (one - y * y)
            else:
                out[k] = dY[k] * y * (one - y)

    return k_act_bwd


def k_softmax_rows(X, out):
    N, K = X.shape
    for r in range(cuda.grid(1), N, cuda.gridsize(1)):
        mx = X[r, 0]
        for q in range(1, K):
            if X[r, q] > mx:
                mx = X[r, q]
        tot = X[r, 0] * 0
        for q in range(K):
            e = math.exp(X[r, q] - mx)
            out[r, q] = e
            tot += e
        for q in range(K):
            out[r, q] = out[r, q] / tot


def k_softmax_bwd_rows(dY, Y, out):
    # out = Y * (dY - sum(dY * Y))
    N, K = Y.shape
    for r in range(cuda.grid(1), N, cuda.gridsize(1)):
        dot = Y[r, 0] * 0
        for q in range(K):
            dot += dY[r, q] * Y[r, q]
        for q in range(K):
            out[r, q] = Y[r, q] * (dY[r, q] - dot)


_register("softmax_rows", lambda d: (_a(d, 2), _a(d, 2)))(_plain(k_softmax_rows))
_register("softmax_bwd_rows", lambda d: (_a(d, 2), _a(d, 2), _a(d, 2)))(_plain(k_softmax_bwd_rows))


@_register("xent_rows", lambda d: (_a(d, 2), i64_1, u8_1, i64, _a(d, 2), f64_2))
def make_xent_rows(dtype, tile, block):
    tiny = np.finfo(dtype).tiny

    def k_xent_rows(logits, labels, mask, has_mask, d, terms):
        # d (N, K) = softmax(logits) - onehot(label) (unscaled); terms[r] = (-log p_y * m, m)
        N, K = logits.shape
        for r in range(cuda.grid(1), N, cuda.gridsize(1)):
            mx = logits[r, 0]
            for q in range(1, K):
                if logits[r, q] > mx:
                    mx = logits[r, q]
            tot = logits[r, 0] * 0
            for q in range(K):
                e = math.exp(logits[r, q] - mx)
                d[r, q] = e
                tot += e
            for q in range(K):
                d[r, q] = d[r, q] / tot
            m = 1
            if has_mask:
                m = 1 if mask[r] != 0 else 0
            y = labels[r] if m else 0
            py = d[r, y]
            if py < tiny:
                py = tiny
            terms[r, 0] = -np.float64(math.log(py)) * m
            terms[r, 1] = m
            d[r, y] = d[r, y] - 1

    return k_xent_rows


def k_xent_scale(d, mask, has_mask, total):
    # d[r, :] *= m_r / max(n, 1) with n = total[0, 1] (the reduced mask count)
    N, K = d.shape
    n = total[0, 1]
    if n < 1.0:
        n = 1.0
    for k in range(cuda.grid(1), N * K, cuda.gridsize(1)):
        r = k // K
        m = 1.0
        if has_mask:
            m = 1.0 if mask[r] != 0 else 0.0
        d[r, k % K] = d[r, k % K] * (m / n)


_register("xent_scale", lambda d: (_a(d, 2), u8_1, i64, f64_2))(_plain(k_xent_scale))


# ----------------------------------------------------------------------------------------
# bidirectional merge; flat (N, H) views. mode: 0 concat, 1 sum, 2 ave, 3 mul

MERGE_CODES = {"concat": 0, "sum": 1, "ave": 2, "mul": 3}


@_register("merge_fwd", lambda d: (_a(d, 2), _a(d, 2), _a(d, 2), i64))
def make_merge_fwd(dtype, tile, block):
    half = np.dtype(dtype).type(0.5)

    def k_merge_fwd(Yf, Yb, out, mode):
        N, H = Yf.shape
        W = out.shape[1]
        for k in range(cuda.grid(1), N * W, cuda.gridsize(1)):
            n = k // W
            j = k % W
            if mode == 0:
                out[n, j] = Yf[n, j] if j < H else Yb[n, j - H]
            elif mode == 1:
                out[n, j] = Yf[n, j] + Yb[n, j]
            elif mode == 2:
                out[n, j] = (Yf[n, j] + Yb[n, j]) * half
            else:
                out[n, j] = Yf[n, j] * Yb[n, j]

    return k_merge_fwd


@_register("merge_bwd", lambda d: (_a(d, 2), _a(d, 2), _a(d, 2), _a(d, 2), _a(d, 2), i64))
def make_merge_bwd(dtype, tile, block):
    half = np.dtype(dtype).type(0.5)

    def k_merge_bwd(dY, Yf, Yb, dYf, dYb, mode):
        N, H = Yf.shape
        for k in range(cuda.grid(1), N * H, cuda.gridsize(1)):
            n = k // H
            j = k % H
            if mode == 0:
                dYf[n, j] = dY[n, j]
                dYb[n, j] = dY[n, H + j]
            elif mode == 1:
                dYf[n, j] = dY[n, j]
                dYb[n, j] = dY[n, j]
            elif mode == 2:
                dYf[n, j] = dY[n, j] * half
                dYb[n, j] = dY[n, j] * half
            else:
                dYf[n, j] = dY[n, j] * Yb[n, j]
                dYb[n, j] = dY[n, j] * Yf[n, j]

    return k_merge_bwd


# ----------------------------------------------------------------------------------------
# concatenation along the last axis: flat (N, W_k) pieces <-> columns off .. off + W_k of
# (N, W). One launch per piece: each output element is written by exactly one thread.


def k_cols_put(src, out, off):
    # out[n, off + j] = src[n, j]    src (N, Wk), out (N, W)
    N, Wk = src.shape
    for k in range(cuda.grid(1), N * Wk, cuda.gridsize(1)):
        out[k // Wk, off + k % Wk] = src[k // Wk, k % Wk]


def k_cols_take(src, out, off):
    # out[n, j] = src[n, off + j]    src (N, W), out (N, Wk)
    N, Wk = out.shape
    for k in range(cuda.grid(1), N * Wk, cuda.gridsize(1)):
        out[k // Wk, k % Wk] = src[k // Wk, off + k % Wk]


_register("cols_put", lambda d: (_a(d, 2), _a(d, 2), i64))(_plain(k_cols_put))
_register("cols_take", lambda d: (_a(d, 2), _a(d, 2), i64))(_plain(k_cols_take))


# ----------------------------------------------------------------------------------------
# global pooling over time: X (B, T, F) -> Y (B, F). is_max: 1 max (with argmax), 0 mean.
# Only the real steps starts[b] .. starts[b] + lengths[b] - 1 are read.


@_register("pool_fwd", lambda d: (_a(d, 3), i64_1, i64_1, _a(d, 2), i64_2, i64))
def make_pool_fwd(dtype, tile, block):
    ftype = np.dtype(dtype).type
    zero = ftype(0)

    def k_pool_fwd(X, starts, lengths, Y, argmax, is_max):
        # thread (b, f) walks row b's real steps in time order (as reference.pool_forward):
        # max keeps the first maximum (a NaN wins, as np.max); mean sums, then divides by
        # the length in the float type. Length 0: Y = 0, argmax = -1. argmax is a dummy
        # (never touched) when is_max is 0.
        B = X.shape[0]
        F = X.shape[2]
        for k in range(cuda.grid(1), B * F, cuda.gridsize(1)):
            b = k // F
            f = k % F
            s = starts[b]
            n = lengths[b]
            if n == 0:
                Y[b, f] = zero
                if is_max:
                    argmax[b, f] = -1
            elif is_max:
                best = X[b, s, f]
                at = s
                for t in range(s + 1, s + n):
                    v = X[b, t, f]
                    if v > best or (v != v and best == best):
                        best = v
                        at = t
                Y[b, f] = best
                argmax[b, f] = at
            else:
                acc = zero
                for t in range(s, s + n):
                    acc += X[b, t, f]
                Y[b, f] = acc / ftype(n)

    return k_pool_fwd


@_register("pool_bwd", lambda d: (_a(d, 2), i64_2, i64_1, i64_1, _a(d, 3), i64))
def make_pool_bwd(dtype, tile, block):
    ftype = np.dtype(dtype).type
    zero = ftype(0)

    def k_pool_bwd(dY, argmax, starts, lengths, dX, is_max):
        # thread (b, t, f) writes dX[b, t, f]: dY[b, f] at the argmax step (max) or
        # dY[b, f] / lengths[b] at every real step (mean); 0 at padding and length-0 rows
        B = dX.shape[0]
        T = dX.shape[1]
        F = dX.shape[2]
        for k in range(cuda.grid(1), B * T * F, cuda.gridsize(1)):
            f = k % F
            bt = k // F
            b = bt // T
            t = bt % T
            s = starts[b]
            n = lengths[b]
            g = zero
            if t >= s and t < s + n:
                if is_max:
                    if argmax[b, f] == t:
                        g = dY[b, f]
                else:
                    g = dY[b, f] / ftype(n)
            dX[b, t, f] = g

    return k_pool_bwd


# ----------------------------------------------------------------------------------------
# optimisers, on (R, C) views; rows (n,) int64 when has_rows. Scalars arrive in the
# parameter's dtype so float32 parameters are updated in float32 arithmetic, as NumPy does.


def k_adam(p, g, m, v, rows, has_rows, lr, b1, c1, b2, c2, bc1, bc2, eps, wd):
    # c1 = 1 - b1, c2 = 1 - b2, bc1 = 1 - b1**step, bc2 = 1 - b2**step
    R, C = p.shape
    nr = rows.shape[0] if has_rows else R
    for k in range(cuda.grid(1), nr * C, cuda.gridsize(1)):
        r = k // C
        if has_rows:
            r = rows[r]
        c = k % C
        gk = g[r, c]
        mk = b1 * m[r, c] + c1 * gk
        vk = b2 * v[r, c] + c2 * gk * gk
        m[r, c] = mk
        v[r, c] = vk
        mhat = mk / bc1
        vhat = vk / bc2
        pk = p[r, c]
        p[r, c] = pk - lr * (mhat / (math.sqrt(vhat) + eps) + wd * pk)


def k_sgd(p, g, vel, rows, has_rows, lr, mom, wd):
    R, C = p.shape
    nr = rows.shape[0] if has_rows else R
    for k in range(cuda.grid(1), nr * C, cuda.gridsize(1)):
        r = k // C
        if has_rows:
            r = rows[r]
        c = k % C
        vk = mom * vel[r, c] + g[r, c]
        vel[r, c] = vk
        pk = p[r, c]
        p[r, c] = pk - lr * (vk + wd * pk)


def k_ema(a, p, keep, take):
    for k in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
        a[k] = keep * a[k] + take * p[k]


_register("ema", lambda d: (_a(d, 1),) * 2 + (_ft(d),) * 2)(_plain(k_ema))
_register("adam", lambda d: (_a(d, 2),) * 4 + (i64_1, i64) + (_ft(d),) * 9)(_plain(k_adam))
_register("sgd", lambda d: (_a(d, 2),) * 3 + (i64_1, i64) + (_ft(d),) * 3)(_plain(k_sgd))


# ----------------------------------------------------------------------------------------
# LSTM recurrence, persistent per sequence: ONE launch for all steps. Rows of a batch are
# independent in the recurrence, so block b owns sequence b for its whole length and only
# needs a block-level barrier between steps (no grid sync, no cooperative launch). Thread
# tid owns units j = tid, tid + blockDim, ...; the previous step's h and c are re-read
# from Y[b, tp] / C[b, tp], written by this block before the barrier (global writes are
# visible block-wide after syncthreads). U is read through L1/L2 every step.


@_register("lstm_seq", lambda d: _lstm_fwd_sig(d, False))
def make_lstm_seq(dtype, tile, block):
    one = np.dtype(dtype).type(1)
    zero = np.dtype(dtype).type(0)
    half = np.dtype(dtype).type(0.5)
    six = np.dtype(dtype).type(6)

    def k_lstm_seq(XW, U, Y, C, acts, Hp, rec_mask, has_rm, h0, has_h0, c0, has_c0, gate_code, cell_code,
                   starts, lengths, reverse):
        B = XW.shape[0]
        H = U.shape[0]
        for b in range(cuda.blockIdx.x, B, cuda.gridDim.x):
            L = lengths[b]  # uniform across the block: the barrier below is safe
            for s in range(L):
                if reverse:
                    t = starts[b] + L - 1 - s
                    tp = t + 1
                else:
                    t = starts[b] + s
                    tp = t - 1
                for j in range(cuda.threadIdx.x, H, cuda.blockDim.x):
                    zi = XW[b, t, j]
                    zf = XW[b, t, H + j]
                    zg = XW[b, t, 2 * H + j]
                    zo = XW[b, t, 3 * H + j]
                    # h_prev, c_prev: the previous step's outputs, or the initial state at s = 0
                    if s > 0 or has_h0:
                        for q in range(H):
                            hq = Y[b, tp, q] if s > 0 else h0[b, q]
                            if has_rm:
                                hq = hq * rec_mask[b, q]
                            zi += hq * U[q, j]
                            zf += hq * U[q, H + j]
                            zg += hq * U[q, 2 * H + j]
                            zo += hq * U[q, 3 * H + j]
                        hj = Y[b, tp, j] if s > 0 else h0[b, j]
                        if has_rm:
                            hj = hj * rec_mask[b, j]
                        Hp[b, t, j] = hj
                    cp = zero
                    if s > 0:
                        cp = C[b, tp, j]
                    elif has_c0:
                        cp = c0[b, j]
                    ig = zero
                    fg = zero
                    gg = zero
                    og = zero
                    c = zero
                    for gi in range(5):
                        code = gate_code
                        if gi == 0:
                            z = zi
                        elif gi == 1:
                            z = zf
                        elif gi == 2:
                            z = zg
                            code = cell_code
                        elif gi == 3:
                            z = zo
                        else:
                            c = fg * cp + ig * gg
                            z = c
                            code = cell_code
                        if code == _A_SIGMOID:
                            # split by sign so exp never overflows (as reference.sigmoid)
                            if z >= zero:
                                a = one / (one + math.exp(-z))
                            else:
                                e = math.exp(z)
                                a = e / (one + e)
                        elif code == _A_TANH:
                            a = math.tanh(z)
                        elif code == _A_HARD:
                            a = min(max(z / six + half, zero), one)
                        elif code == _A_RELU:
                            a = max(z, zero)
                        else:  # linear
                            a = z
                        if gi == 0:
                            ig = a
                        elif gi == 1:
                            fg = a
                        elif gi == 2:
                            gg = a
                        elif gi == 3:
                            og = a
                        else:
                            Y[b, t, j] = og * a
                    acts[b, t, j] = ig
                    acts[b, t, H + j] = fg
                    acts[b, t, 2 * H + j] = gg
                    acts[b, t, 3 * H + j] = og
                    C[b, t, j] = c
                cuda.syncthreads()

    return k_lstm_seq


@_register("lstm_bseq", lambda d: _lstm_bwd_sig(d, False))
def make_lstm_bseq(dtype, tile, block):
    one = np.dtype(dtype).type(1)
    zero = np.dtype(dtype).type(0)
    half = np.dtype(dtype).type(0.5)
    six = np.dtype(dtype).type(6)
    sixth = np.dtype(dtype).type(1.0 / 6.0)

    def k_lstm_bseq(dZ, acts, C, U, rec_mask, has_rm, dY, has_dy, dh_last, has_dh,
                    dc_carry, dc_last, has_dc, c0, has_c0, gate_code, cell_code, starts, lengths, reverse):
        # Backward of k_lstm_seq: block b walks s = L-1 .. 0 of sequence b; same
        # arithmetic, in the same order, as k_lstm_bstep.
        B = dZ.shape[0]
        H = U.shape[0]
        G = 4 * H
        for b in range(cuda.blockIdx.x, B, cuda.gridDim.x):
            L = lengths[b]
            for s in range(L - 1, -1, -1):
                if reverse:
                    t = starts[b] + L - 1 - s
                    tn = t - 1
                    tp = t + 1
                else:
                    t = starts[b] + s
                    tn = t + 1
                    tp = t - 1
                for j in range(cuda.threadIdx.x, H, cuda.blockDim.x):
                    if s + 1 < L:
                        dh = zero
                        for q in range(G):
                            dh += dZ[b, tn, q] * U[j, q]
                        if has_rm:
                            dh = dh * rec_mask[b, j]
                        dc = dc_carry[b, j]
                    else:
                        dh = dh_last[b, j] if has_dh else zero
                        dc = dc_last[b, j] if has_dc else zero
                    if has_dy:
                        dh = dh + dY[b, t, j]
                    ig = acts[b, t, j]
                    fg = acts[b, t, H + j]
                    gg = acts[b, t, 2 * H + j]
                    og = acts[b, t, 3 * H + j]
                    # act(c) of the output, recomputed (the forward keeps c, not act(c))
                    cc = C[b, t, j]
                    if cell_code == _A_SIGMOID:
                        if cc >= zero:
                            tc = one / (one + math.exp(-cc))
                        else:
                            e = math.exp(cc)
                            tc = e / (one + e)
                    elif cell_code == _A_TANH:
                        tc = math.tanh(cc)
                    elif cell_code == _A_HARD:
                        tc = min(max(cc / six + half, zero), one)
                    elif cell_code == _A_RELU:
                        tc = max(cc, zero)
                    else:  # linear
                        tc = cc
                    # derivative of each activation from its output (reference.lstm_dact): i, f, g, o, act(c)
                    di_z = zero
                    df_z = zero
                    dg_z = zero
                    do_z = zero
                    dtc = zero
                    for gi in range(5):
                        code = gate_code
                        if gi == 0:
                            a = ig
                        elif gi == 1:
                            a = fg
                        elif gi == 2:
                            a = gg
                            code = cell_code
                        elif gi == 3:
                            a = og
                        else:
                            a = tc
                            code = cell_code
                        if code == _A_SIGMOID:
                            d = a * (one - a)
                        elif code == _A_TANH:
                            d = one - a * a
                        elif code == _A_HARD:
                            d = sixth if (a > zero and a < one) else zero
                        elif code == _A_RELU:
                            d = one if a > zero else zero
                        else:  # linear
                            d = one
                        if gi == 0:
                            di_z = d
                        elif gi == 1:
                            df_z = d
                        elif gi == 2:
                            dg_z = d
                        elif gi == 3:
                            do_z = d
                        else:
                            dtc = d
                    # 2. h = o * act(c)
                    do = dh * tc
                    dc = dc + dh * og * dtc
                    # 3. c = f * c_prev + i * g   (c_prev = c0 at the first step, when given)
                    cp = zero
                    if s > 0:
                        cp = C[b, tp, j]
                    elif has_c0:
                        cp = c0[b, j]
                    di = dc * gg
                    dg = dc * ig
                    df = dc * cp
                    dc_carry[b, j] = dc * fg
                    # 4. gate nonlinearities
                    dZ[b, t, j] = di * di_z
                    dZ[b, t, H + j] = df * df_z
                    dZ[b, t, 2 * H + j] = dg * dg_z
                    dZ[b, t, 3 * H + j] = do * do_z
                cuda.syncthreads()

    return k_lstm_bseq
