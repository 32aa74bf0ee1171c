"""`tagger predict` on 1 and 2 cores, as real processes, against the model alone (issue 11).

    python benchmarks/predict_processes.py [--corpora DIR] [--copies 3] [--blas native|env]

The text is every sentence of UD English-EWT train (`# text =`), `--copies` times over
(3: 37,632 lines, 612k words), one per line. The model is the one speed_table.py's
predict rows use: an untrained word-only tagger, embedding 100, BiLSTM 256, saved to a
temporary folder. Timed, each a `tagger predict MODEL TEXT -o DIR` process (the JSON
lines written to disk, as a user's run writes them):

    --threads 1     one process, one thread
    --threads 2     one process, the two LSTM directions in two threads
    --workers 2     two worker processes, one thread each: into the folder, each takes a
                    share of the shard plan (the file cut into two line ranges, two parts);
                    to stdout (redirected to a file), one process reads and writes while the
                    two predict its chunks in turn (tagger.predict.ChunkWorkers)

and each also on a one-line file, which is what starting costs (interpreter, imports,
the Numba cache, the model; for --workers, the workers too). Model-only: the network's
forward pass over the same text's padded batches, in this process, at 1 and 2 threads.

Printed per run: words/s over the whole wall time, words/s once started (wall time less
the one-line run's), and the started rate over model-only at the same number of cores
(issue 11's target: >= 0.85 at 1 and at 2). A figure, not a test: the load average is
printed beside it.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import blas_env

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# (option, value, to stdout): --workers into a folder shares out the shard plan (the file
# cut into line ranges), to stdout the workers take its chunks in turn (ChunkWorkers)
RUNS = (("--threads", "1", False), ("--threads", "2", False), ("--workers", "2", False), ("--workers", "2", True))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpora", default=os.environ.get("TAGGER_CORPORA", str(REPO.parent / "shared" / "corpora")))
    p.add_argument("--copies", type=int, default=3, help="times over EWT train's sentences")
    blas_env.add_argument(p)
    return p.parse_args(argv)


def ewt_lines(corpora: str) -> list[str]:
    path = Path(corpora) / "ud_english_ewt" / "en_ewt-ud-train.conllu"
    with open(path, encoding="utf-8") as fh:
        return [line[len("# text = "):].rstrip("\n") for line in fh if line.startswith("# text = ")]


def save_model(folder: Path) -> Path:
    """speed_table.py's predict model, saved (tagger predict reads a model folder)."""
    from speed_table import predict_setup
    from tagger.io import save_model as save

    model, _ = predict_setup(argparse.Namespace(seed=0))
    save(model, folder / "model")
    return folder / "model"


def wall_seconds(model: Path, text: Path, option: tuple[str, str, bool], out: Path) -> float:
    name, value, to_stdout = option
    cmd = [str(BIN / "tagger"), "predict", str(model), str(text), name, value]
    if not to_stdout:
        cmd += ["-o", str(out), "--overwrite"]
    out.mkdir(exist_ok=True)
    start = time.perf_counter()
    with open(out / "stdout.jsonl", "w", encoding="utf-8") as sink:
        done = subprocess.run(cmd, stdout=sink, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def model_only_rate(model_dir: Path, texts: list[str], threads: int) -> tuple[int, float]:
    """(words, words/s) of the forward pass over the padded batches `tagger predict` makes
    of the texts: 256 lines each, sorted by length within each chunk of CHUNK_LINES."""
    from tagger.cli.benchmark import _encoded
    from tagger.io import load_model
    from tagger.predict import CHUNK_LINES
    from tagger.threads import configure

    configure(threads)
    model = load_model(model_dir)
    lines = list(enumerate(texts, 1))
    words, batches = 0, []
    for at in range(0, len(lines), CHUNK_LINES):
        count, chunk_batches = _encoded(model, lines[at : at + CHUNK_LINES], 256)
        words += count
        batches += chunk_batches
    model.forward(batches[0], train=False)  # warm-up
    start = time.perf_counter()
    for batch in batches:
        model.ops.to_numpy(model.forward(batch, train=False)[0])
    return words, words / (time.perf_counter() - start)


def main(argv=None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tagger-predict-bench-") as tmp:
        tmp = Path(tmp)
        model = save_model(tmp)
        texts = ewt_lines(args.corpora) * args.copies
        text, one = tmp / "ewt.txt", tmp / "one.txt"
        text.write_text("\n".join(texts) + "\n", encoding="utf-8")
        one.write_text(texts[0] + "\n", encoding="utf-8")
        print(f"BLAS: {blas_env.describe()}")
        print(f"load average before: {os.getloadavg()[0]:.2f}; {len(texts):,} lines")
        only = {}
        for threads in (1, 2):
            # in a child process each: the thread plan is set once per process
            code = (f"import sys; sys.path[:0] = [{str(REPO / 'benchmarks')!r}, {str(REPO)!r}]; "
                    f"from predict_processes import model_only_rate; from pathlib import Path; "
                    f"w, r = model_only_rate(Path({str(model)!r}), open({str(text)!r}, encoding='utf-8').read().splitlines(), "
                    f"{threads}); print(w, r)")
            words, rate = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                         text=True).stdout.split()
            only[threads] = float(rate)
            print(f"model only, {threads} thread{'s' if threads > 1 else ''}: {float(rate):,.0f} words/s ({int(words):,} words)")
        words = int(words)
        print("\n| run | wall s | start s | words/s | words/s once started | over model-only at the same cores |")
        print("|---|---:|---:|---:|---:|---:|")
        for option in RUNS:
            cores = int(option[1])
            start = wall_seconds(model, one, option, tmp / "out-one")
            wall = wall_seconds(model, text, option, tmp / "out")
            started = words / (wall - start)
            where = "> FILE" if option[2] else "-o DIR"
            print(f"| `{option[0]} {option[1]} {where}` | {wall:.2f} | {start:.2f} | {words / wall:,.0f} | "
                  f"{started:,.0f} | {started / only[cores]:.2f} |")
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    blas_env.choose()
    main()
