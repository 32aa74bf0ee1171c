"""Accuracy on the real corpora, CPU, no pretrained vectors. Trains the configs through
the public API, once per seed, and scores the best-on-dev model on each test set; the
table gives the test mean +- sample standard deviation over the seeds, and the dev mean.

    corpus         config                          metric                          target
    TREC-6         configs/trec6.yaml              test accuracy (coarse)          >= 88%
    SST-2 (GLUE)   configs/sst2.yaml               dev.tsv accuracy (as test)      >= 82%
    AfriBooms      configs/af_afribooms_upos.yaml  test token accuracy             (reported: word-only vs characters)
    UD EWT UPOS    configs/ud_ewt_upos.yaml        test token accuracy             >= 95.5%
    CoNLL-2003     configs/conll2003_ner.yaml      eng.testb span F1 (conlleval)   >= 87

    python benchmarks/accuracy.py                          # all, cheapest first, seed 0
    python benchmarks/accuracy.py --seeds 0 1 2            # three seeds each: mean +- std
    python benchmarks/accuracy.py --only af_afribooms_upos --set model.chars.encoder=lstm
    python benchmarks/accuracy.py --only trec6 --only sst2
    python benchmarks/accuracy.py --corpora /path/to/corpora --output /tmp/accuracy
    python benchmarks/accuracy.py --only sst2 --set training.epochs=1   # calibrate time
    python benchmarks/accuracy.py --threads 2                            # both BiLSTM directions at once

--corpora defaults to $TAGGER_CORPORA, else ../shared/corpora next to the repository.
--output defaults to runs/accuracy (gitignored); each corpus trains into OUTPUT/NAME/.
A results table is printed at the end and written to OUTPUT/results.json and
OUTPUT/results.md. The exit status is 1 when a target is missed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# name, config, corpus label, metric label, target (a fraction: scores are 0..1; None:
# reported only). The targets are the mean over seeds.
BENCHMARKS = [
    ("trec6", "configs/trec6.yaml", "TREC-6", "test accuracy", 0.88),
    ("sst2", "configs/sst2.yaml", "SST-2 (GLUE)", "dev.tsv accuracy", 0.82),
    ("af_afribooms_upos", "configs/af_afribooms_upos.yaml", "UD Afrikaans-AfriBooms UPOS", "test accuracy", None),
    ("ud_ewt_upos", "configs/ud_ewt_upos.yaml", "UD EWT UPOS", "test accuracy", 0.955),
    ("conll2003_ner", "configs/conll2003_ner.yaml", "CoNLL-2003 NER", "testb span F1", 0.87),
]
NAMES = [b[0] for b in BENCHMARKS]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpora", default=None, help="corpora root for ${corpora} (default: $TAGGER_CORPORA, else ../shared/corpora)")
    p.add_argument("--only", action="append", choices=NAMES, default=None, help="run only this benchmark (repeatable)")
    p.add_argument("--output", default=str(REPO / "runs" / "accuracy"), help="folder for the trained models and results")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override applied to every benchmark (repeatable), e.g. training.epochs=1")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training.seed of each run (default: 0)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    p.add_argument("--progress", action="store_true", help="show the training progress bar")
    p.add_argument("--threads", type=int, default=1,
                   help="NUMBA_NUM_THREADS / BLAS threads (default 1: on a shared 2-core machine the two-thread "
                        "BiLSTM mode was many times slower than one thread)")
    return p.parse_args(argv)


def find_corpora(arg):
    for root in (arg, os.environ.get("TAGGER_CORPORA"), REPO.parent / "shared" / "corpora"):
        if root and Path(root).expanduser().is_dir():
            return Path(root).expanduser().resolve()
    raise SystemExit("no corpora folder: pass --corpora DIR or set TAGGER_CORPORA")


def check_output(path: Path):
    """Refuse an output folder inside the git-tracked part of the repository (runs/ is ignored)."""
    path = path.resolve()
    try:
        rel = path.relative_to(REPO)
    except ValueError:
        return
    if rel.parts and rel.parts[0] in ("runs", ".venv"):
        return
    raise SystemExit(f"--output {path}: inside the repository; use runs/... (gitignored) or a folder outside it")


def run_one(name, config_path, corpora, output, overrides, device, progress, seed=0):
    from tagger.config import load_config
    from tagger.training import train

    cfg = load_config(REPO / config_path, [*overrides, f"training.seed={seed}"], corpora_root=corpora)
    out = output / name / f"seed-{seed}"
    t0 = time.perf_counter()
    final = train(cfg, out, device=device, progress=progress)
    wall = time.perf_counter() - t0
    epochs = steps = 0
    best_epoch = None
    metrics = out / "metrics.jsonl"
    if metrics.exists():
        rows = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
        if rows:
            epochs, steps = rows[-1]["epoch"], rows[-1]["step"]
            best = max(rows, key=lambda r: r["dev_score"])
            best_epoch = best["epoch"]
    test = final.get("test") or {}
    dev = final.get("dev") or {}
    return {
        "name": name, "config": config_path, "overrides": list(overrides), "seed": seed,
        "test_score": test.get("score"), "test_accuracy": test.get("accuracy"),
        "dev_score": dev.get("score"), "wall_s": wall, "epochs": epochs, "best_epoch": best_epoch, "steps": steps,
        "output": str(out),
    }


def aggregate(runs: list[dict]) -> dict:
    """One row from the runs of every seed: mean and sample std of test, mean of dev."""
    import statistics

    def stats(key):
        values = [r[key] for r in runs if r.get(key) is not None]
        if len(values) < len(runs) or not values:
            return None, None
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    test, test_std = stats("test_score")
    dev, _ = stats("dev_score")
    return {
        "name": runs[0]["name"], "config": runs[0]["config"], "seeds": [r.get("seed") for r in runs],
        "test_score": test, "test_std": test_std, "dev_score": dev,
        "test_scores": [r.get("test_score") for r in runs], "dev_scores": [r.get("dev_score") for r in runs],
        "wall_s": sum(r.get("wall_s") or 0 for r in runs), "epochs": [r.get("epochs") for r in runs],
        "best_epoch": [r.get("best_epoch") for r in runs], "runs": runs,
    }


def passed(row) -> bool:
    return row.get("target") is None or (row.get("test_score") is not None and row["test_score"] >= row["target"])


def fmt_table(rows):
    head = ["corpus", "metric", "seeds", "test mean ± std", "per seed", "target", "pass", "dev mean", "wall time", "epochs (best)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    pct = lambda x: "failed" if x is None else f"{x * 100:.2f}"  # noqa: E731
    for r in rows:
        score = r.get("test_score")
        lines.append("| " + " | ".join([
            r["corpus"], r["metric"], " ".join(map(str, r.get("seeds", []))),
            "failed" if score is None else f"{score * 100:.2f} ± {r['test_std'] * 100:.2f}",
            " / ".join(pct(x) for x in r.get("test_scores", [])),
            "-" if r.get("target") is None else f">= {r['target'] * 100:g}",
            "-" if r.get("target") is None else ("PASS" if passed(r) else "FAIL"),
            pct(r.get("dev_score")) if r.get("dev_score") is not None else "-",
            f"{r['wall_s'] / 60:.1f} min" if r.get("wall_s") is not None else "-",
            ", ".join(f"{e} ({b})" for e, b in zip(r.get("epochs", []), r.get("best_epoch", []))),
        ]) + " |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before numpy / numba are imported (they are, lazily, in run_one)
    corpora = find_corpora(args.corpora)
    output = Path(args.output).expanduser()
    check_output(output)
    output.mkdir(parents=True, exist_ok=True)
    chosen = [b for b in BENCHMARKS if args.only is None or b[0] in args.only]
    rows = []
    for name, config_path, corpus, metric, target in chosen:
        runs = []
        for seed in args.seeds:
            print(f"== {name} seed {seed}: {config_path} {' '.join(args.set)} (corpora {corpora})", file=sys.stderr, flush=True)
            try:
                runs.append(run_one(name, config_path, corpora, output, args.set, args.device, args.progress, seed))
            except Exception as err:  # report and go on with the next run
                print(f"{name} seed {seed}: failed: {type(err).__name__}: {err}", file=sys.stderr)
                runs.append({"name": name, "config": config_path, "seed": seed, "error": f"{type(err).__name__}: {err}"})
        row = aggregate(runs)
        row.update(corpus=corpus, metric=metric, target=target, overrides=list(args.set))
        rows.append(row)
        print(fmt_table([row]).splitlines()[-1], file=sys.stderr, flush=True)
    table = fmt_table(rows)
    print(table)
    (output / "results.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    (output / "results.md").write_text(table + "\n", encoding="utf-8")
    return 0 if all(passed(r) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
