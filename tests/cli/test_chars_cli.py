"""model.chars through the CLI (issue 10): train a tiny chars model on the bundled POS
sample (`--model.chars.encoder lstm|cnn`), predict with `tagger predict`, load the
directory again and predict identically; summary shows the WordFeatures stage."""
import json

import pytest

from tagger.data.types import Example
from tagger.io import load_model

from .conftest import REPO

pytestmark = pytest.mark.slow

TEXTS = ["The cat sat on the mat .", "Zoë and Łukasz ran home quickly !", "x"]


@pytest.mark.parametrize("encoder", ["lstm", "cnn"])
def test_train_predict_and_reload_a_chars_model(cli, tmp_path, encoder):
    out = tmp_path / "run"
    cli("train", REPO / "configs" / "sample_pos.yaml", "-o", out, "--model.chars.encoder", encoder,
        "--model.embedding_dim", "16", "--model.lstm_units", "16", "--vocab.max_chars", "8",
        "--training.max_steps", "20", "--no-progress")
    best = out / "model-best"
    assert json.loads((best / "chars.json").read_text())["max_chars"] == 8
    summary = cli("summary", best).output
    assert "word_features (WordFeatures)" in summary
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    cli("predict", out, src, "-o", tmp_path / "pred")
    records = [json.loads(line) for line in (tmp_path / "pred" / "in.txt.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in records] == TEXTS
    model = load_model(out)
    assert model.chars is not None and model.config.model.chars.encoder == encoder
    again = load_model(best)
    assert [r["tags"] for r in records] == [p[0] for p in again.predict_examples([Example(tokens=r["tokens"]) for r in records])]
    assert again.predict(TEXTS) == model.predict(TEXTS)
