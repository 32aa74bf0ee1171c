"""The single-process side of tagger.distributed (the MPI side: tests/cluster/test_mpi.py)."""
import numpy as np
import pytest

from tagger import distributed as dist
from tagger.errors import TaggerError


@pytest.mark.parametrize("n, size", [(0, 2), (1, 4), (7, 2), (32, 3), (33, 8)])
def test_shares_are_disjoint_and_cover_the_batch(n, size):
    shares = [dist.share(n, r, size) for r in range(size)]
    joined = np.sort(np.concatenate(shares))
    assert np.array_equal(joined, np.arange(n))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_sum_rows_equals_the_dense_sum():
    rng = np.random.default_rng(0)
    V, E, R = 50, 3, 3
    dense = np.zeros((R, V, E), np.float32)
    rows = []
    for r in range(R):
        rows.append(np.sort(rng.choice(np.arange(1, V), size=rng.integers(0, 12), replace=False)))
        dense[r, rows[-1]] = rng.normal(size=(len(rows[-1]), E))
    for r in range(R):  # what each rank computes from the allgathered rows and values
        grad = dense[r].copy()
        union = dist.sum_rows(grad, rows[r], np.concatenate(rows), np.concatenate([dense[q, rows[q]] for q in range(R)]),
                              np.array([len(x) for x in rows]))
        np.testing.assert_allclose(grad, dense.sum(0), rtol=1e-6)
        assert np.array_equal(union, np.unique(np.concatenate(rows)))


def test_serial_world_is_the_identity():
    w = dist.world({})
    assert (w.rank, w.size, w.is_root, w.comm) == (0, 1, True, None)
    g = np.arange(6, dtype=np.float32).reshape(3, 2)
    dist.allreduce_dense(w, [g])
    assert np.array_equal(g, np.arange(6).reshape(3, 2))
    assert np.array_equal(dist.exchange_rows(w, g, [2, 0]), [2, 0])
    assert dist.global_sum(w, 17) == 17
    assert dist.root_only(w, lambda a: a + 1, 41) == 42


def test_root_only_reraises_on_the_root():
    w = dist.World(None)

    def fail():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        dist.root_only(w, fail)


def test_checksum_is_bitwise():
    a = [np.ones((2, 3), np.float32), np.zeros(4, np.float32)]
    b = [x.copy() for x in a]
    assert dist.weights_checksum(a) == dist.weights_checksum(b)
    b[1][2] = np.float32(1e-30)
    assert dist.weights_checksum(a) != dist.weights_checksum(b)
    assert dist.weights_checksum([a[0].astype(np.float64)]) != dist.weights_checksum([a[0]])
    assert dist.check_weights(dist.World(None), a) == dist.weights_checksum(a)


def test_wrong_srun_plugin_is_refused():
    """srun with a wrong --mpi plugin starts N worlds of size 1: refuse, naming the fix."""
    with pytest.raises(TaggerError) as excinfo:
        dist.check_world(dist.World(None), {"SLURM_STEP_NUM_TASKS": "4"})
    msg = str(excinfo.value)
    assert "\n" not in msg and "4 tasks" in msg and "size 1" in msg and "--mpi=pmi2" in msg
    dist.check_world(dist.World(None), {"SLURM_STEP_NUM_TASKS": "1"})


def test_launcher_detection_without_importing_mpi():
    assert not dist.launched_by_mpi({"SLURM_JOB_ID": "3"})
    assert dist.launched_by_mpi({"PMI_SIZE": "2"})
    assert dist.launched_by_mpi({"OMPI_COMM_WORLD_SIZE": "2"})


def test_share_batch_splits_a_padded_batch_into_its_rows():
    from tests.test_models import sentences, tiny_model

    model = tiny_model(crf=False, ops="reference")
    batch = next(iter(model.batches(sentences(9, seed=1), 9)))
    parts = [dist.share_batch(batch, r, 3) for r in range(3)]
    assert sorted(np.concatenate([p.index for p in parts]).tolist()) == sorted(batch.index.tolist())
    rows = {int(i): (batch.ids[k, : batch.lengths[k]].tolist(), batch.labels[k, : batch.lengths[k]].tolist())
            for k, i in enumerate(batch.index)}
    for p in parts:
        assert p.ids.shape[1] == p.lengths.max()  # padded to its own longest row
        for k, i in enumerate(p.index):
            assert (p.ids[k, : p.lengths[k]].tolist(), p.labels[k, : p.lengths[k]].tolist()) == rows[int(i)]
    assert sum(dist.loss_count(p) for p in parts) == dist.loss_count(batch) == batch.n_tokens


def test_data_parallel_in_one_process_is_the_model():
    from tests.test_models import texts, tiny_classifier

    a, b = tiny_classifier("last", ops="reference"), tiny_classifier("last", ops="reference")
    batch = next(iter(a.batches(texts(6), 6)))
    assert dist.loss_count(batch) == 6  # one label per text: the mean is over sentences
    parallel = dist.DataParallel(b, dist.World(None))
    assert parallel.train_step(batch) == a.train_step(batch)
    assert parallel.labels is b.labels  # everything else passes through
    for la, lb in zip(a.network.leaves(), b.network.leaves()):
        for ga, gb in zip(la.grads, lb.grads):
            assert np.array_equal(ga, gb)


class _TwoRanks:
    """A World of two ranks whose allgather returns the given per-rank step times."""

    comm, size = object(), 2

    def __init__(self, every):
        self._every = every

    def allgather(self, value):
        return self._every


def _steps(compute, exchange, wall=0.020):
    return {"compute": compute, "exchange": exchange, "dense": [x / 2 for x in exchange],
            "rows": [x / 2 for x in exchange], "wall": [wall] * len(compute)}


def test_timing_summary_separates_waiting_and_never_makes_it_negative():
    from tagger.distributed import StepTimes, timing_summary

    # rank 0 computes longer in each step; rank 1 waits for it at the exchange (step 1: 3 ms
    # beyond rank 0's 1 ms), or its exchange is the shorter (step 2: rank 0 was descheduled
    # inside its own, 2 ms against 1): that is no waiting, not -1 ms
    slow, fast = _steps([0.010, 0.010], [0.001, 0.002]), _steps([0.006, 0.008], [0.004, 0.001])
    summary = timing_summary(_TwoRanks([slow, fast]), StepTimes())
    assert summary["ranks"] == 2 and summary["steps"] == 2
    assert summary["communication_ms"] == 1.5  # the slowest rank's exchange: median of 1 and 2 ms
    assert summary["waiting_ms"] == 0.75  # per step the mean over ranks, (0 + 3) / 2 and (0 + 0) / 2; their median
    assert summary["waiting_mean_ms"] == 0.75
    assert summary["compute_ms"] == 8.5 and summary["step_ms"] == 20.0
