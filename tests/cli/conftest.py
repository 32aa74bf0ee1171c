from pathlib import Path

import pytest
from typer.testing import CliRunner

from tagger.cli import app

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "corpora"


@pytest.fixture
def cli():
    runner = CliRunner()

    def run(*args, ok=True):
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return run


def write_config(path: Path, **sections) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(sections), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained_pos(tmp_path_factory):
    """A small POS model trained once on the bundled sample through the CLI."""
    out = tmp_path_factory.mktemp("pos")
    result = CliRunner().invoke(
        app,
        ["train", str(REPO / "configs" / "sample_pos.yaml"), "--output", str(out), "--training.epochs", "6", "--no-progress"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def untrained_pos(tmp_path_factory):
    """A training output folder whose model-best/ is the bundled POS sample's model saved untrained (no training:
    for the fast tests of loading and input errors)."""
    from tagger.config import load_config
    from tagger.data.prepare import build_vocabularies, load_splits
    from tagger.io import save_model
    from tagger.models import Model, build_network

    cfg = load_config(REPO / "configs" / "sample_pos.yaml")
    words, labels = build_vocabularies(cfg, load_splits(cfg).train)
    model = Model(cfg, words, labels, build_network(cfg.model, len(words), len(labels), ops="cpu"))
    out = tmp_path_factory.mktemp("untrained")
    save_model(model, out / "model-best")  # laid out as a training output folder
    return out
