"""How many cores this process may use, and how the CPU backend spends them.

    available_cores()     (n, why): the smallest of the CPU affinity mask, the cgroup CPU
                          quota (v2 cpu.max or v1 cfs_quota_us / cfs_period_us, on the
                          process's cgroup and its ancestors), SLURM_CPUS_PER_TASK, and for
                          unbound MPI ranks the CPUs over the node's rank count
    configure(requested)  the process's ThreadPlan, applied once: the LSTM directions run
                          in `pair` threads, and BLAS gets `blas` threads inside each

Why one plan per process: the Bidirectional layers run the two directions concurrently
(ops.lstm_forward_pair), and each direction's step GEMMs call OpenBLAS. A BLAS that also
spreads every GEMM over all cores fights the direction threads for them (measured: 2
threads through the layers barely beat 1 in training and lost in inference), so with two
direction threads BLAS runs single-threaded; with one core everything is sequential.
OpenBLAS' thread count is process-global, so it is set once (threadpoolctl), never per call.

A request for more threads than there are cores is capped (said on stderr): extra
threads on a full machine only take turns, which is slower than one thread. For the same
reason the second thread is given up for a while when it measures no gain, as when
another process loads the cores (tagger.ops.cpu.PairGovernor): the results are the same
bits either way.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tagger.errors import TaggerError

CGROUP_ROOT = Path("/sys/fs/cgroup")
# ranks of this MPI job on this node: MPICH/Hydra, Open MPI
LOCAL_RANKS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")


@dataclass(frozen=True)
class ThreadPlan:
    threads: int  # threads used in all: pair * blas
    pair: int  # LSTM directions run at once (1 or 2)
    blas: int  # BLAS threads inside each direction
    cores: int  # cores this process may use
    source: str  # what limited `cores`
    # the pair's second thread is given up while it does not pay (another process loads
    # the cores): tagger.ops.cpu.PairGovernor. configure()'s plans are adaptive; a plan
    # built by hand (tests) is not, so its concurrency never depends on the machine's load
    adaptive: bool = False


_PLAN: ThreadPlan | None = None
_LIMITER = None  # the threadpoolctl limiter, kept alive for the process


def _quota_cores(quota: str, period: str) -> int | None:
    """Whole cores of a CFS quota (floor: 1.5 cores of quota run 2 threads throttled)."""
    if quota.strip() in ("max", "-1", ""):
        return None
    q, p = int(quota), int(period)
    return max(1, math.floor(q / p)) if q > 0 and p > 0 else None


def _cgroup_dirs(root: Path, proc_cgroup: str) -> list[Path]:
    """The process's cgroup folder and its ancestors (v2 line "0::/a/b", v1 "N:cpu,...:/a")."""
    rels = []
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and (parts[1] == "" or "cpu" in parts[1].split(",")):
            rels.append((parts[1], parts[2].strip("/")))
    dirs = []
    for controllers, rel in rels:
        bases = [root] if controllers == "" else [root / "cpu,cpuacct", root / "cpu"]
        for base in bases:
            path = base / rel if rel else base
            while True:
                dirs.append(path)
                if path == base:
                    break
                path = path.parent
    return dirs or [root]


def cgroup_cores(root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> int | None:
    """Cores allowed by the cgroup CPU quota (the tightest level), or None when unlimited."""
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text(encoding="ascii")
        except OSError:
            proc_cgroup = ""
    found = []
    for d in _cgroup_dirs(Path(root), proc_cgroup):
        try:
            if (d / "cpu.max").is_file():
                quota, _, period = (d / "cpu.max").read_text(encoding="ascii").strip().partition(" ")
                n = _quota_cores(quota, period or "100000")
            elif (d / "cpu.cfs_quota_us").is_file():
                n = _quota_cores((d / "cpu.cfs_quota_us").read_text(encoding="ascii"),
                                 (d / "cpu.cfs_period_us").read_text(encoding="ascii"))
            else:
                continue
        except (OSError, ValueError):
            continue  # an unreadable or odd file limits nothing
        if n is not None:
            found.append(n)
    return min(found) if found else None


def available_cores(affinity: set | None = None, cgroup_root: Path = CGROUP_ROOT,
                    proc_cgroup: str | None = None, environ=None, total_cpus: int | None = None) -> tuple[int, str]:
    """(cores, what limited them): the smallest of affinity, cgroup quota, SLURM and, for
    MPI ranks that are not bound to cores, the CPUs divided among the node's ranks."""
    environ = os.environ if environ is None else environ
    total_cpus = os.cpu_count() if total_cpus is None else total_cpus
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except (AttributeError, OSError):  # not Linux
            affinity = range(os.cpu_count() or 1)
    limits = [(max(1, len(affinity)), "CPU affinity")]
    quota = cgroup_cores(cgroup_root, proc_cgroup)
    if quota is not None:
        limits.append((quota, "cgroup CPU quota"))
    slurm = environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) >= 1:
        limits.append((int(slurm), "SLURM_CPUS_PER_TASK"))
    # `mpiexec -n R tagger train` on one node without binding: the R ranks share the cores
    local = next((environ[v].strip() for v in LOCAL_RANKS if environ.get(v, "").strip().isdigit()), "")
    if local and int(local) > 1 and len(affinity) >= (total_cpus or len(affinity)):
        limits.append((max(1, len(affinity) // int(local)), f"{len(affinity)} CPUs shared by {local} MPI ranks"))
    return min(limits, key=lambda item: item[0])


def plan_threads(requested: int | None, cores: int, source: str = "detected") -> tuple[ThreadPlan, str | None]:
    """(plan, a warning or None) for `requested` threads (None: all cores) on `cores`."""
    if requested is not None and (isinstance(requested, bool) or not isinstance(requested, int) or requested < 1):
        raise TaggerError(f"--threads {requested!r}: must be a whole number >= 1")
    warning = None
    n = cores if requested is None else requested
    if n > cores:
        warning = (f"--threads {requested}: this process may use only {cores} core(s) ({source}); "
                   f"using {cores} (more threads than cores only take turns, slower than one)")
        n = cores
    pair = 2 if n >= 2 else 1
    # BLAS stays single-threaded inside each direction: a threaded OpenBLAS called from two
    # threads at once competes with them (see the module docstring)
    return ThreadPlan(threads=pair, pair=pair, blas=1, cores=cores, source=source, adaptive=pair > 1), warning


def configure(requested: int | None = None, announce: bool = False) -> ThreadPlan:
    """Decide and apply the process's thread plan (BLAS limit, LSTM pair threads). Idempotent
    per value: a second call with another request replaces the plan."""
    global _PLAN, _LIMITER
    cores, source = available_cores()
    plan, warning = plan_threads(requested, cores, source)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    from threadpoolctl import threadpool_limits  # a process-wide setting of the loaded BLAS

    _LIMITER = threadpool_limits(limits=plan.blas, user_api="blas")
    # the tokenizers' Rust pool reads this when it first starts (so only before first use)
    os.environ.setdefault("RAYON_NUM_THREADS", str(plan.threads))
    _PLAN = plan
    if announce:
        print(f"threads: {plan.threads} ({plan.cores} core(s) available, {plan.source}; "
              f"LSTM directions {'concurrent' if plan.pair > 1 else 'sequential'}, BLAS {plan.blas} per direction)",
              file=sys.stderr)
    return plan


# Variables that pin OpenBLAS's kernel: some machines set them for old OpenBLAS builds that
# miscompute or crash on new CPUs. NumPy's current OpenBLAS runs fine without them, and the
# pin can halve its GEMM rate (this Zen 5 VM: Haswell's AVX2 kernel 128 GFLOP/s a core,
# the SkylakeX AVX-512 kernel it picks itself 230-246).
BLAS_PINS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def blas_description() -> str:
    """The loaded BLAS and its kernel, e.g. "openblas 0.3.31, kernel SkylakeX", plus the
    environment's pins when set ("(OPENBLAS_CORETYPE=Haswell)"); what a speed figure ran on."""
    from threadpoolctl import threadpool_info

    libs = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
    if not libs:
        return "no BLAS loaded"
    lib = libs[0]
    text = f"{lib.get('internal_api')} {lib.get('version')}, kernel {lib.get('architecture', '?')}"
    pins = [f"{v}={os.environ[v]}" for v in BLAS_PINS if os.environ.get(v)]
    return text + (f" (pinned by {', '.join(pins)})" if pins else "")


def current_plan() -> ThreadPlan | None:
    """The plan configure() applied, or None (library use without the CLI)."""
    return _PLAN


def pair_threads() -> int:
    """Threads for the LSTM direction pair: the configured plan's; without one,
    NUMBA_NUM_THREADS when set (the backend's old rule), else 1."""
    if _PLAN is not None:
        return _PLAN.pair
    env = os.environ.get("NUMBA_NUM_THREADS", "").strip()
    return max(1, int(env)) if env.isdigit() else 1


def adaptive_pair() -> bool:
    """Whether the configured plan lets the CPU backend give up its second thread while it
    does not pay (ThreadPlan.adaptive); False without a plan."""
    return _PLAN is not None and _PLAN.adaptive


def threads_option(value: int | None):
    """typer callback of `--threads`: validate and configure the process (once, at parse time)."""
    import typer

    if value is not None and value < 1:
        raise typer.BadParameter(f"{value}: must be >= 1 (default: every core this process may use)")
    configure(value)  # quiet unless capped: the commands' stderr stays theirs
    return value
