"""Several runs side by side: the last grid of each, their curves on shared axes, and a table with FID.

    >>> compare_runs(image_size=64, last=6)      # notebook 03: the 6 runs of 64x64 faces trained last
    >>> compare_runs([dcgan.run_dir, improved.run_dir], fid={dcgan.run_dir: 172.4, improved.run_dir: 30.3})

Each run has a number, a colour and a label of what it changed ("lr_g=0.001", "G=LeakyGenerator",
"recipe=improved") or "common settings". Curves are drawn against epochs, so batch sizes line up; a diverged run is
left off the scale, saying so; identical curves stay visible; a file that cannot be read is one line naming it.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from utils.config import FIXED_FIELDS, HOW_FIELDS, IMPROVED_RECIPE, TUNABLE_FIELDS, TrainConfig
from utils.diagnose import since
from utils.errors import UserError
from utils.files import is_run_folder, load_data, read_json
from utils.run import CHECKPOINT, CONFIG, HISTORY, list_frames, read_run
from utils.visualize import in_notebook, read_grid

MAX_RUNS = 12  # the last 12 are drawn: more and the grids are too small to see
FIGURE_WIDTH = 9.0  # inches: about 900 px in a notebook
_STEP_KEYS = ("epoch", "step", "loss_d", "loss_g", "d_real", "d_fake")
_BUILT_IN = {"G": ("generator", "Generator"), "D": ("discriminator", "Discriminator")}
_LABELLED = [name for name in FIXED_FIELDS + TUNABLE_FIELDS if name not in HOW_FIELDS + ("epochs",)] + ["recipe"]
_COLOURS = [f"C{i}" for i in range(10)] + ["black", "#b8860b"]  # matplotlib's ten, then two unlike them
_TWIN_MARKERS = "osD^vP"


@dataclass
class _Run:
    dir: Path
    config: TrainConfig | None = None
    history: dict = field(default_factory=dict)
    networks: dict[str, str] = field(default_factory=dict)  # {"G": "LeakyGenerator"} for networks not built in
    epoch: int = 0  # of the last sample grid, whose pixels (RGB) are `grid`
    grid: np.ndarray | None = None
    problems: list[str] = field(default_factory=list)  # a line for each file that could not be read

    @property
    def steps(self) -> list[dict]:
        return self.history.get("steps", [])


def list_runs(root: str | Path = "generated", image_size: int | None = None, last: int | None = None) -> list[Path]:
    """The run folders under `root`, least recently trained first: of `image_size` (and those whose size cannot be
    read, for compare to say so), the `last` trained last."""
    if last is not None and last < 1:
        raise UserError(f"last={last}: choose how many of the runs trained last to show (1 or more)")
    runs = [path for path in Path(root).iterdir() if is_run_folder(path)] if Path(root).is_dir() else []
    if image_size is not None:
        runs = [run for run in runs if _image_size(run) in (image_size, None)]
    runs = sorted(runs, key=_trained_at)
    return runs[-last:] if last else runs


def _trained_at(run_dir: Path) -> float:
    files = [run_dir / name for name in (CONFIG, HISTORY, CHECKPOINT) if (run_dir / name).is_file()]
    return max((path.stat().st_mtime for path in files), default=0.0)


def _image_size(run_dir: Path) -> int | None:
    try:
        return int(read_json(run_dir / CONFIG)["image_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_runs(run_dirs: list[str | Path]) -> list[_Run]:
    """Each run's settings, history, own networks and last grid; a file that cannot be read is a line in its
    `problems`. A damaged config.json or history.json is taken from the checkpoint, as training does."""
    runs = [_Run(Path(run_dir)) for run_dir in run_dirs]
    for run in runs:
        frames = list_frames(run.dir)
        if frames:
            run.epoch, path = frames[-1]
            try:
                run.grid = read_grid(path)
            except UserError as error:
                run.problems.append(f"{error}; it is not shown")
        try:
            run.config, history = read_run(run.dir)
        except UserError as error:
            run.problems.append(f"{error}; it is shown as unreadable")
            continue
        problem = _history_problem(history)
        if problem:
            run.problems.append(f"{run.dir / HISTORY} is unreadable ({problem}): its curves are not shown")
        else:
            run.history = history
        run.networks = _own_networks(run.dir)
    return runs


def _history_problem(history: dict) -> str:
    """What a hand edit broke in a history: the curves need a number in each step's fields, the table in each FID."""
    for number, record in enumerate(history.get("steps", []), 1):
        if not all(isinstance(record.get(key), (int, float)) for key in _STEP_KEYS):
            return f"step record {number} lacks a number for one of {', '.join(_STEP_KEYS)}"
    if not all(isinstance(record.get("fid") or 0, (int, float)) for record in history.get("epochs", [])):
        return "an epoch's 'fid' is not a number"
    return ""


def _own_networks(run_dir: Path) -> dict[str, str]:
    """{"G": class name} for each network that is not the built-in one, as the checkpoint records it (memory-mapped
    and weights only: just that entry is read). Without a readable checkpoint they count as built in."""
    try:
        state = load_data(run_dir / CHECKPOINT, "checkpoint", UserError, "", mmap=True)
    except UserError:
        return {}
    described = state.get("networks", {}) if isinstance(state, dict) else {}
    names = {short: str(described.get(role, builtin)).split(" ", 1)[0] for short, (role, builtin) in _BUILT_IN.items()}
    return {short: name for short, name in names.items() if name != _BUILT_IN[short][1]}


def _labels(runs: list[_Run]) -> list[str]:
    """A value is changed against the recipe's default where a run has it (notebook 03's main run before its tweaks),
    else against the value most runs share. What a run's own recipe sets is said by "recipe=..." alone."""
    recipes = [run.config.recipe for run in runs if run.config]
    base = TrainConfig(recipe="dcgan" if "dcgan" in recipes else _most_shared(recipes) or "dcgan")
    columns = {name: [_cell(getattr(run.config, name)) if run.config else None for run in runs] for name in _LABELLED}
    columns |= {short: [run.networks.get(short, "built-in") for run in runs] for short in _BUILT_IN}
    references = {}
    for name, values in columns.items():
        if len(set(values) - {None}) > 1:  # the runs differ in it (None: settings unreadable)
            default = "built-in" if name in _BUILT_IN else _cell(getattr(base, name))
            references[name] = (values, default if default in values else _most_shared(values))
    labels = []
    for i, run in enumerate(runs):
        if run.config is None:
            labels.append("settings unreadable")
            continue
        own_recipe = TrainConfig(recipe=run.config.recipe)
        changed = [f"{name}={values[i]}" for name, (values, reference) in references.items()
                   if values[i] != reference and not (name in IMPROVED_RECIPE and run.config.recipe != base.recipe
                                                      and values[i] == _cell(getattr(own_recipe, name)))]
        labels.append(", ".join(changed) or "common settings")
    return labels


def _most_shared(values: list) -> str | None:
    """The value more than half of `values` have, if any."""
    return next((value for value in set(values) if values.count(value) > len(values) / 2), None)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and ("/" in value or "\\" in value):  # a data folder or URL: its last part
        return Path(value.rstrip("/\\")).name or value
    return str(value)


def comparison_table(run_dirs: list[str | Path], fid: dict | None = None) -> str:
    """A Markdown table: a row per run (FID, epochs, what it changed, the last losses and D's verdicts, what the
    diagnosis saw in the last epoch), then the run folders."""
    return _table(read_runs(run_dirs), fid)


def _table(runs: list[_Run], fid: dict | None) -> str:
    given = {Path(run_dir): score for run_dir, score in (fid or {}).items()}
    lines = ["| # | FID | epochs | what differs | D / G loss | D(x) / D(G(z)) | seen |", "|---" * 7 + "|"]
    for number, (run, label) in enumerate(zip(runs, _labels(runs)), 1):
        epochs = run.history.get("epochs", [])
        scored = [epoch["fid"] for epoch in epochs if epoch.get("fid") is not None]
        score = given.get(run.dir, scored[-1] if scored else None)
        target = run.config.epochs if run.config else len(epochs)
        done = "unreadable" if run.problems and not run.history else \
            str(len(epochs)) + (f" of {target}" if target != len(epochs) else "")
        seen = epochs[-1].get("diagnosis", {}) if epochs else {}
        cells = [str(number), "-" if score is None else f"{score:.1f}", done, label,
                 _pair(run, "loss_d", "loss_g"), _pair(run, "d_real", "d_fake"),
                 ", ".join(f"{problem} from {since(epochs, problem)}" for problem in seen) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    folders = [f"{number}. `{run.dir}`" + (" (unreadable: see above)" if run.problems else "")
               for number, run in enumerate(runs, 1)]
    return "\n".join(lines) + "\n\nRun folders:\n\n" + "\n".join(folders)


def _pair(run: _Run, first: str, second: str) -> str:
    """The last logged values of two curves, "0.69 / 2.10"."""
    return f"{run.steps[-1][first]:.2f} / {run.steps[-1][second]:.2f}" if run.steps else "-"


def _plot(runs: list[_Run]) -> Figure:
    """The last grid of each run under its number and label, in the colour of its curves below: D's and G's loss and
    D's verdicts against epochs."""
    curves = [{"x": epoch_positions(run.history), **{key: [s[key] for s in run.steps] for key in _STEP_KEYS[2:]}}
              for run in runs]
    twins = [[other for other, curve in enumerate(curves) if curve == curves[number]] for number in range(len(runs))]
    columns = len(runs) if len(runs) <= 6 else math.ceil(len(runs) / 2)
    rows = math.ceil(len(runs) / columns)
    tile = min(2.2, (FIGURE_WIDTH - 0.3) / columns)  # inches per grid; its 8 pt title wraps at 14.5 characters an inch
    titles = []
    for number, (label, group, run) in enumerate(zip(_labels(runs), twins, runs)):
        same = ", ".join(str(i + 1) for i in group if i != number)
        title = f"{number + 1}: {label}" + (f" (same curves as {same})" if same else "")
        titles.append(textwrap.fill(title, max(12, int(tile * 14.5))) + (f"\nepoch {run.epoch}" if run.epoch else ""))
    aspect = max([run.grid.shape[0] / run.grid.shape[1] for run in runs if run.grid is not None] or [1.0])
    grids_height = rows * (tile * aspect + 0.17 * max(title.count("\n") + 1 for title in titles) + 0.1)
    fig = Figure(figsize=(FIGURE_WIDTH, grids_height + 2.9), layout="constrained")
    fig.get_layout_engine().set(h_pad=0.1, w_pad=0.08)  # room at the edges, so that no title touches them
    top, bottom = fig.subfigures(2, 1, height_ratios=[grids_height, 2.9])
    axes = top.subplots(rows, columns, squeeze=False).ravel()
    for number, (ax, run, title) in enumerate(zip(axes, runs, titles)):
        if run.grid is not None:
            ax.imshow(run.grid)
        else:
            ax.text(0.5, 0.5, "unreadable" if run.problems else "no grid yet", ha="center", va="center", fontsize=8,
                    color="gray", transform=ax.transAxes)
        ax.set_title(title, fontsize=8, color=_COLOURS[number])
        ax.set_axis_off()
    for ax in axes[len(runs):]:
        ax.set_visible(False)
    _draw_curves(bottom.subplots(1, 3), curves, twins)
    return fig


def _draw_curves(panels, curves: list[dict], twins: list[list[int]]) -> None:
    """One colour per run. Runs with identical curves each get hollow markers of their own shape and size, on the
    line's points in turn, so that the one drawn last does not hide the others. A run far above the others (a
    diverged one) is left off a loss panel's scale, its title saying which."""
    for number, curve in enumerate(curves):
        x, group = curve["x"], twins[number]
        style = dict(color=_COLOURS[number], linewidth=1)
        if len(group) > 1:
            place, every = group.index(number), max(1, len(x) // (10 * len(group)))  # about ten markers each
            style |= dict(marker=_TWIN_MARKERS[place % len(_TWIN_MARKERS)], markersize=5 + 2 * place, fillstyle="none")
            if len(group) <= len(x):  # the twins' markers in turn along the line
                style["markevery"] = slice(place * every, None, len(group) * every)
        elif len(x) < 20:  # dots, so that a run of a single point shows
            style |= dict(marker="o", markersize=3)
        for ax, key in zip(panels, ("loss_d", "loss_g", "d_real")):
            ax.plot(x, curve[key], **style)
        panels[2].plot(x, curve["d_fake"], **style | dict(linestyle="--", linewidth=0.8))
    for ax, key, title in ((panels[0], "loss_d", "D loss"), (panels[1], "loss_g", "G loss")):
        outliers = _outliers([curve[key] for curve in curves])
        if outliers:
            kept = [value for i, curve in enumerate(curves) if i not in outliers for value in curve[key]]
            pad = 0.05 * (max(kept) - min(kept) or 1.0)
            ax.set_ylim(min(kept) - pad, max(kept) + pad)
            numbers = ", ".join(str(i + 1) for i in outliers)
            title += f"\n({'runs' if len(outliers) > 1 else 'run'} {numbers} off the scale)"
        ax.set_title(title, fontsize=9)
    panels[2].set_title("D(x) solid, D(G(z)) dashed", fontsize=9)
    panels[2].set_ylim(0, 1)
    panels[2].axhline(0.5, color="gray", linestyle=":", linewidth=1)
    for ax in panels:
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5))


def _outliers(series: list[list[float]]) -> list[int]:
    """The runs far above the others: a 95th percentile over 5 times (plus 1) the lower median of all runs' 95th
    percentiles. G loss 2,000 beside runs at 1-5 is; a run at 8 beside runs at 2 is not."""
    highs = {i: float(np.percentile(values, 95)) for i, values in enumerate(series) if values}
    reference = sorted(highs.values())[(len(highs) - 1) // 2] if len(highs) > 1 else math.inf
    return [i for i, high in highs.items() if high > 5 * reference + 1]


def epoch_positions(history: dict) -> list[float]:
    """Each logged step's position in epochs (2.5: half way through epoch 3), whatever the batch size."""
    steps = history.get("steps", [])
    ends = {record["epoch"]: record["step"] for record in steps}  # each epoch's last logged step
    positions = []
    for record in steps:
        start = ends.get(record["epoch"] - 1, 0)
        positions.append(record["epoch"] - 1 + (record["step"] - start) / max(ends[record["epoch"]] - start, 1))
    return positions


def compare_runs(run_dirs: list[str | Path] | None = None, fid: dict | None = None, *, root: str | Path = "generated",
                 image_size: int | None = None, last: int | None = None) -> Figure:
    """Show the table and the figure of the runs in a notebook (print the table elsewhere); return the figure. The
    runs are `run_dirs` in that order, else the `last` trained under `root` of `image_size` (see `list_runs`); the
    last 12 are drawn. `fid` ({run_dir: score}) overrides the FID a history holds."""
    given = run_dirs is not None
    run_dirs = [Path(run_dir) for run_dir in run_dirs] if given else list_runs(root, image_size, last)
    refused = [f"{path} is not a run folder (no {CONFIG} or {CHECKPOINT})" if path.exists() else
               f"{path} does not exist" for path in run_dirs if not is_run_folder(path)]
    if refused:
        raise UserError("compare_runs: " + "; ".join(refused) + ". Pass run folders as train() returns them "
                        "(result.run_dir), or leave the list out to compare the runs under generated/")
    if not run_dirs:
        where = "among the folders given" if given else f"under {root}/" + (
            f" of {image_size}x{image_size} faces" if image_size else "")
        raise UserError(f"compare_runs: no runs {where}: train one first (notebook 03), or pass the run folders")
    runs = read_runs(run_dirs[-MAX_RUNS:])
    fig, table = _plot(runs), _table(runs, fid)
    for problem in (problem for run in runs for problem in run.problems):
        print(problem)
    if in_notebook():
        from IPython.display import Markdown, display

        display(Markdown(table))
        display(fig)
    else:
        print(table)
    return fig
