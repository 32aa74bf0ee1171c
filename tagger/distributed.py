"""Data-parallel training over MPI ranks: a thin layer over mpi4py (imported lazily).

Legend
    R          ranks in the world (COMM_WORLD.size); r this rank, rank 0 the root
    B          sentences in one global batch; rank r takes share(B, r, R), disjoint, covering
    V, E       embedding rows and width; rows_r (n_r,) int64, the sorted unique rows rank r touched
    P          number of dense gradient values (every trainable slot but the embeddings), float32

Every rank iterates the same global batches (same seed); DataParallel(model, world) is the
`model` train_loop is handed: its train_step runs forward/backward on this rank's rows of
the batch (a BatchShare, whose rows training.epoch_batches padded alone; or share_batch of
a whole padded batch), rescales the gradients from the share's mean loss to a share of
the batch's mean loss (local count / global count: tokens when labels are per token,
sentences otherwise), and sums them over the ranks, so every rank applies the whole
batch's gradient. allreduce_gradients sums:
    dense slots  Allreduce(SUM) in place, the small ones packed into one buffer first
    embeddings   only the touched rows travel: allgather n_r, Allgatherv rows_r and their
                 (n_r, E) values, then every rank adds them up in rank order (the same
                 arithmetic everywhere, so the weights stay bitwise identical)
A batch touches a few hundred of ~20k embedding rows, so this exchange is far smaller
than a dense Allreduce of the (V, E) table. check_weights compares a sha256 of every
rank's weights (a mismatch names the ranks); root_only runs a write on rank 0 alone and
re-raises its error on every rank, so no rank waits forever for a crashed root.

MPI comes from PyPI (`pip install tagger[mpi]`: mpi4py and the MPICH wheel): run with
`mpiexec -n 4 tagger train ...` from the same environment, or under Slurm
`srun --mpi=pmi2 -n 4 ...` (pmi2 is the plugin for pip's MPICH; with a wrong plugin srun
silently starts 4 worlds of size 1, which check_world refuses).
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from tagger.errors import TaggerError

# arrays with fewer values are packed into one Allreduce; larger ones are reduced in place,
# since copying 2.2 M floats in and out cost more than the reduction itself (measured: 5.9
# ms packed vs about 1 ms in place on 2 ranks here)
PACK_BELOW = 1 << 15
# environment variables that MPI launchers set (hydra/srun pmi2: PMI_*, Open MPI, PMIx)
_LAUNCHER_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")


class World:
    """This process's view of the ranks: rank, size and the collectives tagger needs.

    World(None) is the single-process world (rank 0 of 1), where every collective is the
    identity, so training code calls the same functions with or without MPI.
    """

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allgather(self, value) -> list:
        return [value] if self.comm is None else self.comm.allgather(value)

    def bcast(self, value):
        return value if self.comm is None else self.comm.bcast(value, root=0)

    def barrier(self) -> None:
        if self.comm is not None:
            self.comm.Barrier()


def launched_by_mpi(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return any(env.get(v) for v in _LAUNCHER_VARS)


def world(environ: Mapping[str, str] | None = None) -> World:
    """The MPI world when launched by mpiexec/srun, else the single-process one (no import)."""
    env = os.environ if environ is None else environ
    if not launched_by_mpi(env):
        check_world(World(None), env)
        return World(None)
    try:
        from mpi4py import MPI
    except ImportError:
        raise TaggerError(
            "launched by an MPI launcher but mpi4py is missing; pip install 'tagger[mpi]' in this environment"
        ) from None
    w = World(MPI.COMM_WORLD)
    check_world(w, env)
    return w


def check_world(w: World, environ: Mapping[str, str] | None = None) -> None:
    """Refuse an srun step whose task count differs from the MPI world size (wrong --mpi plugin)."""
    env = os.environ if environ is None else environ
    tasks = env.get("SLURM_STEP_NUM_TASKS", "")
    if tasks.isdigit() and int(tasks) > 1 and int(tasks) != w.size:
        raise TaggerError(
            f"srun started {tasks} tasks but MPI rank {w.rank} sees an MPI world of size {w.size} (task {env.get('SLURM_PROCID', '?')}): "
            "wrong MPI plugin; with pip's MPICH use srun --mpi=pmi2"
        )


# --------------------------------------------------------------------------- batches
def share(n: int, rank: int, size: int) -> np.ndarray:
    """Indices of this rank's share of a global batch of n items: every size-th one.

    Strided, so that a batch sorted by length gives every rank about the same tokens."""
    return np.arange(rank, n, size, dtype=np.int64)


def share_batch(batch, rank: int, size: int):
    """This rank's rows of a PaddedBatch (strided), padded again to their own longest row."""
    from tagger.data.batching import pad_batch

    rows = share(batch.size, rank, size)
    ids = [batch.ids[r, : batch.lengths[r]] for r in rows]
    labels = None
    if batch.labels is not None:
        per_token = batch.labels.ndim == 2
        labels = [batch.labels[r, : batch.lengths[r]] if per_token else batch.labels[r] for r in rows]
    chars = None if batch.chars is None else [batch.chars[r, : batch.lengths[r]] for r in rows]
    return pad_batch(ids, labels, batch.index[rows], chars)


@dataclass
class BatchShare:
    """This rank's rows of a global batch (training.epoch_batches pads only them under MPI),
    with what train_loop and the loss average read of the whole batch."""

    mine: object  # PaddedBatch: the rows share(B, rank, R), padded to their own longest
    n_tokens: int  # the global batch's real tokens
    loss_count: int  # what its mean loss is averaged over (loss_count of the global batch)


def loss_count(batch) -> int:
    """What a batch's mean loss is averaged over: real tokens (per-token labels) or sentences."""
    per_token = batch.labels is not None and batch.labels.ndim == 2
    return batch.n_tokens if per_token else batch.size


class DataParallel:
    """Stands in for `model` on every rank (train_loop, evaluation, saving pass through):
    train_step(batch) computes this rank's share and leaves the whole batch's gradient,
    summed over the ranks, in the network; it returns the whole batch's mean loss."""

    def __init__(self, model, w: World):
        self.model = model
        self.world = w
        self.times = StepTimes()

    def __getattr__(self, name):
        return getattr(self.model, name)

    def train_step(self, batch) -> float:
        w = self.world
        if w.size == 1:
            return self.model.train_step(batch)
        start = time.perf_counter()
        self.times.started(start)
        if isinstance(batch, BatchShare):
            mine, total = batch.mine, batch.loss_count
        else:
            mine, total = share_batch(batch, w.rank, w.size), loss_count(batch)
        local = loss_count(mine)
        loss = 0.0
        if mine.size:  # a batch smaller than the world leaves some ranks without rows
            loss = self.model.train_step(mine)
            if local != total:
                _scale_gradients(self.model.network, local / total)
        computed = time.perf_counter()
        split = allreduce_gradients(w, self.model.network)
        mean = global_sum(w, loss * local) / max(total, 1)
        self.times.add(compute=computed - start, exchange=time.perf_counter() - computed, **split)
        return mean


class StepTimes:
    """Per-step seconds on this rank: compute (forward + backward of the share), exchange
    (every collective of the step: dense Allreduce, embedding rows, the loss sum), within it
    the dense Allreduce and the embedding-row exchange, and the whole step (one
    train_step's start to the next's: the update, clipping and logging too). The exchange
    includes waiting for a slower rank; timing_summary separates the two."""

    FIELDS = ("compute", "exchange", "dense", "rows", "wall")

    def __init__(self):
        self.steps: dict[str, list[float]] = {k: [] for k in self.FIELDS}
        self._last: float | None = None

    def started(self, now: float) -> None:
        if self._last is not None:
            self.steps["wall"].append(now - self._last)
        self._last = now

    def add(self, **seconds: float) -> None:
        for k, v in seconds.items():
            self.steps[k].append(v)


def timing_summary(w: World, times: StepTimes) -> dict | None:
    """Every rank's step times, gathered (a collective: every rank calls it), as the median
    over steps (evaluation steps are rare and long) of the mean over ranks, in ms. In each
    step the rank that computed longest waits for nobody at the exchange, so its exchange
    time is the communication itself; what the others spent beyond it is waiting for the
    slowest rank (imbalance, noise), and never less than nothing: a rank whose exchange was
    the shorter (the slowest one was descheduled inside its own) waited 0, not a negative
    time (seen on a loaded machine: a median of -0.4 ms). Shares are of the whole step.
    None outside MPI."""
    if w.comm is None:
        return None
    every = w.allgather(times.steps)
    steps = min(len(t[k]) for t in every for k in StepTimes.FIELDS)  # wall lags by one
    if steps < 2:
        return None
    per_rank = {k: np.array([t[k][:steps] for t in every]) for k in StepTimes.FIELDS}  # (R, steps)
    slowest = per_rank["compute"].argmax(axis=0)
    comm = per_rank["exchange"][slowest, np.arange(steps)]
    waiting = np.maximum(per_rank["exchange"] - comm[None, :], 0.0)
    rows = {**per_rank, "communication": comm[None, :], "waiting": waiting}
    ms = {k: round(float(np.median(v.mean(axis=0))) * 1e3, 3) for k, v in rows.items()}
    step = max(ms["wall"], 1e-9)
    return {
        "ranks": w.size, "steps": steps, "step_ms": ms["wall"],
        # the mean too: a step waits for the slowest rank, so rare slow steps (a rank
        # descheduled) cost the throughput more than the median shows
        "step_mean_ms": round(float(rows["wall"].mean()) * 1e3, 3),
        "waiting_mean_ms": round(float(rows["waiting"].mean()) * 1e3, 3),
        "compute_mean_ms": round(float(per_rank["compute"].max(axis=0).mean()) * 1e3, 3),  # the slowest rank's
        "compute_ms": ms["compute"],
        "communication_ms": ms["communication"], "waiting_ms": ms["waiting"],
        "dense_allreduce_ms": ms["dense"], "embedding_rows_ms": ms["rows"],
        "communication_share": round(ms["communication"] / step, 4), "waiting_share": round(ms["waiting"] / step, 4),
    }


def _scale_gradients(network, factor: float) -> None:
    from tagger.optim import slots

    for layer, k in slots(network):
        layer.ops.scale_(layer.grads[k], factor, layer.grad_rows[k])


def global_sum(w: World, value: float | int):
    """The sum over ranks of a number (e.g. the tokens of a batch, the loss normaliser)."""
    if w.comm is None:
        return value
    return w.comm.allreduce(value)


def global_max(w: World, value: int | float):
    """The largest value over ranks (e.g. a stop signal any rank received)."""
    if w.comm is None:
        return value
    from mpi4py import MPI

    return w.comm.allreduce(value, op=MPI.MAX)


# --------------------------------------------------------------------------- gradients
def _is_sparse(layer, k: int) -> bool:
    # decided by the layer type, never by this batch's grad_rows, so that every rank
    # makes the same collective calls even when its share touched no embedding row
    from tagger.layers.core import Embedding

    return isinstance(layer, Embedding) and k == 0


def _host(array, where: str) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise TaggerError(f"{where}: distributed training needs host arrays; train with --device cpu")
    return array


def allreduce_gradients(w: World, model) -> dict[str, float]:
    """Sum every trainable gradient over the ranks, in place (embeddings as touched rows).
    Returns the seconds spent on the dense slots and on the embedding rows."""
    if w.comm is None:
        return {"dense": 0.0, "rows": 0.0}
    from tagger.optim import slots

    dense, sparse = [], []
    for layer, k in slots(model):
        (sparse if _is_sparse(layer, k) else dense).append((layer, k))
    start = time.perf_counter()
    allreduce_dense(w, [_host(layer.grads[k], f"{layer.name}.{layer.param_names[k]}") for layer, k in dense])
    middle = time.perf_counter()
    for layer, k in sparse:
        grad = _host(layer.grads[k], f"{layer.name}.{layer.param_names[k]}")
        layer.grad_rows[k] = exchange_rows(w, grad, layer.grad_rows[k])
    return {"dense": middle - start, "rows": time.perf_counter() - middle}


def allreduce_dense(w: World, grads: list[np.ndarray]) -> None:
    """Allreduce(SUM) in place: each large contiguous array on its own (no copy), the small
    ones packed into one (P_small,) buffer (one call's latency instead of many)."""
    if w.comm is None or not grads:
        return
    from mpi4py import MPI

    small = []
    for g in grads:  # the same order on every rank, so the calls match
        if g.size >= PACK_BELOW and g.flags.c_contiguous:
            w.comm.Allreduce(MPI.IN_PLACE, g, op=MPI.SUM)
        else:
            small.append(g)
    if not small:
        return
    flat = np.concatenate([g.reshape(-1) for g in small])
    w.comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
    offset = 0
    for g in small:
        g[...] = flat[offset : offset + g.size].reshape(g.shape)
        offset += g.size


def exchange_rows(w: World, grad: np.ndarray, rows) -> np.ndarray:
    """Sum a row-sparse (V, E) gradient over the ranks; returns the union of touched rows.

    rows: this rank's touched rows (None = none); grad's other rows must be zero."""
    rows = np.empty(0, np.int64) if rows is None else np.ascontiguousarray(rows, dtype=np.int64)
    if w.comm is None:
        return rows
    width = int(np.prod(grad.shape[1:], dtype=np.int64))
    counts = np.asarray(w.comm.allgather(len(rows)), dtype=np.int64)
    all_rows = np.empty(int(counts.sum()), np.int64)
    w.comm.Allgatherv(rows, [all_rows, counts])
    values = np.ascontiguousarray(grad[rows]).reshape(-1)
    all_values = np.empty(int(counts.sum()) * width, grad.dtype)
    w.comm.Allgatherv(values, [all_values, counts * width])
    return sum_rows(grad, rows, all_rows, all_values.reshape((-1,) + grad.shape[1:]), counts)


def sum_rows(grad: np.ndarray, rows: np.ndarray, all_rows: np.ndarray, all_values: np.ndarray,
             counts: np.ndarray) -> np.ndarray:
    """grad[rows of every rank] = their values summed in rank order; returns the union of rows.

    rows: this rank's (n_r,); all_rows (sum n,) and all_values (sum n, E) every rank's, in rank
    order; counts (R,) the n_r. Each rank's rows are unique, so `+=` with them is exact."""
    grad[rows] = 0
    offset = 0
    for c in counts:
        grad[all_rows[offset : offset + c]] += all_values[offset : offset + c]
        offset += int(c)
    return np.unique(all_rows)


# --------------------------------------------------------------------------- weights
def weights_checksum(arrays) -> str:
    """sha256 over the bytes, shapes and dtypes of a list of arrays (bitwise identity)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def check_weights(w: World, arrays) -> str:
    """Compare the weights' checksum across ranks; a mismatch raises naming the ranks."""
    mine = weights_checksum(arrays)
    sums = w.allgather(mine)
    odd = [r for r, s in enumerate(sums) if s != sums[0]]
    if odd:
        raise TaggerError(
            f"weights differ across ranks: rank(s) {', '.join(map(str, odd))} differ from rank 0 "
            f"({sums[odd[0]][:12]} vs {sums[0][:12]}); every rank must start from the same seed and checkpoint"
        )
    return mine


def root_only(w: World, fn: Callable, *args, **kwargs):
    """Run fn on rank 0 only (checkpoints, logs, models); its result or error reaches every rank."""
    outcome, error = None, None
    if w.is_root:
        try:
            outcome = ("ok", fn(*args, **kwargs))
        except BaseException as err:  # told to the other ranks first, then raised here as it was
            error = err
            outcome = ("error", str(err) if isinstance(err, TaggerError) else f"{type(err).__name__}: {err}")
    status, value = w.bcast(outcome)
    if error is not None:
        raise error
    if status == "error":
        raise TaggerError(f"rank 0 failed writing: {value}")
    return value
