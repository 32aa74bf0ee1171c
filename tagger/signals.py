"""The stop signals (SIGINT, SIGTERM) handed to a handler for a while, then given back.

Both the CLI (Ctrl-C and SIGTERM raise, tagger.cli._util) and training (a signal is noted
and the run stops after the step, tagger.training.StopRequests) take them over this way.
A signal the process was started ignoring (a job started with `&` from a script ignores
SIGINT) stays ignored, as Python itself leaves it; off the main thread nothing changes
(Python allows handlers there only).
"""
from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def take_over(handler) -> dict:
    """Install `handler` for each stop signal that is not ignored; returns the handlers
    it replaced, for give_back."""
    previous = {}
    try:
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: the handlers stay as they were
        pass
    return previous


def give_back(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
