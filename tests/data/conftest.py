"""Fixtures for the data tests: where the real corpora are.

The real corpora are never copied into the repository.  They are found through the
environment variable ``TAGGER_CORPORA``, else at ``../shared/corpora`` beside the
checkout (CI clones ``main`` and puts ``shared`` next to it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def corpora_dir() -> Path:
    env = os.environ.get("TAGGER_CORPORA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared" / "corpora"
    return root.resolve()


@pytest.fixture(scope="session")
def corpora() -> Path:
    root = corpora_dir()
    assert (root / "README.md").is_file(), (
        f"real corpora not found at {root}; set TAGGER_CORPORA to the shared corpora folder"
    )
    return root


def write(path: Path, text: str | bytes) -> Path:
    """Write a fixture file (bytes as-is, text as UTF-8) and return its path."""
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path
