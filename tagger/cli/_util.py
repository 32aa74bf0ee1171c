"""Shared CLI pieces: one-line errors, dotted overrides, loading configs and models."""
from __future__ import annotations

import contextlib
import sys

import typer

from tagger.errors import TaggerError


@contextlib.contextmanager
def user_errors():
    """Print a TaggerError as `error: ...` and exit 1, with no traceback."""
    try:
        yield
    except TaggerError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130)


def parse_overrides(args: list[str]) -> list[str]:
    """`--training.lr 0.01` / `--training.lr=0.01` -> ['training.lr=0.01'] (spaCy style)."""
    out = []
    k = 0
    while k < len(args):
        arg = args[k]
        if not arg.startswith("--") or "." not in arg.split("=")[0]:
            raise TaggerError(f"unexpected argument {arg!r}; config overrides look like --training.lr 0.01")
        if "=" in arg:
            out.append(arg[2:])
            k += 1
        else:
            if k + 1 >= len(args):
                raise TaggerError(f"override {arg} has no value; e.g. {arg} 0.01")
            out.append(f"{arg[2:]}={args[k + 1]}")
            k += 2
    return out


def load(path: str, device: str = "cpu"):
    from tagger.io import load_model

    return load_model(path, device=device)


def note(message: str):
    print(message, file=sys.stderr)
