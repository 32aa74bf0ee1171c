"""Shard plans: coverage, balance, byte-exact parts, --shard parsing, collisions, resume."""
import json
import os
import random
from pathlib import Path

import pytest

from tagger.data.readers import iter_lines
from tagger.errors import TaggerError
from tagger.sharding import (
    MANIFEST_DIR,
    ShardRun,
    count_newlines,
    expand_inputs,
    main,
    manifest_path,
    model_digest,
    next_line_start,
    output_name,
    parse_shard,
    plan_shards,
)


def one_line_error(excinfo, *words):
    msg = str(excinfo.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    return msg


def write_lines(path: Path, n: int, seed: int, newline="\n", trailing=True) -> Path:
    rng = random.Random(seed)
    words = ["the", "cat", "Zoë", "naïve", "sat", "3.50", "NATO", "on", "mat", "—"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 12))) for _ in range(n)]
    text = newline.join(lines) + (newline if trailing else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


@pytest.fixture
def corpus(tmp_path):
    """A folder of inputs: one large file, small files, an empty one, a nested folder."""
    root = tmp_path / "in"
    write_lines(root / "big.txt", 3000, 1)
    for k in range(12):
        write_lines(root / f"small{k:02d}.txt", 1 + k * 3, 10 + k)
    write_lines(root / "sub" / "deep.txt", 40, 99, newline="\r\n", trailing=False)
    (root / "empty.txt").write_bytes(b"")
    (root / ".hidden").write_text("not an input\n")
    return root


# --------------------------------------------------------------------------- --shard
@pytest.mark.parametrize("spec, env, expected", [
    (None, {}, (0, 1)),
    ("0/1", {}, (0, 1)),
    ("3/8", {}, (3, 8)),
    ("auto", {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "7",
              "SLURM_ARRAY_TASK_COUNT": "8"}, (5, 8)),
    ("auto", {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "2", "SLURM_ARRAY_TASK_MAX": "5"}, (1, 4)),
    # a resubmission of task 3 alone: MIN = MAX = 3, COUNT = 1, the total comes from auto/N
    ("auto/8", {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_MAX": "3",
                "SLURM_ARRAY_TASK_COUNT": "1"}, (3, 8)),
])
def test_parse_shard(spec, env, expected):
    assert parse_shard(spec, env) == expected


@pytest.mark.parametrize("spec, env, words", [
    ("8/8", {}, ["outside 0..7"]),
    ("1/0", {}, [">= 1"]),
    ("x/4", {}, ["I/N"]),
    ("3", {}, ["I/N"]),
    ("auto", {}, ["SLURM_ARRAY_TASK_ID", "not a Slurm array job", "--shard I/N"]),
    ("auto/4", {"SLURM_JOB_ID": "7"}, ["SLURM_ARRAY_TASK_ID"]),
    ("auto", {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "3",
              "SLURM_ARRAY_TASK_COUNT": "2"}, ["auto/N", "resubmission"]),
    ("auto/4", {"SLURM_ARRAY_TASK_ID": "5"}, ["outside 0..3"]),
])
def test_parse_shard_errors_are_one_line(spec, env, words):
    with pytest.raises(TaggerError) as excinfo:
        parse_shard(spec, env)
    one_line_error(excinfo, "--shard", *words)


# --------------------------------------------------------------------------- inputs
def test_expand_inputs_sorted_recursive_hidden_skipped(corpus):
    files = expand_inputs([corpus])
    rels = [f.rel.as_posix() for f in files]
    assert rels == ["big.txt", "empty.txt"] + [f"small{k:02d}.txt" for k in range(12)] + ["sub/deep.txt"]
    assert [f.size for f in files] == [(corpus / r).stat().st_size for r in rels]


def test_a_symlink_loop_is_not_followed(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "x.txt").write_text("x\n")
    os.symlink(tmp_path / "a", tmp_path / "a" / "b" / "back")
    assert [f.rel.as_posix() for f in expand_inputs([tmp_path / "a"])] == ["x.txt"]
    (tmp_path / "a" / "p").symlink_to("q")
    (tmp_path / "a" / "q").symlink_to("p")
    with pytest.raises(TaggerError) as excinfo:
        expand_inputs([tmp_path / "a"])
    one_line_error(excinfo, "symbolic link that leads to no file")


def test_symlinked_folder_is_followed_and_duplicates_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "x.txt").write_text("x\n")
    (tmp_path / "top").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "top" / "link")
    assert [f.rel.as_posix() for f in expand_inputs([tmp_path / "top"])] == ["link/x.txt"]
    with pytest.raises(TaggerError) as excinfo:
        expand_inputs([tmp_path / "top", tmp_path / "real" / "x.txt"])
    one_line_error(excinfo, "same file", "give it once")


@pytest.mark.parametrize("make, words", [
    (lambda p: p / "missing.txt", ["no such file"]),
    (lambda p: (p / "e").mkdir() or p / "e", ["no files"]),
    (lambda p: os.symlink(p / "gone", p / "dangling") or p / "dangling", ["broken symlink"]),
])
def test_bad_inputs(tmp_path, make, words):
    with pytest.raises(TaggerError) as excinfo:
        expand_inputs([make(tmp_path)])
    one_line_error(excinfo, *words)


# --------------------------------------------------------------------------- the plan
def check_partition(corpus, n, min_part_bytes):
    plans = [plan_shards([corpus], n, i, min_part_bytes=min_part_bytes) for i in range(n)]
    assert all(p.all_units == plans[0].all_units for p in plans)  # every shard sees the same plan
    assert [u for p in plans for u in p] == list(plans[0].all_units)  # shard order = plan order
    by_file = {}
    for p in plans:
        for u in p:
            assert u.shard == p.shard
            by_file.setdefault(u.source.path, []).append(u)
    for f in expand_inputs([corpus]):
        units = by_file.pop(f.path)
        assert [(u.start, u.end) for u in units][0][0] == 0
        assert all(a.end == b.start for a, b in zip(units, units[1:]))  # contiguous, no overlap
        assert units[-1].end == f.size
        assert [u.shard for u in units] == sorted(u.shard for u in units)
        assert [u.part for u in units] == ([None] if len(units) == 1 else list(range(len(units))))
    assert not by_file
    return plans


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 16, 40])
def test_every_byte_in_exactly_one_shard(corpus, n):
    check_partition(corpus, n, min_part_bytes=1)
    check_partition(corpus, n, min_part_bytes=10**9)  # nothing split: whole files only


def test_balanced_by_bytes_not_file_count(corpus):
    n = 4
    plans = check_partition(corpus, n, min_part_bytes=1)
    files = expand_inputs([corpus])
    total = sum(f.size for f in files)
    small = max(f.size for f in files if f.path.name != "big.txt")
    line = max(len(x) for x in (corpus / "big.txt").read_bytes().split(b"\n")) + 1
    for p in plans:
        assert abs(p.nbytes - total / n) <= small + line, (p.nbytes, total / n)
    # big.txt is ~90% of the bytes: a file-count split would give one shard nearly everything
    assert sum(1 for u in plans[0].all_units if u.source.path.name == "big.txt") >= 3


def test_parts_concatenate_to_the_unsharded_output(corpus):
    """Part outputs (global line numbers) joined in shard order == the whole file's output."""
    big = corpus / "big.txt"
    for path in (big, corpus / "sub" / "deep.txt"):  # \n and \r\n without a final newline
        whole = "".join(f"{k}\t{line}\n" for k, line in iter_lines(path) if line.strip())
        for n in (2, 3, 8):
            units = [u for u in plan_shards([path], n, 0, min_part_bytes=1).all_units]
            assert len(units) > 1
            parts = "".join(f"{k}\t{line}\n" for u in units for k, line in u.lines() if line.strip())
            assert parts == whole
            data = path.read_bytes()
            assert b"".join(data[u.start:u.end] for u in units) == data
            assert all(data[u.start - 1:u.start] == b"\n" for u in units[1:])  # cut after a newline


def test_one_long_line_is_never_cut(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("word " * 5000 + "\n")
    units = plan_shards([path], 4, 0, min_part_bytes=1).all_units
    assert [(u.start, u.end, u.part) for u in units] == [(0, path.stat().st_size, None)]


def test_gzip_inputs_are_never_split(tmp_path):
    import gzip

    path = tmp_path / "a.txt.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("".join(f"line {k}\n" for k in range(20000)))
    assert len(plan_shards([path, write_lines(tmp_path / "b.txt", 5, 0)], 4, 0, min_part_bytes=1).all_units) == 2


def test_line_helpers(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes(b"ab\ncd\n\nef")
    assert [next_line_start(path, k) for k in range(10)] == [0, 3, 3, 3, 6, 6, 6, 7, 9, 9]
    assert [count_newlines(path, k) for k in (0, 3, 6, 7, 9)] == [0, 1, 2, 3, 3]


def test_output_names(tmp_path):
    assert output_name(Path("d/a.txt"), ".jsonl") == Path("d/a.txt.jsonl")
    assert output_name(Path("a.jsonl"), ".jsonl") == Path("a.jsonl")
    assert output_name(Path("big.txt"), ".jsonl", 3, 8) == Path("big.txt.part-0003-of-0008.jsonl")
    assert output_name(Path("big.txt"), ".tsv", 7, 12000) == Path("big.txt.part-00007-of-12000.tsv")
    names = [output_name(Path("b"), ".conll", k, 12).name for k in range(12)]
    assert sorted(names) == names  # glob order is part order


def test_plan_is_deterministic_and_cli_prints_it(corpus, capsys):
    a = plan_shards([corpus], 5, 2, min_part_bytes=1)
    b = plan_shards([corpus], 5, 2, min_part_bytes=1)
    assert a == b
    assert main([str(corpus), "--shards", "5", "--min-part-bytes", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"# {len(a.all_units)} units over 5 shards"
    assert len(out) == 1 + len(a.all_units)
    assert main([str(corpus), "--shards", "2", "--output", str(corpus / "out")]) == 1
    assert "inside the input folder" in capsys.readouterr().err


# --------------------------------------------------------------------------- collisions
def test_two_inputs_with_one_output_name(tmp_path):
    a = write_lines(tmp_path / "a" / "x.txt", 3, 0)
    b = write_lines(tmp_path / "b" / "x.txt", 3, 1)
    with pytest.raises(TaggerError) as excinfo:
        plan_shards([a, b], 2, 0, output=tmp_path / "out")
    one_line_error(excinfo, str(a), str(b), "x.txt.jsonl")
    c = write_lines(tmp_path / "c" / "y", 3, 2)
    d = write_lines(tmp_path / "d" / "y.jsonl", 3, 3)
    with pytest.raises(TaggerError):
        plan_shards([c, d], 1, 0, output=tmp_path / "out")


def test_output_inside_input_folder(corpus):
    with pytest.raises(TaggerError) as excinfo:
        plan_shards([corpus], 2, 0, output=corpus / "sub" / "tagged")
    one_line_error(excinfo, "inside the input folder", "outside")


def test_input_that_is_a_previous_output(corpus, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    inside = write_lines(out / "a.txt.jsonl", 2, 0)
    with pytest.raises(TaggerError) as excinfo:
        plan_shards([inside], 1, 0, output=out)
    one_line_error(excinfo, "inside --output", "previous output")
    old = tmp_path / "old"
    (old / MANIFEST_DIR).mkdir(parents=True)
    write_lines(old / "b.txt.jsonl", 2, 0)
    with pytest.raises(TaggerError) as excinfo:
        plan_shards([old], 1, 0, output=out)
    one_line_error(excinfo, "earlier tagger predict", MANIFEST_DIR)


# --------------------------------------------------------------------------- resume
SETTINGS = {"format": "jsonl", "encoding": "utf-8"}


def run_shard(plan, out, digest="d1", overwrite=False, fail_at=None):
    """The loop predict runs: skip done units, write the rest (an 'echo' model)."""
    run = ShardRun(plan, out, digest, SETTINGS, overwrite=overwrite)
    written = []
    for k, unit in enumerate(plan):
        if run.done(unit):
            continue
        with run.open(unit) as w:
            for lineno, line in unit.lines():
                if line.strip():
                    w.write(json.dumps({"line": lineno, "text": line}) + "\n", tokens=len(line.split()))
                if fail_at == k:
                    raise KeyboardInterrupt
        written.append(unit.output.as_posix())
    return run.finish(), written


def test_resume_skips_complete_outputs_and_redoes_broken_ones(corpus, tmp_path):
    out = tmp_path / "out"
    plan = plan_shards([corpus], 3, 2, out, min_part_bytes=1)  # the last part of big.txt, then the rest
    manifest, written = run_shard(plan, out)
    assert manifest["complete"] and len(written) == len(plan) >= 3
    saved = json.loads(manifest_path(out, 2, 3).read_text())
    assert saved == manifest
    for unit in plan:
        entry = saved["outputs"][unit.output.as_posix()]
        text = (out / unit.output).read_text()
        assert entry["records"] == len(text.splitlines()) and entry["size"] == len(text.encode())
    assert saved["records"] == sum(e["records"] for e in saved["outputs"].values()) > 0
    assert saved["tokens"] > saved["records"]

    assert run_shard(plan, out)[1] == []  # everything done
    first, second = plan.units[0].output, plan.units[2].output
    assert first.name == "big.txt.part-0002-of-0003.jsonl" and second.name == "small00.txt.jsonl"
    (out / first).write_text((out / first).read_text().replace("1", "2"))  # same size, other bytes
    (out / second).unlink()
    stale = (out / first).with_name(f".{first.name}.4194999.0badf00d.tmp")  # fsutil's temporary name
    stale.write_text("half")
    manifest, written = run_shard(plan, out)
    assert written == [first.as_posix(), second.as_posix()] and manifest["complete"]
    assert not stale.exists()


def test_interrupted_unit_leaves_no_output_and_resumes(corpus, tmp_path):
    out = tmp_path / "out"
    plan = plan_shards([corpus], 2, 1, out)
    assert len(plan) >= 3
    with pytest.raises(KeyboardInterrupt):
        run_shard(plan, out, fail_at=2)
    saved = json.loads(manifest_path(out, 1, 2).read_text())
    assert not saved["complete"] and len(saved["outputs"]) == 2
    assert not (out / plan.units[2].output).exists()
    assert not list((out / plan.units[2].output).parent.glob(".*.tmp"))
    manifest, written = run_shard(plan, out)
    assert written == [u.output.as_posix() for u in plan.units[2:]] and manifest["complete"]


def test_other_model_refused_unless_overwrite(corpus, tmp_path):
    out = tmp_path / "out"
    plan = plan_shards([corpus], 2, 0, out)
    run_shard(plan, out, digest="a" * 64)
    with pytest.raises(TaggerError) as excinfo:
        run_shard(plan_shards([corpus], 2, 1, out), out, digest="b" * 64)
    one_line_error(excinfo, "another model", "aaaaaaaaaaaa", "bbbbbbbbbbbb", "--overwrite")
    manifest, written = run_shard(plan, out, digest="b" * 64, overwrite=True)
    assert len(written) == len(plan) and manifest["model_digest"] == "b" * 64
    assert run_shard(plan, out, digest="b" * 64)[1] == []


def test_changed_input_or_settings_is_redone(corpus, tmp_path):
    out = tmp_path / "out"
    plan = plan_shards([corpus], 1, 0, out)
    run_shard(plan, out)
    small = corpus / "small03.txt"
    small.write_text(small.read_text() + "more words\n")
    plan = plan_shards([corpus], 1, 0, out)
    assert run_shard(plan, out)[1] == ["small03.txt.jsonl"]
    run = ShardRun(plan, out, "d1", {"format": "jsonl", "encoding": "latin-1"})
    assert not any(run.done(u) for u in plan)


def test_resume_across_a_different_shard_count(corpus, tmp_path):
    out = tmp_path / "out"
    for i in range(2):
        run_shard(plan_shards([corpus], 2, i, out), out)
    for i in range(3):  # whole-file outputs are found in the 2-shard manifests
        assert run_shard(plan_shards([corpus], 3, i, out), out)[1] == []


def test_model_digest(tmp_path):
    model = tmp_path / "run" / "model-best"
    model.mkdir(parents=True)
    for name in ("config.yaml", "tokenizer.json", "labels.json", "weights.safetensors"):
        (model / name).write_text(name)
    d = model_digest(model)
    assert len(d) == 64 and model_digest(tmp_path / "run") == d  # a training folder means its model-best
    (model / "labels.json").write_text("other")
    assert model_digest(model) != d


def test_more_shards_than_inputs_leaves_empty_shards_complete(tmp_path):
    a = write_lines(tmp_path / "in" / "a.txt", 3, 0)
    out = tmp_path / "out"
    plans = [plan_shards([a], 5, i, out) for i in range(5)]
    assert sorted(len(p) for p in plans) == [0, 0, 0, 0, 1]
    for p in plans:
        manifest, written = run_shard(p, out)
        assert manifest["complete"] and len(written) == len(p)
    assert [f.name for f in out.iterdir() if f.is_file()] == ["a.txt.jsonl"]
