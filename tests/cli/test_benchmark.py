"""`tagger benchmark speed` end to end through the CLI, on an untrained tiny model (few batches)."""
import json

import numpy as np

from tagger.cli.benchmark import bootstrap_interval

from .conftest import SAMPLES


def test_benchmark_speed_reports_both_rates_at_one_and_n_threads(cli, untrained_pos, tmp_path):
    result = cli("benchmark", "speed", untrained_pos, SAMPLES / "example.txt", "--threads", "2",
                 "--batches", "3", "--batch-size", "4")
    report = json.loads(result.stdout)  # stdout holds the one JSON document, nothing else
    expected = {"1", "2"} if report["cores"] >= 2 else {"1"}
    assert set(report["threads"]) == expected and report["batches"] == 3
    for entry in report["threads"].values():
        for kind in ("end_to_end", "model_only"):
            rate = entry[kind]
            assert 0 < rate["low"] <= rate["mean"] <= rate["high"], rate
        assert entry["end_to_end_fraction"] > 0 and entry["end_to_end_fraction_cpu"] > 0
    if "2" in expected:
        assert set(report["scaling"]) == {"end_to_end", "model_only"}
    assert "end to end" in result.stderr and "model only" in result.stderr
    assert report["blas"].startswith("openblas ") and " kernel " in report["blas"]  # the rates' BLAS
    assert f"BLAS: {report['blas']}" in result.stderr


def test_benchmark_speed_caps_threads_past_the_cores(cli, untrained_pos):
    result = cli("benchmark", "speed", untrained_pos, SAMPLES / "example.txt", "--threads", "4096",
                 "--batches", "2", "--batch-size", "8")
    assert "warning: --threads 4096" in result.stderr
    report = json.loads(result.stdout)
    assert max(int(n) for n in report["threads"]) == report["cores"]


def test_benchmark_and_predict_refuse_bad_threads_in_one_line(cli, untrained_pos, tmp_path):
    text = SAMPLES / "example.txt"
    for args in (("benchmark", "speed", untrained_pos, text, "--threads", "0"),
                 ("predict", untrained_pos, text, "--threads", "0")):
        result = cli(*args, ok=False)
        assert result.exit_code in (1, 2) and "Traceback" not in result.output
        lines = [l for l in result.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and "threads" in lines[0], result.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    result = cli("benchmark", "speed", untrained_pos, empty, ok=False)
    assert result.exit_code == 1 and "no non-blank line" in result.stderr


def test_bootstrap_interval_brackets_the_mean():
    rates = np.random.default_rng(0).normal(1000, 50, size=40)
    got = bootstrap_interval(rates)
    assert got["low"] < got["mean"] < got["high"]
    assert abs(got["mean"] - rates.mean()) < 0.1
    assert bootstrap_interval([5.0, 5.0])["low"] == bootstrap_interval([5.0, 5.0])["high"] == 5.0


def test_predict_with_threads_gives_the_same_records(cli, untrained_pos):
    text = SAMPLES / "example.txt"
    one = cli("predict", untrained_pos, text, "--threads", "1").stdout
    two = cli("predict", untrained_pos, text, "--threads", "2").stdout
    assert one == two and one.count("\n") == 3
