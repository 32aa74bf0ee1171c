import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tagger.cli import app

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "corpora"


def shared_corpora() -> Path:
    env = os.environ.get("TAGGER_CORPORA")
    return Path(env) if env else REPO.parent / "shared" / "corpora"


@pytest.fixture(scope="session")
def corpora_root():
    root = shared_corpora()
    assert root.is_dir(), f"real corpora not found at {root}; set TAGGER_CORPORA"
    return root


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
