"""Streaming prediction over raw text files.

Input: text files (or folders of them), one sentence (tagging) or one text
(classification) per line; blank lines are boundaries and produce no record. Lines are
read and predicted in chunks, so memory stays constant however large the file; a very
long line is predicted whole, never cut.

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

import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from tagger.data.readers import iter_lines, list_input_files
from tagger.data.schemes import spans as tag_spans
from tagger.data.types import Example
from tagger.data.vocab import pretokenize
from tagger.errors import TaggerError
from tagger.fsutil import atomic_file

FORMATS = ("jsonl", "conll", "tsv")
SUFFIX = {"jsonl": ".jsonl", "conll": ".conll", "tsv": ".tsv"}
CHUNK_LINES = 2048


def examples_from_texts(texts: Iterable[str], sources: Iterable[str] | None = None) -> list[Example]:
    out = []
    sources = list(sources) if sources is not None else None
    for k, text in enumerate(texts):
        pieces = pretokenize(text)
        out.append(
            Example(
                [t for t, _ in pieces], text=text, offsets=[o for _, o in pieces],
                source=sources[k] if sources else f"text {k + 1}",
            )
        )
    return out


def prediction_record(model, ex: Example, pred) -> dict:
    if model.task == "classify":
        label, prob = pred
        return {"text": ex.text, "label": label, "probability": round(float(prob), 6)}
    tags, probs = pred
    record = {
        "text": ex.text,
        "tokens": ex.tokens,
        "offsets": [list(o) for o in ex.offsets] if ex.offsets is not None else None,
        "tags": tags,
        "probs": [round(float(p), 6) for p in probs],
    }
    if model.data_scheme != "none" and ex.offsets is not None:
        record["spans"] = [
            {
                "type": kind,
                "start": ex.offsets[a][0],
                "end": ex.offsets[b - 1][1],
                "text": ex.text[ex.offsets[a][0] : ex.offsets[b - 1][1]],
                "token_start": a,
                "token_end": b,
            }
            for kind, a, b in tag_spans(tags, model.data_scheme)
        ]
    return record


def tsv_field(text: str) -> str:
    """A text as one TSV field: backslash, tab, CR and LF escaped as \\\\, \\t, \\r, \\n."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\r", "\\r").replace("\n", "\\n")


def format_record(record: dict, line: int, fmt: str, task: str) -> str:
    if fmt == "jsonl":
        return json.dumps({"line": line, **record}, ensure_ascii=False) + "\n"
    if task == "classify":
        return f"{line}\t{record['label']}\t{record['probability']}\t{tsv_field(record['text'])}\n"
    if fmt == "conll":
        return "".join(f"{t}\t{g}\n" for t, g in zip(record["tokens"], record["tags"])) + "\n"
    return f"{line}\t{' '.join(record['tokens'])}\t{' '.join(record['tags'])}\n"


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


def predict_stream(model, path: Path, fmt: str, write, encoding="utf-8", batch_size=256) -> int:
    """Predict every non-blank line of `path`, calling write(text) per record. Returns the count."""
    n = 0
    for chunk in _chunks(path, encoding):
        examples = examples_from_texts([t for _, t in chunk], [f"{path}:{k}" for k, _ in chunk])
        preds = model.predict_examples(examples, batch_size=batch_size)
        for (lineno, _), ex, pred in zip(chunk, examples, preds):
            write(format_record(prediction_record(model, ex, pred), lineno, fmt, model.task))
            n += 1
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
