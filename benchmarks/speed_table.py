"""Every core, end to end: the whole speed table in one run (issue 11).

    python benchmarks/speed_table.py [--threads 1 2] [--torch-path DIR] [--corpora DIR]

Prints, at each thread count (default 1 and 2), beside PyTorch CPU at the same count:

    layers   training and inference tokens/s through the public layers (tagger.layers:
             Embedding -> Bidirectional(LSTM) -> Dense, lazy Adam; the shapes of
             benchmarks/lstm_speed.py), with the process's thread plan applied
             (tagger.threads.configure: directions concurrent, BLAS 1 thread each)
    scaling  the N-thread rate over the 1-thread rate, per system and measurement
    predict  end-to-end words/s (tagger.predict.predict_chunk: split, encode, predict,
             decode, format jsonl) against model-only words/s (the forward pass over the
             same encoded batches) for a tagger with BiLSTM 256, with bootstrap 95%
             intervals over batches (tagger benchmark speed's method)
    GEMM     the fraction of the machine's float32 GEMM rate (a large NumPy matmul at the
             same thread count) that the layers' training and inference reach, counting
             2 flops per multiply-add of the LSTM, merge-free Dense and (training) the
             two backward GEMMs per forward one

A figure, not a test; the machine is shared, so the load average is printed beside it.
--torch-path: a folder holding torch (e.g. pip install --target DIR torch), appended to
sys.path last so it shadows nothing the project imports.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
import blas_env  # noqa: E402

if __name__ == "__main__":
    blas_env.choose()  # before numpy: OpenBLAS's own kernel unless --blas env

import numpy as np  # noqa: E402

import lstm_speed as ls  # noqa: E402  (its data, models and interleaved timing)

PREDICT_UNITS, PREDICT_EMB = 256, 100
PREDICT_LINES = int(os.environ.get("SPEED_TABLE_LINES", 8192))  # smaller for a smoke run


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--torch-path", default=None, help="folder with torch, appended to sys.path")
    p.add_argument("--corpora", default=None)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--infer-batch", type=int, default=256)
    p.add_argument("--batches", type=int, default=30, help="training batches per timed repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--predict-batches", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    blas_env.add_argument(p)
    return p.parse_args(argv)


def gemm_rate(threads, n=1536, reps=5) -> float:
    """Best float32 GEMM flop/s of a large square NumPy matmul (BLAS at `threads`)."""
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).normal(size=(n, n)).astype(np.float32)
    c = np.empty_like(a)
    with threadpool_limits(limits=threads, user_api="blas"):
        np.matmul(a, a, out=c)
        best = min(_seconds(lambda: np.matmul(a, a, out=c)) for _ in range(reps))
    return 2.0 * n**3 / best


def _seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def flops_per_token(train: bool) -> float:
    """Multiply-adds x 2 of one token through Embedding -> BiLSTM(H) -> Dense(K)."""
    E, H, K = ls.E, ls.H, ls.K  # noqa: N806 (the embedding lookup itself costs no FLOPs)
    forward = 2 * (2 * E * 4 * H + 2 * H * 4 * H) + 2 * 2 * H * K
    return 3 * forward if train else forward  # backward: dX and dW GEMMs per forward GEMM


def layer_rates(args, threads, batches):
    """{system: median rates} for the layers and (when importable) PyTorch at `threads`."""
    from tagger.threads import configure

    plan = configure(threads)
    model = ls.LayersModel(plan.threads)
    systems = [("tagger layers", model.train_step, model.infer)]
    try:
        tm = ls.TorchModel(plan.threads)
        systems.append((f"pytorch {tm.torch.__version__}", tm.train_step, tm.infer))
    except ImportError:
        print("(torch not importable: pass --torch-path)", file=sys.stderr)
    return plan, ls.measure(systems, batches[0], batches[1], args)


def predict_setup(args):
    """An untrained BiLSTM-256 tagger on the bundled POS sample and PREDICT_LINES lines
    drawn from its sentences (one word in ten made unknown)."""
    from tagger.config import load_config
    from tagger.data.prepare import build_vocabularies, load_splits
    from tagger.models import Model, build_network

    cfg = load_config(REPO / "configs" / "quickstart.yaml",
                      {"model.lstm_units": PREDICT_UNITS, "model.embedding_dim": PREDICT_EMB, "vocab.unknown_classes": True})
    splits = load_splits(cfg)
    words, labels = build_vocabularies(cfg, splits.train)
    model = Model(cfg, words, labels, build_network(cfg.model, len(words), len(labels), ops="cpu"))
    rng = np.random.default_rng(args.seed)
    sentences = [ex.tokens for ex in splits.train + splits.dev]
    lines = []
    for k in rng.integers(0, len(sentences), size=PREDICT_LINES):
        lines.append(" ".join(w if rng.random() > 0.1 else f"{w}{rng.integers(100)}x" for w in sentences[k]))
    return model, list(enumerate(lines, 1))


def predict_rates(model, lines, threads, n_batches, lines_per_batch=256):
    from tagger.cli.benchmark import measure
    from tagger.threads import configure

    configure(threads)
    chunks = [[lines[(i + j) % len(lines)] for j in range(lines_per_batch)]
              for i in range(0, (n_batches + 1) * lines_per_batch, lines_per_batch)]
    return measure(model, chunks, lines_per_batch)


def print_table(args, layers, predict, gemm):
    threads = args.threads
    print(f"\nload average {os.getloadavg()[0]:.2f} / {os.getloadavg()[1]:.2f} / {os.getloadavg()[2]:.2f} "
          f"(shared machine); cores {layers[threads[0]][0].cores} ({layers[threads[0]][0].source})")
    print(f"layers: V={ls.V} E={ls.E} H={ls.H} K={ls.K}, batch {args.batch} train / {args.infer_batch} infer, "
          f"median of {args.repeats} interleaved repeats, tokens/s (wall clock)")
    head = f"{'system':20s} {'threads':>7s} {'train':>9s} {'infer':>9s} {'train GEMM%':>11s} {'infer GEMM%':>11s}"
    print(head)
    for n in threads:
        for name, r in layers[n][1].items():
            tf = r["train"] * flops_per_token(True) / gemm[n] * 100
            inf = r["infer"] * flops_per_token(False) / gemm[n] * 100
            print(f"{name:20s} {n:7d} {r['train']:9,.0f} {r['infer']:9,.0f} {tf:10.1f}% {inf:10.1f}%")
    lo, hi = threads[0], threads[-1]
    for name in layers[lo][1]:
        a, b = layers[lo][1][name], layers[hi][1][name]
        print(f"scaling {name} {hi}/{lo} threads: train {b['train'] / a['train']:.2f}x, infer {b['infer'] / a['infer']:.2f}x")
    for n in threads:
        names = list(layers[n][1])
        if len(names) == 2:
            a, b = (layers[n][1][k] for k in names)
            print(f"ours / torch at {n} thread(s): train {a['train'] / b['train']:.2f}x, infer {a['infer'] / b['infer']:.2f}x")
    print("GEMM limit (float32 NumPy matmul): " + ", ".join(f"{n} thread(s) {gemm[n] / 1e9:.1f} GFLOP/s" for n in threads))
    print(f"BLAS: {blas_env.describe()}")
    print(f"\npredict: BiLSTM {PREDICT_UNITS} (E {PREDICT_EMB}), {PREDICT_LINES} lines, words/s mean [95% bootstrap]")
    for n in threads:
        e, m = predict[n]["end_to_end"], predict[n]["model_only"]
        print(f"  {n} thread(s): end to end {e['mean']:,.0f} [{e['low']:,.0f}, {e['high']:,.0f}]  "
              f"model only {m['mean']:,.0f} [{m['low']:,.0f}, {m['high']:,.0f}]  "
              f"end-to-end / model-only {e['mean'] / m['mean']:.2f}")


def main(args):
    if args.torch_path:
        sys.path.append(args.torch_path)
    rng = np.random.default_rng(args.seed)
    lengths, source = ls.sentence_lengths(args.corpora, rng)
    batches = ([ls.make_batch(x, rng) for x in ls.bucketed_batches(lengths, args.batch, rng)],
               [ls.make_batch(x, rng) for x in ls.bucketed_batches(lengths, args.infer_batch, rng)])
    print(f"lengths: {source}: {len(lengths)} sentences, mean {lengths.mean():.1f}")
    model, lines = predict_setup(args)
    layers, predict, gemm = {}, {}, {}
    for n in args.threads:
        gemm[n] = gemm_rate(n)
        layers[n] = layer_rates(args, n, batches)
        predict[n] = predict_rates(model, lines, n, args.predict_batches)
        print(f"measured {n} thread(s)", file=sys.stderr)
    print_table(args, layers, predict, gemm)


if __name__ == "__main__":
    main(parse_args())
