"""Fixtures every test folder shares.

The real corpora are never copied into the repository. They are found through the
environment variable ``TAGGER_CORPORA``, else at ``../shared/corpora`` beside the checkout
(CI clones ``main`` and puts ``shared`` next to it).

Tiers: ``python -m pytest -q`` runs everything (CI); ``-m "not slow"`` is the everyday fast
tier. Tests marked ``slow`` compile PTX, run the CUDA simulator, read the real corpora at
length or train through the CLI.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def corpora_dir() -> Path:
    env = os.environ.get("TAGGER_CORPORA")
    root = Path(env) if env else REPO.parent / "shared" / "corpora"
    return root.resolve()


@pytest.fixture(scope="session")
def corpora() -> Path:
    root = corpora_dir()
    assert (root / "README.md").is_file(), (
        f"real corpora not found at {root}; set TAGGER_CORPORA to the shared corpora folder"
    )
    return root


@pytest.fixture(scope="session")
def corpora_root(corpora) -> Path:
    return corpora
