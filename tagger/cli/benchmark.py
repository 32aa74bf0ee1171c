"""`tagger benchmark speed MODEL TEXT`: words per second end to end and model-only.

The method is spaCy's `benchmark speed`: cut the text into batches, time each batch
(twice here, once with each measurement going first), and report the mean words/s with a bootstrap 95% interval over the batches (resampling
the per-batch rates). Two measurements per thread count:

    end_to_end  what `tagger predict` does per chunk: split, encode, predict, decode and
                format the records (tagger.predict.predict_chunk, jsonl)
    model_only  the network's forward pass over the same, already encoded, batches

and end_to_end_fraction, model-only time over end-to-end time (1.0: no overhead at
all), from wall time and from the process's CPU time (which load from other processes
on a shared machine does not inflate)

at 1 thread and at N (--threads, default every core this process may use). One JSON
document on stdout; a line per measurement on stderr.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from ._app import app
from ._util import load, positive_int, text_encoding, user_errors

benchmark_app = typer.Typer(help="Measure speed (words/s) of a trained model.", no_args_is_help=True)
app.add_typer(benchmark_app, name="benchmark")

BOOTSTRAP_SAMPLES = 1000


def bootstrap_interval(rates, samples=BOOTSTRAP_SAMPLES, seed=0) -> dict:
    """The mean of per-batch rates and its bootstrap 95% interval (2.5 / 97.5 percentiles
    of the means of `samples` resamples with replacement)."""
    rates = np.asarray(rates, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = rates[rng.integers(0, len(rates), size=(samples, len(rates)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": round(float(rates.mean()), 1), "low": round(float(low), 1), "high": round(float(high), 1)}


def text_batches(path: Path, encoding: str, lines_per_batch: int, batches: int) -> list[list[tuple[int, str]]]:
    """`batches` chunks of (line number, text) of non-blank lines, cycling through the
    file when it is shorter than batches * lines_per_batch (a warm-up chunk comes first)."""
    from tagger.data.readers import iter_lines
    from tagger.errors import TaggerError

    lines = [(k, t) for k, t in iter_lines(path, encoding, encoding_option="--encoding") if t.strip()]
    if not lines:
        raise TaggerError(f"TEXT {path}: has no non-blank line to predict")
    need = (batches + 1) * lines_per_batch
    cycled = [lines[i % len(lines)] for i in range(need)]
    return [cycled[i : i + lines_per_batch] for i in range(0, need, lines_per_batch)]


def _seconds(fn, item) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of fn(item)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(item)
    return time.perf_counter() - wall, time.process_time() - cpu


def _encoded(model, chunk, batch_size: int) -> tuple[int, list]:
    """(words, padded batches) of a chunk, as predict_chunk splits and batches it. The
    examples are dropped: holding every chunk's tokens as Python objects would make the
    garbage collector's passes during the end-to-end runs longer than in `tagger predict`."""
    from tagger.data.prepare import examples_from_texts

    examples = [ex for ex in examples_from_texts([t for _, t in chunk]) if ex.tokens]
    return sum(len(ex.tokens) for ex in examples), list(model.batches(examples, batch_size, with_labels=False))


def _both_passes(times: list) -> tuple[list, list]:
    """(wall, cpu) seconds per batch, summed over the two passes of `times` (pass 1 then
    pass 2, one (wall, cpu) pair per batch each)."""
    n = len(times) // 2
    pairs = list(zip(times[:n], times[n:]))
    return [a[0] + b[0] for a, b in pairs], [a[1] + b[1] for a, b in pairs]


def measure(model, chunks, batch_size: int) -> dict:
    """End-to-end and model-only words/s over `chunks` (the first a warm-up), on the same
    batches: end to end is predict_chunk on a chunk's lines, model-only the forward pass
    over the padded batches predict_chunk makes of them. The two are timed alternately,
    batch by batch, so that load from other processes on a shared machine hits both
    alike, and in both orders (below)."""
    from tagger.predict import predict_chunk

    words, encoded = [], []
    for chunk in chunks:  # only the counts and the padded batches are kept: see _encoded
        count, batches = _encoded(model, chunk, batch_size)
        words.append(count)
        encoded.append(batches)
    ops = model.ops

    def end_to_end(chunk):
        predict_chunk(model, chunk, "benchmark", "jsonl", batch_size)

    def forward(batches):
        for batch in batches:
            ops.to_numpy(model.forward(batch, train=False)[0])  # waits for a device to finish

    end_to_end(chunks[0])  # warm-up: kernels loaded, caches filled
    forward(encoded[0])
    # Each batch is timed twice, in two passes: end to end first, then model-only first.
    # The first of a pair can run at a third of the second's speed on a long batch (the
    # 160-token sentence of UD EWT test, measured), so one fixed order charges that to one
    # side, and alternating by batch does too when long batches recur with an even period;
    # summing both orders charges it to each alike.
    e2e, only = [], []
    for model_first in (False, True):
        for chunk, batches in zip(chunks[1:], encoded[1:]):
            if model_first:
                only.append(_seconds(forward, batches))
            e2e.append(_seconds(end_to_end, chunk))
            if not model_first:
                only.append(_seconds(forward, batches))
    e2e, e2e_cpu = _both_passes(e2e)
    only, only_cpu = _both_passes(only)
    result = {"end_to_end": bootstrap_interval([2 * w / t for w, t in zip(words[1:], e2e)]),
              "model_only": bootstrap_interval([2 * w / t for w, t in zip(words[1:], only)])}
    result["end_to_end_fraction"] = round(sum(only) / sum(e2e), 3)
    # the same from CPU time, which other processes' load does not inflate (at N threads:
    # the CPU both spend, not their wall time)
    result["end_to_end_fraction_cpu"] = round(sum(only_cpu) / max(sum(e2e_cpu), 1e-9), 3)
    return result


def _describe(threads: int, result: dict) -> str:
    e, m = result["end_to_end"], result["model_only"]
    return (f"threads {threads}: end to end {e['mean']:,.0f} words/s [{e['low']:,.0f}, {e['high']:,.0f}], "
            f"model only {m['mean']:,.0f} [{m['low']:,.0f}, {m['high']:,.0f}] "
            f"(end to end = {result['end_to_end_fraction']:.2f} of model-only time, "
            f"{result['end_to_end_fraction_cpu']:.2f} of its CPU time)")


@benchmark_app.command("speed")
def speed(
    model: Path = typer.Argument(..., help="model directory (or a training output folder)"),
    text: Path = typer.Argument(..., help="a text file, one sentence (or text) per line"),
    threads: Optional[int] = typer.Option(None, "--threads", help="threads to compare with 1 (default: every core)"),
    batches: int = typer.Option(50, "--batches", help="timed batches (the interval is over these)", callback=positive_int),
    batch_size: int = typer.Option(256, "--batch-size", help="lines per batch", callback=positive_int),
    encoding: str = typer.Option("utf-8", help="encoding of TEXT", callback=text_encoding),
    device: str = typer.Option("cpu", help="cpu | cuda | auto"),
):
    """Words/s end to end and model-only, with bootstrap 95% intervals, at 1 and N threads."""
    with user_errors():
        from tagger.errors import TaggerError
        from tagger.threads import blas_description, configure

        if threads is not None and threads < 1:
            raise TaggerError(f"--threads {threads}: must be >= 1 (default: every core this process may use)")
        if not text.is_file():
            raise TaggerError(f"TEXT {text}: no such file")
        m = load(str(model), device)
        chunks = text_batches(text, encoding, batch_size, batches)
        plan = configure(threads)  # caps (and says so) past the cores available
        report = {"model": str(model), "text": str(text), "batches": batches, "batch_size": batch_size,
                  "cores": plan.cores, "cores_source": plan.source,
                  "load_average": [round(x, 2) for x in os.getloadavg()], "blas": blas_description(),
                  "threads": {}}
        print(f"BLAS: {report['blas']}", file=sys.stderr)
        for n in sorted({1, plan.threads}):
            configure(n)
            result = measure(m, chunks, batch_size)
            report["threads"][str(n)] = result
            print(_describe(n, result), file=sys.stderr)
        if plan.threads > 1:
            one, many = report["threads"]["1"], report["threads"][str(plan.threads)]
            report["scaling"] = {k: round(many[k]["mean"] / one[k]["mean"], 3) for k in ("end_to_end", "model_only")}
        typer.echo(json.dumps(report, indent=2))
