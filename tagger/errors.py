"""User-facing errors.

A :class:`TaggerError` is an error the *user* can fix (a bad config key, a malformed
corpus line, a file in the wrong encoding).  Its ``str()`` is one line that names the
place (file, line, config key) and says how to fix it; the CLI prints it and exits 1
without a traceback.  Programming errors stay ordinary exceptions.
"""

from __future__ import annotations

import os


class TaggerError(Exception):
    """An error caused by user input; ``str(err)`` is a single line."""

    def __init__(self, message: str):
        # Collapse any newline so the message stays one line whatever the caller passed.
        super().__init__(" ".join(str(message).split("\n")))


class ConfigError(TaggerError):
    """A config file or override is invalid."""


class DataError(TaggerError):
    """A corpus, vocabulary or vectors file is missing, empty or malformed."""


def where(path: str | os.PathLike, line: int | None = None) -> str:
    """Format ``FILE`` or ``FILE:LINE`` for messages."""
    return f"{os.fspath(path)}:{line}" if line is not None else os.fspath(path)
