"""`tagger train CONFIG`: tagger.training.train with config overrides from the command line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from tagger.threads import threads_option

from ._app import app
from ._util import note, parse_overrides, user_errors


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    config: Path = typer.Argument(..., help="YAML experiment config (see `tagger init-config`)"),
    output: Path = typer.Option(Path("runs/model"), "--output", "-o", help="folder for model-best/, model-last/ and logs"),
    device: Optional[str] = typer.Option(None, help="cpu | cuda | auto (default: the config's `device`)"),
    corpora: Optional[Path] = typer.Option(None, help="root for ${corpora}/ paths (default: $TAGGER_CORPORA)"),
    progress: bool = typer.Option(True, help="show a progress bar"),
    threads: Optional[int] = typer.Option(None, "--threads", help="threads (default: every core this process may use)", callback=threads_option),
    resume: bool = typer.Option(False, "--resume", help="continue from OUTPUT/checkpoint/ (same config; training.epochs/max_steps may change)"),
):
    """Train a model. Extra options --SECTION.KEY VALUE override the config (e.g. --training.lr 0.01).

    Under `mpiexec -n N` or `srun -n N` the N ranks train one model data-parallel (each takes
    1/N of every batch); Ctrl-C or SIGTERM saves a checkpoint and prints the command that resumes."""
    with user_errors():
        from tagger.config import load_config
        from tagger.distributed import world
        from tagger.training import train as run_training

        cfg = load_config(config, parse_overrides(ctx.args), corpora_root=corpora)
        final = run_training(cfg, output, device=device or cfg.device, progress=progress, resume=resume)
        if world().is_root:  # rank 0 alone reports under MPI
            note(f"saved {output / 'model-best'} (best on dev) and {output / 'model-last'}")
            summary = {k: (v or {}).get("score") for k, v in final.items() if isinstance(v, dict)}
            typer.echo(json.dumps({"output": str(output), **{f"{k}_score": s for k, s in summary.items()}}))
