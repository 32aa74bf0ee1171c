"""Cut the UD English-EWT sample in corpora/ewt/ out of the full treebank.

    python corpora/make_ewt_sample.py [--source ../shared/corpora/ud_english_ewt]

Deterministic, no randomness: a sentence is a block of lines ending at a blank line
(its ``# newdoc`` / ``# newpar`` / ``# sent_id`` / ``# text`` comments included), and the
sample keeps every TRAIN_STRIDE-th block of ``en_ewt-ud-train.conllu`` and every
DEV_STRIDE-th block of ``en_ewt-ud-dev.conllu``, starting with the first.  Kept blocks are
copied byte for byte, in their original order.  The source files must be the UD r2.16
release; their sha256 is checked so that the sample cannot silently change.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parent.parent / "shared" / "corpora" / "ud_english_ewt"
OUT = HERE / "ewt"

TRAIN_STRIDE = 5
DEV_STRIDE = 5
# sha256 of the r2.16 files (commit 4c89b5833a70aa5ed3a00bad2f23f57992cc7df8)
SOURCES = {
    "en_ewt-ud-train.conllu": ("train.conllu", TRAIN_STRIDE),
    "en_ewt-ud-dev.conllu": ("dev.conllu", DEV_STRIDE),
}


def sentence_blocks(data: bytes) -> list[bytes]:
    """The file's sentences, each with its comment lines and its closing blank line."""
    blocks, current = [], []
    for line in data.splitlines(keepends=True):
        current.append(line)
        if not line.strip():
            blocks.append(b"".join(current))
            current = []
    if current:  # a file without a final blank line
        blocks.append(b"".join(current))
    return blocks


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder with the r2.16 .conllu files")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    for name, (target, stride) in SOURCES.items():
        blocks = sentence_blocks((args.source / name).read_bytes())
        kept = blocks[::stride]
        (OUT / target).write_bytes(b"".join(kept))
        print(f"{name}: {len(blocks)} sentences, sha256 {sha256(args.source / name)[:16]}; "
              f"kept {len(kept)} (every {stride}th, from the first) -> {target}")
    shutil.copyfile(args.source / "LICENSE.txt", OUT / "LICENSE.txt")


if __name__ == "__main__":
    main()
