"""Deterministic shard plans for prediction over many files, and resuming them.

    tagger predict MODEL INPUT... --output DIR --shard I/N      (or --shard auto in a Slurm array)

Legend
    N          number of shards; shard I in 0..N-1 (a Slurm array task's index)
    input      a file named on the command line or found in a folder named there
               (tagger.data.readers.list_input_files: sorted, hidden files and folders
               skipped, links followed but never round a loop; the same file twice is refused)
    unit       one piece of work for one shard: a whole input, or a *part* of a large input,
               i.e. the lines in bytes [start, end) of it, cut just after a newline
    digest     sha256 over the model folder's files (names, sizes, bytes)

The plan. All inputs are laid end to end, in order, as one stream of B bytes; shard I takes
bytes [B*I/N, B*(I+1)/N). A cut that falls inside an input larger than `min_part_bytes`
moves to the next line boundary (the input is split into parts); a cut inside a smaller
input (or a .gz) moves to the nearer end of that input. So shards are balanced by bytes,
not by file count, every byte of every input belongs to exactly one shard, and every shard
computes the same global plan from the same inputs without talking to the others.

Output names (relative to --output; `suffix` is the format's, e.g. ".jsonl"):
    docs/a.txt             -> a.txt.jsonl        (folder inputs keep their path inside the folder)
    x.jsonl                -> x.jsonl            (the suffix is not doubled)
    big.txt split in 8     -> big.txt.part-0000-of-0008.jsonl ... big.txt.part-0007-of-0008.jsonl
The parts of one input lie in consecutive shards, in part order, and record global line
numbers, so `cat big.txt.part-*-of-0008.jsonl` (glob order = part order = shard order)
is byte for byte the unsharded big.txt.jsonl.

Manifests: DIR/.tagger-shards/shard-IIII-of-NNNN.json, rewritten atomically after every
finished unit: the model digest, the settings (format, encoding), and per output its
input, byte range, input size and mtime, records, tokens, seconds, size and sha256. An
output counts as done only when a manifest (any shard's, any N) lists it with the same
input, range and settings and the file has the recorded size and sha256; a rerun redoes
the rest, so a resubmitted array task resumes. Outputs and manifests are written with
tagger.fsutil.atomic_file (a temporary beside the target, renamed into place); a rerun
removes the temporaries its units' killed writers left.
"""
from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tagger.errors import TaggerError
from tagger.fsutil import atomic_file, atomic_write_text, cleanup_stale, file_sha256

MANIFEST_DIR = ".tagger-shards"
MANIFEST_VERSION = 1
MIN_PART_BYTES = 1 << 20  # smaller inputs are never split: a part per MiB is plenty of balance
_WINDOW = 1 << 16  # bytes read at a time when looking for a line boundary or counting lines


# --------------------------------------------------------------------------- --shard
def parse_shard(spec: str | None, environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """'I/N' -> (I, N); 'auto' or 'auto/N' -> from the Slurm array task; None -> (0, 1).

    'auto' takes N = SLURM_ARRAY_TASK_MAX - MIN + 1 and I = ID - MIN, which needs the
    whole array (--array=0-7); a resubmission of some tasks (--array=3) must say the
    total: 'auto/8' takes I = SLURM_ARRAY_TASK_ID itself.
    """
    if spec is None:
        return 0, 1
    env = os.environ if environ is None else environ
    head, _, tail = spec.strip().partition("/")
    n = _positive(tail, spec) if tail else None
    if head == "auto":
        i, n = _slurm_shard(env, n, spec)
    else:
        if n is None or not head.isdigit():
            raise TaggerError(f"--shard {spec!r}: expected I/N (e.g. 0/8), auto or auto/N")
        i = int(head)
    if not 0 <= i < n:
        raise TaggerError(f"--shard {spec!r}: shard index {i} is outside 0..{n - 1}")
    return i, n


def _positive(text: str, spec: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise TaggerError(f"--shard {spec!r}: the shard count must be a whole number >= 1, e.g. 0/8")
    return int(text)


def _slurm_shard(env: Mapping[str, str], n: int | None, spec: str) -> tuple[int, int]:
    def get(name):
        value = env.get(name, "")
        if not value.isdigit():
            return None
        return int(value)

    task = get("SLURM_ARRAY_TASK_ID")
    if task is None:
        raise TaggerError(
            f"--shard {spec}: SLURM_ARRAY_TASK_ID is not set (not a Slurm array job); "
            "submit with sbatch --array=0-N or give --shard I/N"
        )
    if n is not None:
        return task, n
    lo, hi, count = get("SLURM_ARRAY_TASK_MIN"), get("SLURM_ARRAY_TASK_MAX"), get("SLURM_ARRAY_TASK_COUNT")
    if lo is None or hi is None:
        raise TaggerError("--shard auto: SLURM_ARRAY_TASK_MIN/MAX are not set; give the total as --shard auto/N")
    if count is not None and count != hi - lo + 1:
        raise TaggerError(
            f"--shard auto: array {lo}-{hi} has {count} tasks, not every index (a resubmission?); "
            f"give the total as --shard auto/N"
        )
    return task - lo, hi - lo + 1


# --------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class InputFile:
    path: Path  # as found, for messages and reading
    rel: Path  # its output name relative to --output, before the suffix
    size: int
    mtime_ns: int


def expand_inputs(inputs) -> list[InputFile]:
    """Files and folders -> input files in order; folders walked by list_input_files."""
    from tagger.data.readers import list_input_files

    found: list[InputFile] = []
    seen: dict[tuple[int, int], Path] = {}
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = list_input_files(p)
            if not files:
                raise TaggerError(f"{p}: folder has no files to predict")
            for f in files:
                _add(f, f.relative_to(p), found, seen)
        elif p.is_file():
            _add(p, Path(p.name), found, seen)
        elif p.is_symlink():
            raise TaggerError(f"{p}: broken symlink; point it at a file or leave it out")
        else:
            raise TaggerError(f"{p}: no such file or folder")
    return found


def _add(path: Path, rel: Path, found: list, seen: dict) -> None:
    st = path.stat()
    key = (st.st_dev, st.st_ino)
    if key in seen:
        raise TaggerError(f"{path} and {seen[key]} are the same file; give it once")
    seen[key] = path
    found.append(InputFile(path, rel, st.st_size, st.st_mtime_ns))


def output_name(rel: Path, suffix: str, part: int | None = None, parts: int = 1) -> Path:
    """The output path (relative to --output) of an input, or of one part of it."""
    if part is not None:
        width = max(4, len(str(parts)))
        return rel.with_name(f"{rel.name}.part-{part:0{width}d}-of-{parts:0{width}d}{suffix}")
    return rel if rel.suffix == suffix else rel.with_name(rel.name + suffix)


# --------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Unit:
    """One input, or the lines in bytes [start, end) of it; `part` is None for a whole input."""

    source: InputFile
    output: Path  # relative to --output
    start: int
    end: int
    shard: int
    part: int | None = None
    parts: int = 1

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    def lines(self, encoding: str = "utf-8", encoding_option: str = "--encoding") -> Iterator[tuple[int, str]]:
        """(line number in the whole input, line) for the lines of this unit."""
        from tagger.data.readers import iter_lines

        if self.part is None:
            return iter_lines(self.source.path, encoding, encoding_option)
        first = 1 + count_newlines(self.source.path, self.start)
        return iter_lines(self.source.path, encoding, encoding_option, byte_range=(self.start, self.end, first))

    def identity(self) -> dict:
        """What must match for an earlier output of this unit to count as done."""
        src = self.source
        return {"input": os.path.abspath(src.path), "start": self.start, "end": self.end,
                "input_size": src.size, "input_mtime_ns": src.mtime_ns}


@dataclass(frozen=True)
class Plan:
    shard: int
    shards: int
    units: tuple[Unit, ...]  # this shard's, in order
    all_units: tuple[Unit, ...]  # every shard's, in order (the same on every shard)

    def __iter__(self) -> Iterator[Unit]:
        return iter(self.units)

    def __len__(self) -> int:
        return len(self.units)

    @property
    def nbytes(self) -> int:
        return sum(u.nbytes for u in self.units)


def plan_shards(inputs, n: int, i: int, output=None, suffix: str = ".jsonl",
                min_part_bytes: int = MIN_PART_BYTES) -> Plan:
    """Shard i of n over `inputs` (files and folders). With `output` (the --output folder)
    the plan is also checked for output collisions; every shard raises the same error."""
    if not 0 <= i < n:
        raise TaggerError(f"--shard {i}/{n}: shard index {i} is outside 0..{n - 1}")
    files = expand_inputs(inputs)
    cuts = _shard_cuts(files, n, min_part_bytes)
    units = _units(files, cuts, suffix)
    if output is not None:
        check_collisions(inputs, files, units, Path(output))
    return Plan(i, n, tuple(u for u in units if u.shard == i), tuple(units))


def _shard_cuts(files: list[InputFile], n: int, min_part_bytes: int) -> list[int]:
    """Global byte offsets [0, c1, ..., c_{n-1}, B]: shard j takes [c_j, c_{j+1})."""
    starts = [0]
    for f in files:
        starts.append(starts[-1] + f.size)
    total = starts[-1]
    cuts = [0]
    for j in range(1, n):
        b = total * j // n
        k = bisect.bisect_right(starts, b) - 1  # the input holding byte b
        if k >= len(files) or b == starts[k]:
            cut = b
        elif files[k].size > min_part_bytes and files[k].path.suffix != ".gz":
            cut = starts[k] + next_line_start(files[k].path, b - starts[k])
        else:
            cut = starts[k] if b - starts[k] < starts[k + 1] - b else starts[k + 1]
        cuts.append(max(cut, cuts[-1]))
    cuts.append(total)
    return cuts


def _units(files: list[InputFile], cuts: list[int], suffix: str) -> list[Unit]:
    n = len(cuts) - 1
    units: list[Unit] = []
    pos = 0
    for f in files:
        if f.size == 0:  # owns no bytes: goes to the shard whose range holds its position
            pieces = [(min(bisect.bisect_right(cuts, pos) - 1, n - 1), 0, 0)]
        else:  # the shards from the one holding its first byte to the one holding its last
            first, last = bisect.bisect_right(cuts, pos) - 1, bisect.bisect_left(cuts, pos + f.size) - 1
            overlaps = ((j, max(cuts[j], pos) - pos, min(cuts[j + 1], pos + f.size) - pos)
                        for j in range(first, min(last, n - 1) + 1))
            pieces = [(j, a, b) for j, a, b in overlaps if a < b]
        k = len(pieces)
        for part, (j, a, b) in enumerate(pieces):
            index = part if k > 1 else None
            units.append(Unit(f, output_name(f.rel, suffix, index, k), a, b, j, index, k))
        pos += f.size
    return units


def next_line_start(path: Path, offset: int) -> int:
    """The smallest position >= offset that starts a line (just after a newline), or the size."""
    if offset <= 0:
        return 0
    with open(path, "rb") as fh:
        fh.seek(offset - 1)  # a newline just before `offset` means offset itself starts a line
        pos = offset - 1
        while True:
            block = fh.read(_WINDOW)
            if not block:
                return pos
            k = block.find(b"\n")
            if k >= 0:
                return pos + k + 1
            pos += len(block)


def count_newlines(path: Path, end: int) -> int:
    """Newlines in bytes [0, end) of a file (the line number of a part is this + 1)."""
    count, left = 0, end
    with open(path, "rb") as fh:
        while left > 0:
            block = fh.read(min(left, _WINDOW * 16))
            if not block:
                break
            count += block.count(b"\n")
            left -= len(block)
    return count


def check_collisions(inputs, files: list[InputFile], units: list[Unit], out_dir: Path) -> None:
    """Refuse plans whose outputs would overwrite each other or be read back as inputs."""
    out_real = out_dir.resolve()
    for item in inputs:
        p = Path(item)
        if p.is_dir() and out_real.is_relative_to(p.resolve()):
            raise TaggerError(
                f"--output {out_dir} is inside the input folder {p}; a rerun would read the outputs "
                "as inputs: choose an output folder outside it"
            )
    clean: set[Path] = set()  # folders known to hold no manifest, so each is looked at once
    for f in files:
        real = f.path.resolve()
        if real.is_relative_to(out_real):
            raise TaggerError(f"{f.path} is inside --output {out_dir} (a previous output?); leave it out")
        for folder in real.parents:
            if folder in clean:
                break
            if (folder / MANIFEST_DIR).is_dir():
                raise TaggerError(
                    f"{f.path} is an output of an earlier tagger predict ({folder / MANIFEST_DIR} exists); leave it out"
                )
            clean.add(folder)
    owner: dict[Path, Unit] = {}
    for u in units:
        other = owner.setdefault(u.output, u)
        if other is not u and other.source is not u.source:
            raise TaggerError(
                f"{other.source.path} and {u.source.path} would both write {out_dir / u.output}; "
                "rename one or predict them into different --output folders"
            )


# --------------------------------------------------------------------------- digests
def model_digest(model_dir) -> str:
    """sha256 over every file of a model folder (relative names, sizes and bytes, sorted)."""
    from tagger.io import resolve_model_dir

    root = resolve_model_dir(model_dir)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        h.update(f"{rel}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- resume
_MANIFEST_RE = re.compile(r"^shard-(\d+)-of-(\d+)\.json$")


def manifest_path(out_dir: Path, shard: int, shards: int) -> Path:
    width = max(4, len(str(shards)))
    return Path(out_dir) / MANIFEST_DIR / f"shard-{shard:0{width}d}-of-{shards:0{width}d}.json"


def read_manifests(out_dir: Path) -> list[tuple[Path, dict]]:
    """Every shard manifest in an output folder (any shard count), in name order."""
    folder = Path(out_dir) / MANIFEST_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        if not _MANIFEST_RE.match(path.name):
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError:
            continue  # removed meanwhile by a shard running with --overwrite
        except ValueError:
            raise TaggerError(f"{path}: unreadable shard manifest; delete it (its shard's outputs are redone)") from None
        found.append((path, data))
    return found


class ShardRun:
    """Resume bookkeeping and atomic outputs for one shard of a plan.

        run = ShardRun(plan, out_dir, model_digest(model_dir), {"format": "jsonl", "encoding": "utf-8"})
        for unit in plan:
            if run.done(unit):
                continue
            with run.open(unit) as out:
                for lineno, line in unit.lines(encoding):
                    out.write(text_of_record, tokens=len(tokens))
        summary = run.finish()
    """

    def __init__(self, plan: Plan, out_dir, digest: str, settings: dict | None = None, overwrite: bool = False):
        self.plan = plan
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise TaggerError(f"--output {self.out_dir}: exists and is not a folder")
        self.digest = digest
        self.settings = dict(settings or {})
        self.path = manifest_path(self.out_dir, plan.shard, plan.shards)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.known, own = self._load(overwrite)
        # this shard's manifest keeps the entries of units not yet checked in this run, so
        # a run killed early loses nothing; done()/open() replace them one by one
        names = {u.output.as_posix() for u in plan}
        self.entries: dict[str, dict] = {k: v for k, v in own.items() if k in names}
        self.checked: set[str] = set()
        self.started = time.time()
        for unit in plan:
            self._remove_stale(unit)

    def _load(self, overwrite: bool) -> tuple[dict[str, dict], dict[str, dict]]:
        known: dict[str, dict] = {}
        own: dict[str, dict] = {}
        for path, data in read_manifests(self.out_dir):
            if data.get("model_digest") != self.digest:
                if overwrite:
                    path.unlink(missing_ok=True)  # its outputs are redone by this model
                    continue
                raise TaggerError(
                    f"--output {self.out_dir} holds outputs of another model (digest "
                    f"{str(data.get('model_digest'))[:12]}, this model {self.digest[:12]}); "
                    "use a new --output folder or --overwrite"
                )
            if not overwrite:
                known.update(data.get("outputs", {}))
                if path == self.path:
                    own = data.get("outputs", {})
        return known, own

    def _remove_stale(self, unit: Unit) -> None:
        # only this shard writes this unit, so any temporary of it is left by a killed run
        target = self.out_dir / unit.output
        cleanup_stale(target.parent, target.name, all_pids=True)

    def done(self, unit: Unit) -> bool:
        """True when an earlier run finished this unit with these inputs, settings and model."""
        name = unit.output.as_posix()
        entry = self.known.get(name)
        if entry is None or not self._intact(unit, entry):
            self.entries.pop(name, None)
            return False
        self.entries[name] = entry
        self.checked.add(name)
        return True

    def _intact(self, unit: Unit, entry: dict) -> bool:
        if entry.get("settings") != self.settings:
            return False
        if any(entry.get(k) != v for k, v in unit.identity().items()):
            return False
        target = self.out_dir / unit.output
        try:
            if target.stat().st_size != entry.get("size"):
                return False
        except OSError:
            return False
        return file_sha256(target) == entry.get("sha256")

    @contextlib.contextmanager
    def open(self, unit: Unit) -> Iterator["UnitWriter"]:
        """A writer for one unit's output: temp file, renamed into place and recorded on success."""
        target = self.out_dir / unit.output
        target.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with atomic_file(target, "wb") as fh:  # bytes: what the sha256 and size count
            writer = UnitWriter(fh)
            yield writer
        entry = dict(unit.identity(), settings=self.settings, records=writer.records, tokens=writer.tokens,
                     seconds=round(time.perf_counter() - t0, 3), size=writer.size, sha256=writer.sha.hexdigest())
        self.entries[unit.output.as_posix()] = entry
        self.checked.add(unit.output.as_posix())
        self._save(complete=False)

    def finish(self) -> dict:
        """Mark the shard complete; returns its manifest."""
        return self._save(complete=self.checked == {u.output.as_posix() for u in self.plan})

    def _save(self, complete: bool) -> dict:
        data = {
            "version": MANIFEST_VERSION, "shard": self.plan.shard, "shards": self.plan.shards,
            "model_digest": self.digest, "settings": self.settings, "complete": complete,
            "inputs": sorted({str(u.source.path) for u in self.plan}),
            "records": sum(e["records"] for e in self.entries.values()),
            "tokens": sum(e["tokens"] for e in self.entries.values()),
            "seconds": round(time.time() - self.started, 3),
            "outputs": self.entries,
        }
        atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")
        return data


class UnitWriter:
    """Counts records, tokens, bytes and the sha256 of what it writes."""

    def __init__(self, fh):
        self.fh = fh
        self.sha = hashlib.sha256()
        self.records = self.tokens = self.size = 0

    def write(self, text: str, tokens: int = 0) -> None:
        """Write one record's text (it counts as one record with `tokens` tokens)."""
        data = text.encode("utf-8")
        self.fh.write(data)
        self.sha.update(data)
        self.size += len(data)
        self.records += 1
        self.tokens += tokens


# --------------------------------------------------------------------------- command line
def describe(plan: Plan) -> str:
    """One line per unit of every shard: shard, bytes, input[start:end], output."""
    rows = [f"# {len(plan.all_units)} units over {plan.shards} shards"]
    for u in plan.all_units:
        where = f"{u.source.path}" if u.part is None else f"{u.source.path}[{u.start}:{u.end}]"
        rows.append(f"{u.shard}\t{u.nbytes}\t{where}\t{u.output}")
    return "\n".join(rows)


def main(argv=None) -> int:
    """python -m tagger.sharding INPUT... --shards N [--output DIR] [--suffix .jsonl]: print the plan."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m tagger.sharding", description=main.__doc__)
    parser.add_argument("inputs", nargs="+", help="files or folders")
    parser.add_argument("--shards", type=int, required=True, help="number of shards")
    parser.add_argument("--output", default=None, help="the --output folder (checks collisions)")
    parser.add_argument("--suffix", default=".jsonl", help="output suffix of the format")
    parser.add_argument("--min-part-bytes", type=int, default=MIN_PART_BYTES, help="split only inputs larger than this")
    args = parser.parse_args(argv)
    try:
        if args.shards < 1:
            raise TaggerError("--shards must be >= 1")
        plan = plan_shards(args.inputs, args.shards, 0, args.output, args.suffix, args.min_part_bytes)
    except TaggerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(describe(plan))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
