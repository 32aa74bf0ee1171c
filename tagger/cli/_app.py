"""The typer app every command registers on (its own module, so commands need not import the package)."""
import typer

from ._util import OneLineErrors

app = typer.Typer(
    cls=OneLineErrors,  # usage errors as one line, exit 2 (not a six-line box)
    name="tagger",
    help="BiLSTM sequence labelling and text classification: train, evaluate, predict.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
