"""Accuracy on the real corpora: word-level BiLSTM (no character features, no pretrained
vectors), CPU. Trains the four configs through the public API and scores the best-on-dev
model on each test set.

    corpus         config                      metric                          target
    UD EWT UPOS    configs/ud_ewt_upos.yaml    test token accuracy             >= 93.5%
    CoNLL-2003     configs/conll2003_ner.yaml  eng.testb span F1 (conlleval)   >= 80
    TREC-6         configs/trec6.yaml          test accuracy (coarse)          >= 88%
    SST-2 (GLUE)   configs/sst2.yaml           dev.tsv accuracy (as test)      >= 82%

    python benchmarks/accuracy.py                          # all four, cheapest first
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

# name, config, corpus label, metric label, target (a fraction: scores are 0..1)
BENCHMARKS = [
    ("trec6", "configs/trec6.yaml", "TREC-6", "test accuracy", 0.88),
    ("sst2", "configs/sst2.yaml", "SST-2 (GLUE)", "dev.tsv accuracy", 0.82),
    ("ud_ewt_upos", "configs/ud_ewt_upos.yaml", "UD EWT UPOS", "test accuracy", 0.935),
    ("conll2003_ner", "configs/conll2003_ner.yaml", "CoNLL-2003 NER", "testb span F1", 0.80),
]
NAMES = [b[0] for b in BENCHMARKS]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpora", default=None, help="corpora root for ${corpora} (default: $TAGGER_CORPORA, else ../shared/corpora)")
    p.add_argument("--only", action="append", choices=NAMES, default=None, help="run only this benchmark (repeatable)")
    p.add_argument("--output", default=str(REPO / "runs" / "accuracy"), help="folder for the trained models and results")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override applied to every benchmark (repeatable), e.g. training.epochs=1")
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


def run_one(name, config_path, corpora, output, overrides, device, progress):
    from tagger.config import load_config
    from tagger.training import train

    cfg = load_config(REPO / config_path, overrides, corpora_root=corpora)
    out = output / name
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
        "name": name, "config": config_path, "overrides": list(overrides),
        "test_score": test.get("score"), "test_accuracy": test.get("accuracy"),
        "dev_score": dev.get("score"), "wall_s": wall, "epochs": epochs, "best_epoch": best_epoch, "steps": steps,
        "output": str(out),
    }


def fmt_table(rows):
    head = ["corpus", "metric", "test", "target", "pass", "dev", "wall time", "epochs (best)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        score = r.get("test_score")
        ok = score is not None and score >= r["target"]
        lines.append("| " + " | ".join([
            r["corpus"], r["metric"],
            f"{score * 100:.2f}" if score is not None else "failed",
            f">= {r['target'] * 100:g}",
            "PASS" if ok else "FAIL",
            f"{r['dev_score'] * 100:.2f}" if r.get("dev_score") is not None else "-",
            f"{r['wall_s'] / 60:.1f} min" if r.get("wall_s") is not None else "-",
            f"{r.get('epochs', '-')} ({r.get('best_epoch', '-')})",
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
        print(f"== {name}: {config_path} (corpora {corpora})", file=sys.stderr, flush=True)
        try:
            row = run_one(name, config_path, corpora, output, args.set, args.device, args.progress)
        except Exception as err:  # report and go on with the next corpus
            print(f"{name}: failed: {type(err).__name__}: {err}", file=sys.stderr)
            row = {"name": name, "config": config_path, "error": f"{type(err).__name__}: {err}", "test_score": None}
        row.update(corpus=corpus, metric=metric, target=target)
        rows.append(row)
        print(fmt_table([row]).splitlines()[-1], file=sys.stderr, flush=True)
    table = fmt_table(rows)
    print(table)
    (output / "results.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    (output / "results.md").write_text(table + "\n", encoding="utf-8")
    return 0 if all(r.get("test_score") is not None and r["test_score"] >= r["target"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
