"""Peak memory of `tagger predict` on one long line (tests/test_streaming.py's slow test).

    python tests/long_line_memory.py DIR MEGABYTES [--crf] [--whole]

Builds in DIR an untrained model of the EWT tagger's sizes (vocabulary 20k, embedding
100, one BiLSTM of 256, 17 tags; the weights do not change what memory is used) and a
text file of one line of MEGABYTES MB of its words, then runs `tagger predict` on it and
on a baseline file, each in a fresh process, and prints one JSON line: tokens, bytes,
the two peak RSS (ru_maxrss) and extra_bytes, the difference. The baseline is one line
of 20 words. extra_bytes includes the projected input tables (2 x 20k x 1024 floats,
164 MB), built by any run that predicts more tokens than the vocabulary has words, with
or without blocks: a cost per model, not per text (compare two line sizes for the cost
per byte).
--whole predicts the long line through the whole-sentence path (streaming.THRESHOLD
raised), for comparison: ~2,000 bytes per byte of text, so keep MEGABYTES <= 1 there.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TAGS = ["ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN", "PUNCT",
        "SCONJ", "SYM", "VERB", "X"]

CHILD = """
import os, resource, sys
from tagger import streaming
from tagger.cli import app
if os.environ.get("LONG_LINE_WHOLE"):
    streaming.THRESHOLD = 1 << 62
try:
    app(sys.argv[1:])
except SystemExit as stop:
    assert not stop.code, stop.code
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, file=sys.stderr)
"""


def build(folder: Path, megabytes: float, crf: bool):
    import numpy as np

    from tagger.config import parse_config
    from tagger.data.vocab import LabelVocab, WordVocab
    from tagger.io import save_model
    from tagger.models import Model, build_network

    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = sorted({"".join(rng.choice(letters, size=rng.integers(2, 6))) for _ in range(25000)})[:20000]
    cfg = parse_config({"model": {"task": "tag", "embedding_dim": 100, "lstm_units": 256, "layers": 1, "crf": crf}})
    vocab, labels = WordVocab.build([words]), LabelVocab.build(TAGS)
    save_model(Model(cfg, vocab, labels, build_network(cfg.model, len(vocab), len(labels), seed=0)), folder / "model")
    picks = rng.integers(len(words), size=int(megabytes * 2**20 / 4))  # ~3.5 letters and a space per word
    line = " ".join(words[k] for k in picks)[: int(megabytes * 2**20)].rsplit(" ", 1)[0]
    (folder / "long.txt").write_text(line + "\n", encoding="utf-8")
    (folder / "short.txt").write_text(" ".join(words[:20]) + "\n", encoding="utf-8")
    return len(line.split()), len(line)


def peak_rss(folder: Path, name: str, whole=False) -> int:
    env = {**os.environ, "LONG_LINE_WHOLE": "1" if whole else ""}
    with open(folder / f"{name}.out", "w", encoding="utf-8") as out:
        done = subprocess.run([sys.executable, "-c", CHILD, "predict", str(folder / "model"), str(folder / f"{name}.txt"),
                               "--threads", "1"], stdout=out, stderr=subprocess.PIPE, text=True, check=True, env=env)
    return int(done.stderr.strip().splitlines()[-1])


def main(argv):
    folder, megabytes, crf, whole = Path(argv[0]), float(argv[1]), "--crf" in argv, "--whole" in argv
    tokens, size = build(folder, megabytes, crf)
    base, peak = peak_rss(folder, "short"), peak_rss(folder, "long", whole)
    print(json.dumps({"tokens": tokens, "bytes": size, "baseline_rss": base, "peak_rss": peak, "extra_bytes": peak - base,
                      "bytes_per_byte": round((peak - base) / size, 1)}))


if __name__ == "__main__":
    main(sys.argv[1:])
