"""train -> evaluate -> predict through the CLI on the bundled samples, outputs checked.

Every test here trains (or uses the trained_pos fixture, which does): all slow."""
import json

import numpy as np
import pytest

from safetensors.numpy import load_file

from tagger.data.types import Example
from tagger.io import load_model, save_model

from .conftest import REPO, SAMPLES, write_config

pytestmark = pytest.mark.slow


def test_train_writes_a_complete_output_folder(trained_pos):
    for name in ("config.yaml", "tokenizer.json", "labels.json", "weights.safetensors", "metrics.json"):
        assert (trained_pos / "model-best" / name).is_file(), name
    assert (trained_pos / "model-last" / "weights.safetensors").is_file()
    rows = (trained_pos / "loss.tsv").read_text().splitlines()
    assert rows[0].startswith("epoch\tstep\tloss") and len(rows) >= 2
    logs = [json.loads(l) for l in (trained_pos / "metrics.jsonl").read_text().splitlines()]
    assert logs and all("dev_score" in r for r in logs)
    # the loss goes down and dev accuracy clearly beats the majority tag (NOUN, about 22%)
    assert logs[-1]["loss"] < logs[0]["loss"]
    assert max(r["dev_score"] for r in logs) > 0.8
    assert not list(trained_pos.glob(".*tmp*")), "temporary files left behind"
    # a model card in both model directories (written after their last save), and the curves
    for name in ("model-best", "model-last"):
        card = (trained_pos / name / "README.md").read_text(encoding="utf-8")
        assert "tag" in card and "sha256" in card and "NOUN" in card, name
    assert (trained_pos / "curves.png").stat().st_size > 10_000


def test_evaluate_prints_scores_and_writes_json(cli, trained_pos, tmp_path):
    out = tmp_path / "m.json"
    result = cli("evaluate", trained_pos, SAMPLES / "sample_pos.dev.conllu", "--output", out)
    assert "token accuracy:" in result.output and "NOUN" in result.output
    metrics = json.loads(out.read_text())
    best = json.loads((trained_pos / "model-best" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(best["dev"]["accuracy"])
    assert metrics["report"]["per_class"]["DET"]["f1"] > 0.8


def test_predict_jsonl_maps_tags_to_character_spans(cli, trained_pos, tmp_path):
    text = "The old dog sleeps in the garden .\n\nAnna reads a book .\n"
    src = tmp_path / "in.txt"
    src.write_text(text)
    cli("predict", trained_pos, src, "--output", tmp_path / "out", "--format", "jsonl")
    records = [json.loads(l) for l in (tmp_path / "out" / "in.txt.jsonl").read_text().splitlines()]
    assert [r["line"] for r in records] == [1, 3]  # the blank line is a boundary, not a record
    lines = text.splitlines()
    for r in records:
        assert len(r["tokens"]) == len(r["tags"]) == len(r["offsets"]) == len(r["probs"])
        for tok, (a, b) in zip(r["tokens"], r["offsets"]):
            assert lines[r["line"] - 1][a:b] == tok
    assert records[0]["tags"][0] == "DET" and records[0]["tags"][-1] == "PUNCT"


def test_predict_conll_and_tsv_and_stdout(cli, trained_pos, tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("The cat sleeps .\nA dog runs .\n")
    cli("predict", trained_pos, src, "-o", tmp_path / "c", "--format", "conll")
    blocks = (tmp_path / "c" / "a.txt.conll").read_text().strip().split("\n\n")
    assert len(blocks) == 2 and blocks[0].splitlines()[0].split("\t")[0] == "The"
    cli("predict", trained_pos, src, "-o", tmp_path / "t", "--format", "tsv")
    rows = (tmp_path / "t" / "a.txt.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:2] == ["1", "The cat sleeps ."]
    result = cli("predict", trained_pos, src)
    assert len([l for l in result.stdout.splitlines() if l.startswith("{")]) == 2


def test_predict_a_folder_and_a_very_long_line(cli, trained_pos, tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    long_line = " ".join(["the dog sleeps ."] * 1500)  # 6000 tokens on one line
    (folder / "one.txt").write_text("The cat sleeps .\n")
    (folder / "sub" / "two.txt").write_text(long_line + "\n")
    cli("predict", trained_pos, folder, "-o", tmp_path / "out")
    assert (tmp_path / "out" / "one.txt.jsonl").is_file()
    record = json.loads((tmp_path / "out" / "sub" / "two.txt.jsonl").read_text())
    assert len(record["tokens"]) == 6000 == len(record["tags"])


def test_saved_and_loaded_model_predicts_identically(trained_pos, tmp_path):
    model = load_model(trained_pos / "model-best")
    texts = ["The cat sat on the mat .", "Anna reads .", "x"]
    before = model.predict(texts)
    save_model(model, tmp_path / "copy")
    again = load_model(tmp_path / "copy").predict(texts)
    assert before == again
    import tagger

    assert tagger.load(trained_pos).predict(texts) == before


def test_same_seed_reproduces_the_run_exactly(cli, tmp_path):
    outs = []
    for k in range(2):
        out = tmp_path / f"run{k}"
        cli("train", REPO / "configs" / "sample_pos.yaml", "-o", out, "--training.max_steps", "12", "--no-progress")
        outs.append(load_file(str(out / "model-last" / "weights.safetensors")))
    assert outs[0].keys() == outs[1].keys()
    for name in outs[0]:  # bit-identical weights (the file header's key order may vary)
        np.testing.assert_array_equal(outs[0][name], outs[1][name], err_msg=name)


def test_ctrl_c_leaves_a_usable_model(tmp_path, monkeypatch):
    from tagger.config import load_config
    from tagger.models import Model
    from tagger.training import train

    calls = {"n": 0}
    real_step = Model.train_step

    def interrupted(self, batch):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(Model, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):  # the run stops (the CLI exits 130), after saving
        train(load_config(REPO / "configs" / "sample_pos.yaml"), tmp_path, progress=False)
    model = load_model(tmp_path / "model-last")
    assert len(model.predict(["The cat sleeps ."])[0]["tags"]) == 4


@pytest.mark.parametrize("pooling", ["last", "max", "mean"])
def test_classification_end_to_end(cli, tmp_path, pooling):
    cfg = write_config(
        tmp_path / "cls.yaml",
        data={"train": str(SAMPLES / "sample_cls.train.tsv"), "dev": str(SAMPLES / "sample_cls.dev.tsv"),
              "format": "tsv", "text_column": "sentence", "label_column": "label", "header": True},
        model={"task": "classify", "embedding_dim": 32, "lstm_units": 32, "dropout": 0.2, "pooling": pooling},
        training={"epochs": 8, "lr": 0.005, "batch_size": 16, "patience": 8},
        vocab={"lowercase": True},
    )
    cli("train", cfg, "-o", tmp_path / "m", "--no-progress")
    best = json.loads((tmp_path / "m" / "model-best" / "metrics.json").read_text())
    labels = [l.split("\t")[1] for l in (SAMPLES / "sample_cls.dev.tsv").read_text().splitlines()[1:]]
    majority = max(labels.count(x) for x in set(labels)) / len(labels)
    assert best["dev"]["accuracy"] > majority + 0.15
    src = tmp_path / "t.txt"
    src.write_text("what a wonderful and moving film\n")
    cli("predict", tmp_path / "m", src, "-o", tmp_path / "o")
    rec = json.loads((tmp_path / "o" / "t.txt.jsonl").read_text())
    assert rec["label"] in set(labels) and 0 < rec["probability"] <= 1
    summary = cli("summary", tmp_path / "m").output
    assert ("pooling (Global" in summary) == (pooling != "last") and "(None, 64)" in summary


def test_ner_spans_in_predictions(cli, tmp_path):
    cfg = write_config(
        tmp_path / "ner.yaml",
        data={"train": str(SAMPLES / "sample_ner.train.conll"), "dev": str(SAMPLES / "sample_ner.dev.conll"),
              "format": "conll", "scheme": "bio", "target_scheme": "bioes"},
        model={"embedding_dim": 32, "lstm_units": 32, "dropout": 0.2},
        training={"epochs": 10, "lr": 0.01, "batch_size": 16, "patience": 10},
    )
    cli("train", cfg, "-o", tmp_path / "m", "--no-progress")
    best = json.loads((tmp_path / "m" / "model-best" / "metrics.json").read_text())
    assert "spans" in best["dev"] and best["dev"]["spans"]["f1"] > 0.5
    result = cli("evaluate", tmp_path / "m", SAMPLES / "sample_ner.dev.conll")
    assert "FB1" in result.output or "f1" in result.output.lower()
    model = load_model(tmp_path / "m")
    gold_line = (SAMPLES / "sample_ner.dev.conll").read_text().split("\n\n")[0]
    words = [l.split()[0] for l in gold_line.splitlines()]
    rec = model.predict([" ".join(words)])[0]
    assert all(set(t[:2]) <= set("BIO-") or t == "O" for t in rec["tags"])  # data scheme (BIO) comes back
    for span in rec["spans"]:
        assert rec["text"][span["start"] : span["end"]] == span["text"]


def test_ner_with_a_crf_output_layer(cli, tmp_path):
    """--model.crf true: train on the NER sample, evaluate, predict; the CRF is saved and used."""
    cfg = write_config(
        tmp_path / "ner.yaml",
        data={"train": str(SAMPLES / "sample_ner.train.conll"), "dev": str(SAMPLES / "sample_ner.dev.conll"),
              "format": "conll", "scheme": "bio", "target_scheme": "bioes"},
        model={"embedding_dim": 32, "lstm_units": 32, "dropout": 0.2},
        training={"epochs": 5, "lr": 0.01, "batch_size": 16, "patience": 5},
    )
    cli("train", cfg, "-o", tmp_path / "m", "--model.crf", "true", "--no-progress")
    best = json.loads((tmp_path / "m" / "model-best" / "metrics.json").read_text())
    assert best["dev"]["spans"]["f1"] > 0.5
    weights = load_file(str(tmp_path / "m" / "model-best" / "weights.safetensors"))
    K = len(json.loads((tmp_path / "m" / "model-best" / "labels.json").read_text()))
    assert weights["crf/transitions"].shape == (K, K) and weights["crf/start"].shape == (K,)
    assert "crf (CRF)" in cli("summary", tmp_path / "m").output
    out = tmp_path / "metrics.json"
    cli("evaluate", tmp_path / "m", SAMPLES / "sample_ner.dev.conll", "--output", out)
    assert json.loads(out.read_text())["spans"]["f1"] == pytest.approx(best["dev"]["spans"]["f1"])
    gold = (SAMPLES / "sample_ner.dev.conll").read_text().split("\n\n")[1:6]  # after -DOCSTART-
    src = tmp_path / "in.txt"
    src.write_text("\n".join(" ".join(l.split()[0] for l in block.splitlines()) for block in gold) + "\n")
    cli("predict", tmp_path / "m", src, "-o", tmp_path / "o")
    records = [json.loads(l) for l in (tmp_path / "o" / "in.txt.jsonl").read_text().splitlines()]
    model = load_model(tmp_path / "m")
    assert model.crf is not None
    assert [r["tags"] for r in records] == [p[0] for p in model.predict_examples(
        [Example(tokens=r["tokens"]) for r in records])]
    for r in records:
        assert len(r["tags"]) == len(r["probs"]) and all(0 < p <= 1 + 1e-6 for p in r["probs"])
        assert all(t == "O" or t[:2] in ("B-", "I-") for t in r["tags"])  # the data scheme (BIO) comes back
        for span in r["spans"]:
            assert r["text"][span["start"] : span["end"]] == span["text"]
        # decoded within the BIOES grammar, so the BIO that comes back is strict: I-X follows B-X / I-X
        assert all(t[:2] != "I-" or prev[2:] == t[2:] != "" for prev, t in zip(["O"] + r["tags"], r["tags"]))
    cli("predict", tmp_path / "m", src, "-o", tmp_path / "n", "--nbest", "3")
    listed = [json.loads(l) for l in (tmp_path / "n" / "in.txt.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "nbest"} for r in listed] == records
    for r in listed:
        assert r["nbest"][0]["tags"] == r["tags"] and 1 <= len(r["nbest"]) <= 3
        scores = [c["score"] for c in r["nbest"]]
        assert scores == sorted(scores, reverse=True) and all(0 < c["probability"] <= 1 for c in r["nbest"])


def test_summary_init_config_debug_data(cli, tmp_path, trained_pos):
    assert "Total params" in cli("summary", trained_pos).output
    assert "bilstm_1 (Bidirectional)" in cli("summary", REPO / "configs" / "sample_pos.yaml").output
    cfg = tmp_path / "new.yaml"
    cli("init-config", "--task", "classify", "--output", cfg)
    assert "task: classify" in cfg.read_text()
    out = cli("debug-data", REPO / "configs" / "sample_pos.yaml").output
    assert "OOV" in out and "majority baseline" in out


def test_debug_data_lists_every_malformed_line_and_exits_1(cli, tmp_path):
    good = "EU NNP B-ORG\nrejects VBZ O\n\n"
    (tmp_path / "train.txt").write_text(good * 5 + "German JJ\n\n" + good + "call\n\n", encoding="utf-8")
    (tmp_path / "dev.txt").write_text(good + "bad\n", encoding="utf-8")
    cfg = write_config(
        tmp_path / "c.yaml",
        data={"train": "train.txt", "dev": "dev.txt", "format": "conll", "token_column": 0, "label_column": 2, "scheme": "iob1"},
    )
    result = cli("debug-data", cfg, ok=False)
    assert result.exit_code == 1
    assert "malformed lines: 3" in result.output
    for where in ("train.txt:16: expected 3", "train.txt:21: expected 3", "dev.txt:4: expected 3"):
        assert where in result.output
    assert "OOV" in result.output  # the report is still printed for the lines that parse


def test_short_training_on_real_ud_data_beats_majority(cli, tmp_path, corpora_root):
    """A few hundred real UD English-EWT sentences: dev accuracy clearly above the majority tag."""
    def head(src, dst, n):
        blocks = src.read_text(encoding="utf-8").split("\n\n")[:n]
        dst.write_text("\n\n".join(blocks) + "\n\n", encoding="utf-8")

    ewt = corpora_root / "ud_english_ewt"
    head(ewt / "en_ewt-ud-train.conllu", tmp_path / "train.conllu", 400)
    head(ewt / "en_ewt-ud-dev.conllu", tmp_path / "dev.conllu", 200)
    cfg = write_config(
        tmp_path / "ud.yaml",
        data={"train": "train.conllu", "dev": "dev.conllu", "format": "conllu", "label_column": "upos"},
        model={"embedding_dim": 50, "lstm_units": 64, "dropout": 0.3},
        training={"epochs": 6, "lr": 0.005, "batch_size": 16, "patience": 6},
    )
    cli("train", cfg, "-o", tmp_path / "m", "--no-progress")
    dev = json.loads((tmp_path / "m" / "model-best" / "metrics.json").read_text())["dev"]
    support = {k: v["support"] for k, v in dev["report"]["per_class"].items()}
    majority = max(support.values()) / sum(support.values())
    assert dev["accuracy"] > majority + 0.3, (dev["accuracy"], majority)


def test_debug_data_reports_what_the_character_encoder_sees(cli, tmp_path):
    """With model.chars: the character count, and per split the longest word, the share of
    characters read as [UNK] and the words vocab.max_chars clips; without it, none."""
    (tmp_path / "train.txt").write_text("Paris NNP B-LOC\nrejects VBZ O\n\n", encoding="utf-8")
    (tmp_path / "dev.txt").write_text("Zürich NNP B-LOC\nrejects VBZ O\n\n", encoding="utf-8")
    data = {"train": "train.txt", "dev": "dev.txt", "format": "conll", "token_column": 0, "label_column": 2, "scheme": "iob1"}
    cfg = write_config(tmp_path / "c.yaml", data=data, model={"chars": {"encoder": "cnn"}}, vocab={"max_chars": 5})
    from tagger.config import load_config
    from tagger.data.prepare import data_report

    report = data_report(load_config(cfg))
    assert report["characters"] == len(set("Parisrejects"))
    train, dev = report["splits"]["train"], report["splits"]["dev"]
    assert train["longest_word"] == 7 and train["unknown_char_rate"] == 0 and train["words_clipped"] == 1
    assert dev["unknown_char_rate"] == round(3 / 13, 4)  # Z, ü, h of "Zürich" + "rejects"
    out = cli("debug-data", cfg).output
    assert "model.chars: 9 characters" in out and "unknown 23.08%, 2 words clipped by vocab.max_chars" in out
    plain = write_config(tmp_path / "p.yaml", data=data)
    assert "characters" not in data_report(load_config(plain)) and "model.chars" not in cli("debug-data", plain).output
