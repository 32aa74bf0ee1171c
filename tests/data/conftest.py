"""Helpers for the data tests (the corpora fixture is in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path


def write(path: Path, text: str | bytes) -> Path:
    """Write a fixture file (bytes as-is, text as UTF-8) and return its path."""
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path
