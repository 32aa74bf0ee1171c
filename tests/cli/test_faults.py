"""The bad-input and fault suite: every command, given bad input or hit by a fault, exits
non-zero with one `error:` line that names the file, key or option, prints no traceback
and leaves nothing half-written.

Cases are rows of tables (one table per class of fault); each row prepares what it needs
in a fresh folder and says what the one line must contain. Two tiny models (a tagger and a
classifier, a couple of updates each) are trained once per session.
"""
from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from tagger.cli import app

from .conftest import SAMPLES

IGNORED = ("compiling Numba kernels",)
TINY = {"embedding_dim": 8, "lstm_units": 8, "dropout": 0.1}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def stderr_lines(result) -> list[str]:
    return [l for l in result.stderr.splitlines() if l.strip() and not l.startswith(IGNORED)]


def assert_one_line(result, code, needles, log=False):
    """One `error:` line naming `needles`; with `log`, training's progress lines may precede it."""
    assert "Traceback" not in result.output, result.output
    lines = stderr_lines(result)
    assert result.exit_code == code, (result.exit_code, result.output)
    if log:
        assert [l for l in lines if l.startswith("error: ")] == lines[-1:], result.stderr
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])


def leftovers(folder: Path) -> list[Path]:
    """Temporaries anywhere under `folder` (what a half-finished write leaves)."""
    return [p for p in folder.rglob("*") if p.name.endswith((".tmp", ".old"))]


def tiny_config(path: Path, task="tag", **training) -> Path:
    if task == "tag":
        data = {"train": str(SAMPLES / "sample_pos.train.conllu"), "dev": str(SAMPLES / "sample_pos.dev.conllu"),
                "format": "conllu", "label_column": "upos"}
    else:
        data = {"train": str(SAMPLES / "sample_cls.train.tsv"), "dev": str(SAMPLES / "sample_cls.dev.tsv"),
                "format": "tsv", "text_column": "sentence", "label_column": "label", "header": True}
    cfg = {"data": data, "model": {"task": task, **TINY},
           "training": {"max_steps": 1, "epochs": 1, "batch_size": 32, **training}, "device": "cpu"}
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """{'tag': model dir, 'classify': model dir}, trained once with one or two updates."""
    root = tmp_path_factory.mktemp("fault-models")
    out = {}
    for task in ("tag", "classify"):
        cfg = tiny_config(root / f"{task}.yaml", task, max_steps=2)
        result = invoke("train", cfg, "-o", root / task, "--no-progress")
        assert result.exit_code == 0, result.output
        out[task] = root / task / "model-best"
    return out


@dataclass
class Ctx:
    tmp: Path
    models: dict

    @property
    def tag(self) -> Path:
        return self.models["tag"]

    def copy_model(self, task="tag") -> Path:
        dst = self.tmp / f"model-{task}"
        shutil.copytree(self.models[task], dst)
        return dst

    def text(self, name="in.txt", content="The cat sat .\nA dog ran .\n") -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content, encoding="utf-8")
        return p

    def config(self, task="tag", **training) -> Path:
        return tiny_config(self.tmp / f"{task}.yaml", task, **training)

    def raw_config(self, text: str, name="c.yaml") -> Path:
        p = self.tmp / name
        p.write_text(text, encoding="utf-8")
        return p


@dataclass
class Case:
    """`make(ctx)` prepares files and returns (argv, needles for the error line)."""

    id: str
    make: object
    code: int = 1
    absent: tuple = ()  # names under tmp that must not exist afterwards
    patch: object = None  # patch(monkeypatch, ctx) before running
    log: bool = False  # training ran: its progress lines come before the error

    def param(self):
        return pytest.param(self, id=self.id)


def after(_prepared, argv, needles):
    """For a case's `make`: the first argument only prepares a file (it runs first)."""
    return argv, needles


def run_case(case: Case, tmp_path, models, monkeypatch):
    ctx = Ctx(tmp_path, models)
    argv, needles = case.make(ctx)
    if case.patch is not None:
        case.patch(monkeypatch, ctx)
    result = invoke(*argv)
    monkeypatch.undo()
    assert_one_line(result, case.code, needles, case.log)
    for name in case.absent:
        assert not (tmp_path / name).exists(), f"{name} was left behind"
    assert leftovers(tmp_path) == []
    return result


# =============================================================================== config files
def _yaml_case(id, text, *needles):
    return Case(id, lambda c: (["train", c.raw_config(text), "-o", c.tmp / "out"], ["c.yaml", *needles]), absent=("out",))


CONFIG_FILES = [
    _yaml_case("duplicate-section", "training:\n  lr: 0.1\nmodel: {}\ntraining:\n  seed: 1\n",
               "c.yaml:4", "duplicate key 'training'", "line 1"),
    _yaml_case("duplicate-key", "training:\n  lr: 0.1\n  seed: 2\n  lr: 0.3\n", "c.yaml:4", "'lr'", "line 2"),
    _yaml_case("duplicate-top-key", "device: cpu\ndevice: cuda\n", "c.yaml:2", "'device'"),
    _yaml_case("duplicate-flow-key", "model: {lstm_units: 4, lstm_units: 8}\n", "c.yaml:1", "'lstm_units'"),
    _yaml_case("duplicate-deep-key", "data:\n  train: a\n  format: tsv\n  train: b\n", "c.yaml:4", "'train'"),
    _yaml_case("invalid-yaml", "training:\n\tlr: 1\n", "invalid YAML"),
    _yaml_case("unclosed-bracket", "model: [1, 2\n", "invalid YAML"),
    _yaml_case("python-tag", "model: !!python/object/apply:os.system ['true']\n", "invalid YAML"),
    _yaml_case("top-level-list", "- a\n- b\n", "expected a mapping of sections"),
    _yaml_case("unknown-section", "trainig:\n  lr: 0.1\n", "trainig", "did you mean 'training'"),
    _yaml_case("section-not-mapping", "training: 3\n", "training"),
    Case("config-not-found", lambda c: (["train", c.tmp / "nope.yaml"], ["nope.yaml", "not found"])),
    Case("config-is-folder", lambda c: (["train", c.tmp], [str(c.tmp), "is a folder"])),
    Case("config-not-utf8", lambda c: after((c.tmp / "c.yaml").write_bytes(b"device: \xff\n"), ["train", c.tmp / "c.yaml"],
                                            ["c.yaml", "not UTF-8"])),
]


@pytest.mark.parametrize("case", [c.param() for c in CONFIG_FILES])
def test_config_files(case, tmp_path, models, monkeypatch):
    run_case(case, tmp_path, models, monkeypatch)


# =============================================================================== config values
VALUES = [
    ("training.seed", "-1", "greater than or equal to 0"),
    ("training.lr", ".inf", "finite"),
    ("training.lr", "-.inf", "training.lr"),
    ("training.lr", ".nan", "finite"),
    ("training.lr", "0", "greater than 0"),
    ("training.lr", "fast", "expected a number"),
    ("training.weight_decay", ".nan", "finite"),
    ("training.clip_norm", ".inf", "finite"),
    ("training.min_lr", ".inf", "finite"),
    ("training.momentum", "1", "less than 1"),
    ("training.batch_size", "0", "greater than or equal to 1"),
    ("training.batch_size", "-4", "greater than or equal to 1"),
    ("training.batch_size", "1.5", "expected an integer"),
    ("training.batch_size", "x", "expected an integer"),
    ("training.epochs", "0", "greater than or equal to 1"),
    ("training.max_steps", "0", "greater than or equal to 1"),
    ("training.patience", "0", "greater than or equal to 1"),
    ("training.eval_every", "0", "eval_every"),
    ("training.eval_every", "often", "eval_every"),
    ("training.optimizer", "rmsprop", "adam"),
    ("training.unk_replace", "1", "less than 1"),
    ("model.dropout", "1", "less than 1"),
    ("model.lstm_units", "0", "greater than or equal to 1"),
    ("model.lstm_units", "1e9", "expected an integer"),
    ("model.layers", "0", "greater than or equal to 1"),
    ("model.task", "parse", "tag"),
    ("model.merge_mode", "max", "concat"),
    ("model.pooling", "max", "task: classify"),
    ("data.format", "xml", "conllu"),
    ("data.dev_fraction", "1", "less than 1"),
    ("data.scheme", "bilou", "iob1"),
    ("vocab.min_freq", "0", "greater than or equal to 1"),
    ("device", "gpu", "cpu"),
]


@pytest.mark.parametrize("key, value, needle", VALUES, ids=[f"{k}={v}" for k, v, _ in VALUES])
def test_config_values(key, value, needle, tmp_path, models, monkeypatch):
    case = Case(f"{key}={value}", lambda c: (["train", c.config(), "-o", c.tmp / "out", f"--{key}", value],
                                            [key, needle]), absent=("out",))
    run_case(case, tmp_path, models, monkeypatch)


# memory: refused before a byte is allocated, after the vocabulary size is known
SIZES = [
    ("model.lstm_units", "1000000000"),
    ("model.embedding_dim", "1000000000"),
    ("model.layers", "100000000"),
]


def test_summary_of_a_config_larger_than_memory(tmp_path):
    cfg = tiny_config(tmp_path / "c.yaml")
    _edit_yaml(cfg, lambda c: c["model"].update(lstm_units=10**9))
    assert_one_line(invoke("summary", cfg, "--vocab-size", "100", "--labels", "5"), 1, ["model.lstm_units", "free memory"])


@pytest.mark.parametrize("key, value", SIZES, ids=[f"{k}={v}" for k, v in SIZES])
def test_models_larger_than_memory(key, value, tmp_path, models, monkeypatch):
    case = Case(key, lambda c: (["train", c.config(), "-o", c.tmp / "out", f"--{key}", value, "--no-progress"],
                                [key, "GiB", "free memory", "make them smaller"]), absent=("out",))
    run_case(case, tmp_path, models, monkeypatch)


# =============================================================================== overrides, usage
USAGE = [
    Case("unknown-override", lambda c: (["train", c.config(), "--training.lrr", "0.1"], ["training.lrr", "did you mean 'lr'"])),
    Case("override-a-section", lambda c: (["train", c.config(), "--training", "1"], ["--training"])),
    Case("override-no-value", lambda c: (["train", c.config(), "--training.lr"], ["--training.lr", "no value"])),
    Case("override-not-a-section", lambda c: (["train", c.config(), "--device.x", "1"], ["device"])),
    Case("stray-argument", lambda c: (["train", c.config(), "extra"], ["'extra'"])),
    Case("unknown-command", lambda c: (["trian"], ["trian", "Did you mean 'train'"]), code=2),
    Case("missing-argument", lambda c: (["predict", c.tag], ["'inputs'", "--help"]), code=2),
    Case("unknown-option", lambda c: (["predict", c.tag, c.text(), "--bogus"], ["--bogus"]), code=2),
    Case("batch-size-not-int", lambda c: (["predict", c.tag, c.text(), "--batch-size", "x"], ["--batch-size", "integer"]), code=2),
    Case("batch-size-float", lambda c: (["predict", c.tag, c.text(), "--batch-size", "1.5"], ["--batch-size"]), code=2),
    Case("batch-size-zero", lambda c: (["predict", c.tag, c.text(), "--batch-size", "0"], ["--batch-size", "at least 1"]), code=2),
    Case("batch-size-negative", lambda c: (["predict", c.tag, c.text(), "--batch-size", "-3"], ["--batch-size", "at least 1"]), code=2),
    Case("encoding-rot13", lambda c: (["predict", c.tag, c.text(), "--encoding", "rot13"], ["--encoding", "not a text encoding"]), code=2),
    Case("encoding-base64", lambda c: (["predict", c.tag, c.text(), "--encoding", "base64"], ["--encoding", "not a text encoding"]), code=2),
    Case("encoding-unknown", lambda c: (["predict", c.tag, c.text(), "--encoding", "klingon"], ["--encoding", "unknown encoding"]), code=2),
    Case("format-unknown", lambda c: (["predict", c.tag, c.text(), "--format", "xml"], ["--format", "'xml'"])),
    Case("device-unknown", lambda c: (["predict", c.tag, c.text(), "--device", "tpu"], ["'tpu'"])),
    Case("init-config-task", lambda c: (["init-config", "--task", "parse"], ["--task", "'parse'"])),
    Case("evaluate-missing-data", lambda c: (["evaluate", c.tag, c.tmp / "none.conllu"], ["none.conllu", "not found"])),
    Case("summary-missing", lambda c: (["summary", c.tmp / "none.yaml"], ["none.yaml", "not found"])),
]


@pytest.mark.parametrize("case", [c.param() for c in USAGE])
def test_usage(case, tmp_path, models, monkeypatch):
    run_case(case, tmp_path, models, monkeypatch)


# =============================================================================== corpora
def _gz_truncated(path: Path, source: Path):
    data = gzip.compress(source.read_bytes() * 4)
    path.write_bytes(data[: len(data) // 2])
    return path


def _train_on(c: Ctx, name, content, task="tag", fmt=None, **data):
    p = c.tmp / name
    if callable(content):
        content(p)
    elif isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    cfg = yaml.safe_load(c.config(task).read_text())
    cfg["data"].update({"train": str(p), "dev": None, **({"format": fmt} if fmt else {}), **data})
    cfg["data"].pop("dev")
    return ["train", c.raw_config(yaml.safe_dump(cfg)), "-o", c.tmp / "out", "--no-progress"]


JSONL_TEXT = '{"text": "a good film", "label": "pos"}\n{"text": "a bad one", "label": "neg"}\n' * 5
CONLLU = (SAMPLES / "sample_pos.train.conllu").read_text(encoding="utf-8")
CORPORA = [
    Case("train-missing", lambda c: (["train", c.config(), "-o", c.tmp / "out", "--data.train", c.tmp / "no.conllu"],
                                     ["no.conllu", "not found"]), absent=("out",)),
    Case("train-is-folder", lambda c: (["train", c.config(), "-o", c.tmp / "out", "--data.train", c.tmp],
                                       ["is a folder"]), absent=("out",)),
    Case("train-empty", lambda c: (_train_on(c, "e.conllu", ""), ["e.conllu", "no sentences"]), absent=("out",)),
    Case("train-fake-gz", lambda c: (_train_on(c, "t.conllu.gz", CONLLU), ["t.conllu.gz", "not a valid gzip file"]), absent=("out",)),
    Case("train-truncated-gz", lambda c: (_train_on(c, "t.conllu.gz", lambda p: _gz_truncated(p, SAMPLES / "sample_pos.train.conllu")),
                                          ["t.conllu.gz", "truncated"]), absent=("out",)),
    Case("train-garbage-gz", lambda c: (_train_on(c, "t.conllu.gz", b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"garbage" * 20),
                                        ["t.conllu.gz"]), absent=("out",)),
    Case("train-not-utf8", lambda c: (_train_on(c, "t.conllu", b"1\tsister\xf0\t_\tNOUN\t_\t_\t0\troot\t_\t_\n\n"),
                                      ["t.conllu:1", "0xf0", "data.encoding"]), absent=("out",)),
    Case("train-encoding-rot13", lambda c: (_train_on(c, "t.conllu", CONLLU, encoding="rot13"),
                                            ["t.conllu", "not a text encoding", "data.encoding"]), absent=("out",)),
    Case("train-encoding-unknown", lambda c: (_train_on(c, "t.conllu", CONLLU, encoding="klingon"),
                                              ["t.conllu", "unknown encoding", "data.encoding"]), absent=("out",)),
    Case("jsonl-texts-for-tagging", lambda c: (_train_on(c, "t.jsonl", JSONL_TEXT, fmt="jsonl"),
                                               ["t.jsonl:1", "model.task is tag"]), absent=("out",)),
    Case("tsv-for-tagging", lambda c: (_train_on(c, "t.tsv", "a good film\tpos\nbad\tneg\n", fmt="tsv", label_column=None,
                                                 text_column=None, header=False), ["t.tsv:1", "model.task is tag"]), absent=("out",)),
    Case("trec-for-tagging", lambda c: (_train_on(c, "t.trec", "DESC:def What is a cat ?\n", fmt="trec", label_column=None),
                                        ["t.trec:1", "model.task is tag"]), absent=("out",)),
    Case("conllu-for-classify", lambda c: (_train_on(c, "t.conllu", CONLLU, task="classify", fmt="conllu", text_column=None,
                                                     label_column="upos", header=None), ["t.conllu:", "model.task is classify"]),
         absent=("out",)),
    Case("jsonl-tokens-for-classify", lambda c: (_train_on(c, "t.jsonl", '{"text": ["a", "b"], "label": ["X", "Y"]}\n' * 3,
                                                           task="classify", fmt="jsonl", text_column=None, label_column=None,
                                                           header=None), ["t.jsonl:1", "model.task is classify"]),
         absent=("out",)),
    Case("malformed-conllu", lambda c: (_train_on(c, "t.conllu", "1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_\n2\tcat\tNOUN\n\n"),
                                        ["t.conllu:2", "10 tab-separated"]), absent=("out",)),
    Case("jsonl-not-json", lambda c: (_train_on(c, "t.jsonl", "{oops\n", fmt="jsonl"), ["t.jsonl:1", "not valid JSON"]),
         absent=("out",)),
]


@pytest.mark.parametrize("case", [c.param() for c in CORPORA])
def test_corpora(case, tmp_path, models, monkeypatch):
    run_case(case, tmp_path, models, monkeypatch)


# =============================================================================== predict inputs
def _loop_folder(c: Ctx):
    d = c.tmp / "folder"
    d.mkdir()
    (d / "a.txt").write_text("The cat .\n")
    (d / "x").symlink_to("y")
    (d / "y").symlink_to("x")
    return d


def _dangling_folder(c: Ctx):
    d = c.tmp / "folder"
    d.mkdir()
    (d / "a.txt").write_text("The cat .\n")
    (d / "gone.txt").symlink_to(c.tmp / "nowhere.txt")
    return d


INPUTS = [
    Case("input-missing", lambda c: (["predict", c.tag, c.tmp / "no.txt", "-o", c.tmp / "out"], ["no.txt", "no such file"]),
         absent=("out",)),
    Case("input-empty-folder", lambda c: after((c.tmp / "e").mkdir(), ["predict", c.tag, c.tmp / "e", "-o", c.tmp / "out"],
                                               ["e", "no files"]), absent=("out",)),
    Case("input-symlink-loop", lambda c: (["predict", c.tag, _loop_folder(c), "-o", c.tmp / "out"], ["folder/", "link loop"]),
         absent=("out",)),
    Case("input-dangling-link", lambda c: (["predict", c.tag, _dangling_folder(c), "-o", c.tmp / "out"], ["gone.txt", "leads to no file"]),
         absent=("out",)),
    Case("input-fake-gz", lambda c: (["predict", c.tag, c.text("in.txt.gz"), "-o", c.tmp / "out"], ["in.txt.gz", "not a valid gzip"]),
         absent=("out/in.txt.gz.jsonl",)),
    Case("input-truncated-gz", lambda c: (["predict", c.tag, _gz_truncated(c.tmp / "in.txt.gz", SAMPLES / "example.txt"),
                                           "-o", c.tmp / "out"], ["in.txt.gz", "truncated"]), absent=("out/in.txt.gz.jsonl",)),
    Case("input-not-utf8", lambda c: after((c.tmp / "l.txt").write_bytes(b"ok\nsister\xf0city\n"),
                                           ["predict", c.tag, c.tmp / "l.txt", "-o", c.tmp / "out"],
                                           ["l.txt:2", "0xf0", "--encoding"]), absent=("out/l.txt.jsonl",)),
    Case("input-not-utf8-stdout", lambda c: after((c.tmp / "l.txt").write_bytes(b"\xff\n"), ["predict", c.tag, c.tmp / "l.txt"],
                                                  ["l.txt:1", "--encoding"])),
    Case("model-missing", lambda c: (["predict", c.tmp / "nomodel", c.text()], ["nomodel", "no such model directory"])),
    Case("model-is-a-file", lambda c: (["predict", c.text("m.txt"), c.text()], ["m.txt"])),
    Case("model-empty-folder", lambda c: after((c.tmp / "m").mkdir(), ["predict", c.tmp / "m", c.text()],
                                               ["config.yaml", "missing"])),
]


@pytest.mark.parametrize("case", [c.param() for c in INPUTS])
def test_predict_inputs(case, tmp_path, models, monkeypatch):
    run_case(case, tmp_path, models, monkeypatch)


# =============================================================================== output paths
def _file(c: Ctx, name="afile"):
    p = c.tmp / name
    p.write_text("keep me")
    return p


def _no_access(mp, c):
    import tagger.fsutil

    mp.setattr(tagger.fsutil.os, "access", lambda p, mode: not mode & os.W_OK)


OUTPUTS = [
    Case("train-output-is-file", lambda c: (["train", c.config(), "-o", _file(c)], ["--output", "afile", "not a folder"])),
    Case("train-output-under-file", lambda c: (["train", c.config(), "-o", _file(c) / "sub"], ["--output", "afile", "is a file"])),
    Case("train-output-unwritable", lambda c: (["train", c.config(), "-o", c.tmp / "out"], ["--output", "not writable"]),
         patch=_no_access, absent=("out",)),
    Case("predict-output-is-file", lambda c: (["predict", c.tag, c.text(), "-o", _file(c)], ["--output", "afile", "not a folder"])),
    Case("predict-output-under-file", lambda c: (["predict", c.tag, c.text(), "-o", _file(c) / "sub"], ["--output", "is a file"])),
    Case("predict-output-unwritable", lambda c: (["predict", c.tag, c.text(), "-o", c.tmp / "out"], ["--output", "not writable"]),
         patch=_no_access, absent=("out",)),
    Case("evaluate-output-is-folder", lambda c: (["evaluate", c.tag, SAMPLES / "sample_pos.dev.conllu", "-o", c.tmp],
                                                 ["--output", "is a folder"])),
    Case("evaluate-output-no-parent", lambda c: (["evaluate", c.tag, SAMPLES / "sample_pos.dev.conllu", "-o", c.tmp / "d" / "m.json"],
                                                 ["--output", "does not exist"])),
    Case("evaluate-output-under-file", lambda c: (["evaluate", c.tag, SAMPLES / "sample_pos.dev.conllu", "-o", _file(c) / "m.json"],
                                                  ["--output", "not a folder"])),
    Case("evaluate-output-unwritable", lambda c: (["evaluate", c.tag, SAMPLES / "sample_pos.dev.conllu", "-o", c.tmp / "m.json"],
                                                  ["--output", "not writable"]), patch=_no_access, absent=("m.json",)),
    Case("init-config-output-is-folder", lambda c: (["init-config", "-o", c.tmp], ["--output", "is a folder"])),
    Case("init-config-output-no-parent", lambda c: (["init-config", "-o", c.tmp / "d" / "c.yaml"], ["--output", "does not exist"])),
    Case("init-config-output-under-file", lambda c: (["init-config", "-o", _file(c) / "c.yaml"], ["--output", "not a folder"])),
    Case("init-config-output-unwritable", lambda c: (["init-config", "-o", c.tmp / "c.yaml"], ["--output", "not writable"]),
         patch=_no_access, absent=("c.yaml",)),
]


@pytest.mark.parametrize("case", [c.param() for c in OUTPUTS])
def test_output_paths(case, tmp_path, models, monkeypatch):
    run_case(case, tmp_path, models, monkeypatch)
    if (tmp_path / "afile").exists():
        assert (tmp_path / "afile").read_text() == "keep me"


# =============================================================================== disk full
def _disk_full(mp, c):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    mp.setattr(os, "fsync", full)


DISK_FULL = [
    Case("train", lambda c: (["train", c.config(), "-o", c.tmp / "out", "--no-progress"], ["out/model-best/weights.safetensors", "disk is full"]),
         patch=_disk_full, absent=("out/model-best", "out/model-last"), log=True),
    Case("predict", lambda c: (["predict", c.tag, c.text(), "-o", c.tmp / "out"], ["in.txt.jsonl", "disk is full"]),
         patch=_disk_full, absent=("out/in.txt.jsonl",)),
    Case("evaluate", lambda c: (["evaluate", c.tag, SAMPLES / "sample_pos.dev.conllu", "-o", c.tmp / "m.json"],
                                ["m.json", "disk is full"]), patch=_disk_full, absent=("m.json",)),
    Case("init-config", lambda c: (["init-config", "-o", c.tmp / "c.yaml"], ["c.yaml", "disk is full"]),
         patch=_disk_full, absent=("c.yaml",)),
]


@pytest.mark.parametrize("case", [c.param() for c in DISK_FULL])
def test_disk_full(case, tmp_path, models, monkeypatch):
    run_case(case, tmp_path, models, monkeypatch)


# =============================================================================== damaged models
def _edit_yaml(p: Path, fn):
    cfg = yaml.safe_load(p.read_text())
    fn(cfg)
    p.write_text(yaml.safe_dump(cfg))


def _edit_weights(m: Path, fn, metadata=None):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(m / "weights.safetensors"), framework="numpy") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    fn(tensors)
    save_file(tensors, str(m / "weights.safetensors"), metadata=meta if metadata is None else metadata)


def _poison(value):
    def fn(t):
        t["output/kernel"] = t["output/kernel"].copy()
        t["output/kernel"][0, 0] = value

    return fn


def _add_word(m: Path):
    tok = json.loads((m / "tokenizer.json").read_text())
    tok["model"]["vocab"]["zebra-word"] = max(tok["model"]["vocab"].values()) + 1
    (m / "tokenizer.json").write_text(json.dumps(tok))


def _labels(m: Path, fn):
    labels = json.loads((m / "labels.json").read_text())
    (m / "labels.json").write_text(json.dumps(fn(labels)))


def damage(id, fn, *needles, task="tag"):
    def make(c: Ctx):
        m = c.copy_model(task)
        fn(m)
        return ["predict", m, c.text(), "-o", c.tmp / "out"], needles

    return Case(id, make, absent=("out",))


DAMAGE = [
    *[damage(f"missing-{f}", lambda m, f=f: (m / f).unlink(), f, "missing")
      for f in ("config.yaml", "tokenizer.json", "labels.json", "weights.safetensors")],
    damage("config-not-yaml", lambda m: (m / "config.yaml").write_text("model: [\n"), "config.yaml", "invalid YAML"),
    damage("config-duplicate-key", lambda m: (m / "config.yaml").write_text((m / "config.yaml").read_text() + "device: cpu\n"),
           "config.yaml:", "duplicate key 'device'"),
    damage("config-unknown-key", lambda m: _edit_yaml(m / "config.yaml", lambda c: c["model"].update(units=3)),
           "config.yaml", "model.units"),
    damage("config-not-utf8", lambda m: (m / "config.yaml").write_bytes(b"\xff\xfe"), "config.yaml"),
    damage("tokenizer-garbage", lambda m: (m / "tokenizer.json").write_text("{nope"), "tokenizer.json", "damaged"),
    damage("labels-garbage", lambda m: (m / "labels.json").write_text("[1,"), "labels.json", "damaged"),
    damage("labels-not-list", lambda m: (m / "labels.json").write_text('{"a": 1}'), "labels.json", "list of strings"),
    damage("weights-garbage", lambda m: (m / "weights.safetensors").write_bytes(b"\x00garbage" * 10), "weights.safetensors"),
    damage("weights-empty", lambda m: (m / "weights.safetensors").write_bytes(b""), "weights.safetensors"),
    damage("weights-truncated", lambda m: (m / "weights.safetensors").write_bytes((m / "weights.safetensors").read_bytes()[:-100]),
           "weights.safetensors"),
    damage("weights-nan", lambda m: _edit_weights(m, _poison(np.nan)), "weights.safetensors", "output/kernel", "NaN"),
    damage("weights-inf", lambda m: _edit_weights(m, _poison(np.inf)), "weights.safetensors", "infinite"),
    damage("weights-missing-tensor", lambda m: _edit_weights(m, lambda t: t.pop("output/bias")), "weights.safetensors",
           "output/bias"),
    damage("classify-config-tagger-weights", lambda m: _edit_yaml(m / "config.yaml", lambda c: c["model"].update(task="classify")),
           "weights.safetensors", "model.task tag", "says classify"),
    damage("tag-config-classifier-weights", lambda m: _edit_yaml(m / "config.yaml", lambda c: c["model"].update(task="tag")),
           "weights.safetensors", "model.task classify", "says tag", task="classify"),
    damage("labels-one-extra", lambda m: _labels(m, lambda l: l + ["EXTRA"]), "labels.json", "labels, but"),
    damage("labels-one-fewer", lambda m: _labels(m, lambda l: l[:-1]), "labels.json", "labels, but"),
    damage("tokenizer-one-extra", _add_word, "tokenizer.json", "words, but"),
    damage("old-format-labels-disagree", lambda m: (_edit_weights(m, lambda t: None, metadata={"format": "1"}),
                                                    _labels(m, lambda l: l + ["EXTRA"])), "labels.json"),
    damage("old-format-tokenizer-disagrees", lambda m: (_edit_weights(m, lambda t: None, metadata={"format": "1"}), _add_word(m)),
           "tokenizer.json"),
    damage("lstm-units-changed", lambda m: _edit_yaml(m / "config.yaml", lambda c: c["model"].update(lstm_units=7)),
           "weights.safetensors", "shape"),
    damage("embedding-dim-changed", lambda m: _edit_yaml(m / "config.yaml", lambda c: c["model"].update(embedding_dim=3)),
           "weights.safetensors", "shape"),
    damage("layers-changed", lambda m: _edit_yaml(m / "config.yaml", lambda c: c["model"].update(layers=2)),
           "weights.safetensors", "lstm_2"),
    damage("config-huge-model", lambda m: _edit_yaml(m / "config.yaml", lambda c: c["model"].update(lstm_units=10**9)),
           "config.yaml", "free memory"),
]


@pytest.mark.parametrize("case", [c.param() for c in DAMAGE])
def test_damaged_models(case, tmp_path, models, monkeypatch):
    run_case(case, tmp_path, models, monkeypatch)


@pytest.mark.parametrize("command", ["evaluate", "summary"])
@pytest.mark.parametrize("fault", ["weights-nan", "classify-config-tagger-weights", "labels-one-extra", "config-duplicate-key"])
def test_damaged_models_other_commands(command, fault, tmp_path, models, monkeypatch):
    case = next(c for c in DAMAGE if c.id == fault)
    argv, needles = case.make(Ctx(tmp_path, models))
    model = argv[1]
    argv = ["evaluate", model, SAMPLES / "sample_pos.dev.conllu"] if command == "evaluate" else ["summary", model]
    assert_one_line(invoke(*argv), 1, needles)


# =============================================================================== interrupts
def _interrupt_at_step(mp, step, exc=None, sig=None):
    from tagger.models import Model

    real = Model.train_step
    calls = []

    def train_step(self, batch):
        calls.append(1)
        if len(calls) == step:
            if sig is not None:  # noted by training, which stops after this step
                os.kill(os.getpid(), sig)
                return real(self, batch)
            raise exc()
        return real(self, batch)

    mp.setattr(Model, "train_step", train_step)


def _interrupted(result, code, word):
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == code, result.output
    assert stderr_lines(result)[-1] == word, result.stderr


def test_ctrl_c_during_training_saves_and_exits_130(tmp_path, monkeypatch):
    _interrupt_at_step(monkeypatch, 3, KeyboardInterrupt)
    result = invoke("train", tiny_config(tmp_path / "c.yaml", max_steps=5, eval_every=1), "-o", tmp_path / "out", "--no-progress")
    _interrupted(result, 130, "interrupted")
    assert "{" not in result.stdout  # no normal result printed
    for name in ("model-best", "model-last"):
        assert (tmp_path / "out" / name / "weights.safetensors").is_file()
    assert leftovers(tmp_path) == []


def test_sigterm_during_training_saves_and_exits_143(tmp_path, monkeypatch):
    _interrupt_at_step(monkeypatch, 2, sig=signal.SIGTERM)
    result = invoke("train", tiny_config(tmp_path / "c.yaml", max_steps=5), "-o", tmp_path / "out", "--no-progress")
    _interrupted(result, 143, "terminated")
    assert (tmp_path / "out" / "model-last" / "weights.safetensors").is_file()
    assert json.loads((tmp_path / "out" / "checkpoint" / "state.json").read_text())["step"] == 2  # after the step
    assert "--resume" in result.stderr
    assert leftovers(tmp_path) == []


def test_ctrl_c_at_start_up_exits_130(tmp_path, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("tagger.config.load_config", interrupted)
    result = invoke("train", tiny_config(tmp_path / "c.yaml"), "-o", tmp_path / "out")
    _interrupted(result, 130, "interrupted")
    assert not (tmp_path / "out").exists()


def test_ctrl_c_while_parsing_options_exits_130_with_one_line(tmp_path, models, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr("tagger.data.readers.check_encoding", interrupted)
    result = invoke("predict", models["tag"], Ctx(tmp_path, models).text(), "--encoding", "utf-8")
    _interrupted(result, 130, "interrupted")
    assert len(stderr_lines(result)) == 1


def test_an_interrupt_that_a_library_turns_into_another_error_exits_130(tmp_path, models, monkeypatch):
    """Numba interrupted while compiling re-raises a KeyError; the interrupt still wins."""

    def compile_(*a, **k):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            raise KeyError("numba type cache") from None

    monkeypatch.setattr("tagger.io._resolve_device", compile_)
    result = invoke("predict", models["tag"], Ctx(tmp_path, models).text(), "-o", tmp_path / "out")
    _interrupted(result, 130, "interrupted")
    assert not (tmp_path / "out").exists()


def test_ctrl_c_during_predict_leaves_no_output(tmp_path, models, monkeypatch):
    from tagger.tasks import TagTask

    real = TagTask.prediction_fields  # once per chunk, after the model ran, before the output is written
    calls = []

    def prediction_fields(*a):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(TagTask, "prediction_fields", prediction_fields)
    src = Ctx(tmp_path, models).text(content="The cat .\n" * 10)
    result = invoke("predict", models["tag"], src, "-o", tmp_path / "out")
    _interrupted(result, 130, "interrupted")
    # no output and no temporary: only the shard manifest, which lists nothing as done
    assert [p.name for p in (tmp_path / "out").iterdir()] == [".tagger-shards"]
    for manifest in (tmp_path / "out" / ".tagger-shards").iterdir():
        assert json.loads(manifest.read_text())["outputs"] == {}


def test_a_second_training_into_a_busy_folder_gets_one_line(tmp_path, models, monkeypatch):
    from tagger.fsutil import OutputLock

    with OutputLock(tmp_path / "out"):
        result = invoke("train", tiny_config(tmp_path / "c.yaml"), "-o", tmp_path / "out", "--no-progress")
    assert_one_line(result, 1, ["--output", "out", "another tagger run", f"pid {os.getpid()}"])


# =============================================================================== crash safety, end to end
def test_a_killed_swap_still_predicts(tmp_path, models):
    run = tmp_path / "run"
    shutil.copytree(models["tag"], run / ".model-best.old")  # killed between the two renames
    src = Ctx(tmp_path, models).text()
    result = invoke("predict", run, src)
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 2


def test_a_restart_moves_the_old_run_aside_and_cleans_temporaries(tmp_path, models):
    out = tmp_path / "out"
    cfg = tiny_config(tmp_path / "c.yaml")
    assert invoke("train", cfg, "-o", out, "--no-progress").exit_code == 0
    first = (out / "model-best" / "weights.safetensors").read_bytes()
    (out / f".model-best.{os.getpid() + 10**6}.dead.tmp").mkdir()  # a killed run's half-written model
    assert invoke("train", cfg, "-o", out, "--no-progress").exit_code == 0
    assert (out / "previous" / "model-best" / "weights.safetensors").read_bytes() == first
    assert (out / "model-best" / "weights.safetensors").read_bytes() == first  # same seed, same bytes
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".tagger.lock"]


def test_a_restarted_run_without_a_model_yet_points_at_the_previous_one(tmp_path, models):
    run = tmp_path / "run"
    shutil.copytree(models["tag"], run / "previous" / "model-best")
    (run / "loss.tsv").write_text("epoch\tstep\n")  # the restarted run's fresh log, no model yet
    assert_one_line(invoke("predict", run, Ctx(tmp_path, models).text()), 1, [str(run), "previous/model-best"])


def test_classifier_tsv_escapes_tabs_in_the_text(tmp_path, models):
    src = Ctx(tmp_path, models).text(content="a good\tfilm\nback\\slash\n")
    result = invoke("predict", models["classify"], src, "--format", "tsv")
    assert result.exit_code == 0, result.output
    rows = [r.split("\t") for r in result.stdout.splitlines()]
    assert [len(r) for r in rows] == [4, 4]
    assert rows[0][3] == "a good\\tfilm" and rows[1][3] == "back\\\\slash"


def test_jsonl_output_is_valid_json(tmp_path, models):
    src = Ctx(tmp_path, models).text()
    result = invoke("predict", models["tag"], src)
    assert result.exit_code == 0
    for line in result.stdout.splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in JSONL output"))


# =============================================================================== real signals
@pytest.mark.slow
@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_real_signal_stops_training_saves_and_exits_non_zero(sig, code, word, tmp_path):
    """The whole path in a real process: handler, the loop's save, the exit status."""
    import subprocess
    import sys

    cfg = tiny_config(tmp_path / "c.yaml", max_steps=100000, epochs=1000, eval_every=1, patience=None)
    script = "import sys; from tagger.cli import main; sys.argv[0] = 'tagger'; main()"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    from tests.conftest import child_ctrl_c_default

    proc = subprocess.Popen([sys.executable, "-c", script, "train", str(cfg), "-o", str(tmp_path / "out"), "--no-progress"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, preexec_fn=child_ctrl_c_default)
    for line in proc.stderr:
        if line.startswith("epoch"):  # a model exists: stop it now
            proc.send_signal(sig)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == word
    assert out == ""  # no normal result
    assert (tmp_path / "out" / "model-last" / "weights.safetensors").is_file()
    assert leftovers(tmp_path) == []
