"""curves.png: read a run's logs, draw loss / dev score / lr, and the `tagger plot` command."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("matplotlib")  # the 'plot' extra; the dev extra installs it in CI

from matplotlib.image import imread  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from tagger import plot  # noqa: E402
from tagger.cli import app  # noqa: E402
from tagger.errors import TaggerError  # noqa: E402


def fake_run(folder, n=12, lr_drop=8, seed=0.0):
    """A run folder as tagger train writes it, with n evaluations."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"epoch": k, "step": 50 * k, "loss": 2.0 * math.exp(-0.3 * k) + seed, "dev_score": 0.9 - 0.5 * math.exp(-0.4 * k),
         "dev_accuracy": None, "lr": 0.004 if k < lr_drop else 0.002, "dev": {"accuracy": 0.5}}
        for k in range(1, n + 1)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


def assert_real_png(path, min_bytes=15_000):
    assert path.is_file() and path.stat().st_size > min_bytes
    pixels = imread(path)
    assert pixels.shape[0] > 400 and pixels.shape[1] > 400
    assert pixels[..., :3].std() > 0.05  # not a blank canvas: lines, text and axes were drawn


def test_read_curves_from_metrics_jsonl(tmp_path):
    curves = plot.read_curves(fake_run(tmp_path / "a", n=5))
    assert curves["step"] == [50, 100, 150, 200, 250]
    assert curves["lr"][-1] == 0.004 and len(curves["loss"]) == len(curves["dev_score"]) == 5


def test_read_curves_falls_back_to_loss_tsv(tmp_path):
    (tmp_path / "loss.tsv").write_text(
        "epoch\tstep\tloss\tdev_score\tdev_accuracy\tlr\ttokens_per_s\n1\t10\t1.5\t0.6\t\t0.001\t900\n2\t20\t1.0\t0.7\t\t0.001\t950\n"
    )
    curves = plot.read_curves(tmp_path)
    assert curves["step"] == [10.0, 20.0] and curves["loss"] == [1.5, 1.0] and curves["lr"] == [0.001, 0.001]


def test_write_curves_draws_a_readable_png(tmp_path):
    run = fake_run(tmp_path / "run")
    out = plot.write_curves(run)
    assert out == run / "curves.png"
    assert_real_png(out)
    assert not list(run.glob(".*tmp*"))


def test_write_curves_without_matplotlib_is_a_one_line_note(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(plot, "matplotlib_available", lambda: False)
    assert plot.write_curves(fake_run(tmp_path / "run")) is None
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "matplotlib is not installed" in err
    assert not (tmp_path / "run" / "curves.png").exists()


def test_write_curves_before_any_evaluation_is_a_note_not_an_error(tmp_path, capsys):
    (tmp_path / "loss.tsv").write_text("epoch\tstep\tloss\tdev_score\tdev_accuracy\tlr\ttokens_per_s\n")
    assert plot.write_curves(tmp_path) is None
    assert "no evaluations logged yet" in capsys.readouterr().err and not (tmp_path / "curves.png").exists()


def test_plot_command_compares_runs(tmp_path):
    a, b = fake_run(tmp_path / "a"), fake_run(tmp_path / "b", n=20, lr_drop=5, seed=0.1)
    result = CliRunner().invoke(app, ["plot", str(a), str(b), "--output", str(tmp_path / "cmp.png"), "--name", "base", "--name", "lower lr"])
    assert result.exit_code == 0, result.output
    assert_real_png(tmp_path / "cmp.png")
    assert json.loads(result.stdout) == {"output": str(tmp_path / "cmp.png")}  # stdout: one JSON document


@pytest.mark.parametrize(
    "setup, args, message",
    [
        (lambda d: d.mkdir(), [], "no metrics.jsonl or loss.tsv"),
        (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')), [], "metrics.jsonl:2: not valid JSON"),
        (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text('{"step": 1, "loss": "x"}\n')), [], "loss is 'x', not a number"),
        (lambda d: fake_run(d), ["--name", "a", "--name", "b"], "--name: got 2 names for 1 runs"),
        (lambda d: fake_run(d), ["--output", "/nonexistent/dir/x.png"], "folder /nonexistent/dir does not exist"),
    ],
)
def test_plot_command_errors_are_one_line(tmp_path, setup, args, message):
    run = tmp_path / "run"
    setup(run)
    result = CliRunner().invoke(app, ["plot", str(run), "--output", str(tmp_path / "x.png"), *args])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output


def test_plot_needs_a_run():
    with pytest.raises(TaggerError, match="at least one run"):
        plot.plot_runs([], "x.png")


@pytest.mark.slow
def test_train_writes_curves_png(tmp_path):
    from tagger.config import load_config
    from tagger.training import train

    from tests.cli.conftest import REPO

    cfg = load_config(REPO / "configs" / "sample_pos.yaml", overrides=["training.max_steps=6", "training.eval_every=2"])
    train(cfg, tmp_path, progress=False)
    assert_real_png(tmp_path / "curves.png", min_bytes=10_000)
