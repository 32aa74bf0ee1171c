"""numba.cuda kernel bodies of the CRF ops (private; launched by tagger/ops/_crf_cuda.py).

Legend as in tagger/ops/_crf_reference.py: B batch, T steps, K tags; row b occupies time
indices st .. st + n - 1 with st = starts[b], n = lengths[b].

    alpha, beta (B, T, K)  forward / backward log-scores (scratch, valid at real steps)
    logZ        (B,)       log partition function per row
    rowA        (B, K, K)  one row's share of dA (summed over rows by crf_reduce)
    rowloss     (B,)       float64: logZ - score(gold) per row (summed on the host)
    delta, back (B, T, K)  Viterbi scores and back-pointers (scratch)

The kernels follow the rules of tagger/ops/_cuda_kernels.py (plain functions or
factories, built and registered in its KERNELS, so tests/ops/test_ptx.py compiles them
to sm_90 PTX too; no device functions; no atomics: every output element is written by
one thread summing in a fixed order, so results are bitwise reproducible).

The recursions (crf_fb, crf_viterbi) run one block per sentence: block b walks row b's
steps in order and thread tid owns tags j = tid, tid + blockDim, ...; a step reads the
previous step's values of every tag, written by other threads of the block before the
barrier (global writes are visible block-wide after syncthreads). Rows are grid-strided
over blocks; a row's length is uniform across its block, so every barrier is reached by
all threads. K is small (tags of a tagger: up to ~50), so A stays in L1.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, types

from tagger.ops._cuda_kernels import _a, _ft, _register, f64_1, i64_1, i64_2

i64_3 = types.Array(types.int64, 3, "C")


def _ftype(dtype):
    return np.dtype(dtype).type


@_register(
    "crf_fb",
    lambda d: (_a(d, 3), i64_1, i64_1, _a(d, 2), _a(d, 1), _a(d, 1), _a(d, 3), _a(d, 3), _a(d, 1)),
)
def make_crf_fb(dtype, tile, block):
    zero = _ftype(dtype)(0)

    def k_crf_fb(E, starts, lengths, A, s, e, alpha, beta, logZ):
        # forward and backward interleaved: step k computes alpha at st + k from st + k - 1
        # and beta at st + n - 1 - k from st + n - k, one barrier per step for both
        B = E.shape[0]
        K = E.shape[2]
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        for b in range(cuda.blockIdx.x, B, cuda.gridDim.x):
            st = starts[b]
            n = lengths[b]
            last = st + n - 1
            for j in range(tid, K, nt):
                if n > 0:
                    alpha[b, st, j] = s[j] + E[b, st, j]
                    beta[b, last, j] = e[j]
            cuda.syncthreads()
            for t in range(st + 1, st + n):
                for j in range(tid, K, nt):
                    m = alpha[b, t - 1, 0] + A[0, j]
                    for i in range(1, K):
                        m = max(m, alpha[b, t - 1, i] + A[i, j])
                    acc = zero
                    for i in range(K):
                        acc += math.exp(alpha[b, t - 1, i] + A[i, j] - m)
                    alpha[b, t, j] = m + math.log(acc) + E[b, t, j]
                tb = 2 * st + n - t  # beta[tb - 1] from beta[tb]
                for i in range(tid, K, nt):
                    m = A[i, 0] + E[b, tb, 0] + beta[b, tb, 0]
                    for j in range(1, K):
                        m = max(m, A[i, j] + E[b, tb, j] + beta[b, tb, j])
                    acc = zero
                    for j in range(K):
                        acc += math.exp(A[i, j] + E[b, tb, j] + beta[b, tb, j] - m)
                    beta[b, tb - 1, i] = m + math.log(acc)
                cuda.syncthreads()
            if tid == 0:
                z = zero
                if n > 0:
                    m = alpha[b, last, 0] + e[0]
                    for j in range(1, K):
                        m = max(m, alpha[b, last, j] + e[j])
                    acc = zero
                    for j in range(K):
                        acc += math.exp(alpha[b, last, j] + e[j] - m)
                    z = m + math.log(acc)
                logZ[b] = z

    return k_crf_fb


@_register(
    "crf_grad",
    lambda d: (_a(d, 3), _a(d, 3), f64_1, _a(d, 3), i64_2, i64_1, i64_1, _a(d, 2), _a(d, 1), _a(d, 1),
               _a(d, 3), _a(d, 3), _a(d, 1), _ft(d)),
)
def make_crf_grad(dtype, tile, block):
    zero = _ftype(dtype)(0)

    def k_crf_grad(dE, rowA, rowloss, E, y, starts, lengths, A, s, e, alpha, beta, logZ, inv_n):
        # block b: every dE[b] element (0 at padding), every rowA[b] element, rowloss[b];
        # reads only what crf_fb wrote, so no barrier
        B = E.shape[0]
        T = E.shape[1]
        K = E.shape[2]
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        w = inv_n
        for b in range(cuda.blockIdx.x, B, cuda.gridDim.x):
            st = starts[b]
            n = lengths[b]
            z = logZ[b]
            for q in range(tid, T * K, nt):
                t = q // K
                j = q % K
                g = zero
                if t >= st and t < st + n:
                    g = math.exp(alpha[b, t, j] + beta[b, t, j] - z) * w
                    if y[b, t] == j:
                        g -= w
                dE[b, t, j] = g
            for q in range(tid, K * K, nt):
                i = q // K
                j = q % K
                acc = zero
                for t in range(st + 1, st + n):
                    g = math.exp(alpha[b, t - 1, i] + A[i, j] + E[b, t, j] + beta[b, t, j] - z) * w
                    if y[b, t - 1] == i and y[b, t] == j:
                        g -= w
                    acc += g
                rowA[b, i, j] = acc
            if tid == 0:
                r = 0.0
                if n > 0:
                    gold = s[y[b, st]] + e[y[b, st + n - 1]]
                    for t in range(st, st + n):
                        gold += E[b, t, y[b, t]]
                    for t in range(st + 1, st + n):
                        gold += A[y[b, t - 1], y[b, t]]
                    r = z - gold
                rowloss[b] = r

    return k_crf_grad


@_register("crf_reduce", lambda d: (_a(d, 2), _a(d, 1), _a(d, 1), _a(d, 3), _a(d, 3), i64_1, i64_1))
def make_crf_reduce(dtype, tile, block):
    zero = _ftype(dtype)(0)

    def k_crf_reduce(dA, ds, de, rowA, dE, starts, lengths):
        # thread q: one of the K*K + 2K weight gradients, summed over the rows in order
        # and added to the buffer (the ops accumulate)
        B = dE.shape[0]
        K = dE.shape[2]
        for q in range(cuda.grid(1), K * K + 2 * K, cuda.gridsize(1)):
            acc = zero
            if q < K * K:
                i = q // K
                j = q % K
                for b in range(B):
                    acc += rowA[b, i, j]
                dA[i, j] += acc
            else:
                j = (q - K * K) % K
                first = q < K * K + K
                for b in range(B):
                    if lengths[b] > 0:
                        t = starts[b] if first else starts[b] + lengths[b] - 1
                        acc += dE[b, t, j]
                if first:
                    ds[j] += acc
                else:
                    de[j] += acc

    return k_crf_reduce


@_register("crf_marg", lambda d: (_a(d, 3), _a(d, 3), _a(d, 3), _a(d, 1), i64_1, i64_1))
def make_crf_marg(dtype, tile, block):
    zero = _ftype(dtype)(0)

    def k_crf_marg(P, alpha, beta, logZ, starts, lengths):
        # thread (b, t, j): P = exp(alpha + beta - logZ) at real steps, 0 at padding
        B = P.shape[0]
        T = P.shape[1]
        K = P.shape[2]
        for q in range(cuda.grid(1), B * T * K, cuda.gridsize(1)):
            j = q % K
            b = q // (T * K)
            t = (q // K) % T
            p = zero
            if t >= starts[b] and t < starts[b] + lengths[b]:
                p = math.exp(alpha[b, t, j] + beta[b, t, j] - logZ[b])
            P[b, t, j] = p

    return k_crf_marg


@_register(
    "crf_viterbi",
    lambda d: (_a(d, 3), i64_1, i64_1, _a(d, 2), _a(d, 1), _a(d, 1), _a(d, 3), i64_3, i64_2, _a(d, 1)),
)
def make_crf_viterbi(dtype, tile, block):
    zero = _ftype(dtype)(0)

    def k_crf_viterbi(E, starts, lengths, A, s, e, delta, back, paths, scores):
        # block b: the max-product recursion over row b's steps (ties to the lowest tag,
        # as np.argmax), then thread 0 backtracks; the other threads zero the padding
        B = E.shape[0]
        T = E.shape[1]
        K = E.shape[2]
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        for b in range(cuda.blockIdx.x, B, cuda.gridDim.x):
            st = starts[b]
            n = lengths[b]
            for t in range(tid, T, nt):
                if t < st or t >= st + n:
                    paths[b, t] = 0
            for j in range(tid, K, nt):
                if n > 0:
                    delta[b, st, j] = s[j] + E[b, st, j]
            cuda.syncthreads()
            for t in range(st + 1, st + n):
                for j in range(tid, K, nt):
                    best = delta[b, t - 1, 0] + A[0, j]
                    arg = 0
                    for i in range(1, K):
                        v = delta[b, t - 1, i] + A[i, j]
                        if v > best:
                            best = v
                            arg = i
                    back[b, t, j] = arg
                    delta[b, t, j] = best + E[b, t, j]
                cuda.syncthreads()
            if tid == 0:
                top = zero
                if n > 0:
                    last = st + n - 1
                    tag = 0
                    top = delta[b, last, 0] + e[0]
                    for j in range(1, K):
                        v = delta[b, last, j] + e[j]
                        if v > top:
                            top = v
                            tag = j
                    paths[b, last] = tag
                    for t in range(last, st, -1):
                        tag = back[b, t, tag]
                        paths[b, t - 1] = tag
                scores[b] = top

    return k_crf_viterbi
