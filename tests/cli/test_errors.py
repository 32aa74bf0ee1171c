"""Bad input gets one line naming the file, line or key, exit status 1, no traceback.

None of these trains: model directories come saved untrained (fixture untrained_pos)."""

import pytest

from .conftest import REPO, SAMPLES, write_config


def one_line_error(result, *needles):
    assert result.exit_code == 1, result.output
    err = result.stderr if hasattr(result, "stderr") else result.output
    # the first-run notice that Numba is compiling is not part of the error
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith("compiling Numba kernels")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in result.output
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_unknown_config_key_suggests_the_closest(cli, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", data={"train": "x"}, training={"lrr": 0.1})
    one_line_error(cli("train", cfg, ok=False), "training.lrr", "did you mean 'lr'")


def test_wrong_type_names_the_path(cli, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", training={"lr": "fast"})
    one_line_error(cli("train", cfg, ok=False), "training.lr", "expected a number")


def test_unknown_override(cli):
    one_line_error(cli("train", REPO / "configs" / "quickstart.yaml", "--training.lrr", "0.1", ok=False), "training.lrr")


def test_pooling_override_on_a_tagging_config(cli):
    result = cli("train", REPO / "configs" / "quickstart.yaml", "--model.pooling", "max", ok=False)
    one_line_error(result, "model.pooling", "task: classify")


def test_malformed_corpus_line_names_file_and_line(cli, tmp_path):
    bad = tmp_path / "bad.conllu"
    bad.write_text("1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_\n2\tcat\tcat\tNOUN\n\n")
    cfg = write_config(tmp_path / "c.yaml", data={"train": "bad.conllu", "format": "conllu"})
    one_line_error(cli("train", cfg, ok=False), "bad.conllu:2")


def test_empty_training_file(cli, tmp_path):
    (tmp_path / "empty.conllu").write_text("")
    cfg = write_config(tmp_path / "c.yaml", data={"train": "empty.conllu", "format": "conllu"})
    one_line_error(cli("train", cfg, ok=False), "empty.conllu")


def test_missing_model_directory(cli, tmp_path):
    one_line_error(cli("predict", tmp_path / "nope", SAMPLES / "README.md", ok=False), "nope")


def test_damaged_weights_file(cli, untrained_pos, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(untrained_pos / "model-best", broken)
    (broken / "weights.safetensors").write_bytes(b"\x00garbage" * 10)
    src = tmp_path / "t.txt"
    src.write_text("The cat .\n")
    one_line_error(cli("predict", broken, src, ok=False), "weights.safetensors")


def test_weights_that_do_not_match_the_config(cli, untrained_pos, tmp_path):
    import shutil

    import yaml

    odd = tmp_path / "odd"
    shutil.copytree(untrained_pos / "model-best", odd)
    cfg = yaml.safe_load((odd / "config.yaml").read_text())
    cfg["model"]["lstm_units"] = 7
    (odd / "config.yaml").write_text(yaml.safe_dump(cfg))
    src = tmp_path / "t.txt"
    src.write_text("The cat .\n")
    one_line_error(cli("predict", odd, src, ok=False), "weights.safetensors")


def test_missing_tokenizer_file(cli, untrained_pos, tmp_path):
    import shutil

    part = tmp_path / "part"
    shutil.copytree(untrained_pos / "model-best", part)
    (part / "tokenizer.json").unlink()
    one_line_error(cli("summary", part, ok=False), "tokenizer.json")


def test_non_utf8_input_names_the_line(cli, untrained_pos, tmp_path):
    src = tmp_path / "latin.txt"
    src.write_bytes(b"fine line\nsister\xf0city\n")
    result = cli("predict", untrained_pos, src, "-o", tmp_path / "out", ok=False)
    one_line_error(result, "latin.txt:2", "0xf0", "--encoding")
    assert not (tmp_path / "out" / "latin.txt.jsonl").exists()  # nothing half-written
    assert not list((tmp_path / "out").rglob("*.tmp"))  # no temporary left (.tagger-shards/ is the manifest)


def test_cuda_without_a_gpu_is_a_clear_error(cli, tmp_path):
    from tagger.device import cuda_usable

    if cuda_usable()[0]:
        pytest.skip("a GPU is present; this checks the no-GPU message")
    one_line_error(cli("train", REPO / "configs" / "quickstart.yaml", "-o", tmp_path / "m", "--device", "cuda", ok=False), "cuda")


def test_summary_sizes_go_together(cli):
    quick = REPO / "configs" / "sample_pos.yaml"
    one_line_error(cli("summary", quick, "--vocab-size", "100", ok=False), "--vocab-size and --labels")
    one_line_error(cli("summary", quick, "--vocab-size", "100", "--labels", "0", ok=False), "--labels 0")
    table = cli("summary", quick, "--vocab-size", "100", "--labels", "5").output
    assert " 5000 " in table.replace(",", "")  # the 100 x 50 embedding, from the given sizes
    assert "(None, None, 5)" in table  # the output layer's 5 labels, not an invented count


def test_summary_of_an_untrained_model_directory(cli, untrained_pos):
    assert "bilstm_1 (Bidirectional)" in cli("summary", untrained_pos).output
