"""The typer app every command registers on (its own module, so commands need not import the package)."""
import typer

app = typer.Typer(
    name="tagger",
    help="BiLSTM sequence labelling and text classification: train, evaluate, predict.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
