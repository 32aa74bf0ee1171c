"""`tagger init-config`: a commented default config."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import app
from ._util import check_output_file, note, user_errors


@app.command("init-config")
def init_config(
    task: str = typer.Option("tag", help="tag | classify"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write here (default: stdout)"),
):
    """Print a commented default config for a tagging or classification experiment."""
    with user_errors():
        from tagger.config import default_config_text
        from tagger.errors import TaggerError
        from tagger.io import atomic_write_text
        from tagger.tasks import TASKS

        if task not in TASKS:
            raise TaggerError(f"--task {task!r}: choose {' or '.join(TASKS)}")
        text = default_config_text(task)
        if output is None:
            typer.echo(text, nl=False)
        else:
            check_output_file(output, "--output")
            atomic_write_text(output, text)
            note(f"wrote {output}")
