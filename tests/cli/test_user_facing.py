"""What users see (issue 13): already-tokenized prediction inputs, evaluate's prediction
file, stdout for results only, an honest compile notice, and config mistakes that used to
pass quietly (data.scheme, debug-data's counts, the column convention).

Most tests use an untrained model (the predictions are arbitrary; their layout is what is
checked) or tiny corpora written here; the one training run (7 steps of the sample, about
1 s once the kernels are cached) stays in the fast tier."""
import json

import pytest

from tagger.config import load_config
from tagger.data.readers import read_conll, read_conllu

from .conftest import REPO, write_config

CONLLU = """# sent_id = a
# text = Im Haus wohnen.
1-2\tIm\t_\t_\t_\t_\t_\t_\t_\t_
1\tIn\tin\tADP\t_\t_\t_\t_\t_\t_
2\tdem\tder\tDET\t_\t_\t_\t_\t_\t_
3\tHaus\tHaus\tNOUN\t_\t_\t_\t_\t_\t_
3.1\tgut\tgut\tADJ\t_\t_\t_\t_\t_\t_
4\twohnen\twohnen\tVERB\t_\t_\t_\t_\t_\t_

# sent_id = b
1\tThe\tthe\tDET\t_\t_\t_\t_\t_\t_
2\tcat\tcat\tNOUN\t_\t_\t_\t_\t_\t_
"""

CONLL = "-DOCSTART- O\n\nThe O\ncat B-PER\n\nA O\ndog O\nruns O\n"


def _predict(cli, model, *args):
    result = cli("predict", model, *args)
    return result.stdout, result.stderr


# ----------------------------------------------------------------------------- predict inputs
def test_a_conllu_input_is_tagged_per_token_row_with_its_columns_kept(cli, untrained_pos, tmp_path):
    src = tmp_path / "in.conllu"
    src.write_text(CONLLU)
    out, _ = _predict(cli, untrained_pos, src, "--format", "conll")
    blocks = out.strip("\n").split("\n\n")
    assert len(blocks) == 2  # the sentence boundary kept; comments and 1-2 / 3.1 lines are not tokens
    rows = [line.split("\t") for line in blocks[0].splitlines()]
    assert [r[1] for r in rows] == ["In", "dem", "Haus", "wohnen"]
    input_rows = [line for line in CONLLU.splitlines() if line[:1].isdigit() and line.split("\t")[0].isdigit()]
    assert ["\t".join(r[:10]) for r in rows] == input_rows[:4]  # the input's own 10 columns, then the prediction
    assert all(len(r) == 11 and r[10] for r in rows)


def test_conllu_out_writes_the_file_back_with_the_prediction_in_the_label_field(cli, untrained_pos, tmp_path):
    src = tmp_path / "in.conllu"
    src.write_text(CONLLU)
    out, _ = _predict(cli, untrained_pos, src, "--format", "conllu", "--input-format", "conllu")
    got, want = out.splitlines(), CONLLU.splitlines()
    assert len(got) == len(want) + 1  # a blank line closes the last sentence too
    labels = set(json.loads((untrained_pos / "model-best" / "labels.json").read_text()))
    for g, w in zip(got, want):
        if not w or w.startswith("#") or not w.split("\t")[0].isdigit():
            assert g == w  # comments, ranges, empty nodes and boundaries untouched
        else:
            g, w = g.split("\t"), w.split("\t")
            assert g[:3] + g[4:] == w[:3] + w[4:] and g[3] in str(labels)


def test_a_conll_input_is_chosen_by_suffix_and_written_back_with_one_more_column(cli, untrained_pos, tmp_path):
    src = tmp_path / "ner.conll"
    src.write_text(CONLL)
    out_dir = tmp_path / "out"
    stdout, stderr = _predict(cli, untrained_pos, src, "-o", out_dir, "--format", "conll")
    assert stdout == "" and "ner.conll ->" in stderr  # with -o, notices only, on stderr
    blocks = (out_dir / "ner.conll").read_text().strip("\n").split("\n\n")
    assert [[line.rsplit(" ", 1)[0] for line in b.splitlines()] for b in blocks] == [
        ["The O", "cat B-PER"], ["A O", "dog O", "runs O"]
    ]  # -DOCSTART- skipped as for training; space-separated input, space-separated prediction


def test_tokens_input_splits_on_whitespace_only(cli, untrained_pos, tmp_path):
    src = tmp_path / "toks.txt"
    src.write_text("New  York's\tmayor.\n\nhe said\n")
    out, _ = _predict(cli, untrained_pos, src, "--input-format", "tokens")
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["line"] for r in records] == [1, 3]
    assert records[0]["tokens"] == ["New", "York's", "mayor."]  # the pre-tokenizer would split these
    line = "New  York's\tmayor."
    assert [line[a:b] for a, b in records[0]["offsets"]] == records[0]["tokens"]


def test_a_column_file_read_as_text_is_warned_about(cli, untrained_pos, tmp_path):
    src = tmp_path / "test.txt"
    src.write_text("The\tDET\ncat\tNOUN\n")
    _, stderr = _predict(cli, untrained_pos, src, "--format", "conll")
    assert "--input-format conll" in stderr


def test_conllu_output_needs_a_conllu_input(cli, untrained_pos, tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("The cat .\n")
    result = cli("predict", untrained_pos, src, "--format", "conllu", ok=False)
    assert result.exit_code == 1 and result.stderr.strip().startswith("error:") and len(result.stderr.splitlines()) == 1
    bad = cli("predict", untrained_pos, src, "--input-format", "xml", ok=False)
    assert bad.exit_code == 1 and "--input-format" in bad.stderr


# ----------------------------------------------------------------------------- evaluate
def test_evaluate_writes_token_gold_predicted_and_json_on_stdout(cli, untrained_pos, tmp_path):
    data = tmp_path / "gold.conllu"
    data.write_text(CONLLU)
    preds = tmp_path / "preds.txt"
    result = cli("evaluate", untrained_pos, data, "--predictions", preds, "--json")
    scores = json.loads(result.stdout)  # one JSON document, nothing else on stdout
    blocks = [b.splitlines() for b in preds.read_text().strip("\n").split("\n\n")]
    assert [[r.split(" ")[:2] for r in b] for b in blocks] == [
        [["In", "ADP"], ["dem", "DET"], ["Haus", "NOUN"], ["wohnen", "VERB"]], [["The", "DET"], ["cat", "NOUN"]]
    ]
    rows = [r.split(" ") for b in blocks for r in b]
    assert all(len(r) == 3 for r in rows)
    assert scores["accuracy"] == pytest.approx(sum(r[1] == r[2] for r in rows) / len(rows))
    table = cli("evaluate", untrained_pos, data)
    assert "token accuracy:" in table.stdout


# ----------------------------------------------------------------------------- data.scheme
def _ner(tmp_path, tags_text, **data):
    train = tmp_path / "train.conll"
    train.write_text(tags_text)
    return write_config(tmp_path / "c.yaml", data={"train": str(train), "format": "conll", **data})


NER = "Anna B-PER\nlives O\nin O\nNew B-LOC\nYork I-LOC\n\nBob B-PER\nSmith I-PER\nsings O\n\nHe O\nwaits O\n"


def test_bioes_on_bio_data_is_refused_naming_the_tag_and_its_line(cli, tmp_path):
    result = cli("debug-data", _ner(tmp_path, NER, scheme="bioes"), ok=False)
    assert result.exit_code == 1
    assert "train.conll:1: tag 'B-PER'" in result.stderr and "set data.scheme: bio" in result.stderr


def test_bio_on_a_pos_column_is_refused(cli, tmp_path):
    pos = tmp_path / "pos.conllu"
    pos.write_text(CONLLU)
    cfg = write_config(tmp_path / "c.yaml", data={"train": str(pos), "scheme": "bio"})
    result = cli("debug-data", cfg, ok=False)
    assert "pos.conllu:4: tag 'ADP'" in result.stderr and "data.scheme: none" in result.stderr


def test_bio_tags_with_scheme_none_warn_but_train(cli, tmp_path):
    result = cli("debug-data", _ner(tmp_path, NER * 3))
    assert "warning: data.scheme is none" in result.stderr and "data.scheme: bio" in result.stderr
    quiet = cli("debug-data", _ner(tmp_path, NER * 3, scheme="bio"))
    assert "warning" not in quiet.stderr


def test_debug_data_counts_labels_in_the_data_scheme_and_uses_trains_majority(cli, tmp_path):
    dev = tmp_path / "dev.conll"
    dev.write_text("Rome B-LOC\nYork I-LOC\n\nAnna B-PER\n\nx O\n")  # I-LOC would be E-LOC after conversion
    cfg = _ner(tmp_path, NER, scheme="bio", target_scheme="bioes", dev=str(dev))
    report = json.loads(cli("debug-data", cfg, "--json").stdout)
    assert "labels_unseen_in_train" not in report["splits"]["dev"]
    assert report["splits"]["dev"]["majority_label"] == "O"  # train's, though dev's most common is B-
    assert report["splits"]["dev"]["majority_baseline"] == pytest.approx(1 / 4)
    carved = _ner(tmp_path, NER * 4, scheme="bio", dev_fraction=0.25)
    text = cli("debug-data", carved).stdout
    assert "held out of data.train" in text


def test_one_column_convention_counting_from_zero(tmp_path):
    pos = tmp_path / "pos.conllu"
    pos.write_text(CONLLU)
    assert [e.labels for e in read_conllu(pos, label_column=3)] == [e.labels for e in read_conllu(pos, label_column="upos")]
    assert [e.tokens for e in read_conllu(pos, token_column=1)] == [e.tokens for e in read_conllu(pos)]
    ner = tmp_path / "n.conll"
    ner.write_text(CONLL)
    assert [e.labels for e in read_conll(ner, label_column=1)] == [e.labels for e in read_conll(ner, label_column=-1)]
    from tagger.config import default_config_text

    assert "count from 0 in every format" in default_config_text("tag")
    cfg = write_config(tmp_path / "c.yaml", data={"train": str(ner), "format": "conll", "label_column": "ner"})
    with pytest.raises(Exception, match="label_column: format conll needs a column index"):
        load_config(cfg)


# ----------------------------------------------------------------------------- the compile notice
def test_the_compile_notice_is_printed_once_and_only_when_numba_compiles(capsys, monkeypatch):
    from numba import njit

    from tagger import device

    device.announce_compile()
    device.announce_compile()  # a second caller installs no second listener
    monkeypatch.setitem(device._notice, "said", False)
    capsys.readouterr()
    njit(lambda x: x + 1)(1)  # cache-free kernels: always a real compilation
    njit(lambda x: x + 2)(1)
    assert capsys.readouterr().err.count(device.COMPILE_NOTICE) == 1


def test_a_warm_command_says_nothing_about_compiling(cli, untrained_pos, tmp_path, monkeypatch):
    from tagger import device

    src = tmp_path / "a.txt"
    src.write_text("The cat .\n")
    cli("predict", untrained_pos, src)  # whatever this process still had to compile, it has now
    monkeypatch.setitem(device._notice, "said", False)
    again = cli("predict", untrained_pos, src)
    assert device.COMPILE_NOTICE not in again.stderr


# ----------------------------------------------------------------------------- training output
def test_eval_every_beyond_the_run_still_evaluates_and_saves_the_last_step(cli, tmp_path):
    out = tmp_path / "run"
    result = cli(
        "train", REPO / "configs" / "sample_pos.yaml", "-o", out,
        "--training.epochs", "1", "--training.eval_every", "500", "--no-progress",
    )  # one epoch of the sample is far fewer than 500 updates: the run ends with the data
    assert json.loads(result.stdout)["output"] == str(out)  # stdout: the one JSON result
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(logs) == 1 and 1 < logs[0]["step"] < 500
    last = logs[0]["step"]
    assert f"epoch 1 step {last}:" in result.stderr and "tokens/s" in result.stderr
    best = json.loads((out / "model-best" / "metrics.json").read_text())
    assert (best["step"], best["epoch"]) == (last, 1) and "dev" in best
    assert json.loads((out / "model-last" / "metrics.json").read_text())["step"] == last


def test_summary_json_is_the_table_as_one_document(cli, untrained_pos):
    doc = json.loads(cli("summary", untrained_pos, "--json").stdout)
    table = cli("summary", untrained_pos).stdout
    assert doc["layers"] and all(f"{layer['params']:,}" in table for layer in doc["layers"])
    assert f"Total params: {doc['total_params']:,}" in table


def test_evaluation_lines_go_to_stderr_also_beside_a_progress_bar(capsys):
    import sys

    from tqdm import tqdm

    from tagger.training import Progress

    progress = Progress(3, enabled=False)
    progress.bar = tqdm(total=3, file=sys.stderr)  # what a terminal gets
    progress.echo("epoch 1 step 3: loss 1.0")
    progress.close()
    captured = capsys.readouterr()
    assert "epoch 1 step 3" in captured.err and captured.out == ""  # tqdm.write alone would use stdout
