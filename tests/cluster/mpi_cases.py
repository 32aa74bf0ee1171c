"""Cases for tagger.distributed, run by every rank of a real MPI world:

    mpiexec -n 2 python tests/cluster/mpi_cases.py [--expect-size 2] [--time]

Rank 0 prints one JSON line per case: {"case", "ok", "size", "error"?, ...}; the exit
status is 1 when any case failed on any rank. tests/cluster/test_mpi.py runs it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback

import numpy as np
from mpi4py import MPI

from tagger import distributed as dist
from tagger.errors import TaggerError

CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


@case
def world_size(w, args):
    assert MPI.COMM_WORLD.Get_size() == args.expect_size, (MPI.COMM_WORLD.Get_size(), args.expect_size)
    assert (w.rank, w.size) == (MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size())
    ranks = w.allgather(w.rank)
    assert ranks == list(range(args.expect_size)), ranks
    return {"ranks": ranks}


@case
def sparse_equals_dense(w, args):
    """The touched-rows exchange gives exactly what a dense Allreduce of the table gives."""
    V, E = 4000, 16  # 64000 values: reduced in place (PACK_BELOW), not packed
    assert V * E >= dist.PACK_BELOW
    rng = np.random.default_rng(100 + w.rank)
    rows = np.sort(rng.choice(np.arange(1, V), size=150 + 40 * w.rank, replace=False))
    grad = np.zeros((V, E), np.float32)
    grad[rows] = rng.normal(size=(len(rows), E)).astype(np.float32)
    dense = grad.copy()
    dist.allreduce_dense(w, [dense])
    union = dist.exchange_rows(w, grad, rows)
    assert np.array_equal(grad, dense), float(np.abs(grad - dense).max())
    expected = np.unique(np.concatenate(w.allgather(rows)))
    assert np.array_equal(union, expected)
    assert np.array_equal(np.flatnonzero(np.abs(dense).sum(1)), expected)
    # packed and in-place arrays in one call: every value is the sum over ranks of rank + 1
    arrays = [np.full(s, w.rank + 1, np.float32) for s in [(3, 5), (dist.PACK_BELOW,), (7,), (2, dist.PACK_BELOW)]]
    arrays.append(np.full((40, 30), w.rank + 1, np.float32)[:, ::2])  # not contiguous: packed
    dist.allreduce_dense(w, arrays)
    total = w.size * (w.size + 1) / 2
    assert all(np.all(a == total) for a in arrays), [float(a.min()) for a in arrays]
    return {"rows": int(len(union))}


def tiny_model():
    from tagger.layers import LSTM, Bidirectional, Dense, Embedding, Sequential

    return Sequential([Embedding(40, 6), Bidirectional(LSTM(5, return_sequences=True)), Dense(4)],
                      input_shape=(None,), seed=3, ops="reference", dtype=np.float64)


def batch_gradients(model, ids, lengths, target, scale):
    """Gradients of sum(scores * target) / scale over the real tokens of `ids`."""
    from tagger.optim import slots

    for layer, _ in slots(model):
        layer.zero_grad()
    T = int(lengths.max()) if len(lengths) else 1
    ids = ids[:, :T]
    scores, backprop = model.forward(ids, train=True)
    mask = (np.arange(T)[None, :] < lengths[:, None])[..., None]
    backprop(target[: len(ids), :T] * mask / scale)


@case
def data_parallel_step(w, args):
    """Shares + global normaliser + allreduce_gradients == the whole batch on one rank."""
    from tagger.optim import slots

    rng = np.random.default_rng(7)
    B, T = 9, 7
    lengths = rng.integers(1, T + 1, size=B)
    ids = np.where(np.arange(T)[None, :] < lengths[:, None], rng.integers(1, 40, size=(B, T)), 0)
    target = rng.normal(size=(B, T, 4))
    tokens = dist.global_sum(w, int(lengths[dist.share(B, w.rank, w.size)].sum()))
    assert tokens == lengths.sum()
    whole = tiny_model()
    batch_gradients(whole, ids, lengths, target, tokens)
    expected = [np.array(layer.grads[k]) for layer, k in slots(whole)]
    model = tiny_model()
    mine = dist.share(B, w.rank, w.size)
    batch_gradients(model, ids[mine], lengths[mine], target[mine], tokens)
    dist.allreduce_gradients(w, model)
    for (layer, k), exp in zip(slots(model), expected):
        np.testing.assert_allclose(layer.grads[k], exp, rtol=1e-9, atol=1e-12, err_msg=f"{layer.name}.{k}")
    emb = model.leaves()[0]
    assert np.array_equal(emb.grad_rows[0], np.unique(ids[ids > 0]))
    dist.check_weights(w, [np.asarray(g) for layer in model.leaves() for g in layer.grads])
    return {"slots": len(expected)}


def model_pairs():
    """(name, model builder, examples) for the three heads: softmax tags, CRF tags, a classifier."""
    from tests.test_models import sentences, texts, tiny_classifier, tiny_model

    ref = dict(ops="reference", dtype=np.float64)
    return [("tag", lambda: tiny_model(crf=False, **ref), sentences(11, seed=4)),
            ("crf", lambda: tiny_model(crf=True, **ref), sentences(11, seed=5)),
            ("classify", lambda: tiny_classifier("max", **ref), texts(11, seed=6))]


@case
def data_parallel_models(w, args):
    """DataParallel(model).train_step on 2 ranks == model.train_step on the whole batch,
    for every head (the per-token and per-sentence mean losses), plus a 1-row batch."""
    from tagger.optim import slots

    checked = []
    for name, build, examples in model_pairs():
        whole, parallel = build(), dist.DataParallel(build(), w)
        for size in (len(examples), 1):  # a batch of one row leaves rank 1 with nothing
            batch = next(iter(whole.batches(examples[:size], size)))
            for m in (whole, parallel.model):
                for layer, _ in slots(m.network):
                    layer.zero_grad()
            loss = whole.train_step(batch)
            got = parallel.train_step(batch)
            assert abs(got - loss) <= 1e-9 * max(1.0, abs(loss)), (name, size, got, loss)
            for (la, k), (lb, _) in zip(slots(whole.network), slots(parallel.model.network)):
                np.testing.assert_allclose(lb.grads[k], la.grads[k], rtol=1e-8, atol=1e-12,
                                           err_msg=f"{name} batch {size}: {la.name}.{la.param_names[k]}")
            checked.append(f"{name}/{size}")
    dist.check_weights(w, [g for layer, k in slots(parallel.model.network) for g in [layer.grads[k]]])
    return {"checked": checked}


@case
def checksum_mismatch(w, args):
    weights = [np.full((3, 4), 0.5, np.float32), np.arange(5, dtype=np.float32)]
    dist.check_weights(w, weights)
    if w.rank == w.size - 1:
        weights[1][3] = np.nextafter(np.float32(3), np.float32(4))
    try:
        dist.check_weights(w, weights)
    except TaggerError as err:
        msg = str(err)
        assert f"rank(s) {w.size - 1} differ from rank 0" in msg and "\n" not in msg, msg
        return {"message": msg}
    raise AssertionError("mismatch not detected")


@case
def root_only_writes(w, args):
    import os
    import tempfile

    folder = w.bcast(tempfile.mkdtemp() if w.is_root else None)
    path = os.path.join(folder, "written-by.txt")

    def write():
        with open(path, "a") as fh:
            fh.write(f"{w.rank}\n")
        return path

    assert dist.root_only(w, write) == path
    w.barrier()
    assert open(path).read() == "0\n"

    def fail():
        raise TaggerError("disk full")

    try:
        dist.root_only(w, fail)
    except TaggerError as err:
        assert "disk full" in str(err)
    else:
        raise AssertionError("rank 0's error did not reach every rank")
    return {}


@case
def timing(w, args):
    """Print, not assert: a dense Allreduce of 2.2M float32 vs a batch's touched embedding rows."""
    if not args.time:
        return {"skipped_measurement": True}
    flat = np.ones(2_200_000, np.float32)
    V, E, touched = 20000, 100, 600  # a 32-sentence batch touches a few hundred of 20k rows
    grad = np.zeros((V, E), np.float32)
    rng = np.random.default_rng(w.rank)
    rows = np.sort(rng.choice(np.arange(1, V), size=touched, replace=False))

    def best(fn, reps=15):
        fn()  # warm up: the first call of a size sets up MPICH's buffers
        times = []
        for _ in range(reps):
            w.barrier()
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times) * 1e3, float(np.median(times)) * 1e3

    dense = best(lambda: dist.allreduce_dense(w, [flat]))
    # a tagger's dense slots: BiLSTM kernels, recurrent kernels, biases, the output layer
    shapes = [(100, 512), (128, 512), (512,)] * 2 + [(256, 18), (18,)]
    slots = [np.ones(s, np.float32) for s in shapes]
    mixed = best(lambda: dist.allreduce_dense(w, slots))
    table = best(lambda: dist.allreduce_dense(w, [grad]))

    def sparse_step():
        grad[rows] = 1.0
        dist.exchange_rows(w, grad, rows)

    sparse = best(sparse_step)
    return {"dense_2.2M_ms": dense, "dense_embedding_20000x100_ms": table, "dense_bilstm_slots_240k_ms": mixed,
            f"sparse_{touched}_rows_x100_ms": sparse, "library": MPI.Get_library_version().splitlines()[0][:40]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--expect-size", type=int, required=True)
    parser.add_argument("--time", action="store_true")
    parser.add_argument("cases", nargs="*", default=list(CASES))
    args = parser.parse_args()
    w = dist.world()
    failed = False
    for name in args.cases:
        try:
            info, error = CASES[name](w, args), None
        except Exception:
            info, error = {}, traceback.format_exc(limit=3)
        errors = w.allgather(error)
        bad = {r: e for r, e in enumerate(errors) if e}
        failed |= bool(bad)
        if w.is_root:
            print(json.dumps({"case": name, "ok": not bad, "size": w.size, **info,
                              **({"errors": bad} if bad else {})}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
