"""Shared CLI pieces: one-line errors, interrupts, option checks, dotted overrides, loading.

Every command body runs inside ``with user_errors():``, which turns

* a TaggerError into ``error: MESSAGE`` and exit 1;
* an OSError (disk full, permission denied, a file where a folder should be) into
  ``error: FILE: what to do`` and exit 1;
* Ctrl-C into ``interrupted`` and exit 130, SIGTERM into ``terminated`` and exit 143 - also
  when the interrupt surfaced as some other exception (Numba, interrupted while compiling,
  raises a KeyError);

and the app's group class (:class:`OneLineErrors`) prints click's usage errors (a
non-integer ``--batch-size``, a missing argument) as one ``error:`` line, exit 2.
"""
from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path

import typer
from typer.core import TyperGroup

try:  # typer >= 0.2x vendors click as typer._click; older typer raises click's own classes
    from typer._click import exceptions as cx
except ImportError:  # pragma: no cover
    from click import exceptions as cx

from tagger.errors import TaggerError
from tagger.signals import give_back, take_over


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so the same handlers save what they can."""


EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143
_signalled: list[int] = []


def _on_signal(signum, frame):
    _signalled.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def _signal_handlers():
    """Ctrl-C and SIGTERM raise (and are remembered) while the block runs; restored after."""
    previous = take_over(_on_signal)
    _signalled.clear()
    try:
        yield
    finally:
        give_back(previous)


_reported: list[int] = []  # exit codes whose one line has been printed


def _stop(code: int, message: str):
    typer.echo(message, err=True)
    _reported.append(code)
    raise typer.Exit(code)


@contextlib.contextmanager
def user_errors():
    """Print a user's error as one `error: ...` line and exit non-zero, never a traceback."""
    from tagger.fsutil import describe_os_error

    with _signal_handlers():
        try:
            yield
        except (typer.Exit, cx.ClickException):
            raise
        except Terminated:
            _stop(EXIT_TERMINATED, "terminated")
        except KeyboardInterrupt:
            _stop(EXIT_INTERRUPTED, "interrupted")
        except TaggerError as err:
            _stop(1, f"error: {err}")
        except OSError as err:
            if _signalled:
                _stop(_interrupt_code(), "interrupted")
            _stop(1, f"error: {describe_os_error(err)}")
        except Exception:
            if _signalled:  # the interrupt arrived inside a library that re-raised it as something else
                _stop(_interrupt_code(), "interrupted")
            raise


def _interrupt_code() -> int:
    return EXIT_TERMINATED if signal.SIGTERM in _signalled else EXIT_INTERRUPTED


class OneLineErrors(TyperGroup):
    """The app's group: usage errors as one line, Ctrl-C outside a command as exit 130.

    ``typer.Typer(cls=OneLineErrors, ...)``.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        _reported.clear()
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except cx.NoArgsIsHelpError as err:
            typer.echo(err.ctx.get_help())
            sys.exit(0)
        except cx.UsageError as err:
            cmd = err.ctx.command_path if err.ctx is not None else "tagger"
            typer.echo(f"error: {err.format_message()} (see `{cmd} --help`)", err=True)
            sys.exit(err.exit_code)
        except cx.ClickException as err:
            typer.echo(f"error: {err.format_message()}", err=True)
            sys.exit(err.exit_code)
        except typer.Abort:
            typer.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        if rv == EXIT_INTERRUPTED and not _reported:  # Ctrl-C while typer parsed: it exits 130 silently
            typer.echo("interrupted", err=True)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


# ----------------------------------------------------------------------------- option checks
def positive_int(value):
    """typer callback: an option that counts something must be at least 1."""
    if value is not None and value < 1:
        raise typer.BadParameter(f"must be at least 1, got {value}")
    return value


def text_encoding(value):
    """typer callback: a codec that turns bytes into text (not rot13, base64, ...)."""
    from tagger.data.readers import check_encoding
    from tagger.errors import DataError

    try:
        return check_encoding(value, "--encoding")
    except DataError as err:
        raise typer.BadParameter(str(err)) from None


def check_output_dir(path, option: str = "--output") -> Path:
    from tagger.fsutil import check_output_dir as check

    return check(path, option)


def check_output_file(path, option: str = "--output") -> Path:
    from tagger.fsutil import check_output_file as check

    return check(path, option)


# ----------------------------------------------------------------------------- overrides, loading
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
