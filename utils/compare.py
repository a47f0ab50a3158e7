"""Several runs side by side: the last grid of each, their curves against epochs (so batch sizes line up) and a table
with FID, each run labelled by what it changed ("lr_g=0.001", "G=LeakyGenerator") or "common settings". A diverged
run is left off the scale, identical curves stay visible, and a file that cannot be read is one line naming it."""

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
from utils.files import CHECKPOINT, CONFIG, HISTORY, is_run_folder, list_frames, load_data, read_json
from utils.run import STEP_KEYS, read_run
from utils.visualize import in_notebook, read_grid

FIGURE_WIDTH = 9.0  # inches: about 900 px in a notebook
_LABELLED = [name for name in FIXED_FIELDS + TUNABLE_FIELDS if name not in HOW_FIELDS + ("epochs",)]
_LABELLED += ["recipe", "G", "D"]  # G, D: your own networks' class names
_COLOURS = [f"C{i}" for i in range(10)] + ["black", "#b8860b"]  # matplotlib's ten, then two unlike them


@dataclass
class _Run:
    dir: Path
    config: TrainConfig | None = None
    steps: list[dict] = field(default_factory=list)  # the history's, empty where it is unreadable
    epochs: list[dict] = field(default_factory=list)
    networks: dict[str, str] = field(default_factory=dict)  # {"G": "LeakyGenerator", "D": "built-in"}
    epoch: int = 0  # of the last sample grid, whose pixels (RGB) are `grid`
    grid: np.ndarray | None = None
    problems: list[str] = field(default_factory=list)  # a line for each file that could not be read


def list_runs(root: str | Path = "generated", image_size: int | None = None, last: int | None = None) -> list[Path]:
    """The run folders under `root` of `image_size` (or unreadable), least recently trained first, the `last` newest."""
    if last is not None and last < 1:
        raise UserError(f"last={last}: choose how many of the runs trained last to show (1 or more)")
    runs = [path for path in Path(root).iterdir() if is_run_folder(path)] if Path(root).is_dir() else []
    runs = sorted((run for run in runs if image_size is None or _image_size(run) in (image_size, None)),
                  key=lambda run: max([(run / name).stat().st_mtime for name in (CONFIG, HISTORY, CHECKPOINT)
                                       if (run / name).is_file()], default=0.0))
    return runs[-last:] if last else runs


def _image_size(run_dir: Path) -> int | None:
    try:
        return int(read_json(run_dir / CONFIG)["image_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_runs(run_dirs: list[str | Path]) -> list[_Run]:
    """Each run's settings, history, networks and last grid; a file that cannot be read is a line in its `problems`."""
    runs = [_Run(Path(run_dir)) for run_dir in run_dirs]
    for run in runs:
        run.epoch, path = (list_frames(run.dir) or [(0, None)])[-1]  # the last grid, if any
        try:
            run.grid = read_grid(path) if path else None
        except UserError as error:
            run.problems.append(f"{error}; it is not shown")
        try:
            run.config, history = read_run(run.dir)
        except UserError as error:
            run.problems.append(f"{error}; it is shown as unreadable")
            continue
        try:  # your own networks' class names, as the checkpoint records them (memory-mapped: only those are read)
            described = load_data(run.dir / CHECKPOINT, "checkpoint", UserError, "", mmap=True).get("networks", {})
        except (UserError, AttributeError):   # no checkpoint, or not a dict
            described = {}
        for short, role, builtin in (("G", "generator", "Generator"), ("D", "discriminator", "Discriminator")):
            name = str(described.get(role, builtin)).split(" ", 1)[0]  # "LeakyGenerator (N parameters, #hash)"
            run.networks[short] = "built-in" if name == builtin else name
        run.steps, run.epochs = history.get("steps", []), history.get("epochs", [])   # read_run checked their numbers
    return runs


def _labels(runs: list[_Run]) -> list[str]:
    """What each run changed: against the recipe's default where a run has it (notebook 03's main run before its
    tweaks), else against the value most runs share. What a run's own recipe sets is said by "recipe=..." alone."""
    rows = [run.config.to_dict() | run.networks if run.config else None for run in runs]
    recipes = {row["recipe"] for row in rows if row}
    default = TrainConfig(recipe="improved" if recipes == {"improved"} else "dcgan").to_dict()
    references = {}
    for name in _LABELLED:
        values = [row[name] for row in rows if row]
        if len(set(values)) > 1:  # the runs differ in it
            reference = default.get(name, "built-in")
            if reference not in values:  # the value more than half of the runs have, if any
                reference = next((value for value in set(values) if values.count(value) > len(values) / 2), None)
            references[name] = reference

    def label(row: dict) -> str:
        own_recipe = TrainConfig(recipe=row["recipe"]).to_dict()
        changed = [f"{name}={_cell(row[name])}" for name, reference in references.items()
                   if row[name] != reference and not (name in IMPROVED_RECIPE and row[name] == own_recipe[name])]
        return ", ".join(changed) or "common settings"
    return [label(row) if row else "settings unreadable" for row in rows]


def _cell(value) -> str:
    """A setting as a label writes it: 0.001, not 1e-03; a data folder or URL by its last part."""
    return f"{value:g}" if isinstance(value, float) else Path(str(value).rstrip("/\\")).name or str(value)


def _table(runs: list[_Run], fid: dict | None) -> str:
    """A Markdown table, a row per run (FID, epochs, label, last losses, what the diagnosis saw), and the folders."""
    given = {Path(run_dir): score for run_dir, score in (fid or {}).items()}
    lines = ["| # | FID | epochs | what differs | D / G loss | D(x) / D(G(z)) | seen |", "|---" * 7 + "|"]
    for number, (run, label) in enumerate(zip(runs, _labels(runs)), 1):
        score = given.get(run.dir, next((e["fid"] for e in reversed(run.epochs) if e.get("fid") is not None), None))
        target = run.config.epochs if run.config else len(run.epochs)
        done = "unreadable" if run.problems and not run.epochs else \
            str(len(run.epochs)) + (f" of {target}" if target != len(run.epochs) else "")
        last = run.steps[-1] if run.steps else None
        seen = run.epochs[-1].get("diagnosis", {}) if run.epochs else {}
        cells = [str(number), "-" if score is None else f"{score:.1f}", done, label,
                 f"{last['loss_d']:.2f} / {last['loss_g']:.2f}" if last else "-",
                 f"{last['d_real']:.2f} / {last['d_fake']:.2f}" if last else "-",
                 ", ".join(f"{problem} from {since(run.epochs, problem)}" for problem in seen) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    folders = [f"{number}. `{run.dir}`" + (" (unreadable: see above)" if run.problems else "")
               for number, run in enumerate(runs, 1)]
    return "\n".join(lines) + "\n\nRun folders:\n\n" + "\n".join(folders)


def _plot(runs: list[_Run]) -> Figure:
    """The last grid of each run under its number and label, in the colour of its curves below them."""
    curves = [{"x": epoch_positions(run.steps), **{key: [s[key] for s in run.steps] for key in STEP_KEYS[2:]}}
              for run in runs]
    twins = [[other for other, curve in enumerate(curves) if curve == curves[number]] for number in range(len(runs))]
    columns = len(runs) if len(runs) <= 6 else math.ceil(len(runs) / 2)
    rows = math.ceil(len(runs) / columns)
    tile = min(2.2, (FIGURE_WIDTH - 0.3) / columns)  # inches per grid; its 8 pt title wraps at 14.5 characters an inch
    titles = []
    for number, (label, group, run) in enumerate(zip(_labels(runs), twins, runs)):
        same = ", ".join(str(i + 1) for i in group if i != number)
        title = f"{number + 1}: {label}" + (f" (same curves as {same})" if same else "")
        shown = f"epoch {run.epoch}" if run.grid is not None else "grid unreadable" if run.epoch else "no grid yet"
        titles.append(textwrap.fill(title, max(12, int(tile * 14.5))) + "\n" + shown)
    aspect = max([run.grid.shape[0] / run.grid.shape[1] for run in runs if run.grid is not None] or [1.0])
    grids_height = rows * (tile * aspect + 0.17 * max(title.count("\n") + 1 for title in titles) + 0.1)
    fig = Figure(figsize=(FIGURE_WIDTH, grids_height + 2.9), layout="constrained")
    fig.get_layout_engine().set(h_pad=0.1, w_pad=0.08)  # room at the edges, so that no title touches them
    top, bottom = fig.subfigures(2, 1, height_ratios=[grids_height, 2.9])
    axes = top.subplots(rows, columns, squeeze=False).ravel()
    for number, (ax, run, title) in enumerate(zip(axes, runs, titles)):
        if run.grid is not None:
            ax.imshow(run.grid)
        ax.set_title(title, fontsize=8, color=_COLOURS[number])
        ax.set_axis_off()
    for ax in axes[len(runs):]:
        ax.set_visible(False)
    _draw_curves(bottom.subplots(1, 3), curves, twins)
    return fig


def _draw_curves(panels, curves: list[dict], twins: list[list[int]]) -> None:
    """D's and G's loss and D's verdicts, a colour per run; identical curves get hollow markers of their own, in turn
    along the line, so that the one drawn last hides none; a diverged run is left off a loss panel's scale."""
    for number, curve in enumerate(curves):
        x, group = curve["x"], twins[number]
        style = dict(color=_COLOURS[number], linewidth=1)
        if len(group) > 1:
            place, every = group.index(number), max(1, len(x) // (10 * len(group)))  # about ten markers each
            style |= dict(marker="osD^vP"[place % 6], markersize=5 + 2 * place, fillstyle="none")
            if len(group) <= len(x):  # the twins' markers in turn along the line
                style["markevery"] = slice(place * every, None, len(group) * every)
        elif len(x) < 20:  # dots, so that a run of a single point shows
            style |= dict(marker="o", markersize=3)
        for ax, key in zip(panels, ("loss_d", "loss_g", "d_real")):
            ax.plot(x, curve[key], **style)
        panels[2].plot(x, curve["d_fake"], **style | dict(linestyle="--", linewidth=0.8))
    for ax, key, title in zip(panels, ("loss_d", "loss_g", "d_real"),
                              ("D loss", "G loss", "D(x) solid, D(G(z)) dashed")):  # verdicts, in [0, 1], never go off
        # off the scale: a 95th percentile over 5x (+1) the runs' median one (G loss 2,000 beside 1-5; not 8 beside 2)
        highs = {i: float(np.percentile(curve[key], 95)) for i, curve in enumerate(curves) if curve[key]}
        reference = sorted(highs.values())[(len(highs) - 1) // 2] if len(highs) > 1 else math.inf
        outliers = [i for i, high in highs.items() if high > 5 * reference + 1]
        if outliers:
            kept = [value for i, curve in enumerate(curves) if i not in outliers for value in curve[key]]
            pad = 0.05 * (max(kept) - min(kept) or 1.0)
            ax.set_ylim(min(kept) - pad, max(kept) + pad)
            numbers = ", ".join(str(i + 1) for i in outliers)
            title += f"\n({'runs' if len(outliers) > 1 else 'run'} {numbers} off the scale)"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
    panels[2].set_ylim(0, 1)
    panels[2].axhline(0.5, color="gray", linestyle=":", linewidth=1)


def epoch_positions(steps: list[dict]) -> list[float]:
    """Each logged step's position in epochs (2.5: half way through epoch 3), whatever the batch size."""
    ends = {record["epoch"]: record["step"] for record in steps}  # each epoch's last logged step
    positions = []
    for record in steps:
        start = ends.get(record["epoch"] - 1, 0)
        positions.append(record["epoch"] - 1 + (record["step"] - start) / max(ends[record["epoch"]] - start, 1))
    return positions


def compare_runs(run_dirs: list[str | Path] | None = None, fid: dict | None = None, *, root: str | Path = "generated",
                 image_size: int | None = None, last: int | None = None) -> Figure:
    """Show the table and figure of `run_dirs`, else of `list_runs(root, image_size, last)`, the last 12 drawn (print
    the table outside a notebook); returns the figure. `fid` ({run_dir: score}) overrides the histories' FID."""
    if isinstance(run_dirs, (str, Path)):   # one folder, not a list of its letters
        run_dirs = [run_dirs]
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
    runs = read_runs(run_dirs[-12:])  # more and the grids are too small to see
    fig, table = _plot(runs), _table(runs, fid)
    print("".join(f"{problem}\n" for run in runs for problem in run.problems), end="")
    if in_notebook():
        from IPython.display import Markdown, display

        display(Markdown(table))
        display(fig)
    else:
        print(table)
    return fig
