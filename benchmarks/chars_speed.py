"""Character encoder speed on CPU: forward + backward words/s, 'lstm' vs 'cnn'.

Model: CharEncoder (tagger/layers/chars.py) with Lample's sizes for 'lstm' (char_dim 25,
25 units per direction) and Ma & Hovy's for 'cnn' (char_dim 30, 30 filters of width 3),
float32, ops 'cpu'. Batches of sentences with lognormal word counts (mean ~17) and word
lengths (mean ~5 characters, English-like), drawn from one seed.

    python benchmarks/chars_speed.py                 # both encoders, 1 thread
    python benchmarks/chars_speed.py --encoder cnn --batches 20

A figure, not a test: it prints real words per second (median of --repeats passes, after
one warm-up pass that also compiles the Numba kernels).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import blas_env  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", choices=["lstm", "cnn", "both"], default="both", help="which encoder (default both)")
    p.add_argument("--threads", type=int, default=1, help="threads for BLAS and Numba (default 1)")
    p.add_argument("--batch", type=int, default=32, help="sentences per batch")
    p.add_argument("--batches", type=int, default=10, help="batches per timed pass")
    p.add_argument("--repeats", type=int, default=3, help="timed passes (the median is reported)")
    p.add_argument("--seed", type=int, default=0)
    blas_env.add_argument(p)
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:  # thread counts must be fixed before numpy (and its BLAS) is imported
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)
    blas_env.choose()  # OpenBLAS's own kernel unless --blas env

import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

SIZES = {"lstm": dict(char_dim=25, units=25), "cnn": dict(char_dim=30, filters=30, width=3)}
CHAR_VOCAB = 100


def make_batches(n_batches, batch, seed):
    """[(char ids (B, T, C) int32, word Spans, char lengths (B, T))] of synthetic sentences."""
    from tagger.spans import Spans

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        words = np.clip(rng.lognormal(2.7, 0.5, size=batch).astype(int), 1, 80)
        T = int(words.max())
        lengths = np.clip(rng.lognormal(1.5, 0.5, size=(batch, T)).astype(int), 1, 25)
        lengths[np.arange(T)[None, :] >= words[:, None]] = 0
        ids = rng.integers(2, CHAR_VOCAB, size=(batch, T, int(lengths.max())), dtype=np.int32)
        ids[np.arange(ids.shape[2])[None, None, :] >= lengths[..., None]] = 0
        out.append((ids, Spans.from_lengths(words, T), lengths))
    return out


def one_pass(enc, batches):
    """Seconds for forward + backward over the batches, and the real words in them."""
    start, words = time.perf_counter(), 0
    for ids, spans, lengths in batches:
        y, backprop = enc.forward(ids, spans, train=True, char_lengths=lengths)
        backprop(np.ones(y.shape, dtype=np.float32))
        enc.zero_grad()
        words += spans.n_tokens
    return time.perf_counter() - start, words


def measure(kind, batches, repeats, seed=0):
    """Median real words/s of `repeats` timed passes after one warm-up pass."""
    from tagger.layers.chars import CharEncoder

    enc = CharEncoder(kind, char_vocab_size=CHAR_VOCAB, dropout=0.5, ops="cpu", seed=seed, **SIZES[kind])
    one_pass(enc, batches[:1])  # builds the weights, compiles (or loads) the kernels
    rates = []
    for _ in range(repeats):
        seconds, words = one_pass(enc, batches)
        rates.append(words / seconds)
    return statistics.median(rates)


def main(args):
    batches = make_batches(args.batches, args.batch, args.seed)
    kinds = ["lstm", "cnn"] if args.encoder == "both" else [args.encoder]
    print(f"BLAS: {blas_env.describe()}")
    print(f"{args.batches} batches of {args.batch} sentences, {sum(s.n_tokens for _, s, _ in batches)} words; "
          f"threads {args.threads}")
    for kind in kinds:
        print(f"{kind:5s} forward+backward: {measure(kind, batches, args.repeats, args.seed):10.0f} words/s")


if __name__ == "__main__":
    main(ARGS)
