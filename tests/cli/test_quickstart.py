"""The README's main command: train the quickstart on the EWT sample, evaluate, predict."""

from __future__ import annotations

import json

import pytest

from .conftest import REPO


@pytest.mark.slow
def test_quickstart_tags_real_english(cli, tmp_path):
    run = tmp_path / "quickstart"
    cli("train", REPO / "configs" / "quickstart.yaml", "--output", run, "--no-progress")
    out = cli("evaluate", run, REPO / "corpora" / "ewt" / "dev.conllu", "--output", tmp_path / "m.json").output
    assert "token accuracy:" in out
    assert json.loads((tmp_path / "m.json").read_text())["accuracy"] >= 0.90
    cli("predict", run, REPO / "corpora" / "example.txt", "--output", tmp_path / "tagged")
    records = [json.loads(l) for l in (tmp_path / "tagged" / "example.txt.jsonl").read_text().splitlines()]
    tags = {r["text"]: r["tags"] for r in records}
    assert tags["My sister visited Paris last summer ."] == ["PRON", "NOUN", "VERB", "PROPN", "ADJ", "NOUN", "PUNCT"]
    assert tags["Can you open the window , please ?"][:3] == ["AUX", "PRON", "VERB"]
