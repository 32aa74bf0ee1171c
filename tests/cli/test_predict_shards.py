"""`tagger predict --output DIR` is resumable and shardable: shards cover every input once,
parts join byte for byte into the unsharded output, a rerun skips what is complete, outputs
of two models never mix, nothing an input needs is overwritten, and files get the umask."""
import json
import os

import numpy as np
import pytest

from tagger import sharding

from .test_errors import one_line_error

WORDS = "the dog saw a cat in the park and it ran home".split()


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """A folder of two small files and one file large enough to be split into line ranges."""
    monkeypatch.setattr(sharding, "MIN_PART_BYTES", 600)
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    for name, n in (("a.txt", 12), ("b.txt", 3), ("big.txt", 160)):
        lines = [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 9)))) for _ in range(n)]
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def outputs(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and ".tagger-shards" not in p.parts)


def test_shards_cover_every_input_once_and_parts_join_to_the_unsharded_output(cli, untrained_pos, inputs, tmp_path):
    cli("predict", untrained_pos, inputs, "-o", tmp_path / "whole")
    assert outputs(tmp_path / "whole") == ["a.txt.jsonl", "b.txt.jsonl", "big.txt.jsonl"]
    for i in range(3):
        cli("predict", untrained_pos, inputs, "-o", tmp_path / "sharded", "--shard", f"{i}/3")
    names = outputs(tmp_path / "sharded")
    parts = sorted(n for n in names if n.startswith("big.txt.part-"))
    assert len(parts) >= 2 and len(set(names)) == len(names)  # big.txt was split; nothing written twice
    joined = b"".join((tmp_path / "sharded" / p).read_bytes() for p in parts)
    assert joined == (tmp_path / "whole" / "big.txt.jsonl").read_bytes()
    for name in ("a.txt.jsonl", "b.txt.jsonl"):
        assert (tmp_path / "sharded" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    manifests = sorted((tmp_path / "sharded" / ".tagger-shards").iterdir())
    assert len(manifests) == 3 and all(json.loads(m.read_text())["complete"] for m in manifests)
    records = sum(json.loads(m.read_text())["records"] for m in manifests)
    assert records == 12 + 3 + 160


def test_a_rerun_skips_complete_outputs_and_redoes_the_rest(cli, untrained_pos, inputs, tmp_path):
    out = tmp_path / "out"
    cli("predict", untrained_pos, inputs, "-o", out)
    before = {n: (out / n).stat().st_mtime_ns for n in outputs(out)}
    (out / "b.txt.jsonl").unlink()  # lost since
    stale = out / ".a.txt.jsonl.99999999.0badf00d.tmp"  # a killed run's temporary (dead pid)
    stale.write_text("half")
    result = cli("predict", untrained_pos, inputs, "-o", out)
    assert "a.txt.jsonl (already complete)" in result.stderr and "b.txt.jsonl (3 records)" in result.stderr
    assert (out / "a.txt.jsonl").stat().st_mtime_ns == before["a.txt.jsonl"]
    assert not stale.exists()
    result = cli("predict", untrained_pos, inputs, "-o", out, "--overwrite")
    assert "already complete" not in result.stderr


def test_outputs_of_another_model_are_not_mixed_in(cli, untrained_pos, inputs, tmp_path):
    from tagger.io import load_model, save_model

    other = load_model(untrained_pos)
    weights = other.network.get_weights()
    weights[-1] = weights[-1] + 1.0  # another output bias: another model
    other.network.set_weights(weights)
    save_model(other, tmp_path / "other")
    out = tmp_path / "out"
    cli("predict", untrained_pos, inputs, "-o", out)
    one_line_error(cli("predict", tmp_path / "other", inputs, "-o", out, ok=False), "another model", "--overwrite")
    cli("predict", tmp_path / "other", inputs, "-o", out, "--overwrite")


def test_outputs_follow_the_umask(cli, untrained_pos, inputs, tmp_path):
    old = os.umask(0o022)
    try:
        cli("predict", untrained_pos, inputs / "a.txt", "-o", tmp_path / "out")
    finally:
        os.umask(old)
    assert (tmp_path / "out" / "a.txt.jsonl").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("shard, needle", [("3/3", "outside 0..2"), ("x", "--shard"), ("auto", "SLURM_ARRAY_TASK_ID")])
def test_bad_shards_are_one_line_errors(cli, untrained_pos, inputs, tmp_path, monkeypatch, shard, needle):
    for var in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_COUNT"):
        monkeypatch.delenv(var, raising=False)
    one_line_error(cli("predict", untrained_pos, inputs, "-o", tmp_path / "out", "--shard", shard, ok=False), needle)


def test_shard_to_stdout_is_refused(cli, untrained_pos, inputs):
    one_line_error(cli("predict", untrained_pos, inputs, "--shard", "0/2", ok=False), "--shard needs --output")


def test_no_input_loses_its_output(cli, untrained_pos, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        d.mkdir()
        (d / "notes.txt").write_text("the dog ran\n")
    # two inputs with the same output name
    one_line_error(cli("predict", untrained_pos, one / "notes.txt", two / "notes.txt", "-o", tmp_path / "out", ok=False),
                   "notes.txt")
    # an output folder inside an input folder
    one_line_error(cli("predict", untrained_pos, one, "-o", one / "tagged", ok=False), "--output")
    # an input that is a previous output, predicted into its own folder
    cli("predict", untrained_pos, one / "notes.txt", "-o", tmp_path / "out")
    result = cli("predict", untrained_pos, tmp_path / "out" / "notes.txt.jsonl", "-o", tmp_path / "out", ok=False)
    one_line_error(result, "notes.txt.jsonl")
    assert json.loads((tmp_path / "out" / "notes.txt.jsonl").read_text().splitlines()[0])["text"] == "the dog ran"


def test_column_files_are_never_cut_into_parts(cli, untrained_pos, tmp_path, monkeypatch):
    monkeypatch.setattr(sharding, "MIN_PART_BYTES", 200)
    rng = np.random.default_rng(1)
    sentences = ["\n".join(f"{w}\tX" for w in rng.choice(WORDS, size=5)) for _ in range(60)]
    src = tmp_path / "dev.conll"
    src.write_text("\n\n".join(sentences) + "\n", encoding="utf-8")
    cli("predict", untrained_pos, src, "-o", tmp_path / "whole", "--format", "conll")
    for i in range(2):
        cli("predict", untrained_pos, src, "-o", tmp_path / "sharded", "--format", "conll", "--shard", f"{i}/2")
    assert outputs(tmp_path / "sharded") == ["dev.conll"]  # one shard took the whole file
    assert (tmp_path / "sharded" / "dev.conll").read_bytes() == (tmp_path / "whole" / "dev.conll").read_bytes()


def test_workers_split_the_plan_and_write_what_one_process_writes(cli, untrained_pos, inputs, tmp_path):
    # MIN_PART_BYTES is patched in this process only: the spawned workers plan with the
    # default, which leaves these small files whole
    cli("predict", untrained_pos, inputs, "-o", tmp_path / "one")
    result = cli("predict", untrained_pos, inputs, "-o", tmp_path / "two", "--workers", "2")
    assert outputs(tmp_path / "two") == outputs(tmp_path / "one")
    for name in outputs(tmp_path / "one"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    manifests = sorted(p.name for p in (tmp_path / "two" / ".tagger-shards").iterdir())
    assert manifests == ["shard-0000-of-0002.json", "shard-0001-of-0002.json"]
    assert result.stderr.count(" records)") == 3
    # a rerun with the workers resumes: nothing to redo
    assert cli("predict", untrained_pos, inputs, "-o", tmp_path / "two", "--workers", "2").stderr.count("already complete") == 3


def test_workers_to_stdout_take_the_chunks_in_turn_and_keep_the_input_order(cli, untrained_pos, inputs, tmp_path,
                                                                          monkeypatch):
    from tagger import predict

    # the parent cuts the chunks: 160 lines in chunks of 7 are 23 chunks, more than the
    # 4 in flight, so results come back from both workers while others are still queued
    monkeypatch.setattr(predict, "CHUNK_LINES", 7)
    column = tmp_path / "small.conll"  # a column input is predicted in the parent, between them
    column.write_text("the\tX\ndog\tX\n\na\tX\ncat\tX\n", encoding="utf-8")
    files = [inputs / "big.txt", column, inputs / "a.txt"]
    one = cli("predict", untrained_pos, *files).stdout
    mapped, real_map = [], predict.ChunkWorkers.map

    def counted(self, chunks, *args):
        for records in real_map(self, chunks, *args):
            mapped.append(len(records))
            yield records

    monkeypatch.setattr(predict.ChunkWorkers, "map", counted)
    two = cli("predict", untrained_pos, *files, "--workers", "2").stdout
    assert two == one and len(two.splitlines()) == 160 + 2 + 12
    assert mapped == [7] * 22 + [6] + [7, 5]  # big.txt and a.txt went to the workers, small.conll did not
    tsv = cli("predict", untrained_pos, inputs / "big.txt", "--workers", "3", "--format", "tsv").stdout
    assert [int(row.split("\t")[0]) for row in tsv.splitlines()] == list(range(1, 161))
    one_line_error(cli("predict", untrained_pos, inputs, "--workers", "2", "--shard", "0/2", ok=False), "--shard needs --output")


def _tagger_process(args, **popen):
    """`tagger ARGS` in a real process of its own session (a Ctrl-C to its group reaches
    the workers too, as at a terminal); the workers' stderr is the process's stderr."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import child_ctrl_c_default

    script = "import sys; from tagger.cli import main; sys.argv[0] = 'tagger'; main()"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
                            preexec_fn=child_ctrl_c_default, **popen)


@pytest.mark.slow
def test_workers_to_stdout_fail_and_stop_in_one_line(untrained_pos, tmp_path):
    import signal

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text("x\n")
    text = tmp_path / "long.txt"
    rng = np.random.default_rng(0)
    text.write_text("\n".join(" ".join(rng.choice(WORDS, size=12)) for _ in range(60_000)) + "\n", encoding="utf-8")
    # a model the workers cannot load either: the parent's one-line error, no worker's traceback
    proc = _tagger_process(["predict", broken, text, "--workers", "2"])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and out == ""
    assert err.strip().splitlines() == [f"error: {broken / 'tokenizer.json'}: missing; this is not a complete tagger model directory"]
    # Ctrl-C once records flow: the parent stops, the workers go, nothing but "interrupted"
    proc = _tagger_process(["predict", untrained_pos, text, "--workers", "2"])
    first = proc.stdout.readline()
    os.killpg(proc.pid, signal.SIGINT)
    rest, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted"
    records = (first + rest).splitlines()
    assert 0 < len(records) < 60_000 and json.loads(records[0])["line"] == 1
