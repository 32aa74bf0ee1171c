"""`tagger train` over a real MPI world, one case per run (tests/cluster/test_train_mpi.py):

    mpiexec -n 2 python train_cases.py CASE OUT [--override KEY=VALUE ...]

train    the job as `tagger train` runs it (setup -> execute -> finalize) on every rank;
         each rank writes {"rank", "size", "weights"} (sha256 of its final weights)
drift    as train, but rank 1 nudges one weight after its first step: check_weights
         must stop every rank with the one-line error, written as {"rank", "error"}

Each rank writes its line to OUT.rank-R.json (two ranks printing to one pipe can interleave).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tagger.config import load_config
from tagger.distributed import DataParallel, weights_checksum, world
from tagger.errors import TaggerError
from tagger.fsutil import OutputLock
from tagger import training

SAMPLE = Path(__file__).resolve().parents[2] / "configs" / "sample_pos.yaml"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("case", choices=["train", "drift"])
    ap.add_argument("out", type=Path)
    ap.add_argument("--override", action="append", default=[])
    args = ap.parse_args()
    w = world()
    cfg = load_config(SAMPLE, overrides=args.override)
    if args.case == "drift":
        real = DataParallel.train_step

        def nudged(self, batch):
            loss = real(self, batch)
            if w.rank == 1:
                self.model.network.leaves()[-1].params[-1][0] += 1e-3
            return loss

        DataParallel.train_step = nudged
    lock = OutputLock(args.out)
    if w.is_root:
        lock.acquire()
    try:
        training._train(cfg, args.out, "cpu", False, False, w)
        report(args.out, w, {"size": w.comm.Get_size() if w.comm else 1, "weights": HELD[0]})
    except TaggerError as err:
        report(args.out, w, {"error": str(err)})
    finally:
        lock.release()


def report(out: Path, w, fields: dict) -> None:
    out.with_name(f"{out.name}.rank-{w.rank}.json").write_text(json.dumps({"rank": w.rank, **fields}) + "\n")


# rank 0 alone writes the models, so every rank reports the weights it holds in memory at the end
HELD: list[str] = []
_execute = training.execute


def _keep(run, progress=True):
    _execute(run, progress)
    HELD.append(weights_checksum([p for _, p in run.model.network.named_weights()]))


training.execute = _keep

if __name__ == "__main__":
    sys.exit(main())
