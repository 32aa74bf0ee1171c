"""Streaming prediction over raw text files.

Input: text files (or folders of them), one sentence (tagging) or one text
(classification) per line; blank lines are boundaries and produce no record. Lines are
read and predicted in chunks, so memory stays constant however large the file; a very
long line is predicted whole, never cut.

What a record holds and how it is written per format is the task's
(`tagger.tasks`); this module reads the inputs and writes the outputs.
Raw texts in memory: `tagger.load(path).predict(["..."])` (Model.predict).

Each input gets one output, written to a temporary file and renamed into place when
complete, so an interrupted run never leaves a half-written output. Into a folder, a run
is resumable (a rerun skips every output a run with the same model and settings
completed) and shardable (`--shard I/N`, or `auto` in a Slurm array): see
tagger/sharding.py and docs/cluster.md.

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
from tagger.data.readers import iter_lines
from tagger.errors import TaggerError

FORMATS = ("jsonl", "conll", "tsv")
SUFFIX = {"jsonl": ".jsonl", "conll": ".conll", "tsv": ".tsv"}
CHUNK_LINES = 2048


def _chunks(lines: Iterable[tuple[int, str]]) -> Iterator[list[tuple[int, str]]]:
    """The non-blank (line number, line) pairs of `lines`, CHUNK_LINES at a time."""
    chunk = []
    for lineno, line in lines:
        if line.strip():
            chunk.append((lineno, line))
        if len(chunk) >= CHUNK_LINES:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def predict_stream(model, lines, fmt: str, write, source="input", batch_size=256) -> int:
    """Predict every non-blank line of `lines` ((line number, line) pairs), calling
    write(text, tokens) per record. Returns the count."""
    n, task = 0, model.labeller
    for chunk in _chunks(lines):
        examples = examples_from_texts([t for _, t in chunk], [f"{source}:{k}" for k, _ in chunk])
        preds = model.predict_examples(examples, batch_size=batch_size)
        for (lineno, _), ex, pred in zip(chunk, examples, preds):
            write(task.format_record(task.record(ex, pred), lineno, fmt), tokens=len(ex.tokens))
            n += 1
    return n


def predict_files(model, inputs, output=None, fmt="jsonl", encoding="utf-8", overwrite=False, batch_size=256,
                  shard=None):
    """Predict each input into OUTPUT/<name><suffix>, or to stdout with output None or '-'.

    With an output folder the run is resumable and shardable (tagger/sharding.py):
    `shard` "I/N", "auto" or "auto/N" takes shard I's byte-balanced share of the inputs
    (a large file is cut into line ranges, written as NAME.part-III-of-NNN<suffix>); an
    output an earlier run completed with the same model, inputs and settings is skipped
    unless `overwrite`; each output is written atomically and recorded in the shard's
    manifest. Returns [(input, output path or '-', records, or None when skipped)].
    """
    from tagger import sharding
    from tagger.sharding import ShardRun, expand_inputs, parse_shard, plan_shards

    if fmt not in FORMATS:
        raise TaggerError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if output in (None, "-"):
        if shard is not None:
            raise TaggerError("--shard needs --output DIR: shards write their parts into one folder")
        out = []
        for f in expand_inputs(inputs):
            n = predict_stream(model, iter_lines(f.path, encoding, encoding_option="--encoding"), fmt,
                               lambda text, tokens=0: sys.stdout.write(text), f.path, batch_size)
            out.append((f.path, "-", n))
        sys.stdout.flush()
        return out
    i, n = parse_shard(shard)
    out_dir = Path(output)
    plan = plan_shards(inputs, n, i, out_dir, SUFFIX[fmt], min_part_bytes=sharding.MIN_PART_BYTES)
    run = ShardRun(plan, out_dir, model_digest(model), {"format": fmt, "encoding": encoding}, overwrite=overwrite)
    done = []
    for unit in plan:
        if run.done(unit):
            done.append((unit.source.path, out_dir / unit.output, None))
            continue
        with run.open(unit) as writer:
            records = predict_stream(model, unit.lines(encoding), fmt, writer.write, unit.source.path, batch_size)
        done.append((unit.source.path, out_dir / unit.output, records))
    run.finish()
    return done


def model_digest(model) -> str:
    """sha256 of what a model predicts with: its config, vocabularies and weights. Outputs
    of two models never mix in one --output folder."""
    import hashlib

    h = hashlib.sha256()
    for text in (model.config.to_yaml(), model.words.tokenizer.to_str(), "\n".join(model.labels.labels)):
        h.update(text.encode("utf-8"))
    for name, w in model.network.named_weights():
        h.update(name.encode("utf-8"))
        h.update(w.tobytes())
    return h.hexdigest()
