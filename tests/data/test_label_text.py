"""The label_text reader: ``LABEL text`` lines (SST stsa files), optional fastText prefix."""

from __future__ import annotations

import pytest

from tagger.config import parse_config
from tagger.data.readers import collect_malformed, read_examples
from tagger.errors import DataError
from tests.data.conftest import write

STSA = "1 a stirring , funny and finally transporting re-imagining .\n\n0 apparently reassembled from the cutting-room floor .\n"
FASTTEXT = "__label__pos\ta gorgeous film .\n__label__neg dull , dull , dull .\n"


def test_stsa_lines_give_label_text_and_offsets(tmp_path):
    path = write(tmp_path / "stsa.binary.train", STSA)
    exs = list(read_examples(path, "label_text"))
    assert [e.label for e in exs] == ["1", "0"]
    assert exs[0].text == "a stirring , funny and finally transporting re-imagining ."
    assert exs[0].tokens[:3] == ["a", "stirring", ","]
    assert exs[1].source.endswith("stsa.binary.train:3")  # the blank line is skipped, numbering kept
    for tok, (a, b) in zip(exs[0].tokens, exs[0].offsets):
        assert exs[0].text[a:b] == tok


def test_fasttext_prefix_is_removed_and_a_tab_also_ends_the_label(tmp_path):
    path = write(tmp_path / "ft.txt", FASTTEXT)
    exs = list(read_examples(path, "label_text", label_prefix="__label__"))
    assert [(e.label, e.text) for e in exs] == [("pos", "a gorgeous film ."), ("neg", "dull , dull , dull .")]


def test_streams_lazily(tmp_path):
    path = write(tmp_path / "a.txt", "1 good .\n" + "this line has no label prefix\n")
    it = read_examples(path, "label_text", label_prefix="__label__")
    with pytest.raises(DataError, match=r"a.txt:1: label '1' does not start with data.label_prefix '__label__'"):
        next(it)
    it = read_examples(path, "label_text")
    assert next(it).label == "1"  # the first example arrives before the rest of the file is read


@pytest.mark.parametrize(
    "line, prefix, message",
    [
        (" 1 leading space .", "", "line starts with whitespace; expected 'LABEL text'"),
        ("1", "", "no text after the label '1'"),
        ("1   ", "", "no text after the label '1'"),
        ("pos good .", "__label__", "label 'pos' does not start with data.label_prefix '__label__'"),
        ("__label__ good .", "__label__", "empty label after the prefix '__label__'"),
        ("__label__a __label__b good .", "__label__", "more than one label"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, prefix, message):
    path = write(tmp_path / "bad.txt", f"__label__x ok .\n{line}\n" if prefix else f"0 ok .\n{line}\n")
    with pytest.raises(DataError) as err:
        list(read_examples(path, "label_text", label_prefix=prefix))
    assert str(err.value).startswith(f"{path}:2: {message}")


def test_collect_malformed_keeps_the_good_lines(tmp_path):
    path = write(tmp_path / "mixed.txt", "1 good .\n0\n 1 x\n0 bad .\n")
    with collect_malformed() as bad:
        good = list(read_examples(path, "label_text"))
    assert [e.label for e in good] == ["1", "0"]
    assert [m.split(": ")[0] for m in bad] == [f"{path}:2", f"{path}:3"]


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataError, match=r"empty.txt: no examples found"):
        list(read_examples(write(tmp_path / "empty.txt", "\n"), "label_text"))
    with pytest.raises(DataError, match=r"missing.txt: file not found"):
        read_examples(tmp_path / "missing.txt", "label_text")


def test_config_selects_the_format_and_passes_the_prefix(tmp_path):
    path = write(tmp_path / "ft.txt", FASTTEXT)
    cfg = parse_config({"data": {"train": str(path), "format": "label_text", "label_prefix": "__label__"},
                        "model": {"task": "classify"}})
    opts = cfg.data.reader_options()
    assert opts == {"encoding": "utf-8", "label_prefix": "__label__"}
    assert [e.label for e in read_examples(cfg.data.train, cfg.data.format, **opts)] == ["pos", "neg"]
