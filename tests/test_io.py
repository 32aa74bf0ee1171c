"""The model directory and the file helpers: byte-identical weights, swaps that are safe at
every instant, cleanup of what killed runs leave, the output lock, consistency on load."""
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import yaml

from tagger import fsutil
from tagger.config import parse_config, safe_load_yaml
from tagger.data.readers import check_encoding, iter_lines, list_input_files
from tagger.data.vocab import LabelVocab, WordVocab
from tagger.errors import ConfigError, DataError, TaggerError
from tagger.io import load_model, resolve_model_dir, safetensors_bytes, save_model
from tagger.models import Model, build_network, check_network_fits, parameter_count
from tagger.ops import get_ops

REF = get_ops("reference")

SENTENCES = [["The", "cat", "sat", "."], ["A", "dog", "ran", "."]]
TAGS = [["DET", "NOUN", "VERB", "PUNCT"]] * 2


def tiny_model(task="tag", seed=0, crf=False):
    cfg = parse_config({"model": {"task": task, "embedding_dim": 4, "lstm_units": 3, "crf": crf}, "training": {"seed": seed}})
    words = WordVocab.build(SENTENCES)
    labels = LabelVocab.build([t for s in TAGS for t in s] if task == "tag" else ["pos", "neg"])
    net = build_network(cfg.model, len(words), len(labels), ops="reference", seed=seed)
    return Model(cfg, words, labels, net)


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model"
    save_model(tiny_model(), path)
    return path


# ----------------------------------------------------------------------------- weights file
def test_weights_are_byte_identical_across_saves_and_processes(tmp_path):
    save_model(tiny_model(), tmp_path / "a")
    save_model(tiny_model(), tmp_path / "b")
    a = (tmp_path / "a" / "weights.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "weights.safetensors").read_bytes()
    # safetensors' own writer orders the metadata by hash, which differs per process
    code = (
        "import sys; from tests.test_io import tiny_model; from tagger.io import save_model; "
        "save_model(tiny_model(), sys.argv[1])"
    )
    env = dict(os.environ, PYTHONHASHSEED="123", PYTHONPATH=str(fsutil.Path(__file__).resolve().parents[1]))
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "c")], check=True, env=env)
    assert a == (tmp_path / "c" / "weights.safetensors").read_bytes()


def test_weights_file_reads_back_with_safetensors(tmp_path):
    from safetensors.numpy import load_file, safe_open

    tensors = {"b/x": np.arange(6, dtype=np.float32).reshape(2, 3), "a/y": np.ones(5, np.float64)}
    data = safetensors_bytes(tensors, {"z": "1", "a": "2", "task": "tag"})
    (n,) = struct.unpack("<Q", data[:8])
    assert (8 + n) % 8 == 0
    header = data[8 : 8 + n].decode()
    assert header.rstrip() == json.dumps(json.loads(header), sort_keys=True, separators=(",", ":"))
    (tmp_path / "w.safetensors").write_bytes(data)
    back = load_file(str(tmp_path / "w.safetensors"))
    for k, v in tensors.items():
        np.testing.assert_array_equal(back[k], v)
    with safe_open(str(tmp_path / "w.safetensors"), framework="numpy") as fh:
        assert fh.metadata() == {"z": "1", "a": "2", "task": "tag"}


def test_save_records_task_and_sizes(saved):
    from safetensors.numpy import safe_open

    with safe_open(str(saved / "weights.safetensors"), framework="numpy") as fh:
        meta = fh.metadata()
    assert meta["task"] == "tag" and meta["format"] == "2"
    assert int(meta["n_words"]) == len(WordVocab.load(saved / "tokenizer.json"))
    assert int(meta["n_labels"]) == 4


def test_round_trip_keeps_every_weight(saved):
    again = load_model(saved, device=REF)
    for (n1, w1), (n2, w2) in zip(tiny_model().network.named_weights(), again.network.named_weights()):
        assert n1 == n2
        np.testing.assert_array_equal(w1, w2)


def test_a_directory_without_the_new_metadata_still_loads(saved):
    from safetensors.numpy import load_file, save_file

    w = saved / "weights.safetensors"
    save_file(load_file(str(w)), str(w), metadata={"format": "1", "task": "tag"})
    assert load_model(saved, device=REF).task == "tag"


def test_an_old_directory_with_the_wrong_vocabulary_names_tokenizer_json(saved):
    from safetensors.numpy import load_file, save_file

    w = saved / "weights.safetensors"
    save_file(load_file(str(w)), str(w), metadata={"format": "1"})  # no task, no sizes: shapes decide
    tok = json.loads((saved / "tokenizer.json").read_text())
    tok["model"]["vocab"]["zebra"] = max(tok["model"]["vocab"].values()) + 1
    (saved / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(TaggerError, match="tokenizer.json: .* words, but .*weights.safetensors"):
        load_model(saved, device=REF)


# ----------------------------------------------------------------------------- swaps
def test_a_save_killed_between_its_renames_leaves_a_loadable_model(saved, monkeypatch):
    real = os.replace
    calls = []

    def die_on_second(src, dst):
        if calls:
            raise KeyboardInterrupt  # the kill, just after model -> .model.old
        real(src, dst)
        if dst == fsutil.old_sibling(saved):
            calls.append(dst)

    monkeypatch.setattr(fsutil.os, "replace", die_on_second)
    with pytest.raises(KeyboardInterrupt):
        save_model(tiny_model(seed=1), saved)
    monkeypatch.setattr(fsutil.os, "replace", real)
    assert not saved.exists() and fsutil.old_sibling(saved).is_dir()
    assert resolve_model_dir(saved) == fsutil.old_sibling(saved)
    assert load_model(saved, device=REF).task == "tag"
    save_model(tiny_model(seed=2), saved)  # the next save puts things right
    assert saved.is_dir() and not fsutil.old_sibling(saved).exists()
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")]


def test_an_interrupted_save_leaves_the_old_model_and_no_temporary(saved, monkeypatch):
    before = (saved / "weights.safetensors").read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("tagger.io.safetensors_bytes", boom)
    with pytest.raises(KeyboardInterrupt):
        save_model(tiny_model(seed=3), saved)
    assert (saved / "weights.safetensors").read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == ["model"]


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale_dir = tmp_path / f".model-best.{pid}.abcd.tmp"
    stale_dir.mkdir()
    (stale_dir / "weights.safetensors").write_bytes(b"half")
    stale_file = tmp_path / f".out.jsonl.{pid}.beef.tmp"
    stale_file.write_text("half")
    live = tmp_path / f".out.jsonl.{os.getppid()}.cafe.tmp"  # a live process's temporary
    live.write_text("busy")
    other = tmp_path / ".hidden-but-mine"
    other.write_text("keep")
    gone = fsutil.cleanup_stale(tmp_path)
    assert sorted(gone) == sorted([stale_dir, stale_file])
    assert live.exists() and other.exists()
    assert fsutil.cleanup_stale(tmp_path, all_pids=True) == [live]


def test_atomic_write_removes_its_temporary_on_failure_and_names_the_target(tmp_path, monkeypatch):
    import errno

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsutil.os, "fsync", full)
    with pytest.raises(OSError) as info:
        fsutil.atomic_write_text(tmp_path / "x.txt", "data")
    assert info.value.filename == str(tmp_path / "x.txt")
    assert "disk is full" in fsutil.describe_os_error(info.value)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- lock and runs
def test_a_second_writer_gets_one_line(tmp_path):
    out = tmp_path / "run"
    with fsutil.OutputLock(out):
        with pytest.raises(TaggerError, match=rf"--output {out}: another tagger run \(pid {os.getpid()}\)"):
            fsutil.OutputLock(out).acquire()
        (out / "loss.tsv").write_text("x")
    with fsutil.OutputLock(out):  # released: free again
        pass
    assert (out / "loss.tsv").exists()


def test_a_lock_on_a_folder_it_made_and_left_empty_removes_it(tmp_path):
    with fsutil.OutputLock(tmp_path / "new"):
        pass
    assert not (tmp_path / "new").exists()


def test_a_killed_lock_holder_does_not_block(tmp_path):
    out = tmp_path / "run"
    code = "import sys, os; from tagger.fsutil import OutputLock; OutputLock(sys.argv[1]).acquire(); os._exit(0)"
    env = dict(os.environ, PYTHONPATH=str(fsutil.Path(__file__).resolve().parents[1]))
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, env=env)
    with fsutil.OutputLock(out):
        pass


def test_start_run_moves_the_previous_run_aside_and_cleans(tmp_path):
    out = tmp_path / "run"
    (out / "model-best").mkdir(parents=True)
    (out / "model-best" / "w").write_text("old")
    (out / "loss.tsv").write_text("old log")
    (out / ".model-last.99999999.ab.tmp").mkdir()
    (out / ".model-best.k2j_x9q.tmp").mkdir()  # an older version's temporary (no pid in the name)
    with fsutil.OutputLock(out):
        prev = fsutil.start_run(out, ("model-best", "model-last", "loss.tsv"))
    assert prev == out / "previous"
    assert (prev / "model-best" / "w").read_text() == "old" and (prev / "loss.tsv").read_text() == "old log"
    assert sorted(p.name for p in out.iterdir()) == [fsutil.LOCK_NAME, "previous"]


@pytest.mark.parametrize("make, needle", [
    (lambda p: p.write_text("x"), "exists and is not a folder"),
    (lambda p: (p.parent / "f").write_text("x"), "is a file, so no folder"),
])
def test_check_output_dir(tmp_path, make, needle):
    target = tmp_path / "out"
    make(target)
    target = target if target.exists() else tmp_path / "f" / "sub"
    with pytest.raises(TaggerError, match=needle):
        fsutil.check_output_dir(target)


def test_check_output_dir_unwritable(tmp_path, monkeypatch):
    monkeypatch.setattr(fsutil.os, "access", lambda p, m: False)
    with pytest.raises(TaggerError, match="is not writable"):
        fsutil.check_output_dir(tmp_path / "out")
    with pytest.raises(TaggerError, match="is not writable"):
        fsutil.check_output_file(tmp_path / "out.json")


# ----------------------------------------------------------------------------- YAML
@pytest.mark.parametrize("text, line, first, key", [
    ("a: 1\nb: 2\na: 3\n", 3, 1, "a"),
    ("training:\n  lr: 0.1\n  seed: 1\n  lr: 0.2\n", 4, 2, "lr"),
    ("training:\n  lr: 0.1\nmodel: {}\ntraining:\n  seed: 2\n", 4, 1, "training"),
    ("data: {train: x, train: y}\n", 1, 1, "train"),
])
def test_duplicate_keys_are_refused_with_both_lines(text, line, first, key):
    with pytest.raises(ConfigError) as info:
        safe_load_yaml(text, "c.yaml")
    assert str(info.value) == f"c.yaml:{line}: duplicate key {key!r} (first given on line {first}); keep only one"


def test_yaml_without_duplicates_reads_as_safe_load_does():
    text = "a: &x {q: 1}\nb:\n  <<: *x\n  r: 2\nc: [1, 2]\n"
    assert safe_load_yaml(text, "c.yaml") == yaml.safe_load(text)


def test_safe_loader_refuses_python_tags():
    with pytest.raises(ConfigError, match="c.yaml:1: invalid YAML"):
        safe_load_yaml("a: !!python/object/apply:os.system ['true']\n", "c.yaml")


# ----------------------------------------------------------------------------- readers
def test_truncated_and_fake_gzip_name_the_file(tmp_path):
    good = gzip.compress(b"line one\n" * 2000)
    (tmp_path / "cut.txt.gz").write_bytes(good[: len(good) // 2])
    (tmp_path / "fake.txt.gz").write_bytes(b"plain text\n")
    with pytest.raises(DataError, match=r"cut.txt.gz: the gzip file is truncated"):
        list(iter_lines(tmp_path / "cut.txt.gz"))
    with pytest.raises(DataError, match=r"fake.txt.gz: not a valid gzip file"):
        list(iter_lines(tmp_path / "fake.txt.gz"))
    (tmp_path / "ok.txt.gz").write_bytes(good)
    assert sum(1 for _ in iter_lines(tmp_path / "ok.txt.gz")) == 2000


@pytest.mark.parametrize("codec", ["rot13", "base64", "hex", "zlib", "no-such-codec"])
def test_non_text_codecs_are_refused(codec):
    with pytest.raises(DataError, match="--encoding"):
        check_encoding(codec, "--encoding")


def test_input_folders_follow_links_but_not_loops(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("x")
    (tmp_path / "d" / "up").symlink_to("..")  # a loop back to the root
    (tmp_path / ".hidden").write_text("x")
    assert list_input_files(tmp_path) == [tmp_path / "d" / "a.txt"]
    (tmp_path / "x").symlink_to("y")
    (tmp_path / "y").symlink_to("x")
    with pytest.raises(DataError, match="symbolic link that leads to no file"):
        list_input_files(tmp_path)


# ----------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("crf, merge, layers", [(False, "concat", 1), (True, "sum", 2), (False, "ave", 3)])
def test_parameter_count_matches_the_network(crf, merge, layers):
    cfg = parse_config({"model": {"embedding_dim": 5, "lstm_units": 3, "crf": crf, "merge_mode": merge, "layers": layers}})
    net = build_network(cfg.model, 11, 4, ops="reference")
    assert parameter_count(cfg.model, 11, 4) == sum(w.size for _, w in net.named_weights())


def test_a_network_larger_than_memory_is_refused_before_allocating():
    cfg = parse_config({"model": {"lstm_units": 1_000_000_000}})
    with pytest.raises(TaggerError, match=r"model.lstm_units 1000000000,.* GiB .*; make them smaller"):
        check_network_fits(cfg.model, 100, 5)
    assert check_network_fits(parse_config({}).model, 100, 5) > 0


def test_copy_of_model_dir_keeps_loading(saved, tmp_path):
    shutil.copytree(saved, tmp_path / "copy")
    assert load_model(tmp_path / "copy", device=REF).labels.labels == tiny_model().labels.labels
