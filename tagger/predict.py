"""Streaming prediction over raw text files.

Input: text files (or folders of them), one sentence (tagging) or one text
(classification) per line; blank lines are boundaries and produce no record. Lines are
read and predicted in chunks, so memory stays constant however large the file; a very
long line is predicted whole, never cut.

What a record holds and how it is written per format is the task's
(`tagger.tasks`); this module reads the inputs and writes the outputs.
Raw texts in memory: `tagger.load(path).predict(["..."])` (Model.predict).

Each input gets one output, written to a temporary file and renamed into place when
complete, so an interrupted run never leaves a half-written output.

Formats:
    jsonl  one JSON object per non-blank line: line, text, tokens, offsets (character
           [start, end) into the line), tags, probs, spans (type, start, end, text,
           token_start, token_end) - or for classification: line, text, label, probability
    conll  token<TAB>tag per line, a blank line after each sentence (classification: as tsv)
    tsv    one row per line: line number, then the tokens and tags space-joined
           (classification: line number, label, probability, text)
"""
from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from tagger.data.prepare import examples_from_texts
from tagger.data.readers import iter_lines, list_input_files
from tagger.errors import TaggerError
from tagger.fsutil import atomic_file

FORMATS = ("jsonl", "conll", "tsv")
SUFFIX = {"jsonl": ".jsonl", "conll": ".conll", "tsv": ".tsv"}
CHUNK_LINES = 2048


def collect_inputs(inputs: Iterable[str]) -> list[tuple[Path, Path]]:
    """(file, relative output name) for each input file, folders expanded (sorted, recursive)."""
    out = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = list_input_files(p)
            if not files:
                raise TaggerError(f"{p}: folder has no files to predict")
            out.extend((f, f.relative_to(p)) for f in files)
        elif p.is_file():
            out.append((p, Path(p.name)))
        else:
            raise TaggerError(f"{p}: no such file or folder")
    return out


def _chunks(path: Path, encoding: str) -> Iterator[list[tuple[int, str]]]:
    chunk = []
    for lineno, line in iter_lines(path, encoding, encoding_option="--encoding"):
        if line.strip():
            chunk.append((lineno, line))
        if len(chunk) >= CHUNK_LINES:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def predict_chunk(model, chunk: list[tuple[int, str]], source: str, fmt: str, batch_size=256) -> str:
    """The formatted records of one chunk of (line number, text), as one string: the chunk
    is split, encoded and predicted as batches, and written with one call."""
    task = model.labeller
    examples = examples_from_texts([t for _, t in chunk], [f"{source}:{k}" for k, _ in chunk])
    preds = model.predict_examples(examples, batch_size=batch_size)
    record, format_record = task.record, task.format_record
    return "".join([format_record(record(ex, pred), lineno, fmt) for (lineno, _), ex, pred in zip(chunk, examples, preds)])


def predict_stream(model, path: Path, fmt: str, write, encoding="utf-8", batch_size=256) -> int:
    """Predict every non-blank line of `path`, calling write(text) once per chunk of
    records. Returns the record count."""
    n = 0
    for chunk in _chunks(path, encoding):
        write(predict_chunk(model, chunk, str(path), fmt, batch_size))
        n += len(chunk)
    return n


def predict_files(model, inputs, output=None, fmt="jsonl", encoding="utf-8", overwrite=True, batch_size=256):
    """Predict each input into OUTPUT/<name><suffix> (atomically), or to stdout with output '-'.

    Returns [(input, output path or '-', records)].
    """
    if fmt not in FORMATS:
        raise TaggerError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    files = collect_inputs(inputs)
    done = []
    if output in (None, "-"):
        for path, _ in files:
            n = predict_stream(model, path, fmt, sys.stdout.write, encoding, batch_size)
            done.append((path, "-", n))
        sys.stdout.flush()
        return done
    out_dir = Path(output)
    if out_dir.exists() and not out_dir.is_dir():
        raise TaggerError(f"--output {out_dir}: exists and is not a folder")
    for path, rel in files:
        target = out_dir / rel.with_name(rel.name + SUFFIX[fmt]) if rel.suffix != SUFFIX[fmt] else out_dir / rel
        if target.exists() and not overwrite:
            done.append((path, target, None))
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(target) as fh:
            n = predict_stream(model, path, fmt, fh.write, encoding, batch_size)
        done.append((path, target, n))
    return done
