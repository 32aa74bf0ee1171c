"""tagger.threads: the cores a process may use, the thread plan, and its effect on the layers."""
import numpy as np
import pytest

from tagger import threads
from tagger.errors import TaggerError
from tagger.layers import LSTM, Bidirectional, Dense, Embedding, Sequential

V2 = "0::/job\n"


def fake_cgroup(root, rel="job", cpu_max=None, v1=None):
    d = root / rel
    d.mkdir(parents=True, exist_ok=True)
    if cpu_max is not None:
        (d / "cpu.max").write_text(cpu_max + "\n")
    if v1 is not None:
        (d / "cpu.cfs_quota_us").write_text(f"{v1[0]}\n")
        (d / "cpu.cfs_period_us").write_text(f"{v1[1]}\n")
    return root


def test_affinity_alone_counts_the_allowed_cpus(tmp_path):
    assert threads.available_cores({0, 3, 5}, tmp_path, "", {}) == (3, "CPU affinity")


def test_cgroup_v2_quota_limits_and_rounds_down(tmp_path):
    root = fake_cgroup(tmp_path, cpu_max="250000 100000")  # 2.5 cores of quota
    assert threads.available_cores(set(range(8)), root, V2, {}) == (2, "cgroup CPU quota")
    root = fake_cgroup(tmp_path, cpu_max="50000 100000")  # half a core still runs one thread
    assert threads.available_cores(set(range(8)), root, V2, {})[0] == 1


def test_cgroup_without_quota_and_an_ancestor_quota(tmp_path):
    root = fake_cgroup(tmp_path, cpu_max="max 100000")
    assert threads.available_cores(set(range(4)), root, V2, {}) == (4, "CPU affinity")
    (tmp_path / "cpu.max").write_text("300000 100000\n")  # the parent's limit binds the child
    assert threads.available_cores(set(range(8)), root, V2, {}) == (3, "cgroup CPU quota")


def test_cgroup_v1_quota(tmp_path):
    root = tmp_path / "v1"
    fake_cgroup(root, rel="cpu,cpuacct/job", v1=(200000, 100000))
    assert threads.available_cores(set(range(8)), root, "4:cpu,cpuacct:/job\n", {}) == (2, "cgroup CPU quota")
    fake_cgroup(root, rel="cpu,cpuacct/job", v1=(-1, 100000))
    assert threads.available_cores(set(range(8)), root, "4:cpu,cpuacct:/job\n", {})[0] == 8


def test_damaged_cgroup_file_limits_nothing(tmp_path):
    root = fake_cgroup(tmp_path, cpu_max="garbage")
    assert threads.available_cores(set(range(4)), root, V2, {})[0] == 4


def test_slurm_cpus_per_task_and_the_smallest_wins(tmp_path):
    root = fake_cgroup(tmp_path, cpu_max="600000 100000")
    env = {"SLURM_CPUS_PER_TASK": "2"}
    assert threads.available_cores(set(range(8)), root, V2, env) == (2, "SLURM_CPUS_PER_TASK")
    assert threads.available_cores({0}, root, V2, env) == (1, "CPU affinity")
    assert threads.available_cores(set(range(8)), root, V2, {"SLURM_CPUS_PER_TASK": "x"})[0] == 6


def test_unbound_mpi_ranks_share_the_node(tmp_path):
    cpus = set(range(4))
    got = threads.available_cores(cpus, tmp_path, "", {"MPI_LOCALNRANKS": "2"}, total_cpus=4)
    assert got == (2, "4 CPUs shared by 2 MPI ranks")
    assert threads.available_cores(cpus, tmp_path, "", {"OMPI_COMM_WORLD_LOCAL_SIZE": "8"}, total_cpus=4)[0] == 1
    # ranks bound to their own cores (affinity below the machine's count) keep their mask
    assert threads.available_cores({0, 1}, tmp_path, "", {"MPI_LOCALNRANKS": "2"}, total_cpus=4)[0] == 2


def test_the_real_process_has_at_least_one_core():
    n, source = threads.available_cores()
    assert n >= 1 and source


def test_plan_caps_oversubscription_and_says_so():
    plan, warning = threads.plan_threads(8, 2, "CPU affinity")
    assert (plan.threads, plan.pair, plan.blas, plan.adaptive) == (2, 2, 1, True)
    assert "--threads 8" in warning and "2 core" in warning
    plan, warning = threads.plan_threads(None, 1)
    assert (plan.threads, plan.pair, plan.blas, warning) == (1, 1, 1, None)
    assert threads.plan_threads(1, 16)[0].pair == 1 and not threads.plan_threads(1, 16)[0].adaptive


@pytest.mark.parametrize("bad", [0, -3, 1.5, True])
def test_plan_refuses_a_bad_thread_count(bad):
    with pytest.raises(TaggerError, match="--threads"):
        threads.plan_threads(bad, 4)


def test_configure_limits_blas_and_sets_the_pair_threads(capsys):
    from threadpoolctl import threadpool_info

    plan = threads.configure(10_000)
    assert "warning: --threads 10000" in capsys.readouterr().err
    assert threads.current_plan() == plan and threads.pair_threads() == plan.pair
    assert all(pool["num_threads"] == 1 for pool in threadpool_info() if pool["user_api"] == "blas")
    threads.configure(1)
    assert threads.pair_threads() == 1


def _bilstm_step(seed=3):
    """Outputs and gradients of one training step through Embedding -> BiLSTM -> Dense."""
    model = Sequential([Embedding(50, 16), Bidirectional(LSTM(24, return_sequences=True)), Dense(5)],
                       seed=seed, ops="cpu", dtype=np.float32)
    ids = np.random.default_rng(seed).integers(1, 50, size=(9, 13))
    ids[2, 7:] = 0
    ids[5, 3:] = 0
    y, backprop = model.forward(ids, train=True)
    backprop(np.cos(np.asarray(y)))
    grads = {(i, k): np.array(g) for i, layer in enumerate(model.layers) for k, g in enumerate(layer.grads)}
    return np.array(y), grads


def _at_one_and_two_threads(monkeypatch, run):
    """(run() at a thread plan of 1, run() at a plan of 2 threads, even on one core)."""
    threads.configure(1)
    one = run()
    monkeypatch.setattr(threads, "_PLAN", threads.ThreadPlan(2, 2, 1, 2, "test"))
    two = run()
    threads.configure(1)
    return one, two


def test_a_pair_run_is_bit_identical_with_one_and_two_threads(monkeypatch):
    from tagger.ops import cpu

    calls = []
    monkeypatch.setattr(cpu, "_submit", lambda n, _real=cpu._submit: calls.append(cpu.num_threads()) or _real(n))
    (y1, g1), (y2, g2) = _at_one_and_two_threads(monkeypatch, _bilstm_step)
    assert 1 in calls and 2 in calls  # both runs really went through the pair ops
    np.testing.assert_array_equal(y1, y2)
    assert g1.keys() == g2.keys() and g1
    for name in g1:
        np.testing.assert_array_equal(g1[name], g2[name], err_msg=str(name))


def test_a_large_dense_forward_is_bit_identical_with_one_and_two_threads(monkeypatch):
    """cpu.dense_forward splits a GEMM of SPLIT_ROWS rows or more in two halves, run in two
    threads at 2: the split is by shape, so both thread counts give the same bits."""
    from tagger.ops import cpu, reference

    rng = np.random.default_rng(0)
    X = rng.normal(size=(9, cpu.SPLIT_ROWS // 9 + 5, 64)).astype(np.float32)  # just above SPLIT_ROWS rows
    W, b = rng.normal(size=(64, 7)).astype(np.float32), rng.normal(size=7).astype(np.float32)
    calls = []
    monkeypatch.setattr(cpu, "_submit", lambda n, _real=cpu._submit: calls.append(cpu.num_threads()) or _real(n))
    one, two = _at_one_and_two_threads(monkeypatch, lambda: cpu.dense_forward(X, W, b))
    assert calls == [1, 2]
    np.testing.assert_array_equal(one, two)
    assert one.shape == (9, X.shape[1], 7)
    np.testing.assert_allclose(one, reference.dense_forward(X.astype(np.float64), W.astype(np.float64),
                                                            b.astype(np.float64)), rtol=1e-4, atol=1e-4)


def test_the_optimizer_updates_in_two_threads_with_the_same_bits(monkeypatch):
    """At a thread plan of 2 the CPU backend's Adam and SGD updates run in two halves at
    once (optim._update_all); three training steps give the weights of one thread."""
    from tagger.ops import cpu
    from tagger.optim import SGD, Adam

    def train(opt):
        model = Sequential([Embedding(50, 16), Bidirectional(LSTM(24, return_sequences=True)), Dense(5)],
                           seed=3, ops="cpu", dtype=np.float32)
        rng = np.random.default_rng(3)
        for _ in range(3):
            ids = rng.integers(1, 50, size=(9, 13))
            ids[2, 7:] = 0
            y, backprop = model.forward(ids, train=True)
            backprop(np.cos(np.asarray(y)))
            opt.step(model)
        return [np.array(w) for w in model.get_weights()]

    submits = []
    real = cpu.concurrent_submit
    monkeypatch.setattr(cpu, "concurrent_submit", lambda: submits.append(real()) or submits[-1])
    for make in (lambda: Adam(lr=1e-2), lambda: SGD(lr=0.1)):
        one, two = _at_one_and_two_threads(monkeypatch, lambda: train(make()))
        assert len(one) == len(two) and one
        for a, b in zip(one, two):
            np.testing.assert_array_equal(a, b)
    assert None in submits and any(s is not None for s in submits)  # both paths ran


def test_the_governor_pauses_the_second_thread_while_it_does_not_pay():
    from tagger.ops import cpu

    gov = cpu.PairGovernor()
    gov.WINDOW, gov.PAUSE, gov.MAX_PAUSE = 4, 3, 10

    def window(cpu_per_wall):
        for _ in range(gov.WINDOW):
            assert gov.submit() is not None  # measured: in two threads
            gov.record(0.010, 0.010 * cpu_per_wall)

    def paused_calls():
        n = 0
        while gov.submit() is None:  # in the calling thread
            n += 1
        gov.record(0.010, 0.010)  # that call was a window's first
        return n

    window(1.0)  # the threads took turns: as much CPU time as wall time
    assert (gov.windows, gov.pauses, gov.last_gain) == (1, 1, 1.0)
    assert paused_calls() == 3
    rest = gov.WINDOW - 1  # paused_calls' last submit began the next window
    for _ in range(rest):  # no gain again: a pause twice as long, then capped
        gov.submit()
        gov.record(0.010, 0.011)
    assert paused_calls() == 6
    for _ in range(rest):
        gov.submit()
        gov.record(0.010, 0.011)
    assert paused_calls() == 10 and gov.pauses == 3
    for _ in range(rest):  # both threads ran at once: no more pauses
        gov.submit()
        gov.record(0.010, 0.019)
    assert gov.windows == 4 and gov.pauses == 3 and gov.last_gain == pytest.approx((0.010 + 3 * 0.019) / 0.040)
    window(1.9)
    assert gov.pauses == 3
    window(1.0)  # a load again: the first pause is PAUSE long
    assert paused_calls() == 3


def test_an_adaptive_plan_runs_through_the_governor_with_the_same_bits(monkeypatch):
    """configure()'s plans are adaptive: _submit asks the governor, which times the real
    concurrent calls and, once a window shows no gain, runs the halves in the caller."""
    from tagger.ops import cpu

    gov = cpu.PairGovernor()
    gov.WINDOW, gov.PAUSE, gov.GAIN = 2, 10**9, float("inf")  # no gain is ever enough
    monkeypatch.setattr(cpu, "GOVERNOR", gov)
    threads.configure(1)
    one = _bilstm_step()
    monkeypatch.setattr(threads, "_PLAN", threads.ThreadPlan(2, 2, 1, 2, "test", adaptive=True))
    two = _bilstm_step()  # the forward pair and the backward pair: one window, timed
    assert (gov.windows, gov.pauses) == (1, 1) and gov.last_gain > 0
    assert cpu._submit(None) is None and cpu._submit(2) is not None  # an explicit count is obeyed
    three = _bilstm_step()  # paused: both directions in this thread
    assert gov.windows == 1
    monkeypatch.setattr(threads, "_PLAN", threads.ThreadPlan(2, 2, 1, 2, "test"))  # by hand: not adaptive
    assert cpu._submit(None) == cpu._pool().submit
    threads.configure(1)
    for other in (two, three):
        np.testing.assert_array_equal(one[0], other[0])
        assert one[1].keys() == other[1].keys()
        for name in one[1]:
            np.testing.assert_array_equal(one[1][name], other[1][name], err_msg=str(name))


def test_blas_description_names_the_kernel_and_the_environments_pins(monkeypatch):
    for var in threads.BLAS_PINS:
        monkeypatch.delenv(var, raising=False)
    plain = threads.blas_description()
    from threadpoolctl import threadpool_info

    kernel = next(lib for lib in threadpool_info() if lib["user_api"] == "blas")["architecture"]
    assert plain.endswith(f"kernel {kernel}") and "pinned" not in plain
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")  # read as set: the loaded BLAS is not reloaded
    assert threads.blas_description() == f"{plain} (pinned by OPENBLAS_CORETYPE=Haswell)"
