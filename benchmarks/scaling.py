"""Data-parallel scaling of `tagger train` on UD English-EWT UPOS: 1 and 2 MPI ranks.

Each rank runs one thread (OPENBLAS/NUMBA_NUM_THREADS=1); the global batch is the config's
(32 sentences: each of N ranks takes 32/N), so every configuration makes the same updates
and the dev accuracy after S steps should agree up to float32 summation order and the
dropout masks (drawn per rank). Prints a table: ranks, steps, training tokens/s (global
batch tokens / wall time since the start of training without the one dev evaluation, which
rank 0 runs alone and which takes as long whatever N is), speed-up, dev accuracy,
and for N > 1 where a step's time went (compute, communication, waiting for the slowest rank).

    python benchmarks/scaling.py --steps 200                 # 1 and 2 ranks
    python benchmarks/scaling.py --ranks 1 2 4 --steps 500 --corpora /work/shared/corpora
    python benchmarks/scaling.py --steps 800 --set training.batch_size=64   # 32 sentences per rank

A figure, not a test: the numbers depend on the machine and what else runs on it (the
load average before and after is printed beside them).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=200, help="updates per run (one dev evaluation at the end)")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "ud_ewt_upos.yaml")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override for every run, e.g. training.batch_size=64 (repeatable)")
    p.add_argument("--corpora", default=os.environ.get("TAGGER_CORPORA", str(REPO.parent / "shared" / "corpora")))
    return p.parse_args(argv)


def run(ranks: int, args, out: Path) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    cmd = [str(BIN / "tagger"), "train", str(args.config), "--corpora", args.corpora, "-o", str(out), "--no-progress",
           "--training.max_steps", str(args.steps), "--training.eval_every", str(args.steps),
           "--threads", "1"]  # one thread per rank (the default would use every core)
    for item in args.set:
        key, _, value = item.partition("=")
        cmd += [f"--{key}", value]
    if ranks > 1:
        cmd = [str(BIN / "mpiexec"), "-n", str(ranks), *cmd]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{ranks} ranks failed:\n{done.stderr[-2000:]}")
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timing = json.loads((out / "mpi_timing.json").read_text()) if ranks > 1 else {}
    return {"ranks": ranks, "steps": record["step"], "tokens_per_s": record["train_tokens_per_s"],
            "dev_accuracy": record["dev_accuracy"], "wall_s": time.perf_counter() - start,
            **{k: v for k, v in timing.items() if k not in ("ranks", "steps")}}


def main(argv=None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.ranks:
            rows.append(run(n, args, Path(tmp) / f"r{n}"))
    load_after = os.getloadavg()
    base = rows[0]["tokens_per_s"]
    print(f"UD English-EWT UPOS, {args.steps} steps, {' '.join(args.set) or 'the config as it is'}, 1 thread per rank, "
          f"{os.cpu_count()} cores; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print("step, compute, comm, wait: median ms per step (tagger's mpi_timing.json), mean step, wait and compute (the slowest rank's) beside; "
          "dense / rows: the dense Allreduce and the embedding-row exchange inside comm + wait")
    print(f"{'ranks':>5} {'steps':>6} {'train tok/s':>12} {'speed-up':>9} {'dev acc':>8} {'wall s':>7} "
          f"{'step':>6} {'compute':>8} {'comm':>11} {'wait':>11} {'dense':>6} {'rows':>6} {'mean step':>10} {'mean wait':>10} {'mean comp':>10}")
    for r in rows:
        split = ""
        if "step_ms" in r:
            split = (f" {r['step_ms']:>6.1f} {r['compute_ms']:>8.1f} {r['communication_ms']:>5.1f} ({100 * r['communication_share']:>2.0f}%)"
                     f" {r['waiting_ms']:>5.1f} ({100 * r['waiting_share']:>2.0f}%) {r['dense_allreduce_ms']:>6.1f} {r['embedding_rows_ms']:>6.1f}"
                     f" {r['step_mean_ms']:>10.1f} {r['waiting_mean_ms']:>10.1f} {r['compute_mean_ms']:>10.1f}")
        print(f"{r['ranks']:>5} {r['steps']:>6} {r['tokens_per_s']:>12,.0f} {r['tokens_per_s'] / base:>9.2f} "
              f"{r['dev_accuracy']:>8.4f} {r['wall_s']:>7.1f}" + split)


if __name__ == "__main__":
    main()
