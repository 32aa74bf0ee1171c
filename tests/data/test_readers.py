"""Readers on tiny good and malformed fixtures, and smoke counts on the real corpora."""

from __future__ import annotations

import gzip
import json

import pytest

from tagger.data.readers import read_examples
from tagger.errors import DataError, TaggerError
from tests.data.conftest import write

CONLLU = (
    "# sent_id = 1\n"
    "# text = I can't go.\n"
    "1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_\n"
    "2-3\tcan't\t_\t_\t_\t_\t_\t_\t_\t_\n"
    "2\tca\tcan\tAUX\tMD\t_\t3\taux\t_\t_\n"
    "3\tn't\tnot\tPART\tRB\t_\t3\tadvmod\t_\t_\n"
    "3.1\tgo\tgo\tVERB\tVB\t_\t_\t_\t0:root\t_\n"
    "4\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_\n"
    "5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_\n"
    "\n"
    "# sent_id = 2\n"
    "1\tYes\tyes\tINTJ\tUH\t_\t0\troot\t_\t_\n"
)  # no trailing blank line after the last sentence


def test_conllu_columns_by_name_skip_ranges_and_empty_nodes(tmp_path):
    path = write(tmp_path / "a.conllu", CONLLU)
    exs = list(read_examples(path, "conllu", label_column="upos"))
    assert [e.tokens for e in exs] == [["I", "ca", "n't", "go", "."], ["Yes"]]
    assert exs[0].labels == ["PRON", "AUX", "PART", "VERB", "PUNCT"]
    assert exs[0].source.endswith("a.conllu:3")
    assert [e.labels for e in read_examples(path, "conllu", label_column="xpos")][1] == ["UH"]
    assert list(read_examples(path, "conllu", label_column="deprel"))[0].labels[-1] == "punct"
    assert list(read_examples(path, "conllu", label_column=None))[0].labels is None


def test_conllu_wrong_column_count_names_file_and_line(tmp_path):
    bad = CONLLU.replace("4\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_", "4\tgo\tgo\tVERB\tVB\t_\t0")
    path = write(tmp_path / "bad.conllu", bad)
    with pytest.raises(TaggerError) as err:
        list(read_examples(path, "conllu"))
    assert str(err.value) == f"{path}:8: expected 10 tab-separated columns, found 7 (is this a CoNLL-U file?)"


def test_conllu_non_integer_id(tmp_path):
    path = write(tmp_path / "bad.conllu", "x\ta\ta\tX\tX\t_\t0\troot\t_\t_\n")
    with pytest.raises(DataError, match=r"bad.conllu:1: token id 'x' is not an integer"):
        list(read_examples(path, "conllu"))


def test_conllu_unknown_column_name(tmp_path):
    path = write(tmp_path / "a.conllu", CONLLU)
    with pytest.raises(DataError, match="label_column 'pos' is not one of id, form"):
        list(read_examples(path, "conllu", label_column="pos"))


CONLL = (
    "-DOCSTART- -X- O O\n"
    "\n"
    "Anna NNP I-NP I-PER\n"
    "lives VBZ I-VP O\n"
    "in IN I-PP O\n"
    "Oslo NNP I-NP I-LOC\n"
    "\n"
    "\n"
    "-DOCSTART- -X- -X- O\n"
    "Hi UH I-INTJ O\n"
    "\n"
    "-DOCSTART- -X- O O\n"
    "\n"
    "Bye UH I-INTJ O"  # no final newline
)


def test_conll_docstart_anywhere_and_last_sentence_without_newline(tmp_path):
    path = write(tmp_path / "eng.x", CONLL)
    exs = list(read_examples(path, "conll"))
    assert [e.tokens for e in exs] == [["Anna", "lives", "in", "Oslo"], ["Hi"], ["Bye"]]
    assert exs[0].labels == ["I-PER", "O", "O", "I-LOC"]
    pos = list(read_examples(path, "conll", token_column=0, label_column=1))
    assert pos[0].labels == ["NNP", "VBZ", "IN", "NNP"]


def test_conll_too_few_columns(tmp_path):
    path = write(tmp_path / "x.conll", "Anna\n\n")
    with pytest.raises(DataError, match=r"x.conll:1: expected at least 2 whitespace-separated columns"):
        list(read_examples(path, "conll"))


def test_conll_inconsistent_columns(tmp_path):
    path = write(tmp_path / "x.conll", "Anna B-PER\nNew York B-LOC\n")
    with pytest.raises(DataError, match=r"x.conll:2: expected 2 whitespace-separated columns as on line 1, found 3"):
        list(read_examples(path, "conll"))


def test_tsv_with_header_by_name_and_sst_trailing_space(tmp_path):
    path = write(tmp_path / "d.tsv", "sentence\tlabel\nit 's a charming journey . \t1\nbleak and desperate \t0\n")
    exs = list(read_examples(path, "tsv", text_column="sentence", label_column="label"))
    assert [e.label for e in exs] == ["1", "0"]
    assert exs[0].tokens == ["it", "'s", "a", "charming", "journey", "."]
    assert exs[0].text == "it 's a charming journey ."


def test_tsv_without_header_by_index(tmp_path):
    path = write(tmp_path / "d.tsv", "pos\tWhat a film!\nneg\tDull.\n")
    exs = list(read_examples(path, "tsv", text_column=1, label_column=0))
    assert [(e.label, e.tokens) for e in exs] == [("pos", ["What", "a", "film", "!"]), ("neg", ["Dull", "."])]


def test_tsv_malformed(tmp_path):
    path = write(tmp_path / "d.tsv", "sentence\tlabel\ngood\t1\nno label here\n")
    with pytest.raises(DataError, match=r"d.tsv:3: expected 2 tab-separated columns, found 1"):
        list(read_examples(path, "tsv", text_column="sentence", label_column="label"))
    with pytest.raises(DataError, match=r"d.tsv: data.label_column 'polarity' is not one of sentence, label"):
        list(read_examples(path, "tsv", text_column="sentence", label_column="polarity"))


def test_trec_coarse_and_fine(tmp_path):
    path = write(tmp_path / "t.txt", "HUM:ind Who wrote Hamlet ?\nLOC:other Where is Oslo ?\n")
    assert [e.label for e in read_examples(path, "trec")] == ["HUM", "LOC"]
    assert [e.label for e in read_examples(path, "trec", label="fine")] == ["HUM:ind", "LOC:other"]
    bad = write(tmp_path / "b.txt", "Who wrote Hamlet ?\n")
    with pytest.raises(DataError, match=r"b.txt:1: expected 'COARSE:fine question text'"):
        list(read_examples(bad, "trec"))


def test_jsonl_text_and_token_forms(tmp_path):
    lines = [
        {"text": "Great movie.", "label": 1},
        {"text": ["Anna", "sings"], "label": ["B-PER", "O"]},
    ]
    path = write(tmp_path / "d.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    a, b = read_examples(path, "jsonl")
    assert (a.tokens, a.label) == (["Great", "movie", "."], "1")
    assert (b.tokens, b.labels) == (["Anna", "sings"], ["B-PER", "O"])
    bad = write(tmp_path / "b.jsonl", '{"text": "x", "label": 1}\n{"text": "y"\n')
    with pytest.raises(DataError, match=r"b.jsonl:2: not valid JSON"):
        list(read_examples(bad, "jsonl"))
    with pytest.raises(DataError, match=r"b.jsonl:1: no key 'sentence' \(keys: text, label\); set data.text_key"):
        list(read_examples(bad, "jsonl", text_key="sentence"))


def test_text_format_keeps_offsets(tmp_path):
    path = write(tmp_path / "raw.txt", "Hello, world.\n\nIt's fine\n")
    a, b = read_examples(path, "text")
    assert a.tokens == ["Hello", ",", "world", "."] and a.labels is None
    assert [a.text[s:e] for s, e in a.offsets] == a.tokens
    assert b.tokens == ["It", "'s", "fine"]


def test_encoding_error_names_byte_line_and_fix(tmp_path):
    path = write(tmp_path / "TREC.train", b"HUM:ind Who ?\nLOC:city Where is sister\xf0city ?\n")
    with pytest.raises(DataError) as err:
        list(read_examples(path, "trec"))
    assert str(err.value) == (
        f"{path}:2: byte 0xf0 is not valid utf-8; set data.encoding (e.g. latin-1) in the config"
    )
    exs = list(read_examples(path, "trec", encoding="latin-1"))
    assert exs[1].tokens[2] == "sister\u00f0city"


def test_gzip_input(tmp_path):
    path = tmp_path / "a.conll.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("Anna B-PER\n\nOslo B-LOC\n")
    assert [e.tokens for e in read_examples(path, "conll")] == [["Anna"], ["Oslo"]]


@pytest.mark.parametrize("fmt", ["conllu", "conll", "tsv", "trec", "jsonl", "text"])
def test_empty_and_missing_files(tmp_path, fmt):
    empty = write(tmp_path / "empty.txt", "\n\n")
    with pytest.raises(DataError, match=r"empty.txt: no .* found \(is the file empty"):
        list(read_examples(empty, fmt))
    with pytest.raises(DataError, match=r"missing.txt: file not found"):
        read_examples(tmp_path / "missing.txt", fmt)  # raised when the reader is created


def test_unknown_format_and_option(tmp_path):
    path = write(tmp_path / "a.conll", "a O\n")
    with pytest.raises(DataError, match="unknown data.format 'csv'"):
        read_examples(path, "csv")
    with pytest.raises(DataError, match="text_key do not apply to format 'conll'"):
        read_examples(path, "conll", text_key="x")


# ---------------------------------------------------------------- real corpora (counts from README)
def _count(path, fmt, **options):
    exs = list(read_examples(path, fmt, **options))
    return len(exs), sum(len(e.tokens) for e in exs), exs


def test_real_ud_english_ewt_dev(corpora):
    n, toks, exs = _count(corpora / "ud_english_ewt" / "en_ewt-ud-dev.conllu", "conllu", label_column="upos")
    assert (n, toks) == (2001, 25147)
    assert len({t for e in exs for t in e.labels}) == 17


def test_real_conll2003_testa_and_testb(corpora):
    n, toks, exs = _count(corpora / "conll2003_en" / "eng.testa", "conll")
    assert (n, toks) == (3250, 51362)
    assert {t for e in exs for t in e.labels} <= {"O", "I-PER", "I-LOC", "I-ORG", "I-MISC", "B-LOC", "B-MISC", "B-ORG"}
    assert _count(corpora / "conll2003_en" / "eng.testb", "conll")[:2] == (3453, 46435)


def test_real_trec_needs_latin1(corpora):
    path = corpora / "trec_qc" / "TREC.train"
    with pytest.raises(DataError, match=r"TREC.train:66: byte 0xf0 is not valid utf-8; set data.encoding"):
        list(read_examples(path, "trec"))
    n, _, exs = _count(path, "trec", encoding="latin-1")
    assert n == 5452
    assert sum(len(e.text.split()) for e in exs) == 55635  # README counts whitespace tokens
    assert {e.label for e in exs} == {"ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"}
    assert len({e.label for e in read_examples(path, "trec", label="fine", encoding="latin-1")}) == 50


def test_real_sst2_dev(corpora):
    n, _, exs = _count(corpora / "sst2_glue" / "dev.tsv", "tsv", text_column="sentence", label_column="label")
    assert n == 872
    assert sum(len(e.text.split()) for e in exs) == 17046
    assert sum(e.label == "1" for e in exs) == 444


@pytest.mark.parametrize(
    "fmt, text, options, expected",
    [
        (
            "conllu",
            "1\tI\tI\tPRON\t_\t_\t0\troot\t_\t_\n1\tbad line\n\n1\tOk\tok\tINTJ\t_\t_\t0\troot\t_\t_\nx\tY\ty\tX\t_\t_\t0\troot\t_\t_\n",
            {},
            [(2, "expected 10 tab-separated columns, found 2"), (5, "token id 'x' is not an integer")],
        ),
        ("conll", "EU NNP B-ORG\nrejects VBZ\n\nPeter NNP B-PER\nBlackburn\n", {}, [(2, "expected 3"), (5, "expected 3")]),
        ("tsv", "a\t1\nb\n\t2\nc\t\n", {}, [(2, "expected 2 tab-separated"), (3, "empty text"), (4, "empty label")]),
        ("trec", "HUM:ind Who ?\nnope\nLOC Where ?\n", {}, [(2, "COARSE:fine"), (3, "COARSE:fine")]),
        ("jsonl", '{"text": "x", "label": 1}\n{"text": \n[1]\n{"label": 2}\n', {}, [(2, "not valid JSON"), (3, "JSON object"), (4, "no key 'text'")]),
        ("trec", b"HUM:ind Who \xf0 ?\nLOC:city Where ?\nLOC:city \xf1 x\n", {}, [(1, "byte 0xf0"), (3, "byte 0xf1")]),
    ],
)
def test_collect_malformed_lists_every_bad_line_and_keeps_the_good_ones(tmp_path, fmt, text, options, expected):
    from tagger.data.readers import collect_malformed

    path = write(tmp_path / f"data.{fmt}", text)
    with pytest.raises(DataError, match=f"data.{fmt}:{expected[0][0]}: "):
        list(read_examples(path, fmt, **options))  # outside the block: the first one raises
    with collect_malformed() as bad:
        good = list(read_examples(path, fmt, **options))
    assert len(bad) == len(expected), bad
    for message, (line, words) in zip(bad, expected):
        assert message.startswith(f"{path}:{line}: ") and words in message
    assert len(good) >= 1 and all(ex.tokens for ex in good)
    with pytest.raises(DataError):  # collecting ends with the block
        list(read_examples(path, fmt, **options))
