"""Does asking for threads ever cost speed? `tagger train` alone and two side by side.

    python benchmarks/oversubscription.py [--steps 300] [--config configs/ud_ewt_upos.yaml]

Issue 11: a run given more threads than the machine has free (another training beside it,
or --threads past the cores) must degrade gracefully, never run slower than one thread
would. This runs `tagger train CONFIG --training.max_steps STEPS` (one dev evaluation, at
the end) as real processes:

    alone       --threads 1, --threads 2, and --threads 4 (more than this machine's cores)
    side by side  two at --threads 1 each, then two at --threads 2 each, started together

and prints each run's training tokens/s (tagger's own figure in metrics.jsonl, the dev
evaluation left out) and, for a pair, their sum: what the machine delivered. The issue's
bar, "never slower than one thread", reads here as: each of two runs at --threads 2 is no
slower than each of two at --threads 1.

The environment is passed as it is (no --blas here: these are tagger's own figures, not a
comparison with another library). A figure, not a test: the load average is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=REPO / "configs" / "ud_ewt_upos.yaml")
    p.add_argument("--steps", type=int, default=300, help="updates per run")
    p.add_argument("--corpora", default=os.environ.get("TAGGER_CORPORA", str(REPO.parent / "shared" / "corpora")))
    return p.parse_args(argv)


def start(args, threads: int, out: Path) -> subprocess.Popen:
    cmd = [str(BIN / "tagger"), "train", str(args.config), "--corpora", args.corpora, "-o", str(out), "--no-progress",
           "--training.max_steps", str(args.steps), "--training.eval_every", str(args.steps), "--threads", str(threads)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def rate(proc: subprocess.Popen, out: Path) -> float:
    _, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"tagger train failed ({proc.returncode}):\n{err[-2000:]}")
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return record["train_tokens_per_s"]


def main(argv=None) -> None:
    args = parse_args(argv)
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for threads in (1, 2, 4):
            out = tmp / f"alone{threads}"
            rows.append((f"alone, --threads {threads}", [rate(start(args, threads, out), out)]))
        for threads in (1, 2):
            outs = [tmp / f"pair{threads}_{k}" for k in range(2)]
            procs = [start(args, threads, o) for o in outs]
            rows.append((f"two side by side, --threads {threads} each", [rate(p, o) for p, o in zip(procs, outs)]))
    print(f"tagger train {args.config.name}, {args.steps} steps, {os.cpu_count()} cores; "
          f"load average {load:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"{'runs':42s} {'tokens/s per run':>22s} {'machine total':>14s}")
    for name, rates in rows:
        print(f"{name:42s} {' / '.join(f'{r:,.0f}' for r in rates):>22s} {sum(rates):>14,.0f}")


if __name__ == "__main__":
    main()
