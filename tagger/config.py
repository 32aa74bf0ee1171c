"""One YAML config per experiment: schema, validation, overrides, paths.

Sections: ``data``, ``vocab``, ``model``, ``training`` and the top-level key ``device``.
The schema is a set of pydantic models with ``extra="forbid"``: unknown keys are refused
with the closest valid key suggested, wrong types are named by their dotted path, and
every error is one line (a :class:`~tagger.errors.ConfigError`)::

    config.yaml: training.lrr: unknown key; did you mean 'lr'?
    config.yaml: training.lr: expected a number, got 'fast'

Paths (``data.train``, ``data.dev``, ``data.test``, ``model.pretrained_vectors``)
are resolved when the config is loaded:

* ``${corpora}/...`` - the corpora root: the ``corpora_root`` argument (the CLI's
  ``--corpora DIR``), else the environment variable ``TAGGER_CORPORA``; if neither is set
  the config is refused with a message saying so.
* ``~/...`` - the home folder.
* any other relative path - relative to the folder holding the config file.

The resolved config (absolute paths, defaults filled in) is what :meth:`Config.to_yaml`
writes, so the copy saved beside a model is self-contained.

Dotted overrides (``training.lr=0.01``) are applied to the raw YAML before validation;
values are parsed with ``yaml.safe_load`` (so ``null``, ``true``, ``1.0e-3`` work).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tagger.errors import ConfigError

CORPORA_VAR = "TAGGER_CORPORA"
CORPORA_TOKEN = "${corpora}"

Column = Union[int, str, None]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    train: str | None = Field(None, description="training file")
    dev: str | None = Field(None, description="development file; null = carve dev_fraction out of train")
    test: str | None = Field(None, description="test file (optional)")
    format: Literal["conllu", "conll", "tsv", "trec", "jsonl", "label_text"] = Field(
        "conllu", description="conllu | conll | tsv | trec | jsonl | label_text"
    )
    token_column: Column = Field(
        None, description="column of the tokens, counted from 0 (see the note above): conll 0, conllu form (= 1); null = that default"
    )
    label_column: Column = Field(
        None, description="column of the labels, counted from 0: conll -1 (the last); conllu upos (= 3), xpos, deprel...; tsv 1 or a header name"
    )
    text_column: Column = Field(None, description="tsv: index or header name of the text (0)")
    header: bool | None = Field(None, description="tsv: first line is a header; null = yes if columns are names")
    text_key: str = Field("text", description="jsonl: key of the text (or token list)")
    label_key: str = Field("label", description="jsonl: key of the label (or label list)")
    trec_label: Literal["coarse", "fine"] = Field("coarse", description="trec: coarse (6 classes) or fine (50)")
    label_prefix: str = Field("", description="label_text: prefix on every label, e.g. __label__ (fastText)")
    scheme: Literal["iob1", "bio", "bioes", "none"] = Field(
        "none", description="tag scheme of the files: iob1 | bio | bioes | none (POS and other non-span labels)"
    )
    target_scheme: Literal["iob1", "bio", "bioes", "none"] | None = Field(
        None, description="scheme to train in (e.g. read iob1, train bioes); null = keep data.scheme"
    )
    encoding: str = Field("utf-8", description="text encoding of the files (e.g. latin-1 for TREC.train)")
    dev_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of train held out as dev when dev is null")

    @model_validator(mode="after")
    def _columns_fit_format(self) -> "DataConfig":
        if self.format == "conll":
            for name in ("token_column", "label_column"):
                value = getattr(self, name)
                if value is not None and not isinstance(value, int):
                    raise ValueError(f"{name}: format conll needs a column index (e.g. 0 or -1), got {value!r}")
        if self.target_scheme is not None and (self.scheme == "none") != (self.target_scheme == "none"):
            raise ValueError(
                f"target_scheme: cannot convert scheme {self.scheme!r} to {self.target_scheme!r}; "
                "'none' converts only to 'none'"
            )
        return self

    def reader_options(self) -> dict[str, Any]:
        """Keyword options for :func:`tagger.data.readers.read_examples` with ``format``."""
        fmt = self.format
        opts: dict[str, Any] = {"encoding": self.encoding}
        if fmt == "conllu":
            opts["token_column"] = "form" if self.token_column is None else self.token_column
            opts["label_column"] = "upos" if self.label_column is None else self.label_column
        elif fmt == "conll":
            opts["token_column"] = 0 if self.token_column is None else self.token_column
            opts["label_column"] = -1 if self.label_column is None else self.label_column
        elif fmt == "tsv":
            opts["text_column"] = 0 if self.text_column is None else self.text_column
            opts["label_column"] = 1 if self.label_column is None else self.label_column
            opts["header"] = self.header
        elif fmt == "trec":
            opts["label"] = self.trec_label
        elif fmt == "label_text":
            opts["label_prefix"] = self.label_prefix
        elif fmt == "jsonl":
            opts["text_key"] = self.text_key
            opts["label_key"] = self.label_key
        return opts


class VocabConfig(Section):
    min_freq: int = Field(1, ge=1, description="keep words seen at least this often in train")
    max_size: int | None = Field(None, ge=1, description="keep at most this many words (besides [PAD], [UNK])")
    lowercase: bool = Field(False, description="lower-case words before lookup")
    unknown_classes: bool = Field(
        False,
        description="unknown words map to a shape class ([UNK-Cap], [UNK-NUM], [UNK-lower-ing] ...) instead of one "
                    "[UNK]; the suffix classes are English, so this is off unless a config turns it on",
    )
    char_min_freq: int = Field(
        1, ge=1, description="model.chars: keep characters seen at least this often in train (rarer ones read as [UNK])"
    )
    max_chars: int | None = Field(
        None, ge=1,
        description="model.chars: encode at most this many characters of a word, its first ceil(k/2) and last floor(k/2) (null = all); no word is dropped",
    )


CHAR_ENCODERS = ("lstm", "cnn")


class CharsConfig(Section):
    """model.chars: a vector per word from its characters, concatenated to the word embedding."""

    encoder: Literal["none", "lstm", "cnn"] = Field(
        "none", description="none | lstm (Lample et al. 2016: a char BiLSTM) | cnn (Ma & Hovy 2016: conv + max)"
    )
    char_dim: int = Field(25, ge=1, description="character embedding size")
    units: int = Field(25, ge=1, description="lstm: char LSTM units per direction (2 * units features per word)")
    filters: int = Field(30, ge=1, description="cnn: filters (= features per word)")
    width: int = Field(3, ge=1, description="cnn: filter width in characters")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="dropout on the character embeddings")

    @property
    def enabled(self) -> bool:
        return self.encoder != "none"

    @property
    def features(self) -> int:
        """Width of the character vector each word gets (0 without an encoder)."""
        return {"none": 0, "lstm": 2 * self.units, "cnn": self.filters}[self.encoder]


class ModelConfig(Section):
    task: Literal["tag", "classify"] = Field("tag", description="tag (a label per token) | classify (per text)")
    embedding_dim: int = Field(100, ge=1, description="word embedding size (must match pretrained_vectors)")
    pretrained_vectors: str | None = Field(None, description="GloVe / word2vec / fastText text file (.gz ok)")
    freeze_embeddings: bool = Field(False, description="keep the embedding matrix fixed")
    lstm_units: int = Field(128, ge=1, description="LSTM units per direction")
    layers: int = Field(1, ge=1, description="stacked BiLSTM layers")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="dropout on embeddings and LSTM outputs")
    recurrent_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the recurrent state")
    merge_mode: Literal["concat", "sum", "ave", "mul"] = Field(
        "concat", description="how the two directions merge: concat | sum | ave | mul"
    )
    crf: bool = Field(
        False, description="linear-chain CRF output: learned tag transitions, Viterbi decoding (task tag only)"
    )
    crf_constraints: Literal["decode", "train", "none"] = Field(
        "decode",
        description="CRF tag grammar of a span scheme (iob1 | bio | bioes; none has no grammar): decode (Viterbi, "
        "n-best lists and marginals never cross a forbidden transition such as O -> I-PER) | train (also the loss "
        "is the constrained model's) | none",
    )
    pooling: Literal["last", "max", "mean"] = Field(
        "last",
        description="text vector from the last BiLSTM: last (final states) | max | mean over the real steps (task classify only)",
    )
    chars: CharsConfig = Field(
        default_factory=CharsConfig, description="character-level word features (see docs/chars.md)"
    )

    @model_validator(mode="after")
    def _crf_needs_tagging(self) -> "ModelConfig":
        if self.crf and self.task != "tag":
            raise ValueError("crf: a CRF labels token sequences; it needs task: tag (got task: classify)")
        if self.crf_constraints == "train" and not self.crf:
            raise ValueError("crf_constraints: train constrains the CRF's loss; it needs crf: true")
        return self

    @model_validator(mode="after")
    def _pooling_needs_classify(self) -> "ModelConfig":
        if self.pooling != "last" and self.task != "classify":
            raise ValueError(
                f"pooling: {self.pooling} pooling makes one vector per text; it needs task: classify "
                f"(got task: {self.task})"
            )
        return self


class TrainingConfig(Section):
    optimizer: Literal["adam", "sgd"] = Field("adam", description="adam | sgd")
    lr: float = Field(0.001, gt=0.0, allow_inf_nan=False, description="learning rate")
    weight_decay: float = Field(0.0, ge=0.0, allow_inf_nan=False, description="L2 weight decay")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd momentum")
    batch_size: int = Field(32, ge=1, description="sentences per batch, or tokens (B*T) with batch_unit tokens")
    batch_unit: Literal["sentences", "tokens"] = Field("sentences", description="sentences | tokens")
    epochs: int = Field(10, ge=1, description="passes over the training data")
    max_steps: int | None = Field(None, ge=1, description="stop after this many updates (null = no limit)")
    patience: int | None = Field(3, ge=1, description="stop after this many evaluations without improvement")
    clip_norm: float | None = Field(5.0, gt=0.0, allow_inf_nan=False, description="clip the global gradient norm (null = off)")
    lr_schedule: Literal["none", "plateau"] = Field("none", description="none | plateau (reduce on plateau)")
    lr_factor: float = Field(0.5, gt=0.0, lt=1.0, description="plateau: multiply lr by this")
    lr_patience: int = Field(1, ge=1, description="plateau: evaluations without improvement tolerated; the lr drops at the next one (PyTorch's meaning)")
    min_lr: float = Field(1.0e-5, ge=0.0, allow_inf_nan=False, description="plateau: lower bound of lr")
    seed: int = Field(0, ge=0, description="seed for initialisation, shuffling and the dev split")
    eval_every: Union[int, Literal["epoch"]] = Field("epoch", description="evaluate every N steps, or each epoch")
    checkpoint_every: int | None = Field(
        None, ge=1, description="also write OUT/checkpoint/ (for --resume) every N steps (null = only at evaluations)"
    )
    use_ema: bool = Field(
        False,
        description="evaluate and save the exponential moving average of the weights (Keras' use_ema); the updates themselves use the weights",
    )
    ema_momentum: float = Field(
        0.99, ge=0.0, lt=1.0,
        description="use_ema: after every update, average = ema_momentum * average + (1 - ema_momentum) * weights",
    )
    unk_replace: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="replace words seen once in train by their [UNK] class with this probability, so the unknown-word rows are learned (Lample et al. 2016 use 0.5)",
    )

    @model_validator(mode="after")
    def _eval_every_positive(self) -> "TrainingConfig":
        if isinstance(self.eval_every, int) and self.eval_every < 1:
            raise ValueError(f"eval_every: expected a positive number of steps or 'epoch', got {self.eval_every}")
        return self


class Config(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    vocab: VocabConfig = Field(default_factory=VocabConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    device: Literal["cpu", "cuda", "auto"] = Field("auto", description="cpu | cuda | auto (cuda when available)")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.to_yaml(), encoding="utf-8")


SECTIONS: dict[str, type[Section]] = {
    "data": DataConfig,
    "vocab": VocabConfig,
    "model": ModelConfig,
    "training": TrainingConfig,
}
PATH_FIELDS = (("data", "train"), ("data", "dev"), ("data", "test"), ("model", "pretrained_vectors"))


# ----------------------------------------------------------------------------- errors
def _suggest(key: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.5)
    if close:
        return f"did you mean '{close[0]}'?"
    return f"valid keys: {', '.join(choices)}"


def _field_path(loc: tuple) -> tuple[list[str], type[BaseModel]]:
    """Keep the part of a pydantic ``loc`` that names fields; return it and the model holding the last one."""
    model: type[BaseModel] | None = Config
    parent: type[BaseModel] = Config
    parts: list[str] = []
    for item in loc:
        if model is None or not isinstance(item, str):
            break  # union member tags, list indices
        parent = model
        parts.append(item)
        if item not in model.model_fields:
            break  # an unknown key
        ann = model.model_fields[item].annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return parts, parent


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    return yaml.safe_dump(value, default_flow_style=True).splitlines()[0]


_EXPECTED = {
    "float": "a number",
    "int": "an integer",
    "bool": "true or false",
    "string": "a string",
    "model": "a section (a mapping of keys)",
    "dict": "a section (a mapping of keys)",
}


def _message(err: Mapping[str, Any]) -> str:
    parts, parent = _field_path(tuple(err["loc"]))
    kind = err["type"]
    where = ".".join(parts) if parts else "(top level)"
    value = err.get("input")
    if kind == "extra_forbidden":
        fields = list(parent.model_fields) if parent is not None else []
        return f"{where}: unknown key; {_suggest(parts[-1], fields)}"
    if kind == "missing":
        return f"{where}: required key is missing"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"{where}: expected one of {expected.replace(' or ', ', ')}, got {_describe(value)}"
    head = kind.split("_")[0]
    if kind.endswith(("_parsing", "_type", "_from_float")) and head in _EXPECTED:
        if head == "int" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"{where}: expected an integer, got {_describe(value)}"
        return f"{where}: expected {_EXPECTED[head]}, got {_describe(value)}"
    if kind == "value_error":  # our model validators put "field: message" in the text
        msg = str(err.get("ctx", {}).get("error", err["msg"]))
        return f"{where}.{msg}" if parts else msg
    msg = err["msg"]
    msg = msg[0].lower() + msg[1:] if msg else kind
    return f"{where}: {msg.replace('Input should be', 'must be').replace('input should be', 'must be')}, got {_describe(value)}"


def _expected_phrase(err: Mapping[str, Any]) -> str | None:
    kind = err["type"]
    if kind == "literal_error":
        return err.get("ctx", {}).get("expected", "").replace(" or ", ", ")
    head = kind.split("_")[0]
    if kind.endswith(("_parsing", "_type", "_from_float")) and head in _EXPECTED:
        return _EXPECTED[head]
    return None


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line: ``SOURCE: dotted.key: message`` for the first error, and how many more."""
    errors = err.errors()
    paths = [tuple(_field_path(tuple(e["loc"]))[0]) for e in errors]
    same = [e for e, p in zip(errors, paths) if p == paths[0]]
    phrases = [_expected_phrase(e) for e in same]
    if len(same) > 1 and all(phrases):  # a union (e.g. int or 'epoch'): every member failed
        first = f"{'.'.join(paths[0])}: expected {' or '.join(phrases)}, got {_describe(same[0].get('input'))}"
    else:
        first = _message(errors[0])
    more = len(set(paths)) - 1
    return f"{source}: {first}" + (f" (and {more} more error{'s' if more > 1 else ''})" if more > 0 else "")


# ----------------------------------------------------------------------------- overrides
def _parse_value(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: Iterable[str] | Mapping[str, Any] = ()) -> dict:
    """Set dotted keys in a raw config dict (a copy is returned).

    ``overrides``: ``["training.lr=0.01", ...]`` or ``{"training.lr": "0.01"}``; string
    values are parsed with ``yaml.safe_load``.  Unknown paths raise ConfigError with a
    suggestion, as unknown keys in the file do.
    """
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (raw or {}).items()}
    items = overrides.items() if isinstance(overrides, Mapping) else [_split_override(o) for o in overrides]
    for key, value in items:
        key = key.lstrip("-")
        parts = key.split(".")
        model: type[BaseModel] = Config
        for depth, part in enumerate(parts):
            if part not in model.model_fields:
                path = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {path}: unknown key; {_suggest(part, model.model_fields)}")
            ann = model.model_fields[part].annotation
            is_section = isinstance(ann, type) and issubclass(ann, BaseModel)
            if depth == len(parts) - 1:
                if is_section:
                    raise ConfigError(f"override {key}: is a section; set one of its keys, e.g. {key}.{next(iter(ann.model_fields))}")
                break
            if not is_section:
                raise ConfigError(f"override {key}: {'.'.join(parts[: depth + 1])} is not a section")
            model = ann
        target = out
        for part in parts[:-1]:
            section = target.get(part)
            if not isinstance(section, dict):
                section = {} if section is None else section
                if not isinstance(section, dict):
                    raise ConfigError(f"override {key}: {part} in the config is not a section")
            target[part] = section = dict(section)
            target = section
        target[parts[-1]] = _parse_value(value)
    return out


def _split_override(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise ConfigError(f"override {text!r}: expected SECTION.KEY=VALUE, e.g. training.lr=0.01")
    return key.strip(), value.strip()


# ----------------------------------------------------------------------------- paths
def resolve_path(value: str, base_dir: Path, corpora_root: str | os.PathLike | None, where: str) -> str:
    """Resolve one path string by the rules in the module docstring."""
    if value.startswith(CORPORA_TOKEN):
        root = corpora_root if corpora_root is not None else os.environ.get(CORPORA_VAR)
        if not root:
            raise ConfigError(
                f"{where}: uses {CORPORA_TOKEN} but no corpora folder is given; "
                f"pass --corpora DIR or set the environment variable {CORPORA_VAR}"
            )
        rest = value[len(CORPORA_TOKEN):].lstrip("/\\")
        return str((Path(root).expanduser() / rest).resolve())
    if "${" in value:
        raise ConfigError(f"{where}: unknown variable in {value!r}; only {CORPORA_TOKEN} is supported")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    return str(path.resolve())


# ----------------------------------------------------------------------------- loading
def parse_config(
    raw: Mapping[str, Any] | None,
    base_dir: str | os.PathLike = ".",
    corpora_root: str | os.PathLike | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    source: str = "config",
) -> Config:
    """Validate a raw dict (as read from YAML), apply overrides, resolve paths."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: expected a mapping of sections (data, vocab, model, training, device)")
    raw = apply_overrides(dict(raw), overrides)
    for section in SECTIONS:  # "data:" with every key commented out reads as null
        if section in raw and raw[section] is None:
            raw[section] = {}
    model = raw.get("model")
    if isinstance(model, Mapping) and "chars" in model and model["chars"] is None:
        raw["model"] = {**model, "chars": {}}  # "chars:" with every key commented out
    try:
        config = Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None
    base = Path(base_dir).expanduser().resolve()
    for section, key in PATH_FIELDS:
        part = getattr(config, section)
        value = getattr(part, key)
        if value is not None:
            setattr(part, key, resolve_path(value, base, corpora_root, f"{source}: {section}.{key}"))
    return config


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key (or section) given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise _DuplicateKey(key, seen[key], line)
                    seen[key] = line
                except TypeError:  # an unhashable key; SafeLoader reports it
                    continue
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(Exception):
    def __init__(self, key, first, line):
        super().__init__(key, first, line)
        self.key, self.first, self.line = key, first, line


def safe_load_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` that refuses duplicated keys; every problem is one ConfigError line
    naming ``SOURCE:LINE`` (PyYAML alone silently keeps the last of two equal keys)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except _DuplicateKey as dup:
        raise ConfigError(
            f"{source}:{dup.line}: duplicate key {dup.key!r} (first given on line {dup.first}); keep only one"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{source}{line}: invalid YAML ({problem})") from None


def load_config(
    path: str | os.PathLike,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    corpora_root: str | os.PathLike | None = None,
) -> Config:
    """Read, override, validate and resolve a YAML config file."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: is a folder, expected a YAML config file") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{source}: not UTF-8 text ({err.reason}); save the config as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"{source}: cannot read the config ({err.strerror})") from None
    raw = safe_load_yaml(text, source)
    return parse_config(raw, path.parent, corpora_root, overrides, source)


# ----------------------------------------------------------------------------- init-config
_TASK_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "tag": {
        "data": {
            "train": "corpora/sample_pos.train.conllu",
            "dev": "corpora/sample_pos.dev.conllu",
            "format": "conllu",
            "label_column": "upos",
        },
        "model": {"task": "tag"},
    },
    "classify": {
        "data": {
            "train": "corpora/sample_cls.train.tsv",
            "dev": "corpora/sample_cls.dev.tsv",
            "format": "tsv",
            "text_column": "sentence",
            "label_column": "label",
            "header": True,
        },
        "model": {"task": "classify", "lstm_units": 64},
        "training": {"epochs": 5},
    },
}


def _scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).splitlines()[0]


def _section_lines(model: type[BaseModel], values: Mapping[str, Any], indent: str) -> list[str]:
    """`key: default  # description` for every key; a nested section (model.chars) indented."""
    lines = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            lines.append(f"{indent}{name}:  # {field.description}")
            lines += _section_lines(ann, values.get(name, {}), indent + "  ")
            continue
        lines.append(f"{indent}{name}: {_scalar(values.get(name, field.default))}  # {field.description}")
    return lines


def default_config_text(task: str = "tag") -> str:
    """A commented YAML config with every key at its default (``tagger init-config``)."""
    if task not in _TASK_DEFAULTS:
        raise ConfigError(f"init-config: unknown task {task!r}; use tag or classify")
    values = _TASK_DEFAULTS[task]
    lines = [
        f"# tagger config ({task}).  Every key is shown with its default; unknown keys are refused.",
        "# Relative paths start at this file's folder; ${corpora}/... starts at --corpora DIR",
        f"# or ${CORPORA_VAR}.  Override any key on the command line: --training.lr 0.01",
        "# Columns (data.token_column, label_column, text_column) count from 0 in every format,",
        "# negative from the end (-1: the last); conllu also takes a field name (id form lemma upos",
        "# xpos feats head deprel deps misc: upos is 3), tsv a header name; conll takes indices only.",
        "",
    ]
    for section, model in SECTIONS.items():
        lines.append(f"{section}:")
        lines += _section_lines(model, values.get(section, {}), "  ")
        lines.append("")
    device = Config.model_fields["device"]
    lines.append(f"device: {_scalar(device.default)}  # {device.description}")
    return "\n".join(lines) + "\n"
