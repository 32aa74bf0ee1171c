"""Config: one-line errors with paths and suggestions, path resolution, overrides, init-config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tagger.config import (
    Config,
    apply_overrides,
    default_config_text,
    load_config,
    parse_config,
)
from tagger.data.readers import read_examples
from tagger.errors import ConfigError, TaggerError

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(tmp_path, text, **kwargs) -> str:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message.replace(str(path), "config.yaml")


def test_unknown_key_suggests_closest(tmp_path):
    assert _error(tmp_path, "training:\n  lrr: 0.1\n") == "config.yaml: training.lrr: unknown key; did you mean 'lr'?"
    assert _error(tmp_path, "trainng: {}\n") == "config.yaml: trainng: unknown key; did you mean 'training'?"
    msg = _error(tmp_path, "model:\n  zzz: 1\n")
    assert msg.startswith("config.yaml: model.zzz: unknown key; valid keys: task, embedding_dim")


def test_wrong_types_name_their_path(tmp_path):
    assert _error(tmp_path, "training:\n  lr: fast\n") == "config.yaml: training.lr: expected a number, got 'fast'"
    assert _error(tmp_path, "training:\n  epochs: 2.5\n") == "config.yaml: training.epochs: expected an integer, got 2.5"
    assert _error(tmp_path, "training:\n  optimizer: adamw\n") == (
        "config.yaml: training.optimizer: expected one of 'adam', 'sgd', got 'adamw'"
    )
    assert _error(tmp_path, "training:\n  eval_every: often\n") == (
        "config.yaml: training.eval_every: expected an integer or 'epoch', got 'often'"
    )
    assert _error(tmp_path, "model:\n  dropout: 1.5\n") == "config.yaml: model.dropout: must be less than 1, got 1.5"
    assert _error(tmp_path, "data: 3\n") == "config.yaml: data: expected a section (a mapping of keys), got 3"
    assert _error(tmp_path, "data:\n  format: conll\n  label_column: ner\n") == (
        "config.yaml: data.label_column: format conll needs a column index (e.g. 0 or -1), got 'ner'"
    )
    assert "(and 1 more error)" in _error(tmp_path, "training:\n  lr: x\n  epochs: y\n")
    assert _error(tmp_path, "data:\n  scheme: iob1\n  target_scheme: none\n").startswith(
        "config.yaml: data.target_scheme: cannot convert scheme 'iob1' to 'none'"
    )


def test_crf_needs_the_tag_task(tmp_path):
    assert _error(tmp_path, "model:\n  task: classify\n  crf: true\n") == (
        "config.yaml: model.crf: a CRF labels token sequences; it needs task: tag (got task: classify)"
    )
    assert load_config(_write(tmp_path, "model:\n  crf: true\n")).model.crf
    assert not load_config(_write(tmp_path, "model:\n  task: classify\n")).model.crf


def test_pooling_needs_the_classify_task(tmp_path):
    for mode in ("max", "mean"):
        assert _error(tmp_path, f"model:\n  pooling: {mode}\n") == (
            f"config.yaml: model.pooling: {mode} pooling makes one vector per text; it needs task: classify "
            "(got task: tag)"
        )
        assert load_config(_write(tmp_path, f"model:\n  task: classify\n  pooling: {mode}\n")).model.pooling == mode
    # the default (and a saved tag config, which spells the default out) is accepted
    assert load_config(_write(tmp_path, "model:\n  pooling: last\n")).model.pooling == "last"
    assert load_config(_write(tmp_path, "model:\n  task: classify\n")).model.pooling == "last"
    assert _error(tmp_path, "model:\n  task: classify\n  pooling: sum\n") == (
        "config.yaml: model.pooling: expected one of 'last', 'max', 'mean', got 'sum'"
    )


def test_a_span_scheme_without_target_scheme_keeps_its_scheme(tmp_path):
    config = load_config(_write(tmp_path, "data:\n  format: conll\n  token_column: 0\n  label_column: 3\n  scheme: iob1\n"))
    assert config.data.scheme == "iob1" and config.data.target_scheme is None


def test_yaml_syntax_and_missing_file(tmp_path):
    assert _error(tmp_path, "training:\n  lr: [1\n").startswith("config.yaml:3: invalid YAML")
    with pytest.raises(TaggerError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_defaults_and_empty_sections(tmp_path):
    config = load_config(_write(tmp_path, "data:\n  # all commented out\nmodel:\n  task: classify\n"))
    assert config.training.lr == 0.001 and config.model.lstm_units == 128 and config.device == "auto"
    assert config.model.task == "classify" and config.data.train is None
    assert config.data.reader_options() == {
        "encoding": "utf-8", "token_column": "form", "label_column": "upos",
    }


def test_relative_and_corpora_paths(tmp_path, monkeypatch):
    sub = tmp_path / "exp"
    sub.mkdir()
    text = "data:\n  train: ../data/train.conllu\n  dev: ${corpora}/ud/dev.conllu\n  test: /abs/test.conllu\n"
    path = _write(sub, text)
    monkeypatch.delenv("TAGGER_CORPORA", raising=False)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (
        f"{path}: data.dev: uses ${{corpora}} but no corpora folder is given; "
        "pass --corpora DIR or set the environment variable TAGGER_CORPORA"
    )
    config = load_config(path, corpora_root=tmp_path / "corp")
    assert config.data.train == str((tmp_path / "data" / "train.conllu").resolve())
    assert config.data.dev == str((tmp_path / "corp" / "ud" / "dev.conllu").resolve())
    assert config.data.test == "/abs/test.conllu"
    monkeypatch.setenv("TAGGER_CORPORA", str(tmp_path / "env"))
    assert load_config(path).data.dev == str((tmp_path / "env" / "ud" / "dev.conllu").resolve())


def test_overrides(tmp_path):
    path = _write(tmp_path, "training:\n  lr: 0.1\n")
    config = load_config(path, overrides=["training.lr=0.01", "--model.layers=2", "device=cpu", "training.max_steps=null"])
    assert (config.training.lr, config.model.layers, config.device, config.training.max_steps) == (0.01, 2, "cpu", None)
    assert load_config(path, overrides={"training.lr": "1.0e-3"}).training.lr == 0.001
    with pytest.raises(ConfigError, match=r"^override training.lrr: unknown key; did you mean 'lr'\?$"):
        load_config(path, overrides=["training.lrr=1"])
    with pytest.raises(ConfigError, match=r"training.lr: expected a number, got 'fast'"):
        load_config(path, overrides=["training.lr=fast"])
    with pytest.raises(ConfigError, match=r"expected SECTION.KEY=VALUE"):
        apply_overrides({}, ["training.lr"])
    raw = {"training": {"lr": 0.1}}
    assert apply_overrides(raw, ["training.epochs=3"]) == {"training": {"lr": 0.1, "epochs": 3}}
    assert raw == {"training": {"lr": 0.1}}  # the input is not modified


def test_resolved_config_round_trips(tmp_path):
    config = parse_config({"data": {"train": "t.conllu"}, "training": {"eval_every": 50}}, base_dir=tmp_path)
    dumped = _write(tmp_path, config.to_yaml(), "resolved.yaml")
    again = load_config(dumped)
    assert again == config
    assert yaml.safe_load(config.to_yaml())["data"]["train"] == str((tmp_path / "t.conllu").resolve())


@pytest.mark.parametrize("task", ["tag", "classify"])
def test_init_config_parses_back_and_covers_every_key(tmp_path, task):
    text = default_config_text(task)
    raw = yaml.safe_load(text)
    for section, model in Config.model_fields.items():
        if section == "device":
            continue
        assert list(raw[section]) == list(model.annotation.model_fields), section
    assert text.count("#") > 40  # commented
    config = load_config(_write(tmp_path, text))
    assert config.model.task == task
    # the sample corpora it points at exist relative to the repository root and read fine
    repo_config = parse_config(raw, base_dir=REPO)
    examples = list(read_examples(repo_config.data.train, repo_config.data.format, **repo_config.data.reader_options()))
    assert len(examples) > 100
    assert (examples[0].labels is not None) == (task == "tag")


# ----------------------------------------------------------------------------- model.chars
def test_model_chars_defaults_to_no_encoder_and_refuses_unknown_keys(tmp_path):
    chars = parse_config({}).model.chars
    assert (chars.encoder, chars.enabled, chars.features) == ("none", False, 0)
    assert parse_config({"model": {"chars": None}}).model.chars == chars  # "chars:" with its keys commented out
    assert parse_config({}).vocab.max_chars is None and parse_config({}).vocab.char_min_freq == 1
    msg = _error(tmp_path, "model:\n  chars:\n    encodr: lstm\n")
    assert msg.endswith("model.chars.encodr: unknown key; did you mean 'encoder'?") and "\n" not in msg
    msg = _error(tmp_path, "model:\n  chars:\n    encoder: gru\n")
    assert "model.chars.encoder: expected one of 'none', 'lstm', 'cnn', got 'gru'" in msg
    assert "model.chars: expected a section" in _error(tmp_path, "model:\n  chars: lstm\n")
    assert "vocab.max_chars" in _error(tmp_path, "vocab:\n  max_chars: 0\n")


def test_model_chars_overrides_and_feature_widths():
    lstm = parse_config({}, overrides=["model.chars.encoder=lstm", "model.chars.units=7"]).model.chars
    cnn = parse_config({}, overrides=["model.chars.encoder=cnn", "model.chars.filters=9"]).model.chars
    assert (lstm.enabled, lstm.features, cnn.features) == (True, 14, 9)
    with pytest.raises(ConfigError, match="override model.chars.unit: unknown key; did you mean 'units'"):
        parse_config({}, overrides=["model.chars.unit=3"])
    with pytest.raises(ConfigError, match="override model.chars: is a section"):
        parse_config({}, overrides=["model.chars=lstm"])


def test_init_config_writes_the_chars_section():
    raw = yaml.safe_load(default_config_text("tag"))
    assert list(raw["model"]["chars"]) == list(Config.model_fields["model"].annotation.model_fields["chars"].annotation.model_fields)
    assert raw["model"]["chars"]["encoder"] == "none"
    assert {"char_min_freq", "max_chars"} <= set(raw["vocab"])
    assert "first ceil(k/2) and last floor(k/2)" in default_config_text("tag")


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_bundled_config_loads_and_names_files_that_exist(path, corpora):
    """The configs benchmarks/accuracy.py and the README run: valid, and every data file
    they name is there (the corpora folder for ${corpora})."""
    cfg = load_config(path, corpora_root=corpora)
    named = [p for p in (cfg.data.train, cfg.data.dev, cfg.data.test) if p]
    assert cfg.data.train and named
    for p in named:
        assert Path(p).is_file(), f"{path.name}: {p}"
