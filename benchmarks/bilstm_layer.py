"""The bare BiLSTM layer against PyTorch, 1 thread: no embedding, no output layer, no optimiser.

    python benchmarks/bilstm_layer.py --torch-path DIR [--repeats 5] [--batches 40]

ours:  tagger.layers.Bidirectional(LSTM(128, return_sequences=True)) over float32 inputs
       (B, T, 100) with each row's real length (Spans; padding never computed).
       train = forward + backward (input gradient and the weight gradients);
       infer = forward with train=False.
torch: nn.LSTM(100, 128, bidirectional=True, batch_first=True). train = forward + backward
       of the padded batch (what a padded Keras-style training step computes); infer =
       forward of the packed batch (pack_padded_sequence: padding skipped, its fastest).
Lengths are UD English-EWT train's, bucketed as in benchmarks/lstm_speed.py (batch 32 for
training, 256 for inference). Tokens/s counts real tokens; the median of interleaved
repeats is printed, with the load average, since the machine is shared. A figure, not a
test (issue 11's "bare BiLSTM layer >= 1.5x PyTorch at 1 thread").
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy and numba are imported
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import blas_env  # noqa: E402

if __name__ == "__main__":
    blas_env.choose()  # before numpy: OpenBLAS's own kernel unless --blas env

import numpy as np  # noqa: E402

from lstm_speed import bucketed_batches, sentence_lengths  # noqa: E402

E, H = 100, 128


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--torch-path", default=None, help="folder holding torch, appended to sys.path")
    p.add_argument("--corpora", default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batches", type=int, default=40, help="training batches per repeat (inference: a quarter)")
    blas_env.add_argument(p)
    return p.parse_args(argv)


def inputs(lengths, rng):
    """(x (B, T, E) float32 zero-padded, lengths (B,) int64) for one batch."""
    lengths = np.asarray(lengths, dtype=np.int64)
    x = rng.standard_normal((len(lengths), int(lengths.max()), E)).astype(np.float32)
    x[np.arange(x.shape[1])[None, :] >= lengths[:, None]] = 0
    return x, lengths


class Ours:
    name = "tagger Bidirectional(LSTM)"

    def __init__(self):
        from tagger.layers import LSTM, Bidirectional
        from tagger.threads import configure

        configure(1)
        self.layer = Bidirectional(LSTM(H, return_sequences=True, ops="cpu", dtype=np.float32), seed=0)

    def train(self, x, lengths):
        from tagger.spans import Spans

        y, backprop = self.layer.forward(x, Spans.from_lengths(lengths, x.shape[1]), train=True)
        backprop(np.ones_like(y))
        for leaf in (self.layer.forward_layer, self.layer.backward_layer):
            for g in leaf.grads:
                g[...] = 0

    def infer(self, x, lengths):
        from tagger.spans import Spans

        self.layer.forward(x, Spans.from_lengths(lengths, x.shape[1]), train=False)


class Torch:
    def __init__(self, path):
        if path:
            sys.path.append(path)
        import torch

        torch.set_num_threads(1)
        self.torch = torch
        self.name = f"pytorch {torch.__version__}"
        self.lstm = torch.nn.LSTM(E, H, bidirectional=True, batch_first=True)

    def train(self, x, lengths):
        xt = self.torch.from_numpy(x).requires_grad_(True)
        y, _ = self.lstm(xt)
        y.backward(self.torch.ones_like(y))
        self.lstm.zero_grad(set_to_none=False)

    def infer(self, x, lengths):
        with self.torch.no_grad():
            packed = self.torch.nn.utils.rnn.pack_padded_sequence(
                self.torch.from_numpy(x), self.torch.from_numpy(lengths), batch_first=True, enforce_sorted=False)
            self.lstm(packed)


def timed(fn, batches) -> float:
    start = time.perf_counter()
    for x, lengths in batches:
        fn(x, lengths)
    return sum(int(lengths.sum()) for _, lengths in batches) / (time.perf_counter() - start)


def main(argv=None):
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    lengths, source = sentence_lengths(args.corpora, rng)
    train = [inputs(b, rng) for b in bucketed_batches(lengths, 32, rng)[: args.batches]]
    infer = [inputs(b, rng) for b in bucketed_batches(lengths, 256, rng)[: max(args.batches // 4, 2)]]
    systems = [Ours(), Torch(args.torch_path)]
    for s in systems:  # warm up: compile, allocate
        timed(s.train, train[:3]), timed(s.infer, infer[:1])
    load = os.getloadavg()[0]
    rates = {s.name: {"train": [], "infer": []} for s in systems}
    for _ in range(args.repeats):  # interleaved, so load hits both alike
        for s in systems:
            rates[s.name]["train"].append(timed(s.train, train))
            rates[s.name]["infer"].append(timed(s.infer, infer))
    print(f"bare BiLSTM layer, E {E}, H {H} per direction, 1 thread; lengths {source}; "
          f"load average {load:.2f} before, {os.getloadavg()[0]:.2f} after; median of {args.repeats} interleaved repeats")
    print(f"BLAS: {blas_env.describe()}")
    print(f"{'system':32s} {'train tok/s':>12s} {'infer tok/s':>12s}")
    med = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in rates.items()}
    for n, r in med.items():
        print(f"{n:32s} {r['train']:12,.0f} {r['infer']:12,.0f}")
    ours, theirs = med[systems[0].name], med[systems[1].name]
    print(f"{'ours / torch':32s} {ours['train'] / theirs['train']:11.2f}x {ours['infer'] / theirs['infer']:11.2f}x")


if __name__ == "__main__":
    main()
