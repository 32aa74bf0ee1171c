"""Numba CPU backend: the reference semantics, fast.

Legend, shapes and the one masking rule: see tagger/ops/reference.py (shared by every
backend). Additional notation used here:

    order   (B,) int64   rows sorted by length, longest first (stable); "sorted row k"
                         is original row order[k]
    n_s                  rows still running at step s (a prefix of the sorted rows)
    off_s                sum of n_s' for s' < s: where step s starts in a packed array
    N                    sum(lengths): real tokens
    packed  (N, .)       row off_s + k holds sorted row k at its step s ("step-major",
                         like torch's PackedSequence), so every step is a contiguous block

The LSTM (DESIGN.md, "The LSTM, the heart of it"):
    forward   Xp = pack(X * in_mask)                           (N, I)
              Z  = Xp @ W                                      (N, G)   one large GEMM
              per step s:  R = Hprev_s @ U                     (n_s, G) NumPy matmul, out=
                           gates, c, h  (one fused njit call; writes activations into Z
                           in place, h into Y and into Hprev_{s+1} (times rec_mask))
    backward  per step s (last to first):
                           dz_s from dh, dc and the stored activations (one njit call)
                           dh_prev = dz_s @ U^T                (n_s, H) the only per-step GEMM
              dW += Xp^T dZ,  dU += Hprev^T dZ,  dX = unpack(dZ @ W^T) * in_mask
              three large GEMMs after the time loop.
    inference lstm_forward(for_backward=False), lstm_forward_ids: the same step kernel
              over a ring of two chunks of K steps (_recurrence_in_chunks): Z is made a
              chunk at a time (one GEMM, or a table lookup, per chunk), and nothing of a
              step is kept once the next chunk needs its place.
    pairs     lstm_forward_pair / lstm_forward_ids_pair write the two directions' Y into
              the halves of one (B, T, 2H) array (_joint_outputs), so the concat merge
              returns it without a copy.
    options   activation / recurrent_activation other than (tanh, sigmoid), or h0 / c0:
              the same kernels, taking a per-call branch to loops that dispatch on an
              activation code (reference.LSTM_ACT_CODES); h0 enters as the step-0 rows of
              Hprev (one more GEMM), c0 as c_prev at step 0. The default branch is the
              original loops, unchanged (bitwise and in speed).

Transcendentals: libm's expf/tanhf do not vectorise without SVML, so float32 kernels use
pure-arithmetic approximations that LLVM vectorises: the LSTM gates Eigen's rational tanh
(sigmoid(x) = (1 + tanh(x/2)) / 2; absolute error < 3e-7), the sigmoid activation a
Cephes-style exp(-|x|) (relative accuracy into the tail). float64 kernels use libm: they
serve the gradient checks, accuracy first. fastmath: only the "contract" flag (FMA), on the
two LSTM kernels; see _JIT_FMA.

Every op checks its arguments first (tagger/ops/_checks.py): no span, id, label, row or
argmax that could index out of bounds reaches a kernel (the kernels do not bounds-check).

Capabilities (tagger.ops.CAPABILITIES):
    CONCURRENT_PAIR      True: lstm_forward_pair / lstm_backward_pair / lstm_forward_ids_pair
                         run the two directions in two threads when threads >= 2
    PROJECTED_INFERENCE  True: lstm_forward_ids looks the input projection up in
                         lstm_input_table(embedding, W) instead of computing it
Beyond OP_NAMES: compile_notice(), warmup()   Numba cache state, and compiling every kernel
                 concurrent_submit()          the pair pool, for other work beside the caller's
"""
from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numba import njit, types
from numba.extending import overload

from tagger.errors import TaggerError
from tagger.threads import adaptive_pair, pair_threads
from tagger.ops import _checks as chk
from tagger.ops import reference as _ref
from tagger.ops._checks import run_pair
from tagger.ops._cpu_math import F32_HALF as _F32_HALF, F32_ONE as _F32_ONE, expneg as _expneg
from tagger.ops._common import ACTIVATIONS, GATES, POOL_MODES, dropout_key  # noqa: F401 (ACTIVATIONS: as on every backend)

PROJECTED_INFERENCE = True
CONCURRENT_PAIR = True

# Every kernel: cached (a second process compiles nothing), GIL released (directions may run
# in threads), and error_model="numpy": a float division by zero gives inf/nan instead of
# raising, which keeps exception paths out of the inner loops so LLVM can vectorise them
# (with Python's error model the gate loops ran scalar, ~20x slower).
_JIT = dict(cache=True, nogil=True, error_model="numpy")
# The elementwise LSTM kernels add fastmath's "contract" flag only: it lets LLVM fuse a * b + c
# into one FMA (one rounding instead of two: never less accurate) and nothing else (no
# reassociation, no finite-math assumptions). Without it the polynomial gates compile to
# separate multiplies and adds. tests/ops/test_cpu.py holds these kernels to the reference
# (1e-10 relative in float64, 1e-5 in float32).
_JIT_FMA = dict(_JIT, fastmath={"contract"})
# Kernels that allocate nothing and take per-row views (Z[off + k], Y[r, t], ...) also drop
# Numba's reference counting (_nrt=False, as numba's own non-allocating helpers do): every
# view otherwise costs an NRT_decref call, which was most of a step at small H (the char
# BiLSTM, H = 25: 187 -> 73 ns per row and step; H = 128: 270 -> 164). The arithmetic is
# the same IR, so the results are bitwise the same; the views never outlive the call, and
# the caller holds every array. A kernel that allocates cannot compile with it.
_JIT_VIEWS = dict(_JIT, _nrt=False)
_JIT_FMA_VIEWS = dict(_JIT_FMA, _nrt=False)

# Non-LSTM ops where NumPy is already optimal: the reference functions themselves, so
# semantics cannot drift.
merge_backward = _ref.merge_backward  # merge_forward: below the pair ops, whose output it reads
concat_forward = _ref.concat_forward  # np.concatenate / slice copies: one memcpy per row and input
concat_backward = _ref.concat_backward
mul = _ref.mul


# The seeded dropout hash, in one pass: NumPy's version walks ~15 temporaries (uint64 and
# float64) of the mask's size, which for the character embeddings of a batch (N words x
# Cn characters x 25) cost about as much as the char LSTM's forward. Same integer hash, the
# same exact float64 uniform (53 bits) and comparison: the mask is bitwise the reference's.
_U53 = 1.0 / 9007199254740992.0


@njit(**_JIT)
def _dropout_fill(out, key, rate, scale):
    """out[k] = scale where uniform(splitmix64(key + k)) >= rate, else 0 (1-D out)."""
    for k in range(out.shape[0]):
        x = key + np.uint64(k) + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
        out[k] = scale if np.float64(x >> np.uint64(11)) * _U53 >= rate else 0


def dropout_mask(shape, rate, seed, dtype=np.float32):
    """reference.dropout_mask, bit for bit (float32 / float64 in one njit pass)."""
    shape = chk.check_dropout_mask(shape, rate, seed, dtype)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        return _ref.dropout_mask(shape, rate, seed, dtype)
    out = np.empty(int(np.prod(shape)), dtype=dtype)
    rate = float(rate)
    _dropout_fill(out, dropout_key(seed), rate, dtype.type(1.0 / (1.0 - rate)))
    return out.reshape(shape)


# ----------------------------------------------------------------------------------------
# Elementwise math (exp itself is in _cpu_math.py, shared with the CRF kernels). Plain-Python
# versions (used when kernels run uncompiled) plus Numba overloads chosen by dtype.


def _sigmoid(x):
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@overload(_sigmoid)
def _sigmoid_impl(x):
    if x == types.float32:

        def impl(x):
            e = _expneg(-abs(x))
            q = _F32_ONE / (_F32_ONE + e)
            return q if x >= 0 else e * q

        return impl

    def impl64(x):
        if x >= 0:
            return 1.0 / (1.0 + math.exp(-x))
        e = math.exp(x)
        return e / (1.0 + e)

    return impl64


def _tanh(x):
    return math.tanh(x)


@overload(_tanh)
def _tanh_impl(x):
    if x == types.float32:

        def impl(x):
            e = _expneg(np.float32(-2.0) * abs(x))
            q = (_F32_ONE - e) / (_F32_ONE + e)
            return q if x >= 0 else -q

        return impl
    return lambda x: math.tanh(x)


# Gate nonlinearities of the LSTM kernels. float32: Eigen's rational tanh (odd degree-13 over
# even degree-6, clamped to +-7.905; absolute error < 3e-7), and sigmoid(x) = (1 + tanh(x/2))/2.
# About 30% fewer vector operations than the exp-based pair above; absolute (not relative)
# accuracy in the sigmoid tail, which is all a gate needs. float64: libm.
_T_CLAMP = np.float32(7.90531110763549805)
_T_A13 = np.float32(-2.76076847742355e-16)
_T_A11 = np.float32(2.00018790482477e-13)
_T_A9 = np.float32(-8.60467152213735e-11)
_T_A7 = np.float32(5.12229709037114e-08)
_T_A5 = np.float32(1.48572235717979e-05)
_T_A3 = np.float32(6.37261928875436e-04)
_T_A1 = np.float32(4.89352455891786e-03)
_T_B6 = np.float32(1.19825839466702e-06)
_T_B4 = np.float32(1.18534705686654e-04)
_T_B2 = np.float32(2.26843463243900e-03)
_T_B0 = np.float32(4.89352518554385e-03)


def _gate_tanh(x):
    return math.tanh(x)


@overload(_gate_tanh)
def _gate_tanh_impl(x):
    if x == types.float32:

        def impl(x):
            x = min(max(x, -_T_CLAMP), _T_CLAMP)
            x2 = x * x
            p = ((((((_T_A13 * x2 + _T_A11) * x2 + _T_A9) * x2 + _T_A7) * x2 + _T_A5) * x2 + _T_A3) * x2 + _T_A1) * x
            q = ((_T_B6 * x2 + _T_B4) * x2 + _T_B2) * x2 + _T_B0
            return p / q

        return impl
    return lambda x: math.tanh(x)


def _gate_sigmoid(x):
    return _sigmoid(x)


@overload(_gate_sigmoid)
def _gate_sigmoid_impl(x):
    if x == types.float32:

        def impl(x):
            return _F32_HALF + _F32_HALF * _gate_tanh(_F32_HALF * x)

        return impl
    return lambda x: _sigmoid(x)


# The LSTM options (reference.py legend): activation codes of reference.LSTM_ACT_CODES,
# dispatched per element by the general path only. The default pair (tanh, sigmoid) keeps
# its own loops in the kernels below, untouched, so its speed and its bits never depend on
# the options; tanh and sigmoid here are the same gate approximations as on that path.
_RELU = _ref.LSTM_ACT_CODES["relu"]
_TANH = _ref.LSTM_ACT_CODES["tanh"]
_SIGMOID = _ref.LSTM_ACT_CODES["sigmoid"]
_HARD_SIGMOID = _ref.LSTM_ACT_CODES["hard_sigmoid"]


def _lstm_act(x, code):
    """The LSTM activation `code` of the scalar x (uncompiled version)."""
    if code == _TANH:
        return math.tanh(x)
    if code == _SIGMOID:
        return _sigmoid(x)
    if code == _HARD_SIGMOID:
        return min(max(x / 6 + 0.5, 0.0), 1.0)
    if code == _RELU:
        return max(x, 0.0)
    return x  # linear


@overload(_lstm_act)
def _lstm_act_impl(x, code):
    ft = np.float32 if x == types.float32 else np.float64
    zero, half, one, six = ft(0), ft(0.5), ft(1), ft(6)

    def impl(x, code):
        if code == _TANH:
            return _gate_tanh(x)
        if code == _SIGMOID:
            return _gate_sigmoid(x)
        if code == _HARD_SIGMOID:
            return min(max(x / six + half, zero), one)
        if code == _RELU:
            return max(x, zero)
        return x  # linear

    return impl


def _lstm_dact(a, code):
    """d act / dx of the LSTM activation `code`, from its output a (0 at the kinks)."""
    if code == _TANH:
        return 1.0 - a * a
    if code == _SIGMOID:
        return a * (1.0 - a)
    if code == _HARD_SIGMOID:
        return 1.0 / 6.0 if 0.0 < a < 1.0 else 0.0
    if code == _RELU:
        return 1.0 if a > 0.0 else 0.0
    return 1.0


@overload(_lstm_dact)
def _lstm_dact_impl(a, code):
    ft = np.float32 if a == types.float32 else np.float64
    zero, one, sixth = ft(0), ft(1), ft(1.0 / 6.0)

    def impl(a, code):
        if code == _TANH:
            return one - a * a
        if code == _SIGMOID:
            return a * (one - a)
        if code == _HARD_SIGMOID:
            return sixth if (a > zero and a < one) else zero
        if code == _RELU:
            return one if a > zero else zero
        return one

    return impl


# ----------------------------------------------------------------------------------------
# LSTM kernels


@njit(**_JIT_VIEWS)
def _pack_rows(X, in_mask, has_in_mask, order, starts, lengths, offsets, counts, reverse, Xp):
    """Xp[off_s + k] = X[order[k], t] * in_mask[order[k]]  for every real step."""
    I = X.shape[2]
    for s in range(counts.shape[0] - 1):
        off = offsets[s]
        for k in range(counts[s]):
            r = order[k]
            t = starts[r] + lengths[r] - 1 - s if reverse else starts[r] + s
            if has_in_mask:
                for j in range(I):
                    Xp[off + k, j] = X[r, t, j] * in_mask[r, j]
            else:
                for j in range(I):
                    Xp[off + k, j] = X[r, t, j]


@njit(**_JIT_VIEWS)
def _unpack_rows(dXp, in_mask, has_in_mask, order, starts, lengths, offsets, counts, reverse, dX):
    """Inverse of _pack_rows: dX[order[k], t] = dXp[off_s + k] * in_mask[order[k]]."""
    I = dX.shape[2]
    for s in range(counts.shape[0] - 1):
        off = offsets[s]
        for k in range(counts[s]):
            r = order[k]
            t = starts[r] + lengths[r] - 1 - s if reverse else starts[r] + s
            if has_in_mask:
                for j in range(I):
                    dX[r, t, j] = dXp[off + k, j] * in_mask[r, j]
            else:
                for j in range(I):
                    dX[r, t, j] = dXp[off + k, j]


@njit(**_JIT_VIEWS)
def _zero_padding(Y, starts, lengths, col, width):
    """Y[b, t, col : col + width] = 0 outside each row's real span (the kernels write every
    real position, so this replaces zero-filling the whole (B, T, .) array first)."""
    T = Y.shape[1]
    for r in range(Y.shape[0]):
        a = starts[r]
        e = starts[r] + lengths[r]
        for t in range(T):
            if t < a or t >= e:
                y = Y[r, t, col : col + width]
                for j in range(width):
                    y[j] = 0


@njit(**_JIT_FMA_VIEWS)
def _lstm_fwd_step(s, offsets, counts, Z, R, b, Cp, TCp, Hprev, Y, col, h_last, c_last,
                   order, starts, lengths, reverse, rec_mask, has_rec_mask, c0s, has_c0, gate_code, cell_code):
    """One step of the recurrence for the n_s running rows (fused gate arithmetic).

    Z (N, G): pre-activations x W on entry, gate activations i, f, g, o on exit (rows of
    step s). R (>=n_s, G): h_prev @ U (zeros at s = 0 without h0).
    c0s (B, H) sorted rows: the initial cell state when has_c0. gate_code, cell_code:
    recurrent_activation and activation (LSTM_ACT_CODES).
    Writes c and act(c) to Cp, TCp (N, H); h to Y[..., col : col + H] (Y (B, T, H), or the
    (B, T, 2H) array both directions of a pair write into); h * rec_mask to Hprev rows of
    step s + 1 for the rows that continue, or h, c to h_last, c_last for rows that end.
    """
    H = Cp.shape[1]
    default = gate_code == _SIGMOID and cell_code == _TANH
    n = counts[s]
    n_next = counts[s + 1]
    off = offsets[s]
    off_next = offsets[s + 1]
    off_prev = offsets[s - 1] if s > 0 else 0
    # Short loops over 1-D row views that start at index 0, each touching few arrays: so
    # LLVM vectorises every one of them (one fused loop over eight arrays stayed scalar, and
    # a loop over range(2H, 3H) keeps a negative-index check that blocks vectorisation).
    for k in range(n):
        r = order[k]
        t = starts[r] + lengths[r] - 1 - s if reverse else starts[r] + s
        z = Z[off + k]
        # 1. z = x W (+ h_prev U) + b, then i, f, g, o in place
        rk = R[k]
        zif = z[: 2 * H]
        rif = rk[: 2 * H]
        bif = b[: 2 * H]
        zg = z[2 * H : 3 * H]
        rg = rk[2 * H : 3 * H]
        bg = b[2 * H : 3 * H]
        zo = z[3 * H :]
        ro = rk[3 * H :]
        bo = b[3 * H :]
        if default:
            for j in range(2 * H):
                zif[j] = _gate_sigmoid(zif[j] + rif[j] + bif[j])
            for j in range(H):
                zg[j] = _gate_tanh(zg[j] + rg[j] + bg[j])
            for j in range(H):
                zo[j] = _gate_sigmoid(zo[j] + ro[j] + bo[j])
        else:
            for j in range(2 * H):
                zif[j] = _lstm_act(zif[j] + rif[j] + bif[j], gate_code)
            for j in range(H):
                zg[j] = _lstm_act(zg[j] + rg[j] + bg[j], cell_code)
            for j in range(H):
                zo[j] = _lstm_act(zo[j] + ro[j] + bo[j], gate_code)
        zi = z[:H]
        zf = z[H : 2 * H]
        # 2. c = f * c_prev + i * g   (c_prev = c0 at the first step, when given)
        c = Cp[off + k]
        if s > 0 or has_c0:
            cp = Cp[off_prev + k] if s > 0 else c0s[k]
            for j in range(H):
                c[j] = zf[j] * cp[j] + zi[j] * zg[j]
        else:
            for j in range(H):
                c[j] = zi[j] * zg[j]
        # 3. h = o * act(c)
        tc = TCp[off + k]
        y = Y[r, t, col : col + H]  # a unit-step slice of a C row: still contiguous to LLVM
        if cell_code == _TANH:
            for j in range(H):
                tcj = _gate_tanh(c[j])
                tc[j] = tcj
                y[j] = zo[j] * tcj
        else:
            for j in range(H):
                tcj = _lstm_act(c[j], cell_code)
                tc[j] = tcj
                y[j] = zo[j] * tcj
        # 4. hand h on: to the next step's GEMM input, or to the final state
        if k < n_next:
            hp = Hprev[off_next + k]
            if has_rec_mask:
                rm = rec_mask[r]
                for j in range(H):
                    hp[j] = y[j] * rm[j]
            else:
                for j in range(H):
                    hp[j] = y[j]
        else:
            hl = h_last[r]
            cl = c_last[r]
            for j in range(H):
                hl[j] = y[j]
                cl[j] = c[j]


@njit(**_JIT_FMA_VIEWS)
def _lstm_bwd_step(s, offsets, counts, A, Cp, TCp, dY, has_dY, dHm, dh_last, dc, dZ, db,
                   order, starts, lengths, reverse, rec_mask, has_rec_mask, c0s, has_c0, gate_code, cell_code):
    """Backward of one step (numbered as in the reference's lstm_backward).

    dHm (>=n_{s+1}, H): dz_{s+1} @ U^T of the rows that continued to step s + 1 (before the
    rec_mask scale); rows that end at s take dh_last instead. dc (B, H), sorted rows: the
    carried cell gradient (dc_last on entry), updated in place to dc_prev. Writes dz to dZ
    rows of step s and accumulates db. c0s, has_c0, gate_code, cell_code: as the forward.
    """
    H = Cp.shape[1]
    default = gate_code == _SIGMOID and cell_code == _TANH
    n = counts[s]
    n_next = counts[s + 1]
    off = offsets[s]
    off_prev = offsets[s - 1] if s > 0 else 0
    one = A.dtype.type(1)
    for k in range(n):
        r = order[k]
        t = starts[r] + lengths[r] - 1 - s if reverse else starts[r] + s
        a = A[off + k]
        i = a[:H]
        f = a[H : 2 * H]
        g = a[2 * H : 3 * H]
        o = a[3 * H :]
        dz = dZ[off + k]
        dzi = dz[:H]
        dzf = dz[H : 2 * H]
        dzg = dz[2 * H : 3 * H]
        dzo = dz[3 * H :]
        tc = TCp[off + k]
        dck = dc[k]
        # 2. h = o * tanh(c): dh arrives from above (dY) and from step s + 1 (or dh_last);
        #    dzo holds dh for the moment
        if k < n_next:
            dhk = dHm[k]
            if has_rec_mask:
                rm = rec_mask[r]
                for j in range(H):
                    dzo[j] = dhk[j] * rm[j]
            else:
                for j in range(H):
                    dzo[j] = dhk[j]
        else:
            dhl = dh_last[r]
            for j in range(H):
                dzo[j] = dhl[j]
        if has_dY:
            dy = dY[r, t]
            for j in range(H):
                dzo[j] += dy[j]
        if default:
            for j in range(H):
                dh = dzo[j]
                dck[j] += dh * o[j] * (one - tc[j] * tc[j])
                dzo[j] = dh * tc[j] * o[j] * (one - o[j])
        else:
            for j in range(H):
                dh = dzo[j]
                dck[j] += dh * o[j] * _lstm_dact(tc[j], cell_code)
                dzo[j] = dh * tc[j] * _lstm_dact(o[j], gate_code)
        # 3. c = f * c_prev + i * g   (dck becomes dc_prev; c_prev = c0 at the first step)
        if s > 0 or has_c0:
            cp = Cp[off_prev + k] if s > 0 else c0s[k]
            if default:
                for j in range(H):
                    dzf[j] = dck[j] * cp[j] * f[j] * (one - f[j])
            else:
                for j in range(H):
                    dzf[j] = dck[j] * cp[j] * _lstm_dact(f[j], gate_code)
        else:
            for j in range(H):
                dzf[j] = 0
        # 4. gate nonlinearities
        if default:
            for j in range(H):
                d = dck[j]
                dzi[j] = d * g[j] * i[j] * (one - i[j])
                dzg[j] = d * i[j] * (one - g[j] * g[j])
                dck[j] = d * f[j]
        else:
            for j in range(H):
                d = dck[j]
                dzi[j] = d * g[j] * _lstm_dact(i[j], gate_code)
                dzg[j] = d * i[j] * _lstm_dact(g[j], cell_code)
                dck[j] = d * f[j]
        for j in range(4 * H):
            db[j] += dz[j]


@dataclass
class LSTMCache:
    """What lstm_backward needs from lstm_forward (opaque to layers)."""

    Xp: np.ndarray  # (N, I) packed input after in_mask
    W: np.ndarray  # (I, G)
    U: np.ndarray  # (H, G) recurrent kernel
    A: np.ndarray  # (N, G) gate activations i, f, g, o
    Cp: np.ndarray  # (N, H) cell state after each step
    TCp: np.ndarray  # (N, H) tanh of it
    Hprev: np.ndarray  # (N, H) h before each step, times rec_mask (0 at step 0)
    order: np.ndarray  # (B,) int64 rows longest first
    starts: np.ndarray  # (B,) int64
    lengths: np.ndarray  # (B,) int64
    offsets: np.ndarray  # (S + 1,) int64
    counts: np.ndarray  # (S + 1,) int64, counts[S] = 0
    reverse: bool
    in_mask: np.ndarray  # (B, I) or (1, 1) placeholder
    has_in_mask: bool
    rec_mask: np.ndarray  # (B, H) or (1, 1) placeholder
    has_rec_mask: bool
    shape: tuple  # (B, T, I)
    opts: _LSTMOptions  # activations and initial state


@dataclass
class _LSTMOptions:
    """The LSTM options of one call, in kernel form (reference.py legend)."""

    cell_code: int  # activation (g and act(c)), LSTM_ACT_CODES
    gate_code: int  # recurrent_activation (i, f, o)
    h0: np.ndarray | None  # (B, H) initial h, original row order
    c0: np.ndarray | None  # (B, H) initial c, original row order
    h0s: np.ndarray  # (B, H) h0[order] * rec_mask[order], or a (1, 1) placeholder
    c0s: np.ndarray  # (B, H) c0[order], or a (1, 1) placeholder


def _lstm_options(activation, recurrent_activation, h0, c0, order, rec_m, has_rec, dt, B, H):
    """Codes and sorted initial states for the kernels (placeholders where absent)."""
    cell, gate = _ref.lstm_act_codes(activation, recurrent_activation)
    if h0 is not None:
        h0 = np.ascontiguousarray(h0, dtype=dt).reshape(B, H)
        h0s = h0[order] * rec_m[order] if has_rec else h0[order]
    if c0 is not None:
        c0 = np.ascontiguousarray(c0, dtype=dt).reshape(B, H)
    return _LSTMOptions(cell, gate, h0, c0, h0s if h0 is not None else _placeholder(dt),
                        np.ascontiguousarray(c0[order]) if c0 is not None else _placeholder(dt))


_PLACEHOLDER = {}


def _placeholder(dtype):
    """A (1, 1) array standing in for an absent mask (keeps one kernel specialisation)."""
    dtype = np.dtype(dtype)
    if dtype not in _PLACEHOLDER:
        _PLACEHOLDER[dtype] = np.zeros((1, 1), dtype=dtype)
    return _PLACEHOLDER[dtype]


def _schedule(starts, lengths, B):
    """order (rows longest first), counts n_s (with a trailing 0), offsets off_s."""
    starts = np.ascontiguousarray(starts, dtype=np.int64).reshape(B)
    lengths = np.ascontiguousarray(lengths, dtype=np.int64).reshape(B)
    order = np.argsort(-lengths, kind="stable").astype(np.int64)
    S = int(lengths.max()) if B else 0
    hist = np.bincount(lengths, minlength=S + 1)
    counts = np.empty(S + 1, dtype=np.int64)
    counts[:S] = B - np.cumsum(hist)[:S]
    counts[S] = 0
    offsets = np.zeros(S + 2, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return starts, lengths, order, counts, offsets, S


def _output(out, shape, dtype):
    """(buffer, col) a recurrence writes Y = buffer[..., col : col + H] into: `out` (the
    pair's joint (B, T, 2H) array and this direction's column, see _joint_outputs) when it
    fits, else a new (B, T, H) array. The kernels write every real step and _zero_padding
    the rest, so it needs no initial value."""
    B, T, H = shape
    if out is not None:
        joint, col = out
        if joint.shape == (B, T, 2 * H) and joint.dtype == dtype:
            return joint, col
    return np.empty(shape, dtype=dtype), 0


def _recurrence(Z, U, b, order, starts, lengths, offsets, counts, reverse, rec_m, has_rec, T, opts, out=None):
    """The time loop over packed pre-activations Z (N, G) = x W: per step one (n_s, H) @ (H, G)
    GEMM and one fused gate kernel. Z becomes the gate activations in place. opts: an
    _LSTMOptions (activations, initial state).
    Returns Y (B, T, H), h_last, c_last (B, H), Cp, TCp, Hprev (N, H)."""
    N, H = Z.shape[0], U.shape[0]
    Cp, TCp, Hprev = (np.empty((N, H), dtype=Z.dtype) for _ in range(3))
    Y, h_last, c_last = _time_loop(offsets, Z, Cp, TCp, Hprev, None, 1, U, b, order, starts, lengths, counts,
                                   reverse, rec_m, has_rec, T, opts, out)
    return Y, h_last, c_last, Cp, TCp, Hprev


def _time_loop(kernel_offsets, Z, Cp, TCp, Hprev, fill, K, U, b, order, starts, lengths, counts, reverse,
               rec_m, has_rec, T, opts, out):
    """The steps of _recurrence and _recurrence_in_chunks: the rows of step s live at
    kernel_offsets[s] of Z, Cp, TCp and Hprev (the packed offsets, or the chunk ring's);
    fill(s, s1, Z, row), when given, writes the pre-activations of K steps from s at
    every K-th step. Returns Y (B, T, H), h_last, c_last (B, H)."""
    dt = Z.dtype
    B = order.shape[0]
    H = U.shape[0]
    S = counts.shape[0] - 1
    has_h0 = opts.h0 is not None
    n0 = counts[0] if S else 0
    Hprev[:n0] = opts.h0s[:n0] if has_h0 else 0
    Ybuf, col = _output(out, (B, T, H), dt)
    _zero_padding(Ybuf, starts, lengths, col, H)
    # rows that take no step keep the initial state as their final state
    h_last = opts.h0.copy() if has_h0 else np.zeros((B, H), dtype=dt)
    c_last = opts.c0.copy() if opts.c0 is not None else np.zeros((B, H), dtype=dt)
    R = np.zeros((B, GATES * H), dtype=dt)
    for s in range(S):
        off = kernel_offsets[s]
        if fill is not None and s % K == 0:
            fill(s, min(s + K, S), Z, off)
        n = counts[s]
        if s > 0 or has_h0:
            np.matmul(Hprev[off : off + n], U, out=R[:n])
        _lstm_fwd_step(s, kernel_offsets, counts, Z, R, b, Cp, TCp, Hprev, Ybuf, col, h_last, c_last,
                       order, starts, lengths, reverse, rec_m, has_rec, opts.c0s, opts.c0 is not None,
                       opts.gate_code, opts.cell_code)
    return Ybuf[..., col : col + H], h_last, c_last


# Inference holds the pre-activations of this many bytes of steps at a time (a few steps
# of a large batch, a whole sentence of a small one): see _recurrence_in_chunks.
CHUNK_BYTES = 1 << 20


def _chunk_offsets(offsets, B, K):
    """Kernel offsets for _recurrence_in_chunks: step s of chunk c = s // K at its packed
    place within the chunk, in half c mod 2 of a (2 K B)-row ring. (S + 2,) int64."""
    s = np.arange(offsets.shape[0], dtype=np.int64)
    first = (s // K) * K
    return offsets - offsets[np.minimum(first, offsets.shape[0] - 1)] + ((s // K) % 2) * (K * B)


def _recurrence_in_chunks(fill, G, U, b, order, starts, lengths, offsets, counts, reverse, rec_m, has_rec, T, opts,
                          out=None):
    """_recurrence for inference: the same kernels and arithmetic, holding K steps of state
    at a time instead of all N rows (K from CHUNK_BYTES: 2 steps of a 256-sentence batch
    at H = 256, 32 of a 32-sentence batch at H = 128).

    _lstm_fwd_step touches step s's rows at off_s, the previous step's at off_{s-1} and
    the next one's at off_{s+1}. Handed _chunk_offsets instead of the packed offsets, it
    runs in (2 K B, .) buffers: chunk c's steps in half c mod 2, and the steps before and
    after a chunk in the other half. Step-major packing keeps a chunk's rows contiguous,
    so fill(s0, s1, Z, base) writes the pre-activations of steps s0..s1-1 (packed rows
    offsets[s0]..offsets[s1]) to Z[base:] in one call. Why: at H = 256 a 256-sentence
    batch's Z alone is 21 MB, and two directions running at once pushed theirs out of this
    machine's 32 MB L3: a second thread gave 1.1x instead of 1.8x (measured; the commit
    that brought this in has the figures).
    Returns Y (B, T, H), h_last, c_last (B, H)."""
    dt = U.dtype
    B, H = order.shape[0], U.shape[0]
    K = max(1, CHUNK_BYTES // max(1, B * G * dt.itemsize))
    rows = 2 * K * B
    Z = np.empty((rows, G), dtype=dt)
    Cp, TCp, Hprev = (np.empty((rows, H), dtype=dt) for _ in range(3))
    return _time_loop(_chunk_offsets(offsets, B, K), Z, Cp, TCp, Hprev, fill, K, U, b, order, starts, lengths,
                      counts, reverse, rec_m, has_rec, T, opts, out)


def lstm_forward(X, W, U, b, starts, lengths, reverse=False, in_mask=None, rec_mask=None,
                 activation="tanh", recurrent_activation="sigmoid", h0=None, c0=None, for_backward=True):
    """One LSTM direction over a padded batch (rows in any order, any padding side).

    X (B, T, I), W (I, G), U (H, G), b (G,), starts/lengths (B,) int,
    in_mask (B, I) or None, rec_mask (B, H) or None, h0/c0 (B, H) or None;
    activation, recurrent_activation: reference.LSTM_ACTIVATIONS.
    Returns Y (B, T, H), h_last (B, H), c_last (B, H), cache; for_backward False
    (inference): cache None, and only a few steps of state held (_recurrence_in_chunks).
    """
    return _lstm_forward(X, W, U, b, starts, lengths, reverse, in_mask, rec_mask, activation, recurrent_activation,
                         h0, c0, for_backward)


def _lstm_forward(X, W, U, b, starts, lengths, reverse=False, in_mask=None, rec_mask=None, activation="tanh",
                  recurrent_activation="sigmoid", h0=None, c0=None, for_backward=True, out=None):
    """lstm_forward, writing Y into `out` when it fits (_output)."""
    starts, lengths = chk.check_lstm_forward(X, W, U, b, starts, lengths, in_mask, rec_mask, h0=h0, c0=c0)
    X = np.ascontiguousarray(X)
    dt = X.dtype
    B, T, I = X.shape
    H = U.shape[0]
    G = GATES * H
    W = np.ascontiguousarray(W, dtype=dt)
    U = np.ascontiguousarray(U, dtype=dt)
    b = np.ascontiguousarray(b, dtype=dt)
    starts, lengths, order, counts, offsets, S = _schedule(starts, lengths, B)
    N = int(offsets[S])
    reverse = bool(reverse)
    has_in = in_mask is not None
    has_rec = rec_mask is not None
    in_m = np.ascontiguousarray(in_mask, dtype=dt) if has_in else _placeholder(dt)
    rec_m = np.ascontiguousarray(rec_mask, dtype=dt) if has_rec else _placeholder(dt)

    Xp = np.empty((N, I), dtype=dt)
    _pack_rows(X, in_m, has_in, order, starts, lengths, offsets, counts, reverse, Xp)
    opts = _lstm_options(activation, recurrent_activation, h0, c0, order, rec_m, has_rec, dt, B, H)
    if not for_backward:

        def fill(s0, s1, Z, base):
            np.matmul(Xp[offsets[s0] : offsets[s1]], W, out=Z[base : base + offsets[s1] - offsets[s0]])

        Y, h_last, c_last = _recurrence_in_chunks(fill, G, U, b, order, starts, lengths, offsets, counts, reverse,
                                                  rec_m, has_rec, T, opts, out)
        return Y, h_last, c_last, None
    Z = np.empty((N, G), dtype=dt)
    if N:
        np.matmul(Xp, W, out=Z)  # the one large input GEMM (256-row chunks just in time: no faster)
    Y, h_last, c_last, Cp, TCp, Hprev = _recurrence(Z, U, b, order, starts, lengths, offsets, counts, reverse,
                                                    rec_m, has_rec, T, opts, out)
    cache = LSTMCache(Xp, W, U, Z, Cp, TCp, Hprev, order, starts, lengths,
                      offsets, counts, reverse, in_m, has_in, rec_m, has_rec, (B, T, I), opts)
    return Y, h_last, c_last, cache


_SCRATCH = threading.local()


def _scratch(slot, shape, dtype):
    """A reusable buffer for an array that dies inside the call (per thread and slot,
    grown to the largest request; its contents are garbage). Allocating and freeing these
    (N, G)-sized temporaries every step made glibc trim and regrow the heap, and the
    regrown pages cost a fault each."""
    bufs = _SCRATCH.__dict__.setdefault("bufs", {})
    n = int(np.prod(shape))
    key = (slot, np.dtype(dtype))
    buf = bufs.get(key)
    if buf is None or buf.size < n:
        buf = bufs[key] = np.empty(n, dtype=dtype)
    return buf[:n].reshape(shape)


def lstm_backward(cache, dY, dh_last, dc_last, dW, dU, db, dh0=None, dc0=None):
    """Backward of lstm_forward. dY (B, T, H) or None; dh_last, dc_last (B, H) or None.

    Accumulates into dW (I, G), dU (H, G), db (G,), and into dh0, dc0 (B, H) when given
    (gradient w.r.t. the initial state); returns dX (B, T, I).
    Gradients arriving at padded positions of dY are ignored.
    """
    chk.check_cache("lstm_backward", cache, LSTMCache)
    chk.check_lstm_backward(cache.shape + cache.Cp.shape[1:], cache.Xp.dtype, dY, dh_last, dc_last, dW, dU, db,
                            dh0=dh0, dc0=dc0)
    c = cache
    B, T, I = c.shape
    dt = c.Xp.dtype
    H = c.Cp.shape[1]
    G = GATES * H
    S = c.counts.shape[0] - 1
    N = c.Xp.shape[0]
    has_dY = dY is not None
    dY = np.ascontiguousarray(dY, dtype=dt) if has_dY else np.zeros((1, 1, 1), dtype=dt)
    dhl = np.ascontiguousarray(dh_last, dtype=dt) if dh_last is not None else np.zeros((B, H), dtype=dt)
    dcs = (
        np.ascontiguousarray(np.asarray(dc_last, dtype=dt)[c.order])
        if dc_last is not None
        else np.zeros((B, H), dtype=dt)
    )
    dZ = _scratch("dZ", (N, G), dt)
    dHm = np.empty((B, H), dtype=dt)
    db_acc = np.zeros(G, dtype=dt)
    # U^T copied once per call: OpenBLAS's AVX-512 (SkylakeX) kernel multiplies the per-step
    # (n_s, G) @ (G, H) at 155 GFLOP/s into a contiguous U^T and at 103 through the
    # transposed view (n_s 32, H 128; its AVX2 kernel: 106 and 105)
    UT = np.ascontiguousarray(c.U.T)
    o = c.opts
    for s in range(S - 1, -1, -1):
        _lstm_bwd_step(s, c.offsets, c.counts, c.A, c.Cp, c.TCp, dY, has_dY, dHm, dhl, dcs, dZ, db_acc,
                       c.order, c.starts, c.lengths, c.reverse, c.rec_mask, c.has_rec_mask,
                       o.c0s, o.c0 is not None, o.gate_code, o.cell_code)
        if s > 0:
            n = c.counts[s]
            off = c.offsets[s]
            np.matmul(dZ[off : off + n], UT, out=dHm[:n])
    _initial_state_grads(c, dZ, dhl, dcs, dh0, dc0)
    # 5. z = x W + h_prev U + b, as three large GEMMs over all steps
    db += db_acc
    dX = np.empty((B, T, I), dtype=dt)
    _zero_padding(dX, c.starts, c.lengths, 0, I)
    if N:
        dW += c.Xp.T @ dZ
        n0 = 0 if o.h0 is not None else c.counts[0]  # Hprev is 0 at the first step without h0
        if N > n0:
            dU += c.Hprev[n0:].T @ dZ[n0:]
        dXp = np.matmul(dZ, c.W.T, out=_scratch("dXp", (N, I), dt))
        _unpack_rows(dXp, c.in_mask, c.has_in_mask, c.order, c.starts, c.lengths, c.offsets, c.counts,
                     c.reverse, dX)
    return dX


def _initial_state_grads(c, dZ, dhl, dcs, dh0, dc0):
    """dh0, dc0 (B, H) += the gradient w.r.t. the state before each row's first step.

    dcs (B, H, sorted rows) is that for c after the step loop; for h it is dz_0 @ U^T
    (times rec_mask) for rows that took a step, dh_last (dhl) for length-0 rows.
    """
    if dc0 is not None:
        dc0[c.order] += dcs
    if dh0 is None:
        return
    B, H = dhl.shape
    n0 = c.counts[0]  # rows that take a step (0 when no row does)
    dh = np.empty((B, H), dtype=dhl.dtype)
    np.matmul(dZ[:n0], c.U.T, out=dh[:n0])
    if c.has_rec_mask:
        dh[:n0] *= c.rec_mask[c.order[:n0]]
    dh[n0:] = dhl[c.order[n0:]]
    dh0[c.order] += dh


# ----------------------------------------------------------------------------------------
# Inference from token ids: the input projection looked up instead of computed


@njit(**_JIT_VIEWS)
def _gather_steps(P, ids, order, starts, lengths, offsets, counts, s0, s1, reverse, Z, base):
    """Z[base + off_s - off_s0 + k] = P[ids[order[k], t]] for steps s0 <= s < s1 and the
    rows running at each: their input projections, looked up, packed from row base."""
    G = P.shape[1]
    for s in range(s0, s1):
        row = base + offsets[s] - offsets[s0]
        for k in range(counts[s]):
            r = order[k]
            t = starts[r] + lengths[r] - 1 - s if reverse else starts[r] + s
            src = P[ids[r, t]]
            dst = Z[row + k]
            for j in range(G):
                dst[j] = src[j]


def lstm_input_table(table, W):
    """P (V, G) = table (V, E) @ W (E, G): every vocabulary row's input projection.

    For inference with frozen weights (recompute after any update): lstm_forward_ids then
    looks rows up instead of running the (B*T, E) @ (E, G) GEMM, a third of the forward
    FLOPs. Costs V * G floats (20k x 512 float32: 41 MB per direction) and one V-row GEMM,
    so it pays off once more than ~V tokens are predicted with the same weights.
    """
    chk.check_lstm_input_table(table, W)
    table = np.ascontiguousarray(table)
    return np.matmul(table, np.ascontiguousarray(W, dtype=table.dtype))


def lstm_forward_ids(P, ids, U, b, starts, lengths, reverse=False, activation="tanh",
                     recurrent_activation="sigmoid", h0=None, c0=None):
    """lstm_forward(embedding_forward(table, ids), W, U, b, starts, lengths, reverse, None,
    None, activation, recurrent_activation, h0, c0) for P = lstm_input_table(table, W),
    without the input GEMM. Inference only: no dropout masks, and the returned cache is
    None (no backward).

    P (V, G), ids (B, T) int, U (H, G), b (G,), starts/lengths (B,) int, h0/c0 (B, H) or None.
    Returns Y (B, T, H), h_last (B, H), c_last (B, H), None.
    """
    return _lstm_forward_ids(P, ids, U, b, starts, lengths, reverse, activation, recurrent_activation, h0, c0)


def _lstm_forward_ids(P, ids, U, b, starts, lengths, reverse=False, activation="tanh", recurrent_activation="sigmoid",
                      h0=None, c0=None, out=None):
    """lstm_forward_ids, writing Y into `out` when it fits (_output)."""
    ids, starts, lengths = chk.check_lstm_forward_ids(P, ids, U, b, starts, lengths)
    P = np.ascontiguousarray(P)
    dt = P.dtype
    B, T = ids.shape
    U = np.ascontiguousarray(U, dtype=dt)
    b = np.ascontiguousarray(b, dtype=dt)
    starts, lengths, order, counts, offsets, S = _schedule(starts, lengths, B)
    reverse = bool(reverse)
    opts = _lstm_options(activation, recurrent_activation, h0, c0, order, None, False, dt, B, U.shape[0])

    def fill(s0, s1, Z, base):
        _gather_steps(P, ids, order, starts, lengths, offsets, counts, s0, s1, reverse, Z, base)

    Y, h_last, c_last = _recurrence_in_chunks(fill, P.shape[1], U, b, order, starts, lengths, offsets, counts,
                                              reverse, _placeholder(dt), False, T, opts, out)
    return Y, h_last, c_last, None


# ----------------------------------------------------------------------------------------
# Both directions at once (optional helper for Bidirectional layers)

_POOL = None
_POOL_LOCK = threading.Lock()


def _pool():
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tagger-lstm")
        return _POOL


def num_threads():
    """Threads for running the two LSTM directions concurrently: the process's thread plan
    (tagger.threads.configure, which the CLI applies: all cores, BLAS one thread per
    direction), else NUMBA_NUM_THREADS when set (the old rule; BLAS then keeps its own
    count), else 1: library use without a plan never adds direction threads on top of a
    threaded BLAS unasked."""
    return pair_threads()


class PairGovernor:
    """Whether the second thread pays right now, measured on the concurrent calls themselves.

    Two threads pay when a second core is free. When another process loads the cores (two
    trainings at --threads 2 on this 2-core machine: each 7 % slower than at --threads 1,
    benchmarks/oversubscription.py) the two threads take turns with it, and the handoffs
    and shared caches cost more than the overlap gains. So every concurrent call is timed:
    its wall time, and the process's CPU time across it. CPU over wall is near 2 when both
    threads ran at once and near 1 when they took turns. After each WINDOW concurrent calls
    whose total falls below GAIN, the next PAUSE calls run in the calling thread, one half
    after the other; then a window is measured again, and each window in a row that shows
    no gain doubles the pause (up to MAX_PAUSE), so a lasting load costs ever fewer
    measuring windows; one that gains ends the pauses. Every op that runs halves in two
    threads gives the same bits either way (tests/test_threads.py), so this changes speed
    only. Calls per training step: ~5 (a pair per layer forward and backward, the
    optimizer's halves); per predict chunk: ~16."""

    WINDOW = 32
    GAIN = 1.5
    PAUSE = 512
    MAX_PAUSE = 8192

    def __init__(self):
        self._lock = threading.Lock()
        self._paused = 0  # calls left to run sequentially
        self._wall = self._cpu = 0.0
        self._calls = 0
        self._no_gain = 0  # windows in a row without a gain
        self.windows = self.pauses = 0  # windows measured, and those that paused (for tests and benchmarks)
        self.last_gain = None  # CPU / wall of the last window measured

    def submit(self):
        """A timed submit for this call, or None: run it in the calling thread."""
        with self._lock:
            if self._paused > 0:
                self._paused -= 1
                return None
        return self._timed_submit

    def _timed_submit(self, fn, *args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        return _TimedFuture(_pool().submit(fn, *args, **kwargs), self, wall, cpu)

    def record(self, wall: float, cpu: float) -> None:
        with self._lock:
            self._wall += wall
            self._cpu += cpu
            self._calls += 1
            if self._calls < self.WINDOW:
                return
            self.last_gain = self._cpu / max(self._wall, 1e-9)
            self.windows += 1
            if self.last_gain < self.GAIN:
                self._paused = min(self.PAUSE << self._no_gain, self.MAX_PAUSE)
                self._no_gain += 1
                self.pauses += 1
            else:
                self._no_gain = 0
            self._wall = self._cpu = 0.0
            self._calls = 0


class _TimedFuture:
    """A pool future whose result() also tells the governor what the call took."""

    __slots__ = ("_future", "_governor", "_wall", "_cpu")

    def __init__(self, future, governor, wall, cpu):
        self._future, self._governor, self._wall, self._cpu = future, governor, wall, cpu

    def result(self):
        try:
            return self._future.result()
        finally:
            self._governor.record(time.perf_counter() - self._wall, time.process_time() - self._cpu)


GOVERNOR = PairGovernor()


def _submit(threads):
    """The executor's submit when the pair should run in two threads, else None. threads
    None: the process's thread plan, through the governor when the plan is adaptive; an
    explicit count is obeyed as given."""
    if threads is not None:
        return _pool().submit if threads >= 2 else None
    if num_threads() < 2:
        return None
    return GOVERNOR.submit() if adaptive_pair() else _pool().submit


def concurrent_submit():
    """The pair pool's submit for work beside the caller's when the thread plan has two
    threads, else None (the optimizer's updates use it: tagger.optim._update_all)."""
    return _submit(None)


def _joint_outputs(rows_cols, U, dtype):
    """One (B, T, 2H) array for the two directions of a pair to write their Y into, as
    (array, column) per direction: each returns its half, a view, and merge_forward's
    concat of the two halves is that array with no copy (the copy of 2 x (B, T, H) had
    cost ~10 % of a 256-sentence batch's inference at H = 256)."""
    try:
        H = int(U.shape[0])
        dt = np.dtype(dtype)
        B, T = (int(n) for n in rows_cols[:2])
    except (AttributeError, TypeError, ValueError, IndexError):
        return None, None  # not arrays: the op's own checks will say so
    if dt.kind != "f" or min(B, T, H) < 0:
        return None, None
    joint = np.empty((B, T, 2 * H), dtype=dt)
    return (joint, 0), (joint, H)


def _into(op, out, args):
    return op(*args, out=out)


def _pair_into(where, op, args_fwd, args_bwd, threads, x=0):
    """run_pair of op(*args, out=(joint, column)) with the two halves of _joint_outputs;
    args[x] is the op's (B, T, ...) input (X or ids), args[0] sets the dtype, args[2] is U."""
    chk.check_pair(where, args_fwd, args_bwd)  # before reading the tuples
    first = args_fwd[x] if len(args_fwd) > 2 else None
    out_f, out_b = _joint_outputs(getattr(first, "shape", ()), args_fwd[2] if len(args_fwd) > 2 else None,
                                  getattr(args_fwd[0], "dtype", None))
    return run_pair(where, lambda *a: _into(op, *a), (out_f, tuple(args_fwd)), (out_b, tuple(args_bwd)),
                    submit=_submit(threads))


def merge_forward(Yf, Yb, mode):
    """reference.merge_forward; a concat of the two halves of one array (what the pair ops
    return, _joint_outputs) is that array, without a copy."""
    if mode == "concat":
        joint = _joint_of(Yf, Yb)
        if joint is not None:
            chk.check_merge_forward(Yf, Yb, mode)
            return joint
    return _ref.merge_forward(Yf, Yb, mode)


def _joint_of(Yf, Yb):
    """The (..., 2H) C-contiguous array whose [..., :H] is Yf and [..., H:] is Yb, or None."""
    base = getattr(Yf, "base", None)
    if not isinstance(base, np.ndarray) or getattr(Yb, "base", None) is not base or not base.flags.c_contiguous:
        return None
    H = Yf.shape[-1]
    if Yf.shape != Yb.shape or base.shape != Yf.shape[:-1] + (2 * H,) or Yf.dtype != base.dtype:
        return None
    start = base.__array_interface__["data"][0]
    if Yf.__array_interface__["data"][0] != start or Yb.__array_interface__["data"][0] != start + H * base.itemsize:
        return None
    return base


def lstm_forward_pair(args_fwd, args_bwd, threads=None):
    """Run two independent lstm_forward calls, concurrently when threads >= 2.

    args_fwd, args_bwd: tuples of lstm_forward's positional arguments.
    Returns (result_fwd, result_bwd), each what lstm_forward returns; the two Y are views
    of one (B, T, 2H) array (_joint_outputs).
    """
    return _pair_into("lstm_forward_pair", _lstm_forward, args_fwd, args_bwd, threads)


def lstm_backward_pair(args_fwd, args_bwd, threads=None):
    """Run two independent lstm_backward calls, concurrently when threads >= 2.

    Each args tuple is (cache, dY, dh_last, dc_last, dW, dU, db[, dh0, dc0]); the two must
    accumulate into different gradient buffers. Returns (dX_fwd, dX_bwd).
    """
    return run_pair("lstm_backward_pair", lstm_backward, args_fwd, args_bwd, accumulates=True,
                    submit=_submit(threads))


def lstm_forward_ids_pair(args_fwd, args_bwd, threads=None):
    """Two independent lstm_forward_ids calls, concurrently when threads >= 2; the two Y
    are views of one (B, T, 2H) array, as in lstm_forward_pair."""
    return _pair_into("lstm_forward_ids_pair", _lstm_forward_ids, args_fwd, args_bwd, threads, x=1)


# ----------------------------------------------------------------------------------------
# Embedding


def embedding_forward(table, ids):
    """table (V, E), ids (B, T) int -> (B, T, E). Every id is looked up (padding id 0 too)."""
    ids = chk.check_embedding_forward(table, ids)
    return np.take(table, ids, axis=0)


@njit(**_JIT)
def _embedding_scatter(dtable, dE, ids, mask, has_mask):
    """dtable[ids[n]] += dE[n] where mask[n]; returns the sorted unique touched rows."""
    E = dtable.shape[1]
    sel = np.empty(ids.shape[0], dtype=np.int64)
    m = 0
    for n in range(ids.shape[0]):
        if has_mask and not mask[n]:
            continue
        row = ids[n]
        for j in range(E):
            dtable[row, j] += dE[n, j]
        sel[m] = row
        m += 1
    sel = np.sort(sel[:m])
    out = np.empty(m, dtype=np.int64)
    u = 0
    for n in range(m):
        if n == 0 or sel[n] != sel[n - 1]:
            out[u] = sel[n]
            u += 1
    return out[:u].copy()


def embedding_backward(dtable, dE, ids, mask=None):
    """Scatter-add dE (B, T, E) into dtable (V, E) at ids where mask (B, T) is true.

    Returns the sorted unique rows touched (int64), so sparse optimisers update only those.
    """
    ids, mask = chk.check_embedding_backward(dtable, dE, ids, mask)
    E = dtable.shape[1]
    ids1 = ids.reshape(-1)
    dE2 = np.ascontiguousarray(dE).reshape(-1, E)
    has_mask = mask is not None
    mask1 = np.ascontiguousarray(mask, dtype=np.bool_).reshape(-1) if has_mask else np.ones(1, dtype=np.bool_)
    return _embedding_scatter(dtable, dE2, ids1, mask1, has_mask)


# ----------------------------------------------------------------------------------------
# Dense and activations


# The output layer's GEMM runs as two row halves from this many rows on: at >= 2 threads
# in the pair pool (it follows the BiLSTM, whose two threads are idle by then; a
# 256-sentence batch's (14k, 512) x (512, 18) product: 4.7 -> 2.5 ms), at 1 thread one
# after the other. The split depends on the shape alone, so the bits never depend on the
# thread count.
SPLIT_ROWS = 2048


def dense_forward(X, W, b):
    """X (..., I) @ W (I, K) + b (K,) -> (..., K); 2-D and 3-D input alike. b None: no bias."""
    chk.check_dense_forward(X, W, b)
    X2 = np.ascontiguousarray(X).reshape(-1, X.shape[-1])  # one GEMM: matmul of 3-D input runs one per row
    M, K = X2.shape[0], W.shape[1]
    Y = np.empty((M, K), dtype=np.result_type(X2, W))
    if M < SPLIT_ROWS:
        np.matmul(X2, W, out=Y)
    else:
        half = M // 2
        submit = _submit(None)
        if submit is None:
            np.matmul(X2[:half], W, out=Y[:half])
            np.matmul(X2[half:], W, out=Y[half:])
        else:
            second = submit(np.matmul, X2[half:], W, out=Y[half:])
            np.matmul(X2[:half], W, out=Y[:half])
            second.result()
    if b is not None:
        Y += b
    return Y.reshape(X.shape[:-1] + (K,))


# three BLAS GEMMs on 2-D views: the reference's version is already the fast one
dense_backward = _ref.dense_backward


@njit(**_JIT)
def _sigmoid_flat(x, out):
    for n in range(x.shape[0]):
        out[n] = _sigmoid(x[n])


def activation_forward(X, name):
    chk.check_activation_forward(X, name)
    if name == "sigmoid":
        X = np.ascontiguousarray(X)
        out = np.empty_like(X)
        _sigmoid_flat(X.reshape(-1), out.reshape(-1))
        return out
    if name == "softmax":
        return softmax(X)
    return _ref.activation_forward(X, name)


def activation_backward(dY, Y, name):
    """Gradient through the activation, from its output Y."""
    return _ref.activation_backward(dY, Y, name)


# ----------------------------------------------------------------------------------------
# Loss


@njit(**_JIT)
def _softmax_rows(Z, P):
    N, K = Z.shape
    for n in range(N):
        mx = Z[n, 0]
        for k in range(1, K):
            mx = max(mx, Z[n, k])
        tot = Z.dtype.type(0)
        for k in range(K):
            e = math.exp(Z[n, k] - mx)
            P[n, k] = e
            tot += e
        for k in range(K):
            P[n, k] /= tot


def softmax(logits):
    chk.check_softmax(logits)
    K = logits.shape[-1]
    Z = np.ascontiguousarray(logits)
    P = np.empty_like(Z)
    _softmax_rows(Z.reshape(-1, K), P.reshape(-1, K))
    return P


@njit(**_JIT)
def _softmax_xent_rows(Z, y, mask, has_mask, tiny, D):
    """D = (softmax(Z) - onehot(y)) * mask / n; returns the mean loss (float64)."""
    N, K = Z.shape
    n_count = 0
    for n in range(N):
        if not has_mask or mask[n]:
            n_count += 1
    scale = 1.0 / max(n_count, 1)
    loss = 0.0
    for n in range(N):
        if has_mask and not mask[n]:
            for k in range(K):
                D[n, k] = 0
            continue
        mx = Z[n, 0]
        for k in range(1, K):
            mx = max(mx, Z[n, k])
        tot = Z.dtype.type(0)
        for k in range(K):
            e = math.exp(Z[n, k] - mx)
            D[n, k] = e
            tot += e
        for k in range(K):
            D[n, k] /= tot
        loss -= math.log(max(D[n, y[n]], tiny))
        D[n, y[n]] -= 1
        for k in range(K):
            D[n, k] *= scale
    return loss * scale


def softmax_xent(logits, labels, mask=None):
    """Mean softmax cross-entropy over the counted items (see reference.softmax_xent).

    Returns (loss, dlogits), dlogits exactly 0 at masked items.
    """
    labels, mask = chk.check_softmax_xent(logits, labels, mask)
    K = logits.shape[-1]
    Z = np.ascontiguousarray(logits)
    y = np.ascontiguousarray(labels, dtype=np.int64).reshape(-1)
    has_mask = mask is not None
    m = np.ascontiguousarray(mask, dtype=np.bool_).reshape(-1) if has_mask else np.ones(1, dtype=np.bool_)
    D = np.empty_like(Z)
    loss = _softmax_xent_rows(Z.reshape(-1, K), y, m, has_mask, np.finfo(Z.dtype).tiny, D.reshape(-1, K))
    return float(loss), D


# ----------------------------------------------------------------------------------------
# Global pooling over time (reference.pool_forward / pool_backward). Each kernel walks a
# row's real steps only, in time order, over 1-D (F,) row views (the inner loops vectorise);
# the padding is never read.

@njit(**_JIT)
def _pool_max_rows(X, starts, lengths, Y, argmax):
    """Y[b] = max over the real steps of X[b] (F wide), argmax[b] = those steps; -1 and 0
    for a length-0 row. Ties keep the first step; a NaN at a real step wins, as np.max."""
    B, _, F = X.shape
    for b in range(B):
        y = Y[b]
        a = argmax[b]
        n = lengths[b]
        s = starts[b]
        if n == 0:
            for f in range(F):
                y[f] = 0
                a[f] = -1
            continue
        x = X[b, s]
        for f in range(F):
            y[f] = x[f]
            a[f] = s
        for t in range(s + 1, s + n):
            x = X[b, t]
            for f in range(F):
                v = x[f]
                if v > y[f] or (v != v and y[f] == y[f]):
                    y[f] = v
                    a[f] = t


@njit(**_JIT)
def _pool_mean_rows(X, starts, lengths, Y):
    """Y[b] = (sum of X[b]'s real steps, in time order) / lengths[b]; 0 for length 0."""
    B, _, F = X.shape
    for b in range(B):
        y = Y[b]
        for f in range(F):
            y[f] = 0
        n = lengths[b]
        if n == 0:
            continue
        for t in range(starts[b], starts[b] + n):
            x = X[b, t]
            for f in range(F):
                y[f] += x[f]
        nn = Y.dtype.type(n)
        for f in range(F):
            y[f] = y[f] / nn


@njit(**_JIT)
def _pool_backward_rows(dY, argmax, starts, lengths, is_max, dX):
    """dX (B, T, F), zero on entry: dY[b] routed to the argmax steps (max) or spread as
    dY[b] / lengths[b] over the real steps (mean)."""
    B, _, F = dX.shape
    for b in range(B):
        n = lengths[b]
        if n == 0:
            continue
        g = dY[b]
        if is_max:
            a = argmax[b]
            for f in range(F):
                dX[b, a[f], f] = g[f]
        else:
            nn = dY.dtype.type(n)
            for t in range(starts[b], starts[b] + n):
                d = dX[b, t]
                for f in range(F):
                    d[f] = g[f] / nn


def pool_forward(X, starts, lengths, mode):
    """X (B, T, F) -> (Y (B, F), argmax (B, F) int64 or None); see reference.pool_forward."""
    starts, lengths = chk.check_pool_forward(X, starts, lengths, mode)
    X = np.ascontiguousarray(X)
    B, T, F = X.shape
    Y = np.empty((B, F), dtype=X.dtype)
    if mode == "max":
        argmax = np.empty((B, F), dtype=np.int64)
        _pool_max_rows(X, starts, lengths, Y, argmax)
        return Y, argmax
    _pool_mean_rows(X, starts, lengths, Y)
    return Y, None


def pool_backward(dY, argmax, starts, lengths, T, mode):
    """dY (B, F) -> dX (B, T, F), 0 at padding; see reference.pool_backward."""
    argmax, starts, lengths = chk.check_pool_backward(dY, argmax, starts, lengths, T, mode)
    dY = np.ascontiguousarray(dY)
    B, F = dY.shape
    is_max = mode == "max"
    if not is_max:
        argmax = np.zeros((1, 1), dtype=np.int64)  # not read
    dX = np.zeros((B, int(T), F), dtype=dY.dtype)
    _pool_backward_rows(dY, argmax, starts, lengths, is_max, dX)
    return dX


# ----------------------------------------------------------------------------------------
# Optimiser updates (in place). `rows`: update only these rows of a 2-D parameter (lazy).


@njit(**_JIT)
def _adam_rows(P, G, M, V, rows, lr, beta1, one_m_beta1, beta2, one_m_beta2, eps, weight_decay, bc1, bc2):
    """AdamW on the given rows of 2-D P, G, M, V; scalars in the dtype of P."""
    for q in range(rows.shape[0]):
        r = rows[q]
        # one row at a time through the 1-D kernel: 1-D row views vectorise
        _adam_flat(P[r], G[r], M[r], V[r], lr, beta1, one_m_beta1, beta2, one_m_beta2, eps,
                   weight_decay, bc1, bc2)


@njit(**_JIT)
def _adam_flat(P, G, M, V, lr, beta1, one_m_beta1, beta2, one_m_beta2, eps, weight_decay, bc1, bc2):
    for n in range(P.shape[0]):
        g = G[n]
        m = beta1 * M[n] + one_m_beta1 * g
        v = beta2 * V[n] + one_m_beta2 * g * g
        M[n] = m
        V[n] = v
        p = P[n]
        P[n] = p - lr * ((m / bc1) / (math.sqrt(v / bc2) + eps) + weight_decay * p)


def _flat(a, where):
    """1-D view of a C-contiguous array (updated in place, so never a copy)."""
    if a.ndim == 1:
        return a
    if not a.flags.c_contiguous:
        raise TaggerError(f"{where}: the parameter and optimiser arrays must be C-contiguous (they are updated in place)")
    return a.reshape(-1)


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step, rows=None):
    """AdamW: decoupled weight decay, bias-corrected moments; step counts from 1."""
    # Fold the scalars in float64, then round each once to the parameter dtype (rounding
    # beta2 to float32 *before* forming 1 - beta2 would be off by 1e-5); float32 arithmetic
    # in the kernel keeps it vectorised at full width.
    chk.check_step("adam_update", step)
    rows = chk.check_update("adam_update", rows, param=param, grad=grad, m=m, v=v)
    t = param.dtype.type
    sc = (t(lr), t(beta1), t(1 - beta1), t(beta2), t(1 - beta2), t(eps), t(weight_decay),
          t(1 - beta1**step), t(1 - beta2**step))
    if rows is None:
        _adam_flat(*(_flat(a, "adam_update") for a in (param, grad, m, v)), *sc)
    else:
        _adam_rows(param, grad, m, v, rows, *sc)


@njit(**_JIT)
def _ema_flat(A, P, keep, take):
    for n in range(A.shape[0]):
        A[n] = keep * A[n] + take * P[n]  # two products, one sum: reference.ema_update's roundings


def ema_update(average, param, momentum):
    """In place: average = momentum * average + (1 - momentum) * param (reference.ema_update)."""
    chk.check_ema_update(average, param, momentum)
    t = average.dtype.type
    _ema_flat(_flat(average, "ema_update"), np.ascontiguousarray(param).reshape(-1), t(momentum), t(1 - momentum))


@njit(**_JIT)
def _sgd_rows(P, G, Vel, rows, lr, momentum, weight_decay):
    for q in range(rows.shape[0]):
        r = rows[q]
        _sgd_flat(P[r], G[r], Vel[r], lr, momentum, weight_decay)  # 1-D row views vectorise


@njit(**_JIT)
def _sgd_flat(P, G, Vel, lr, momentum, weight_decay):
    for n in range(P.shape[0]):
        vel = momentum * Vel[n] + G[n]
        Vel[n] = vel
        p = P[n]
        P[n] = p - lr * (vel + weight_decay * p)


def sgd_update(param, grad, velocity, lr, momentum, weight_decay, rows=None):
    """SGD with (heavy-ball) momentum and decoupled weight decay."""
    rows = chk.check_update("sgd_update", rows, param=param, grad=grad, velocity=velocity)
    t = param.dtype.type
    sc = (t(lr), t(momentum), t(weight_decay))
    if rows is None:
        _sgd_flat(*(_flat(a, "sgd_update") for a in (param, grad, velocity)), *sc)
    else:
        _sgd_rows(param, grad, velocity, rows, *sc)


# The gradient norm's sums of squares may reassociate (and only they): a strict left-to-right
# float64 sum is one dependent add per value (~2.4 ns each, half a millisecond a step on
# the UD-EWT tagger); reassociated, LLVM keeps several vector partial sums. The order is
# fixed by the compiled code, so a run still repeats bit for bit; against the reference it
# differs in the last bits of a float64 sum, far below the float32 gradients' precision.
_JIT_SUM = dict(_JIT, fastmath={"reassoc", "contract"})


@njit(**_JIT_SUM)
def _sumsq_rows(G, rows):
    tot = 0.0
    for q in range(rows.shape[0]):
        r = rows[q]
        for j in range(G.shape[1]):
            x = np.float64(G[r, j])
            tot += x * x
    return tot


@njit(**_JIT_SUM)
def _sumsq_flat(G):
    tot = 0.0
    for n in range(G.shape[0]):
        x = np.float64(G[n])
        tot += x * x
    return tot


def sum_of_squares(grad, rows=None):
    rows = chk.check_update("sum_of_squares", rows, grad=grad)
    if rows is None:
        return float(_sumsq_flat(np.ascontiguousarray(grad).reshape(-1)))
    g = np.ascontiguousarray(grad)
    return float(_sumsq_rows(g.reshape(g.shape[0], -1), rows))


# in-place scale and fill of host arrays: NumPy's own indexing is already the fast path
scale_ = _ref.scale_
fill_ = _ref.fill_


# ----------------------------------------------------------------------------------------
# Memory: host arrays on this backend

asarray = _ref.asarray
to_numpy = _ref.to_numpy
zeros = _ref.zeros


# ----------------------------------------------------------------------------------------
# Compilation: cache state and warm-up


def _dispatchers():
    """Every njit dispatcher defined in this module."""
    from numba.core.registry import CPUDispatcher

    return {name: obj for name, obj in globals().items() if isinstance(obj, CPUDispatcher)}


def compile_notice():
    """True when the Numba cache for this module looks cold (first run: kernels will compile).

    Checks, for every kernel, that its cache index file exists (in __pycache__ next to this
    module, or under NUMBA_CACHE_DIR). True also when only kernels a run never calls
    (sigmoid, pooling, SGD for a tagger) are uncached, so the "compiling" notice does not
    use it: tagger.device.announce_compile listens for Numba's real compilations instead.
    """
    for disp in _dispatchers().values():
        cache = getattr(disp, "_cache", None)
        impl = getattr(cache, "_cache_file", None)
        index = getattr(impl, "_index_path", None)
        if index is None or not os.path.exists(index):
            return True
    return False


def warmup(dtypes=(np.float32, np.float64)):
    """Compile (or load from cache) every kernel for the given dtypes on tiny inputs."""
    for dt in dtypes:
        rng = np.random.default_rng(0)
        B, T, I, H = 3, 4, 2, 2
        X = rng.normal(size=(B, T, I)).astype(dt)
        W = rng.normal(size=(I, 4 * H)).astype(dt)
        U = rng.normal(size=(H, 4 * H)).astype(dt)
        b = np.zeros(4 * H, dtype=dt)
        lengths = np.array([2, 4, 0])
        starts = np.zeros(3, dtype=np.int64)
        for masks in (False, True):
            im = np.ones((B, I), dtype=dt) if masks else None
            rm = np.ones((B, H), dtype=dt) if masks else None
            Y, h, cst, cache = lstm_forward(X, W, U, b, starts, lengths, masks, im, rm)
            lstm_backward(cache, Y, h, cst, np.zeros_like(W), np.zeros_like(U), np.zeros_like(b))
            lstm_backward(cache, None, None, None, np.zeros_like(W), np.zeros_like(U), np.zeros_like(b))
        table = np.zeros((5, 2), dtype=dt)
        ids = np.array([[1, 2], [3, 0]])
        P = lstm_input_table(np.zeros((5, I), dtype=dt), W)
        lstm_forward_ids(P, np.array([[1, 2, 3, 4], [1, 0, 0, 0], [0, 0, 0, 0]]), U, b, starts, lengths)
        embedding_backward(table, np.ones((2, 2, 2), dtype=dt), ids, ids != 0)
        embedding_backward(table, np.ones((2, 2, 2), dtype=dt), ids)
        logits = np.zeros((2, 2, 3), dtype=dt)
        softmax_xent(logits, np.zeros((2, 2), dtype=np.int64), ids != 0)
        softmax_xent(logits, np.zeros((2, 2), dtype=np.int64))
        for mode in POOL_MODES:
            P, arg = pool_forward(X, starts, lengths, mode)
            pool_backward(P, arg, starts, lengths, T, mode)
        activation_forward(logits, "sigmoid")
        softmax(logits)
        p, g = np.zeros((3, 2), dtype=dt), np.ones((3, 2), dtype=dt)
        st = [np.zeros_like(p), np.zeros_like(p)]
        rows = np.array([0, 2])
        adam_update(p, g, st[0], st[1], 0.1, 0.9, 0.999, 1e-8, 0.0, 1)
        adam_update(p, g, st[0], st[1], 0.1, 0.9, 0.999, 1e-8, 0.0, 1, rows=rows)
        sgd_update(p, g, st[0], 0.1, 0.9, 0.0)
        sgd_update(p, g, st[0], 0.1, 0.9, 0.0, rows=rows)
        sum_of_squares(g)
        sum_of_squares(g, rows)
        dropout_mask((2, 3), 0.5, 1, dt)


from tagger.ops._crf_cpu import crf_marginals, crf_nbest, crf_nll, crf_viterbi  # noqa: E402,F401  (the CRF ops)
from tagger.ops._conv_cpu import conv1d_backward, conv1d_forward  # noqa: E402,F401  (issue 10: the char CNN)
