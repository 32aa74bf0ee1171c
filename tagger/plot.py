"""Training curves: loss, dev score and learning rate against steps, as a PNG.

    curves = read_curves("runs/quickstart")        # from metrics.jsonl, else loss.tsv
    plot_runs(["runs/a", "runs/b"], "cmp.png")     # one line per run in each panel
    write_curves("runs/quickstart")                # runs/quickstart/curves.png, if matplotlib is there

Each run folder is what ``tagger train`` writes: ``metrics.jsonl`` (one JSON object per
evaluation, with ``step``, ``loss``, ``dev_score`` and ``lr``) and ``loss.tsv`` (the same
columns, tab-separated, with a header).  The loss is the mean training loss since the
previous evaluation, so each point stands for the stretch of steps before it.

matplotlib is optional (``pip install tagger[plot]``): it is imported only inside the
drawing functions, with the Agg backend's canvas (no display, no pyplot global state).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tagger.errors import TaggerError

CURVES = ("loss", "dev_score", "lr")
TITLES = {"loss": "training loss", "dev_score": "dev score", "lr": "learning rate"}
FILENAME = "curves.png"


def matplotlib_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _number(value, where: str, key: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TaggerError(f"{where}: {key} is {value!r}, not a number") from None


def _from_jsonl(path: Path) -> list[dict]:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            raise TaggerError(f"{path}:{lineno}: not valid JSON; is the file cut off?") from None
    return rows


def _from_tsv(path: Path) -> list[dict]:
    lines = [l for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
    if not lines:
        return []
    header = lines[0].split("\t")
    if "step" not in header:
        raise TaggerError(f"{path}:1: expected a header with a 'step' column, found {lines[0][:60]!r}")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


def read_curves(run_dir: str | os.PathLike) -> dict[str, list]:
    """``{"step": [...], "loss": [...], "dev_score": [...], "lr": [...]}`` of one run
    (None where a value is missing); TaggerError if the folder has no training log."""
    run_dir = Path(run_dir)
    jsonl, tsv = run_dir / "metrics.jsonl", run_dir / "loss.tsv"
    if jsonl.is_file() and jsonl.stat().st_size > 0:
        source, rows = jsonl, _from_jsonl(jsonl)
    elif tsv.is_file():
        source, rows = tsv, _from_tsv(tsv)
    else:
        raise TaggerError(f"{run_dir}: no metrics.jsonl or loss.tsv; give the folder that tagger train wrote (--output)")
    if not rows:
        raise TaggerError(f"{source}: no evaluations logged yet; train for at least one evaluation")
    curves: dict[str, list] = {"step": []} | {key: [] for key in CURVES}
    for k, row in enumerate(rows, 1):
        where = f"{source}: record {k}"
        step = _number(row.get("step"), where, "step")
        if step is None:
            raise TaggerError(f"{where}: no step")
        curves["step"].append(step)
        for key in CURVES:
            curves[key].append(_number(row.get(key), where, key))
    return curves


def plot_runs(run_dirs, output: str | os.PathLike, names: list[str] | None = None) -> Path:
    """Draw every run's curves into one PNG (three panels, one line per run); return its path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise TaggerError("plot: give at least one run folder")
    names = names or _short_names(run_dirs)
    runs = [(name, read_curves(r)) for name, r in zip(names, run_dirs)]
    fig = Figure(figsize=(7.5, 8.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(CURVES), 1, sharex=True)
    for ax, key in zip(axes, CURVES):
        for name, curves in runs:
            points = [(s, v) for s, v in zip(curves["step"], curves[key]) if v is not None]
            if points:
                style = "steps-post" if key == "lr" else "default"  # the lr changes at an evaluation, then holds
                ax.plot(*zip(*points), marker="o", markersize=3, label=name, drawstyle=style)
        ax.set_title(TITLES[key], loc="left", fontsize=10)
        ax.grid(True, alpha=0.3)
    if all(v is None or v > 0 for _, c in runs for v in c["loss"]):
        axes[0].set_yscale("log")  # the loss falls over orders of magnitude early on
    axes[-1].set_xlabel("step (updates)")
    axes[0].legend(fontsize=8, loc="upper right")
    return _save(fig, Path(output))


def _short_names(run_dirs: list[Path]) -> list[str]:
    """The folder names, or the whole paths where two runs share a folder name."""
    names = [r.name or str(r) for r in run_dirs]
    return names if len(set(names)) == len(names) else [str(r) for r in run_dirs]


def _save(fig, output: Path) -> Path:
    if output.is_dir():
        output = output / FILENAME
    if not output.parent.is_dir():
        raise TaggerError(f"--output {output}: folder {output.parent} does not exist")
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, output)  # a reader never sees half a PNG
    finally:
        tmp.unlink(missing_ok=True)
    return output


def write_curves(run_dir: str | os.PathLike) -> Path | None:
    """``run_dir/curves.png`` when matplotlib is installed and an evaluation was logged;
    else a one-line note and None (the plot never fails a training run)."""
    if not matplotlib_available():
        print("note: curves.png not drawn (matplotlib is not installed: pip install 'tagger[plot]')", file=sys.stderr)
        return None
    try:
        return plot_runs([run_dir], Path(run_dir) / FILENAME)
    except TaggerError as err:  # e.g. stopped before the first evaluation
        print(f"note: curves.png not drawn ({err})", file=sys.stderr)
        return None
