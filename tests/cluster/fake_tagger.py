"""A stand-in for `tagger predict` and `tagger train` inside the cluster scripts.

    fake_tagger.py predict MODEL INPUT... --output DIR --shard SPEC [--format jsonl] [--overwrite]
    fake_tagger.py train CONFIG --output DIR [--resume]

predict drives the real tagger.sharding API exactly as `tagger predict --shard` does, with
an "echo" model (each non-blank line becomes {"line", "text"}), so the array script, the
shard plan, resume and Slurm's cancel/resubmit are tested without training a model.
FAKE_SLEEP (seconds per record) slows it down so a test can cancel a task mid-run;
FAKE_MIN_PART_BYTES lets small test inputs be split into parts; FAKE_LOG (a file) gets
one line per output completed.

train checks the MPI world under srun (tagger.distributed.world(), size == the step's
tasks), and on rank 0 counts its runs in OUTPUT/checkpoint/state.json, noting --resume;
on SIGTERM it saves that checkpoint and exits, as tagger train must.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from tagger.errors import TaggerError


def predict(args) -> None:
    from tagger.sharding import MIN_PART_BYTES, ShardRun, model_digest, parse_shard, plan_shards

    suffix = {"jsonl": ".jsonl", "conll": ".conll", "tsv": ".tsv"}[args.format]
    i, n = parse_shard(args.shard)
    min_part = int(os.environ.get("FAKE_MIN_PART_BYTES", MIN_PART_BYTES))
    plan = plan_shards(args.inputs, n, i, args.output, suffix, min_part_bytes=min_part)
    run = ShardRun(plan, args.output, model_digest(args.model), {"format": args.format, "encoding": "utf-8"},
                   overwrite=args.overwrite)
    sleep = float(os.environ.get("FAKE_SLEEP", "0"))
    for unit in plan:
        if run.done(unit):
            print(f"skip {unit.output} (done)", flush=True)
            continue
        with run.open(unit) as out:
            for lineno, line in unit.lines():
                if line.strip():
                    time.sleep(sleep)
                    out.write(json.dumps({"line": lineno, "text": line}, ensure_ascii=False) + "\n",
                              tokens=len(line.split()))
        if os.environ.get("FAKE_LOG"):
            with open(os.environ["FAKE_LOG"], "a") as fh:
                fh.write(f"{i} {unit.output}\n")
        print(f"wrote {unit.output}", flush=True)
    manifest = run.finish()
    print(f"shard {i}/{n}: {manifest['records']} records, complete={manifest['complete']}", flush=True)


def train(args) -> None:
    from tagger.distributed import root_only, world

    w = world()  # refuses a world smaller than srun's task count (a wrong --mpi plugin)
    state_path = Path(args.output) / "checkpoint" / "state.json"

    def save(**extra):
        state = json.loads(state_path.read_text()) if state_path.exists() else {"runs": []}
        state["runs"].append({"size": w.size, "resume": args.resume, "restart": os.environ.get("SLURM_RESTART_COUNT"),
                              **extra})
        state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, state_path)

    def on_term(signum, frame):
        root_only(w, save, terminated=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    if args.resume != state_path.exists():
        raise TaggerError(f"--resume given: {args.resume}, but checkpoint exists: {state_path.exists()}")
    seconds = float(os.environ.get("FAKE_TRAIN_SECONDS", "0"))
    w.barrier()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)
    root_only(w, save, terminated=False)
    print(f"rank {w.rank} of {w.size}: trained", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fake_tagger.py")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict")
    p.add_argument("model")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--output", required=True)
    p.add_argument("--shard", default=None)
    p.add_argument("--format", default="jsonl")
    p.add_argument("--overwrite", action="store_true")
    t = sub.add_parser("train")
    t.add_argument("config")
    t.add_argument("--output", required=True)
    t.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    try:
        (predict if args.command == "predict" else train)(args)
    except TaggerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
