"""Streaming corpus readers.  Each is a generator of :class:`~tagger.data.types.Example`.

Formats (``read_examples(path, format, **options)``):

    conllu  CoNLL-U; ``label_column`` names one of the 10 fields (upos, xpos, deprel, ...).
            Comments, multiword ranges ``n-m`` and empty nodes ``n.m`` are skipped.
    conll   whitespace-separated columns, blank line between sentences, ``-DOCSTART-``
            lines skipped wherever they appear; ``token_column`` / ``label_column`` indices.
    tsv     one text per line; ``text_column`` / ``label_column`` by index or header name.
    trec    ``COARSE:fine question text``; ``label="coarse"`` or ``"fine"`` (``COARSE:fine``).
    label_text  ``LABEL text`` per line: the label, whitespace, the text (SST ``stsa.*``
            files); ``label_prefix`` (e.g. ``__label__``, fastText) is required on the
            label and removed from it.
    jsonl   one JSON object per line; ``text_key`` / ``label_key``.  A list under
            ``text_key`` is taken as tokens, a list under ``label_key`` as per-token labels.
    text    one raw sentence per line, no labels (prediction input).

Files are read in binary and decoded line by line, so a bad byte is reported with its
line: ``TREC.train:66: byte 0xf0 is not valid utf-8; set data.encoding (e.g. latin-1)``.
A ``.gz`` suffix is decompressed transparently.  A missing file, an empty file, or a
malformed line raises :class:`~tagger.errors.DataError` naming ``FILE:LINE``.

Inside ``with collect_malformed() as bad:`` the readers instead record every malformed
line in ``bad`` and skip it, so ``tagger debug-data`` lists all of them in one pass.
Problems with the file or the options as a whole (missing file, unknown column) still raise.
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from tagger.data.types import Example
from tagger.data.vocab import pretokenize
from tagger.errors import DataError

CONLLU_FIELDS = ("id", "form", "lemma", "upos", "xpos", "feats", "head", "deprel", "deps", "misc")

PathLike = str | os.PathLike

_MALFORMED: ContextVar[list[str] | None] = ContextVar("malformed_lines", default=None)


@contextmanager
def collect_malformed() -> Iterator[list[str]]:
    """Readers iterated inside the block record malformed lines here and skip them."""
    sink: list[str] = []
    token = _MALFORMED.set(sink)
    try:
        yield sink
    finally:
        _MALFORMED.reset(token)


def _malformed(message: str) -> None:
    """Raise ``DataError(message)``; when collecting, record it and return (the caller skips the line)."""
    sink = _MALFORMED.get()
    if sink is None:
        raise DataError(message)
    sink.append(message)


def check_file(path: PathLike) -> Path:
    """Raise DataError unless ``path`` is an existing file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found; check the path in the config (relative paths start at the config's folder)")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a file")
    return path


def check_encoding(encoding: str, option: str = "data.encoding", where: str = "") -> str:
    """Raise DataError unless `encoding` names a codec that decodes bytes to text
    (``rot13`` and ``base64`` exist but are not text encodings)."""
    prefix = f"{where}: " if where else ""
    try:
        info = codecs.lookup(encoding)
    except (LookupError, TypeError, ValueError):
        raise DataError(f"{prefix}unknown encoding {encoding!r}; set {option} to e.g. utf-8 or latin-1") from None
    if not getattr(info, "_is_text_encoding", True):
        raise DataError(f"{prefix}{encoding!r} is not a text encoding; set {option} to e.g. utf-8 or latin-1")
    return encoding


def _raw_lines(path: Path, byte_range: tuple[int, int, int] | None = None) -> Iterator[tuple[int, bytes]]:
    """Numbered raw lines (of bytes [start, end) only, numbered from first_line, with
    ``byte_range``); a damaged or fake .gz is a DataError naming the file."""
    gz = path.suffix == ".gz"
    start, end, first = byte_range if byte_range is not None else (0, None, 1)
    lineno = first - 1
    try:
        with (gzip.open if gz else open)(path, "rb") as handle:
            handle.seek(start)
            lines = handle if end is None else _lines_until(handle, end - start)
            for lineno, raw in enumerate(lines, first):
                yield lineno, raw
    except gzip.BadGzipFile as err:
        raise DataError(
            f"{path}: not a valid gzip file ({err}); its name ends in .gz, so decompress it or rename it"
        ) from None
    except EOFError:
        raise DataError(
            f"{path}: the gzip file is truncated (it ends after line {lineno}); download or compress it again"
        ) from None
    except zlib.error as err:
        raise DataError(f"{path}: the gzip file is damaged after line {lineno} ({err}); download or compress it again") from None


def _lines_until(handle, budget: int) -> Iterator[bytes]:
    # the range ends at a line boundary, so whole lines add up to exactly `budget` bytes
    for raw in handle:
        if budget <= 0:
            return
        budget -= len(raw)
        yield raw


def iter_lines(
    path: PathLike,
    encoding: str = "utf-8",
    encoding_option: str = "data.encoding",
    byte_range: tuple[int, int, int] | None = None,
) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` with line ends removed; decode errors name the line
    and the setting that fixes them (``encoding_option``).

    ``byte_range=(start, end, first_line)`` reads only the lines in bytes [start, end) of
    an uncompressed file, numbered from ``first_line``; start and end must sit at line
    boundaries (tagger.sharding cuts a large file into such parts)."""
    path = check_file(path)
    check_encoding(encoding, encoding_option, str(path))
    for lineno, raw in _raw_lines(path, byte_range):
        try:
            line = raw.decode(encoding)
        except UnicodeDecodeError as err:
            byte = raw[err.start]
            hint = "latin-1" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else "utf-8"
            _malformed(
                f"{path}:{lineno}: byte 0x{byte:02x} is not valid {encoding}; "
                f"set {encoding_option} (e.g. {hint})"
                + (" in the config" if encoding_option.startswith("data.") else "")
            )
            continue
        if lineno == 1 and line.startswith("\ufeff"):
            line = line[1:]
        yield lineno, line.rstrip("\r\n")


def list_input_files(folder: PathLike) -> list[Path]:
    """Every non-hidden file under `folder`, sorted, following links to folders but never
    round a loop; a link that leads nowhere (a loop, or a missing target) is a DataError."""
    folder = Path(folder)
    seen: set[tuple[int, int]] = set()
    found: list[Path] = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:  # reached again through a link: a loop
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            f = Path(root) / name
            if name.startswith("."):
                continue
            if not f.is_file():
                raise DataError(
                    f"{f}: a symbolic link that leads to no file (a link loop, or its target is gone); fix or remove it"
                )
            found.append(f)
    return sorted(found)


def _nonempty(path: PathLike, examples: Iterator[Example], what: str) -> Iterator[Example]:
    check_file(path)  # eagerly: a missing file is reported when the reader is created
    return _count(path, examples, what)


def _count(path: PathLike, examples: Iterator[Example], what: str) -> Iterator[Example]:
    n = 0
    for ex in examples:
        n += 1
        yield ex
    if n == 0:
        raise DataError(f"{path}: no {what} found (is the file empty or in another format?)")


def _column_index(column: int | str, names: tuple[str, ...] | list[str], path: PathLike, option: str) -> int:
    if isinstance(column, int):
        return column
    if column.lstrip("-").isdigit():
        return int(column)
    try:
        return list(names).index(column.lower() if names is CONLLU_FIELDS else column)
    except ValueError:
        raise DataError(f"{path}: {option} {column!r} is not one of {', '.join(names)}") from None


# --------------------------------------------------------------------------- column files
class _Block:
    """The sentence a column reader is collecting: tokens, labels, the first token's line
    and, with keep_rows, every (lineno, line, token index or None) of the block."""

    def __init__(self, path, has_labels: bool, keep_rows: bool):
        self.path, self.has_labels, self.keep_rows = path, has_labels, keep_rows
        self.tokens: list[str] = []
        self.labels: list[str] = []
        self.rows: list | None = [] if keep_rows else None
        self.start = None

    def other(self, lineno: int, line: str) -> None:
        """A line of the block that is not a token (a comment, a range, an empty node)."""
        if self.keep_rows:
            self.rows.append((lineno, line, None))

    def token(self, lineno: int, line: str, token: str, label: str | None) -> None:
        if self.start is None:
            self.start = lineno
        if self.keep_rows:
            self.rows.append((lineno, line, len(self.tokens)))
        self.tokens.append(token)
        if self.has_labels:
            self.labels.append(label)

    def example(self) -> Example:
        return Example(self.tokens, self.labels if self.has_labels else None, source=f"{self.path}:{self.start}",
                       rows=self.rows)


# --------------------------------------------------------------------------- CoNLL-U
def _conllu_id(path, lineno: int, tid: str) -> bool | None:
    """True for a word line, False for a multiword range n-m or empty node n.m; None (after
    reporting it) for anything else."""
    if tid.isdigit():
        return True
    a, _, b = tid.replace(".", "-").partition("-")
    if ("-" in tid or "." in tid) and a.isdigit() and b.isdigit():
        return False
    _malformed(f"{path}:{lineno}: token id {tid!r} is not an integer, a range n-m or an empty node n.m "
               "(is this a CoNLL-U file?)")
    return None


def read_conllu(
    path: PathLike,
    label_column: int | str | None = "upos",
    token_column: int | str = "form",
    encoding: str = "utf-8",
    keep_rows: bool = False,
) -> Iterator[Example]:
    """Sentences of a CoNLL-U file; ``label_column=None`` reads tokens only.

    ``keep_rows``: each Example also carries its block's lines (comments, ranges and
    empty nodes included) in ``rows``."""
    tok_i = _column_index(token_column, CONLLU_FIELDS, path, "token_column")
    lab_i = None if label_column is None else _column_index(label_column, CONLLU_FIELDS, path, "label_column")
    for i in (tok_i, lab_i):
        if i is not None and not -10 <= i < 10:
            raise DataError(f"{path}: column index {i} is outside the 10 CoNLL-U fields")

    def sentences() -> Iterator[Example]:
        block = _Block(path, lab_i is not None, keep_rows)
        for lineno, line in iter_lines(path, encoding):
            if not line.strip():
                if block.tokens:
                    yield block.example()
                block = _Block(path, lab_i is not None, keep_rows)
                continue
            if line.startswith("#"):
                block.other(lineno, line)
                continue
            cols = line.split("\t")
            if len(cols) != 10:
                _malformed(f"{path}:{lineno}: expected 10 tab-separated columns, found {len(cols)} (is this a CoNLL-U file?)")
                continue
            word = _conllu_id(path, lineno, cols[0])
            if word:
                block.token(lineno, line, cols[tok_i], None if lab_i is None else cols[lab_i])
            elif word is False:
                block.other(lineno, line)
        if block.tokens:
            yield block.example()

    return _nonempty(path, sentences(), "sentences")


# --------------------------------------------------------------------------- CoNLL columns
def _needed(index: int) -> int:
    """Columns a line needs for ``index`` (negative counts from the end) to exist."""
    return index + 1 if index >= 0 else -index


def _check_columns(path, lineno: int, n: int, token_column: int, label_column: int | None) -> None:
    """The first token line must have the columns both indices name (and two distinct ones)."""
    ti = token_column + n if token_column < 0 else token_column
    li = None if label_column is None else (label_column + n if label_column < 0 else label_column)
    if not 0 <= ti < n or (li is not None and (not 0 <= li < n or li == ti)):
        want = max(_needed(token_column), 0 if label_column is None else _needed(label_column))
        want = max(want, 1 if label_column is None else 2)
        raise DataError(
            f"{path}:{lineno}: expected at least {want} whitespace-separated columns "
            f"(token_column={token_column}, label_column={label_column}), found {n}"
        )


def read_conll(
    path: PathLike,
    token_column: int = 0,
    label_column: int | None = -1,
    encoding: str = "utf-8",
    keep_rows: bool = False,
) -> Iterator[Example]:
    """Sentences of a whitespace-separated column file (CoNLL-2003 style).

    Every token line must have the same number of columns as the first one, and enough
    for both indices; ``-DOCSTART-`` lines never produce sentences.  ``keep_rows``: each
    Example also carries its token lines in ``rows``.
    """
    token_column = int(token_column)
    label_column = None if label_column is None else int(label_column)

    def sentences() -> Iterator[Example]:
        block = _Block(path, label_column is not None, keep_rows)
        ncols_first = first_line = None
        for lineno, line in iter_lines(path, encoding):
            cols = line.split()
            if not cols:
                if block.tokens:
                    yield block.example()
                block = _Block(path, label_column is not None, keep_rows)
                continue
            if cols[0] == "-DOCSTART-":
                continue
            if ncols_first is None:
                ncols_first, first_line = len(cols), lineno
                _check_columns(path, lineno, len(cols), token_column, label_column)
            elif len(cols) != ncols_first:
                _malformed(
                    f"{path}:{lineno}: expected {ncols_first} whitespace-separated columns as on line "
                    f"{first_line}, found {len(cols)} (a token with a space in it, or a missing blank line?)"
                )
                continue
            block.token(lineno, line, cols[token_column], None if label_column is None else cols[label_column])
        if block.tokens:
            yield block.example()

    return _nonempty(path, sentences(), "sentences")


# --------------------------------------------------------------------------- classification
def _text_example(text: str, label: str | None, source: str) -> Example | None:
    """An example of raw text; None (when collecting malformed lines) for an empty text."""
    pieces = pretokenize(text)
    if not pieces:
        _malformed(f"{source}: empty text; remove the line or fill in the text")
        return None
    return Example(
        [tok for tok, _ in pieces], None, label, text=text, offsets=[span for _, span in pieces], source=source
    )


def read_tsv(
    path: PathLike,
    text_column: int | str = 0,
    label_column: int | str | None = 1,
    header: bool | None = None,
    encoding: str = "utf-8",
) -> Iterator[Example]:
    """Tab-separated text classification data.

    ``header=None`` means: there is a header exactly when a column is given by name.
    SST-2's ``sentence\\tlabel`` (with a space before the tab) reads with
    ``text_column="sentence", label_column="label"``.
    """
    if header is None:
        header = any(isinstance(c, str) and not c.lstrip("-").isdigit() for c in (text_column, label_column) if c is not None)

    def examples() -> Iterator[Example]:
        text_i = label_i = None
        ncols = None
        for lineno, line in iter_lines(path, encoding):
            if not line.strip():
                continue
            cols = line.split("\t")
            if text_i is None:
                names = [c.strip() for c in cols] if header else [str(i) for i in range(len(cols))]
                text_i = _column_index(text_column, names, path, "data.text_column")
                label_i = None if label_column is None else _column_index(label_column, names, path, "data.label_column")
                ncols = len(cols)
                for opt, i in (("text_column", text_i), ("label_column", label_i)):
                    if i is not None and not -ncols <= i < ncols:
                        raise DataError(
                            f"{path}:{lineno}: data.{opt}={i} but the line has {ncols} tab-separated columns"
                        )
                if header:
                    continue
            if len(cols) != ncols:
                _malformed(
                    f"{path}:{lineno}: expected {ncols} tab-separated columns, found {len(cols)} "
                    "(a tab inside the text?)"
                )
                continue
            label = None if label_i is None else cols[label_i].strip()
            if label_i is not None and not label:
                _malformed(f"{path}:{lineno}: empty label in column {label_i}")
                continue
            ex = _text_example(cols[text_i].strip(), label, f"{path}:{lineno}")
            if ex is not None:
                yield ex

    return _nonempty(path, examples(), "examples")


def read_trec(path: PathLike, label: str = "coarse", encoding: str = "utf-8") -> Iterator[Example]:
    """TREC question classification: ``COARSE:fine text``; fine labels keep the coarse prefix."""
    if label not in ("coarse", "fine"):
        raise DataError(f"{path}: data.trec_label must be 'coarse' or 'fine', got {label!r}")

    def examples() -> Iterator[Example]:
        for lineno, line in iter_lines(path, encoding):
            if not line.strip():
                continue
            head, _, text = line.strip().partition(" ")
            coarse, colon, fine = head.partition(":")
            if not colon or not coarse or not fine or not text.strip():
                _malformed(f"{path}:{lineno}: expected 'COARSE:fine question text', found {line[:40]!r}")
                continue
            ex = _text_example(text.strip(), coarse if label == "coarse" else head, f"{path}:{lineno}")
            if ex is not None:
                yield ex

    return _nonempty(path, examples(), "questions")


def _label_text_example(line: str, label_prefix: str, source: str) -> Example | None:
    """One ``LABEL text`` line as an example; None (when collecting) for a malformed line."""
    if line[:1].isspace():
        return _malformed(f"{source}: line starts with whitespace; expected 'LABEL text' with the label first")
    label, text = (line.split(None, 1) + [""])[:2]  # the first space (or tab) ends the label
    if not text.strip():
        return _malformed(f"{source}: no text after the label {label!r}; expected 'LABEL text'")
    if label_prefix:
        if not label.startswith(label_prefix):
            return _malformed(
                f"{source}: label {label!r} does not start with data.label_prefix {label_prefix!r}; "
                "fix the line or set data.label_prefix"
            )
        label = label[len(label_prefix):]
        if text.lstrip().startswith(label_prefix):
            return _malformed(f"{source}: more than one label; label_text takes one label per line")
    if not label:
        return _malformed(f"{source}: empty label after the prefix {label_prefix!r}")
    return _text_example(text.strip(), label, source)


def read_label_text(path: PathLike, label_prefix: str = "", encoding: str = "utf-8") -> Iterator[Example]:
    """``LABEL text`` per line (SST ``stsa.binary``: ``1 a gorgeous film .``); with
    ``label_prefix="__label__"`` the fastText form ``__label__pos a gorgeous film .``."""

    def examples() -> Iterator[Example]:
        for lineno, line in iter_lines(path, encoding):
            if line.strip():
                ex = _label_text_example(line, label_prefix, f"{path}:{lineno}")
                if ex is not None:  # None: a malformed line, recorded by collect_malformed
                    yield ex

    return _nonempty(path, examples(), "examples")


def read_jsonl(
    path: PathLike, text_key: str = "text", label_key: str | None = "label", encoding: str = "utf-8"
) -> Iterator[Example]:
    """JSON lines: ``{"text": "...", "label": "pos"}`` or ``{"tokens": [...], "tags": [...]}``."""

    def example(lineno: int, line: str) -> Example | None:
        src = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except ValueError as err:
            return _malformed(f"{src}: not valid JSON ({err.args[0].split(':')[0]})")
        if not isinstance(obj, dict):
            return _malformed(f"{src}: expected a JSON object per line")
        if text_key not in obj:
            return _malformed(f"{src}: no key {text_key!r} (keys: {', '.join(obj)}); set data.text_key")
        value = obj[text_key]
        gold = None
        if label_key is not None:
            if label_key not in obj:
                return _malformed(f"{src}: no key {label_key!r} (keys: {', '.join(obj)}); set data.label_key")
            gold = obj[label_key]
        if isinstance(value, list):
            tokens = [str(t) for t in value]
            if not tokens:
                return _malformed(f"{src}: empty token list under {text_key!r}")
            if isinstance(gold, list):
                if len(gold) != len(tokens):
                    return _malformed(f"{src}: {len(tokens)} tokens but {len(gold)} labels")
                return Example(tokens, [str(g) for g in gold], source=src)
            return Example(tokens, None, None if gold is None else str(gold), source=src)
        if isinstance(value, str):
            if isinstance(gold, list):
                return _malformed(f"{src}: per-token labels need a token list under {text_key!r}, not a string")
            return _text_example(value.strip(), None if gold is None else str(gold), src)
        return _malformed(f"{src}: {text_key!r} must be a string or a list of tokens")

    def examples() -> Iterator[Example]:
        for lineno, line in iter_lines(path, encoding):
            if line.strip():
                ex = example(lineno, line)
                if ex is not None:  # None: a malformed line, recorded by collect_malformed
                    yield ex

    return _nonempty(path, examples(), "examples")


def read_text(path: PathLike, encoding: str = "utf-8") -> Iterator[Example]:
    """One raw sentence per line (blank lines skipped), split by the pre-tokenizer; no labels."""

    def examples() -> Iterator[Example]:
        for lineno, line in iter_lines(path, encoding):
            if line.strip():
                yield _text_example(line, None, f"{path}:{lineno}")  # never None: the line has text

    return _nonempty(path, examples(), "lines of text")


READERS: dict[str, Callable[..., Iterator[Example]]] = {
    "conllu": read_conllu,
    "conll": read_conll,
    "tsv": read_tsv,
    "trec": read_trec,
    "label_text": read_label_text,
    "jsonl": read_jsonl,
    "text": read_text,
}


def read_examples(path: PathLike, format: str, **options) -> Iterator[Example]:
    """Dispatch to the reader for ``format``; ``options`` are that reader's keywords
    (``DataConfig.reader_options()`` builds them from a config).  An option the reader does
    not take raises DataError.  A missing file is reported here, before iteration.
    """
    try:
        reader = READERS[format]
    except KeyError:
        raise DataError(f"{path}: unknown data.format {format!r}; use one of {', '.join(READERS)}") from None
    import inspect

    accepted = inspect.signature(reader).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DataError(f"{path}: option(s) {', '.join(unknown)} do not apply to format {format!r}")
    return reader(path, **options)


def split_dev(examples: list[Example], fraction: float, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Carve a dev set out of train: a seeded random ``fraction`` (at least one example).

    Both parts keep the input order.  Used when ``data.dev`` is null (``data.dev_fraction``).
    """
    import numpy as np

    n = len(examples)
    if not 0.0 < fraction < 1.0 or n < 2:
        raise DataError(f"cannot carve a dev set of fraction {fraction} out of {n} training examples; set data.dev")
    n_dev = min(n - 1, max(1, round(n * fraction)))
    chosen = set(np.random.default_rng(seed).permutation(n)[:n_dev].tolist())
    train = [ex for i, ex in enumerate(examples) if i not in chosen]
    dev = [ex for i, ex in enumerate(examples) if i in chosen]
    return train, dev


def require_task(examples: Iterator[Example], task: str, path: PathLike, format: str) -> Iterator[Example]:
    """Pass examples through, refusing the first one that has no gold label of the kind
    `task` needs (a TSV or text-label JSONL given for tagging, CoNLL-U for classification)."""
    for ex in examples:
        if task == "tag" and ex.labels is None:
            raise DataError(
                f"{ex.source or path}: data.format {format} gives one label per text, but model.task is tag; "
                "use conllu, conll or jsonl with token and label lists (or set model.task: classify)"
            )
        if task == "classify" and ex.label is None:
            raise DataError(
                f"{ex.source or path}: data.format {format} gives a label per token, but model.task is classify; "
                "use tsv, trec or jsonl with one label per text (or set model.task: tag)"
            )
        yield ex
