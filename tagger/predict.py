"""Streaming prediction over text files and already-tokenized files.

Input: text files (or folders of them), one sentence (tagging) or one text
(classification) per line; blank lines are boundaries and produce no record. Lines are
read and predicted in chunks of lines (and of at most ~1M characters), so memory stays
constant however large the file; a very long line is predicted whole, never cut (a
sentence over streaming.THRESHOLD tokens blockwise, in memory linear in its length).

What a record holds and how it is written per format is the task's
(`tagger.tasks`); this module reads the inputs and writes the outputs.
Raw texts in memory: `tagger.load(path).predict(["..."])` (Model.predict).

Already-tokenized input (`--input-format`, by default from the suffix: .conll and
.conllu are column files, anything else is text):
    text    one raw sentence per line, split by the pre-tokenizer
    tokens  one sentence per line, tokens split on whitespace (offsets still point into it)
    conll / conllu  the token column of a column file, read by tagger.data.readers (the
           one CoNLL parser): sentence boundaries kept, comments, -DOCSTART-, multiword
           ranges and empty nodes handled as for training

Each input gets one output, written to a temporary file and renamed into place when
complete, so an interrupted run never leaves a half-written output. Into a folder, a run
is resumable (a rerun skips every output a run with the same model and settings
completed) and shardable (`--shard I/N`, or `auto` in a Slurm array): see
tagger/sharding.py and docs/cluster.md.

Formats:
    jsonl  one JSON object per non-blank line: line, text, tokens, offsets (character
           [start, end) into the line), tags, probs, spans (type, start, end, text,
           token_start, token_end) - or for classification: line, text, label, probability;
           with --nbest K (a CRF model) also nbest: the K best tag sequences, best first,
           each {tags, score, probability} (--nbest needs --format jsonl);
           probabilities rounded to 6 places, a NaN or infinite one written null
    conll  token<TAB>tag per line, a blank line after each sentence (classification: as tsv)
    tsv    one row per line: line number, then the tokens and tags space-joined
           (classification: line number, label, probability, text)
    With a column input: conll writes each token line of the input with the predicted tag
    appended as one more column (tab-separated if the line is, else a space: diff it, or
    score it with conlleval when the input has gold tags; -DOCSTART- lines are not written
    back); conllu writes the CoNLL-U file back (comments and multiword lines kept) with the
    predicted tag in the model's label field (upos unless the model was trained on another
    CoNLL-U field): a CoNLL-U file has exactly 10 columns, so no column is added.

`evaluate_to_file` is `tagger evaluate --predictions`: token, gold and predicted tag per
line, space-separated, a blank line after each sentence (conlleval's input).
"""
from __future__ import annotations

import gc
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tagger.data.prepare import examples_from_texts
from tagger.data.readers import CONLLU_FIELDS, iter_lines, read_examples
from tagger.data.types import Example
from tagger.errors import TaggerError
from tagger.fsutil import atomic_file

FORMATS = ("jsonl", "conll", "tsv", "conllu")
SUFFIX = {"jsonl": ".jsonl", "conll": ".conll", "tsv": ".tsv", "conllu": ".conllu"}
INPUT_FORMATS = ("text", "tokens", "conll", "conllu")
COLUMN_INPUTS = ("conll", "conllu")
CHUNK_LINES = 2048
# and at most about this much text per chunk (characters; a pre-tokenized token counts 4):
# a chunk's examples and records live until it is written, ~100 bytes per character for
# a long line, so lines of megabytes go one at a time, not CHUNK_LINES at a time
CHUNK_CHARS = 1 << 20


def _chunks(lines: Iterable[tuple[int, str]]) -> Iterator[list[tuple[int, str]]]:
    """The non-blank (line number, line) pairs of `lines`, CHUNK_LINES (or CHUNK_CHARS) at a time."""
    return _batched(((k, line) for k, line in lines if line.strip()), CHUNK_LINES, lambda item: len(item[1]))


@contextmanager
def cyclic_gc_paused():
    """The cyclic garbage collector off for the block, then as it was.

    A chunk makes tens of thousands of small lists, tuples and dicts and frees them all by
    reference counting: they hold no cycles (tests/test_predict_batched.py checks it). The
    collector would still traverse them, and every other live object on its full passes
    (a tenth of `tagger predict`'s time, measured), for nothing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def predict_chunk(model, chunk: list[tuple[int, str]], source: str, fmt: str, batch_size=256,
                  nbest=None) -> list[tuple[str, int]]:
    """(formatted record, its token count) for each (line number, text) of a chunk: the
    chunk is split, encoded and predicted as batches, then its records are made and
    formatted a chunk at a time (tasks.records, tasks.format_records)."""
    with cyclic_gc_paused():
        # in a function of its own, so that its objects are freed before the collector is
        # back on (a collector turned on among them would traverse them all at once)
        return _predict_chunk(model, chunk, source, fmt, batch_size, nbest)


def _predict_chunk(model, chunk, source, fmt, batch_size, nbest) -> list[tuple[str, int]]:
    task = model.labeller
    lines = [lineno for lineno, _ in chunk]
    examples = examples_from_texts([t for _, t in chunk], [f"{source}:{k}" for k in lines])
    # the 1-best JSON lines start before the model runs; n-best records are made whole
    heads = task.jsonl_heads(examples, lines) if fmt == "jsonl" and nbest is None else None
    preds = model.predict_examples(examples, batch_size=batch_size, nbest=nbest)
    if heads is not None:
        texts = task.jsonl_lines(heads, examples, preds)
    else:
        texts = task.format_records(task.records(examples, preds, nbest=nbest), lines, fmt)
    return [(text, len(ex.tokens)) for text, ex in zip(texts, examples)]

def predict_stream(model, lines, fmt: str, write, source="input", batch_size=256, nbest=None, workers=None) -> int:
    """Predict every non-blank line of `lines` ((line number, line) pairs), calling
    write(text, tokens) per record. Returns the count. workers: a ChunkWorkers that
    predicts the chunks in other processes (the records come back in input order)."""
    n = 0
    chunks = _chunks(lines)
    if workers is None:
        done = (predict_chunk(model, chunk, source, fmt, batch_size, nbest) for chunk in chunks)
    else:
        done = workers.map(chunks, source, fmt, batch_size, nbest)
    for records in done:
        for text, tokens in records:
            write(text, tokens=tokens)
        n += len(records)
    return n


class ChunkWorkers:
    """predict_chunk in `workers` spawned processes, one thread each, each with its own
    copy of the model; `map` yields each chunk's records in input order.

    Why processes: the host side of a chunk (pre-tokenizer, encoding, JSON) is Python and
    holds the interpreter lock, so a second thread cannot share it; for a word-only
    BiLSTM-256 it is ~100 ms of a 2,048-line chunk against the forward pass's 256 ms at
    1 thread and 140 ms at 2 (benchmarks/README.md, predict_processes.py). K processes run
    K chunks at once, host side and network alike. At most 2 * workers chunks are in
    flight, so memory stays a few chunks per worker on any input. The parent reads the
    lines and writes the records; only text crosses the process boundary."""

    def __init__(self, model_path, workers: int, device: str = "cpu"):
        self._pool = _spawned_pool(workers, initializer=_start_chunk_worker, initargs=(str(model_path), device))
        self.window = 2 * workers
        for _ in range(workers):  # start them now: a worker is spawned when a task finds none idle
            self._pool.submit(int)

    def map(self, chunks: Iterable[list], source: str, fmt: str, batch_size: int, nbest) -> Iterator[list]:
        from collections import deque
        from concurrent.futures.process import BrokenProcessPool

        pending: deque = deque()
        try:
            for chunk in chunks:
                pending.append(self._pool.submit(_chunk_in_worker, chunk, source, fmt, batch_size, nbest))
                if len(pending) >= self.window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool as err:
            raise TaggerError(f"a --workers process of {source} ended without its result ({err}); "
                              "is memory short? retry with fewer --workers") from None
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_WORKER_MODEL = None  # the model of a ChunkWorkers process
_WORKER_ERROR: TaggerError | None = None  # or why it could not be loaded


def _spawned_pool(workers: int, **options):
    """A process pool of `workers` for --workers. Spawn, not fork: each worker starts clean
    (its own BLAS and Numba state), and loads its model with _one_thread_model."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), **options)


def _one_thread_model(model_path: str, device: str):
    """A --workers process's own model, its thread plan one thread (the workers are the
    parallelism)."""
    from tagger.io import load_model
    from tagger.threads import configure

    configure(1)
    return load_model(model_path, device=device)


def _start_chunk_worker(model_path: str, device: str) -> None:
    import signal

    global _WORKER_MODEL, _WORKER_ERROR
    # Ctrl-C reaches the whole process group: the parent stops the run and shuts the
    # pool down; a worker's own KeyboardInterrupt would only print a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _WORKER_MODEL = _one_thread_model(model_path, device)
    except TaggerError as err:  # raised with the first chunk: an initializer's error prints a traceback
        _WORKER_ERROR = err


def _chunk_in_worker(chunk, source, fmt, batch_size, nbest):
    if _WORKER_MODEL is None:
        raise _WORKER_ERROR
    return predict_chunk(_WORKER_MODEL, chunk, source, fmt, batch_size, nbest)


def predict_files(model, inputs, output=None, fmt="jsonl", encoding="utf-8", overwrite=False, batch_size=256,
                  shard=None, input_format=None, nbest=None, workers=None):
    """Predict each input into OUTPUT/<name><suffix>, or to stdout with output None or '-'.

    input_format: one of INPUT_FORMATS, or None to choose per file by its suffix.
    nbest: k, each jsonl record also lists the k best tag sequences (a CRF model only).
    workers: a ChunkWorkers (of the same model) that predicts the chunks of text inputs in
    other processes; already-tokenized inputs are predicted here.
    With an output folder the run is resumable and shardable (tagger/sharding.py):
    `shard` "I/N", "auto" or "auto/N" takes shard I's byte-balanced share of the inputs
    (a large text file is cut into line ranges, written as NAME.part-III-of-NNN<suffix>;
    column files stay whole, a sentence spans lines); an output an earlier run completed
    with the same model, inputs and settings is skipped unless `overwrite`; each output is
    written atomically and recorded in the shard's manifest.
    Returns [(input, output path or '-', records, or None when skipped)].
    """
    from tagger import sharding
    from tagger.sharding import ShardRun, expand_inputs, parse_shard, plan_shards

    if fmt not in FORMATS:
        raise TaggerError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if input_format is not None and input_format not in INPUT_FORMATS:
        raise TaggerError(f"unknown --input-format {input_format!r}; choose one of {', '.join(INPUT_FORMATS)}")
    check_nbest(model, nbest, fmt)
    files = expand_inputs(inputs)
    kinds = {f.path: input_format_of(f.path, input_format) for f in files}
    for f in files:
        check_formats(model, f.path, kinds[f.path], fmt)

    def stream(path, lines, write):
        if kinds[path] == "text":
            warn_if_columns(path, encoding)
            return predict_stream(model, lines, fmt, write, path, batch_size, nbest, workers)
        return predict_pretokenized(model, path, kinds[path], fmt, write, encoding, batch_size, lines, nbest)

    if output in (None, "-"):
        if shard is not None:
            raise TaggerError("--shard needs --output DIR: shards write their parts into one folder")
        done = []
        for f in files:
            lines = iter_lines(f.path, encoding, encoding_option="--encoding")
            done.append((f.path, "-", stream(f.path, lines, lambda text, tokens=0: sys.stdout.write(text))))
        sys.stdout.flush()
        return done
    i, n = parse_shard(shard)
    out_dir = Path(output)
    whole = any(k in COLUMN_INPUTS for k in kinds.values())
    plan = plan_shards(inputs, n, i, out_dir, SUFFIX[fmt], min_part_bytes=sys.maxsize if whole else sharding.MIN_PART_BYTES)
    settings = {"format": fmt, "encoding": encoding, "input_format": input_format}
    if nbest is not None:  # only then: the settings of earlier runs without it stay the same
        settings["nbest"] = nbest
    run = ShardRun(plan, out_dir, model_digest(model), settings, overwrite=overwrite)
    done = []
    for unit in plan:
        if run.done(unit):
            done.append((unit.source.path, out_dir / unit.output, None))
            continue
        with run.open(unit) as writer:
            records = stream(unit.source.path, unit.lines(encoding), writer.write)
        done.append((unit.source.path, out_dir / unit.output, records))
    run.finish()
    return done


def predict_workers(model_path, inputs, output, workers: int, shard=None, device="cpu", **options):
    """predict_files in `workers` processes on this node, one thread each: worker j of shard
    I/N takes shard I*K + j of N*K of the same global plan, so the workers (and the array
    tasks around them) share one folder and one manifest scheme and never overlap. Each
    worker loads the model itself and streams, so memory stays what one process needs.
    Resume with the same N and K (the part names of split files depend on N*K).
    To stdout (output None or "-"), the workers take the chunks of each text input in turn
    (ChunkWorkers) and the records come out in input order, as one process writes them."""
    from tagger.io import load_model
    from tagger.sharding import parse_shard

    if output in (None, "-"):
        with ChunkWorkers(model_path, workers, device) as pool:  # the workers start while this loads
            return predict_files(load_model(model_path, device=device), inputs, output, shard=shard, workers=pool,
                                 **options)
    i, n = parse_shard(shard)
    jobs = [f"{i * workers + j}/{n * workers}" for j in range(workers)]
    with _spawned_pool(workers) as pool:
        runs = [pool.submit(_worker, str(model_path), [str(x) for x in inputs], str(output), job, device, options)
                for job in jobs]
        return [row for run in runs for row in run.result()]


def _worker(model_path, inputs, output, shard, device, options):
    return predict_files(_one_thread_model(model_path, device), inputs, output, shard=shard, **options)


def model_digest(model) -> str:
    """sha256 of what a model predicts with: its config, vocabularies and weights. Outputs
    of two models never mix in one --output folder."""
    import hashlib

    h = hashlib.sha256()
    for text in (model.config.to_yaml(), model.words.tokenizer.to_str(), "\n".join(model.labels.labels)):
        h.update(text.encode("utf-8"))
    if getattr(model, "chars", None) is not None:  # model.chars: the character vocabulary too
        h.update(model.chars.to_json().encode("utf-8"))
    for name, w in model.network.named_weights():
        h.update(name.encode("utf-8"))
        h.update(w.tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------
# already-tokenized inputs: whitespace tokens, or the token column of a CoNLL / CoNLL-U file


def input_format_of(path: Path, input_format: str | None) -> str:
    """--input-format, or from the suffix (.conll, .conllu; a .gz after it is looked through)."""
    if input_format is not None:
        return input_format
    suffixes = [x for x in Path(path).suffixes if x != ".gz"]
    last = suffixes[-1].lstrip(".") if suffixes else ""
    return last if last in COLUMN_INPUTS else "text"


def check_formats(model, path: Path, kind: str, fmt: str) -> None:
    """Refuse the input/output pairs that cannot be written."""
    if model.labeller.name != "tag" and kind in COLUMN_INPUTS:
        raise TaggerError(f"{path}: --input-format {kind} needs a tagging model; classify text or tokens instead")
    if fmt == "conllu" and kind != "conllu":
        raise TaggerError(f"{path}: --format conllu writes a CoNLL-U input back; use --input-format conllu or another --format")


def check_nbest(model, nbest, fmt: str) -> None:
    """--nbest: a CRF model, and jsonl, the one format with room for a list per sentence."""
    if nbest is None:
        return
    model.check_nbest(nbest, "--nbest")
    if fmt != "jsonl":
        raise TaggerError(f"--nbest lists are written in --format jsonl only (got --format {fmt}); use --format jsonl")


def warn_if_columns(path: Path, encoding: str) -> None:
    """A column file read as text would tag each `token<TAB>tag` line as a sentence: say so."""
    for _, line in iter_lines(path, encoding, encoding_option="--encoding"):
        if line.strip():
            if "\t" in line.strip():
                print(f"warning: {path} has tab-separated columns but is read as text (one sentence per line); "
                      "use --input-format conll (or conllu) for a column file", file=sys.stderr)
            return


def token_lines(path: Path, lines: Iterable[tuple[int, str]]) -> Iterator[tuple[int, Example]]:
    """--input-format tokens: one sentence per non-blank line, tokens split on whitespace."""
    for lineno, line in lines:
        found = list(re.finditer(r"\S+", line))
        if found:
            ex = Example([m.group() for m in found], text=line, offsets=[m.span() for m in found], source=f"{path}:{lineno}")
            yield lineno, ex


def column_sentences(model, path: Path, kind: str, encoding: str) -> Iterator[tuple[int, Example]]:
    """--input-format conll|conllu: the sentences of a column file, each with its rows.

    The token column is the model's own when it was trained on this format, else the
    format's default (conll: 0, conllu: form)."""
    options = {"encoding": encoding, "label_column": None, "keep_rows": True}
    data = model.config.data
    if data.format == kind and data.token_column is not None:
        options["token_column"] = data.token_column
    for ex in read_examples(path, kind, **options):
        yield int(ex.source.rsplit(":", 1)[1]), ex


def label_field(model) -> int:
    """The CoNLL-U field --format conllu writes the prediction into."""
    data = model.config.data
    if data.format != "conllu" or data.label_column is None:
        return CONLLU_FIELDS.index("upos")
    col = data.label_column
    return int(col) if str(col).lstrip("-").isdigit() else CONLLU_FIELDS.index(str(col).lower())


def format_rows(ex: Example, tags: list[str], fmt: str, field: int) -> str:
    """A column input's sentence written back with its predicted tags (see the module docstring)."""
    out = []
    for _, line, k in ex.rows:
        if k is None:  # a comment, multiword range or empty node: CoNLL-U keeps it
            if fmt == "conllu":
                out.append(line + "\n")
        elif fmt == "conllu":
            cols = line.split("\t")
            cols[field] = tags[k]
            out.append("\t".join(cols) + "\n")
        else:
            out.append(line + ("\t" if "\t" in line else " ") + tags[k] + "\n")
    return "".join(out) + "\n"


def predict_pretokenized(model, path: Path, kind: str, fmt: str, write, encoding="utf-8", batch_size=256,
                         lines=None, nbest=None) -> int:
    """Predict every sentence of a tokens / conll / conllu input, calling write(text, tokens)
    per record. `lines`: the (line number, line) pairs of a tokens input (default: all of
    `path`); a column file is always read whole."""
    task = model.labeller
    if kind == "tokens":
        items = token_lines(path, lines if lines is not None else iter_lines(path, encoding, encoding_option="--encoding"))
    else:
        items = column_sentences(model, path, kind, encoding)
    rows = kind in COLUMN_INPUTS and fmt in ("conll", "conllu")
    field = label_field(model) if fmt == "conllu" else None
    n = 0
    for chunk in _batched(items, CHUNK_LINES, lambda item: 4 * len(item[1].tokens)):
        examples = [ex for _, ex in chunk]
        preds = model.predict_examples(examples, batch_size=batch_size, nbest=nbest)
        lines = [lineno for lineno, _ in chunk]
        if rows:
            texts = [format_rows(ex, pred[0], fmt, field) for ex, pred in zip(examples, preds)]
        else:
            texts = task.format_records(task.records(examples, preds, nbest=nbest), lines, fmt)
        for ex, text in zip(examples, texts):
            write(text, tokens=len(ex.tokens))
            n += 1
    return n


def _batched(items: Iterable, size: int, weight) -> Iterator[list]:
    """Consecutive items, `size` at a time or fewer once their weight(item) reaches CHUNK_CHARS."""
    chunk, total = [], 0
    for item in items:
        chunk.append(item)
        total += weight(item)
        if len(chunk) >= size or total >= CHUNK_CHARS:
            yield chunk
            chunk, total = [], 0
    if chunk:
        yield chunk


# ----------------------------------------------------------------------------------------
# `tagger evaluate --predictions`


def evaluate_to_file(model, examples: list[Example], path, batch_size=256) -> dict:
    """The task's scores on `examples`, with each prediction written (atomically) to `path`:
    tagging: `token gold predicted` per line (whitespace inside a token becomes _), a blank
    line after each sentence, as conlleval reads it; classification: text, gold, predicted
    tab-separated per line."""
    preds = model.predict_examples(examples, batch_size=batch_size)
    task = model.labeller
    with atomic_file(Path(path)) as fh:
        for ex, pred in zip(examples, preds):
            if task.name == "tag":
                fh.write("".join(f"{_field(t)} {g} {p}\n" for t, g, p in zip(ex.tokens, ex.labels, pred[0])) + "\n")
            else:
                fh.write(f"{' '.join(ex.tokens) if ex.text is None else ex.text}\t{ex.label}\t{pred[0]}\n")
    return task.score(examples, preds)


def _field(token: str) -> str:
    return re.sub(r"\s", "_", token) or "_"
