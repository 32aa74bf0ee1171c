"""The bundled UD English-EWT sample (corpora/ewt/) is what its README says it is."""

from __future__ import annotations

import hashlib
import importlib.util
from collections import Counter
from pathlib import Path

from tagger.data.readers import read_examples

EWT = Path(__file__).resolve().parents[2] / "corpora" / "ewt"


def _maker():
    spec = importlib.util.spec_from_file_location("make_ewt_sample", EWT.parent / "make_ewt_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sample_sizes_tags_and_checksums_match_its_readme():
    readme = (EWT / "README.md").read_text(encoding="utf-8")
    for name, n_sent, n_words in (("train.conllu", 2509, 41014), ("dev.conllu", 401, 5017)):
        exs = list(read_examples(EWT / name, "conllu", label_column="upos"))
        assert (len(exs), sum(len(e.tokens) for e in exs)) == (n_sent, n_words)
        digest = hashlib.sha256((EWT / name).read_bytes()).hexdigest()
        assert f"`{digest[:16]}...`" in readme, name
    tags = Counter(t for e in read_examples(EWT / "train.conllu", "conllu") for t in e.labels)
    assert len(tags) == 17 and tags.most_common(1)[0][0] == "NOUN"
    assert "Attribution-ShareAlike 4.0" in (EWT / "LICENSE.txt").read_text(encoding="utf-8")


def test_every_fifth_source_sentence_copied_byte_for_byte(corpora):
    maker = _maker()
    source = corpora / "ud_english_ewt"
    for src, (target, stride) in maker.SOURCES.items():
        blocks = maker.sentence_blocks((source / src).read_bytes())
        assert b"".join(blocks) == (source / src).read_bytes()  # the split loses nothing
        assert (EWT / target).read_bytes() == b"".join(blocks[::stride])
