"""BiLSTM tagger speed on CPU: training and inference tokens/s, Numba compile times.

Model: Embedding(20000, 100) -> BiLSTM(128 per direction, return_sequences, concat)
-> Dense(18) -> per-token softmax cross-entropy. Sentence lengths come from UD
English-EWT train (word lines per sentence, integer IDs only), else a lognormal with
mean 17. Batches are bucketed: shuffle, sort by length within a buffer, cut batches.

    python benchmarks/lstm_speed.py                   # ours, 1 thread
    python benchmarks/lstm_speed.py --compare torch   # and PyTorch on the same shapes
    python benchmarks/lstm_speed.py --chars lstm      # word-only vs + a character encoder

A figure, not a test. By default it runs the public layers (tagger.layers: Embedding,
Bidirectional(LSTM), Dense in a Sequential; tagger.optim.Adam with lazy embedding rows);
`--driver ops` runs the same op sequence on tagger.ops.cpu directly (no layer overhead,
and the two directions concurrently through lstm_forward_pair when --threads >= 2).
`--verbose` prints every repeat, and the minor page faults per training batch.
`--chars lstm|cnn` (layers driver) also measures the full model with a character encoder
(model.chars defaults: char_dim 25, lstm 25 units per direction or cnn 30 filters of
width 3, dropout 0.5) as `tagger train` builds it: WordFeatures(Embedding, CharEncoder)
-> BiLSTM -> Dense. Each word id has one fixed spelling (lengths ~ lognormal, mean 5,
1..20 characters, 80 distinct characters), so a batch's characters follow its words.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import blas_env  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="threads for BLAS, Numba and torch (default 1)")
    p.add_argument("--corpora", default=None, help="corpora folder (default: $TAGGER_CORPORA or ../shared/corpora)")
    p.add_argument("--compare", choices=["torch"], default=None, help="also measure PyTorch on the same shapes")
    p.add_argument("--driver", choices=["layers", "ops"], default="layers",
                   help="ours through tagger.layers (default) or through tagger.ops.cpu directly")
    p.add_argument("--projected", action="store_true",
                   help="with --driver ops: inference looks the input projection up in embedding @ W "
                        "(cpu.lstm_input_table / lstm_forward_ids) instead of computing it")
    p.add_argument("--chars", choices=["lstm", "cnn"], default=None,
                   help="also measure the model with this character encoder (layers driver)")
    p.add_argument("--batch", type=int, default=32, help="training batch size")
    p.add_argument("--infer-batch", type=int, default=256, help="inference batch size")
    p.add_argument("--batches", type=int, default=40, help="training batches per timed repeat")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (the median is reported)")
    p.add_argument("--no-compile-times", action="store_true", help="skip the cold/cached compile measurements")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="print every repeat")
    blas_env.add_argument(p)
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:  # thread counts must be fixed before numpy (and its BLAS) is imported
    # --threads >= 2 runs the two directions in two threads (both drivers), each with a
    # one-thread BLAS (a multithreaded BLAS under each would oversubscribe the cores); main()
    # applies the same plan as the CLI (tagger.threads.configure). torch gets --threads.
    _blas = 1
    for var, n in (("NUMBA_NUM_THREADS", ARGS.threads), ("OMP_NUM_THREADS", _blas),
                   ("OPENBLAS_NUM_THREADS", _blas), ("MKL_NUM_THREADS", _blas)):
        os.environ[var] = str(n)
    blas_env.choose()  # OpenBLAS's own kernel unless --blas env

import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

V, E, H, K = 20000, 100, 128, 18
EWT = Path("ud_english_ewt") / "en_ewt-ud-train.conllu"


# ----------------------------------------------------------------------------------------
# Data: sentence lengths and bucketed batches


def find_corpus(corpora):
    for root in (corpora, os.environ.get("TAGGER_CORPORA"), REPO.parent / "shared" / "corpora"):
        if root and (Path(root) / EWT).is_file():
            return Path(root) / EWT
    return None


def sentence_lengths(corpora, rng):
    path = find_corpus(corpora)
    if path is None:
        sigma = 0.6
        mu = np.log(17.0) - sigma**2 / 2  # mean 17
        lengths = np.maximum(1, np.round(rng.lognormal(mu, sigma, size=12000))).astype(np.int64)
        return lengths, "lognormal(mean 17)"
    lengths, n = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                if n:
                    lengths.append(n)
                n = 0
            elif not line.startswith("#") and line.split("\t", 1)[0].isdigit():
                n += 1
    if n:
        lengths.append(n)
    return np.array(lengths, dtype=np.int64), str(path)


def bucketed_batches(lengths, batch, rng, buffer_batches=50):
    """Shuffle, sort by length within buffers of buffer_batches * batch, cut, shuffle batches."""
    idx = rng.permutation(len(lengths))
    out = []
    buf = batch * buffer_batches
    for i in range(0, len(idx), buf):
        chunk = idx[i : i + buf]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        out.extend(lengths[chunk[j : j + batch]] for j in range(0, len(chunk), batch))
    rng.shuffle(out)
    return out


def make_batch(lens, rng):
    B, T = len(lens), int(lens.max())
    ids = np.zeros((B, T), dtype=np.int64)
    labels = np.zeros((B, T), dtype=np.int64)
    mask = np.arange(T)[None, :] < lens[:, None]
    ids[mask] = rng.integers(1, V, size=int(mask.sum()))
    labels[mask] = rng.integers(0, K, size=int(mask.sum()))
    return ids, labels, mask, lens


# ----------------------------------------------------------------------------------------
# Ours: the op sequence of Embedding -> Bidirectional(LSTM) -> Dense -> xent


class OursModel:
    def __init__(self, ops, rng, threads):
        self.ops = ops
        self.threads = threads
        f32 = np.float32

        def glorot(shape):
            lim = np.sqrt(6.0 / sum(shape))
            return rng.uniform(-lim, lim, size=shape).astype(f32)

        def lstm_params():
            b = np.zeros(4 * H, f32)
            b[H : 2 * H] = 1.0
            return [glorot((E, 4 * H)), glorot((H, 4 * H)) * 0.5, b]

        self.params = [rng.normal(scale=0.1, size=(V, E)).astype(f32)]  # embedding
        self.params += lstm_params() + lstm_params()  # forward, backward directions
        self.params += [glorot((2 * H, K)), np.zeros(K, f32)]  # dense
        self.grads = [np.zeros_like(p) for p in self.params]
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.step = 0

    def forward(self, ids, lens, train):
        ops = self.ops
        table, Wf, Uf, bf, Wb, Ub, bb, Wd, bd = self.params
        B = len(lens)
        starts = np.zeros(B, dtype=np.int64)
        X = ops.embedding_forward(table, ids)
        (Yf, _, _, cf), (Yb, _, _, cb) = ops.lstm_forward_pair(
            (X, Wf, Uf, bf, starts, lens, False), (X, Wb, Ub, bb, starts, lens, True), threads=self.threads
        )
        Y = ops.merge_forward(Yf, Yb, "concat")
        logits = ops.dense_forward(Y, Wd, bd)
        return logits, (X, cf, cb, Y, Yf, Yb)

    def prepare_projected(self):
        """P = embedding @ W per direction, once for the frozen inference weights."""
        table, Wf, _, _, Wb = self.params[:5]
        self.P = (self.ops.lstm_input_table(table, Wf), self.ops.lstm_input_table(table, Wb))

    def infer_projected(self, ids, lens):
        ops = self.ops
        _, _, Uf, bf, _, Ub, bb, Wd, bd = self.params
        starts = np.zeros(len(lens), dtype=np.int64)
        (Yf, _, _, _), (Yb, _, _, _) = ops.lstm_forward_ids_pair(
            (self.P[0], ids, Uf, bf, starts, lens, False), (self.P[1], ids, Ub, bb, starts, lens, True),
            threads=self.threads,
        )
        return ops.dense_forward(ops.merge_forward(Yf, Yb, "concat"), Wd, bd).argmax(-1)

    def train_step(self, ids, labels, mask, lens):
        ops = self.ops
        g = self.grads
        logits, (X, cf, cb, Y, Yf, Yb) = self.forward(ids, lens, train=True)
        loss, dlogits = ops.softmax_xent(logits, labels, mask)
        dY = ops.dense_backward(dlogits, Y, self.params[7], g[7], g[8])
        dYf, dYb = ops.merge_backward(dY, Yf, Yb, "concat")
        dXf, dXb = ops.lstm_backward_pair(
            (cf, dYf, None, None, g[1], g[2], g[3]), (cb, dYb, None, None, g[4], g[5], g[6]), threads=self.threads
        )
        dXf += dXb
        rows = ops.embedding_backward(g[0], dXf, ids, mask)
        self.step += 1
        for k, (p, gr, m, v) in enumerate(zip(self.params, g, self.m, self.v)):
            r = rows if k == 0 else None
            ops.adam_update(p, gr, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, self.step, rows=r)
            ops.fill_(gr, 0.0, rows=r)
        return loss


class LayersModel:
    """The public API: Sequential(Embedding, Bidirectional(LSTM), Dense) + lazy Adam."""

    def __init__(self, threads):
        from tagger.layers import LSTM, Bidirectional, Dense, Embedding, Sequential
        from tagger.optim import Adam

        self.model = Sequential(
            [Embedding(V, E, mask_zero=True), Bidirectional(LSTM(H, return_sequences=True)), Dense(K)],
            ops="cpu", seed=0, dtype=np.float32,
        )
        self.ops = self.model.ops
        self.opt = Adam(lr=1e-3, lazy=True)

    def train_step(self, ids, labels, mask, lens):
        logits, backprop = self.model.forward(ids, train=True)
        loss, dlogits = self.ops.softmax_xent(logits, labels, mask)
        backprop(dlogits)
        self.opt.step(self.model)
        return loss

    def infer(self, ids, lens):
        logits, _ = self.model.forward(ids, train=False)
        return logits.argmax(-1)


class CharsLayersModel(LayersModel):
    """LayersModel with WordFeatures(Embedding, CharEncoder) as its first stage."""

    N_CHARS, MAX_WORD = 82, 20  # 80 characters + [PAD], [UNK]

    def __init__(self, threads, encoder, seed=0):
        from tagger.layers import LSTM, Bidirectional, CharEncoder, Dense, Embedding, Sequential, WordFeatures
        from tagger.optim import Adam

        rng = np.random.default_rng(seed + 7)
        sigma = 0.5
        lens = np.clip(np.round(rng.lognormal(np.log(5.0) - sigma**2 / 2, sigma, size=V)), 1, self.MAX_WORD).astype(np.int32)
        lens[0] = 0  # id 0 is padding
        self.spell_len = lens
        self.spell = rng.integers(2, self.N_CHARS, size=(V, self.MAX_WORD)).astype(np.int32)
        self.spell[np.arange(self.MAX_WORD)[None, :] >= lens[:, None]] = 0
        chars = CharEncoder(encoder, char_vocab_size=self.N_CHARS, char_dim=25, units=25, filters=30, width=3,
                            dropout=0.5, name="chars")
        self.model = Sequential(
            [WordFeatures(Embedding(V, E, mask_zero=True), chars), Bidirectional(LSTM(H, return_sequences=True)), Dense(K)],
            ops="cpu", seed=0, dtype=np.float32,
        )
        self.ops = self.model.ops
        self.opt = Adam(lr=1e-3, lazy=True)

    def inputs(self, ids):
        from tagger.layers import WordInputs

        C = max(int(self.spell_len[ids].max()), 1)  # the batch's longest word, as PaddedBatch
        return WordInputs(ids, self.spell[ids][..., :C], self.spell_len[ids])

    def train_step(self, ids, labels, mask, lens):
        logits, backprop = self.model.forward(self.inputs(ids), train=True)
        loss, dlogits = self.ops.softmax_xent(logits, labels, mask)
        backprop(dlogits)
        self.opt.step(self.model)
        return loss

    def infer(self, ids, lens):
        logits, _ = self.model.forward(self.inputs(ids), train=False)
        return logits.argmax(-1)


# ----------------------------------------------------------------------------------------
# PyTorch: the same shapes


class TorchModel:
    def __init__(self, threads):
        import torch
        from torch import nn

        torch.set_num_threads(threads)
        torch.manual_seed(0)
        self.torch = torch
        self.emb = nn.Embedding(V, E)
        self.lstm = nn.LSTM(E, H, batch_first=True, bidirectional=True)
        self.dense = nn.Linear(2 * H, K)
        self.modules = nn.ModuleList([self.emb, self.lstm, self.dense])
        self.opt = torch.optim.Adam(self.modules.parameters(), lr=1e-3)
        self.loss = nn.CrossEntropyLoss(reduction="sum")

    def train_step(self, ids, labels, mask, lens):
        torch = self.torch
        ids_t, labels_t = torch.from_numpy(ids), torch.from_numpy(labels)
        mask_t = torch.from_numpy(mask)
        self.opt.zero_grad(set_to_none=True)
        Y, _ = self.lstm(self.emb(ids_t))  # padded + bucketed
        logits = self.dense(Y)
        loss = self.loss(logits[mask_t], labels_t[mask_t]) / mask_t.sum()
        loss.backward()
        self.opt.step()
        return loss.item()

    def infer(self, ids, lens):
        torch = self.torch
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        with torch.inference_mode():
            X = self.emb(torch.from_numpy(ids))
            packed = pack_padded_sequence(X, torch.from_numpy(lens), batch_first=True, enforce_sorted=False)
            Y, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True)
            return self.dense(Y).argmax(-1)


# ----------------------------------------------------------------------------------------
# Timing


def minor_faults():
    """This process's minor page faults so far (0 where getrusage is missing)."""
    try:
        import resource
    except ImportError:  # not on this platform
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed_pass(fn, batches, start, n):
    """(tokens, wall seconds, CPU seconds of this process, minor page faults) for n
    consecutive batches, after one untimed batch: the systems alternate, and PyTorch's
    OpenMP/MKL workers spin-wait for a while after its last parallel region, so a pass
    of ours timed from its first batch shared the cores with them (measured: our 2-thread
    inference 298k tokens/s right after PyTorch's, 372k with OMP_WAIT_POLICY=PASSIVE,
    which in turn halves PyTorch's own 2-thread training). The untimed batch lets the
    previous system's threads go idle, and warms this one's."""
    fn(*batches[(start - 1) % len(batches)])
    tokens = 0
    w0, c0, f0 = time.perf_counter(), time.process_time(), minor_faults()
    for q in range(start, start + n):
        b = batches[q % len(batches)]
        fn(*b)
        tokens += int(b[-1].sum())
    return tokens, time.perf_counter() - w0, time.process_time() - c0, minor_faults() - f0


def measure(systems, train_batches, infer_batches, args):
    """Median tokens/s (wall and CPU time) per system; repeats interleave the systems so
    that load from other processes on a shared machine hits all of them alike."""
    for _, train_fn, infer_fn in systems:  # warm-up: compiles or loads kernels, faults pages in
        for b in train_batches[:3]:
            train_fn(*b)
        for b in infer_batches[:2]:
            infer_fn(b[0], b[-1])
    # inference passes of at least 8 batches: 3 batches of 256 (what --batches 30 gave) are
    # ~20 ms at 2 threads, too short a window on a shared machine (2-thread inference read
    # anywhere from 1.25x to 1.75x its 1-thread rate from run to run)
    n_inf = max(8, args.batches * args.batch // args.infer_batch)
    rates = {name: {"train": [], "train_cpu": [], "infer": [], "infer_cpu": [], "train_faults": []}
             for name, _, _ in systems}
    for rep in range(args.repeats):
        for name, train_fn, _ in systems:
            tok, wall, cpu_s, faults = timed_pass(train_fn, train_batches, 3 + rep * args.batches, args.batches)
            rates[name]["train"].append(tok / wall)
            rates[name]["train_cpu"].append(tok / cpu_s)
            # page faults per batch: fresh heap pages (malloc trimming and regrowing), which
            # cost system time that the CPU-time figures include
            rates[name]["train_faults"].append(faults / args.batches)
    # inference after training, with the weights fixed, as `tagger predict` runs a model;
    # the systems still alternate so that load from other processes hits them alike
    for rep in range(args.repeats):
        for name, _, infer_fn in systems:
            tok, wall, cpu_s, _ = timed_pass(lambda ids, labels, mask, lens: infer_fn(ids, lens), infer_batches,
                                             2 + rep * n_inf, n_inf)
            rates[name]["infer"].append(tok / wall)
            rates[name]["infer_cpu"].append(tok / cpu_s)
    return {name: {k: statistics.median(v) for k, v in r.items()} | {"spread": r} for name, r in rates.items()}


COMPILE_SNIPPET = """
import time, sys
t0 = time.perf_counter()
sys.path.insert(0, {repo!r})
import numpy as np
import tagger
from tagger.ops import cpu
cold = cpu.compile_notice()
if {full}:
    cpu.warmup((np.float32,))
else:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2, 3, 4)).astype(np.float32)
    W = rng.normal(size=(4, 8)).astype(np.float32); U = rng.normal(size=(2, 8)).astype(np.float32)
    Y, h, c, cache = cpu.lstm_forward(X, W, U, np.zeros(8, np.float32), [0, 0], [3, 2])
print(time.perf_counter() - t0, cold)
"""


def compile_times(threads):
    """(cold seconds: import + compile every float32 kernel, cached seconds: import + tiny forward)."""
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as cache_dir:
        env["NUMBA_CACHE_DIR"] = cache_dir
        out = []
        for full in (True, False):
            code = COMPILE_SNIPPET.format(repo=str(REPO), full=full)
            res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            secs, cold = res.stdout.split()
            out.append((float(secs), cold == "True"))
    (cold_s, was_cold), (cached_s, still_cold) = out
    assert was_cold and not still_cold, "cache state not as expected"
    return cold_s, cached_s


def layer_systems(args):
    """(name, train_step, infer) of the layers model, and with --chars of its chars twin."""
    model = LayersModel(args.threads)
    systems = [("tagger layers (numba)", model.train_step, model.infer)]
    if args.chars is not None:
        cm = CharsLayersModel(args.threads, args.chars)
        systems.append((f"  + chars {args.chars}", cm.train_step, cm.infer))
    return systems


def main(args):
    from tagger.ops import cpu
    from tagger.threads import configure

    plan = configure(args.threads)  # what `tagger train/predict --threads N` applies
    rng = np.random.default_rng(args.seed)
    lengths, source = sentence_lengths(args.corpora, rng)
    train_batches = [make_batch(lens, rng) for lens in bucketed_batches(lengths, args.batch, rng)]
    infer_batches = [make_batch(lens, rng) for lens in bucketed_batches(lengths, args.infer_batch, rng)]
    print(f"lengths: {source}: {len(lengths)} sentences, mean {lengths.mean():.1f}, max {lengths.max()}")
    print(f"BLAS: {blas_env.describe()}")
    print(f"threads: {args.threads} (NUMBA_NUM_THREADS={os.environ['NUMBA_NUM_THREADS']}, "
          f"OPENBLAS/MKL/OMP={os.environ['OPENBLAS_NUM_THREADS']}; torch.set_num_threads({args.threads}); "
          f"tagger plan: {plan.pair} direction thread(s), BLAS {plan.blas} each)")

    if not args.no_compile_times:
        cold_s, cached_s = compile_times(args.threads)
        print(f"numba compile: cold {cold_s:.1f} s (import + all float32 kernels), "
              f"from cache {cached_s:.2f} s (fresh process: import tagger + tiny forward)")

    if args.chars is not None and args.driver != "layers":
        raise SystemExit("--chars runs on the layers driver (the default); drop --driver ops")
    if args.driver == "layers":
        systems = layer_systems(args)
    else:
        model = OursModel(cpu, np.random.default_rng(1), args.threads)
        infer = lambda ids, lens: model.forward(ids, lens, train=False)[0].argmax(-1)  # noqa: E731
        name = "tagger ops (numba)"
        if args.projected:
            t0 = time.perf_counter()
            model.prepare_projected()
            print(f"projected embedding tables (2 x {V} x {4 * H}): {time.perf_counter() - t0:.3f} s, once")
            infer, name = model.infer_projected, "tagger ops+proj (numba)"
        systems = [(name, model.train_step, infer)]
    if args.compare == "torch":
        tm = TorchModel(args.threads)
        systems.append((f"pytorch {tm.torch.__version__}", tm.train_step, tm.infer))
    res = measure(systems, train_batches, infer_batches, args)
    print()
    print(f"batch {args.batch} (train) / {args.infer_batch} (infer), {args.threads} thread(s), "
          f"median of {args.repeats} interleaved repeats; tokens/s by wall clock and by this process's CPU time")
    print(f"{'':24s} {'train':>10s} {'infer':>10s} {'train/cpu':>10s} {'infer/cpu':>10s}")
    for name, r in res.items():
        print(f"{name:24s} {r['train']:10,.0f} {r['infer']:10,.0f} {r['train_cpu']:10,.0f} {r['infer_cpu']:10,.0f}")
    if args.chars is not None:
        a, b = res["tagger layers (numba)"], res[f"  + chars {args.chars}"]
        print(f"{'chars / word-only':24s} {b['train'] / a['train']:9.2f}x {b['infer'] / a['infer']:9.2f}x "
              f"{b['train_cpu'] / a['train_cpu']:9.2f}x {b['infer_cpu'] / a['infer_cpu']:9.2f}x")
    elif len(res) == 2:
        a, b = res.values()
        print(f"{'ratio ours / torch':24s} {a['train'] / b['train']:9.2f}x {a['infer'] / b['infer']:9.2f}x "
              f"{a['train_cpu'] / b['train_cpu']:9.2f}x {a['infer_cpu'] / b['infer_cpu']:9.2f}x"
              "   (targets: >= 2x train, >= 1.5x infer)")
    if args.verbose:
        for name, r in res.items():
            for k, v in r["spread"].items():
                print(f"  {name} {k}: " + " ".join(f"{x:,.0f}" for x in v))


if __name__ == "__main__":
    main(ARGS)
