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
import signal
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def ctrl_c_as_in_a_terminal():
    """SIGINT handled as Python handles it in a terminal, for every test, even when the test
    run itself was started ignoring it (`pytest &` from a script): tagger leaves an
    ignored signal ignored, and the interrupt tests send real SIGINTs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def child_ctrl_c_default() -> None:
    """preexec_fn for a subprocess that the test interrupts with SIGINT: undo an inherited
    SIG_IGN, so the child's Python installs its own handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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
