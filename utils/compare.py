"""Several runs side by side: the last grid of each, their curves on shared axes, FID, and what differs.

    >>> from utils.compare import compare_runs, list_runs
    >>> compare_runs(image_size=64, last=6)                  # notebook 03: the 6 runs of 64x64 faces trained last
    >>> compare_runs(match="*lr_g*")                         # the runs whose folder name matches a pattern
    >>> compare_runs([dcgan.run_dir, improved.run_dir], fid={dcgan.run_dir: 172.4, improved.run_dir: 30.3})

Re-running a notebook with one value changed trains a sibling run (utils/run.py), so the runs to compare are
the folders under generated/. Each run gets a number and a colour, the same in its grid's title, its curves'
legend and its table row, and a label made of only what it changed ("lr_g=0.001", "G=LeakyGenerator" for your
own networks, "recipe=improved"), or "common settings" for the run the others changed, so a comparison reads as
"what I changed, and what it did"; runs whose curves are identical each keep markers of their own. The figure is 9 inches wide whatever the number of runs (up to 12: grids in one or two rows), so its text
stays readable in a notebook; the curves are drawn against epochs (not steps), so runs with different batch
sizes line up, and a run whose losses are far above the others' (a diverged run) is left off the scale, said in
the panel's title and the legend, instead of flattening every other curve. The table fits a notebook's width:
short headers, FID first, the folder names listed under it.

A folder that is not a run is refused, naming it; a run whose files are unreadable (a truncated or hand-edited
config.json or history.json, a broken grid) is shown as "unreadable" with one line naming the file.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import math
import struct
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from PIL import Image

from utils.config import FIXED_FIELDS, HOW_FIELDS, IMPROVED_RECIPE, TUNABLE_FIELDS, TrainConfig
from utils.diagnose import since
from utils.errors import UserError
from utils.files import load_data
from utils.run import CHECKPOINT, CONFIG, HISTORY, list_frames, read_run
from utils.visualize import in_notebook

MAX_RUNS = 12  # more than this and the grids are too small to see: the last 12 are shown, saying so
FIGURE_WIDTH = 9.0  # inches: about 900 px in a notebook, the width the table also fits
TABLE_WIDTH_PX = 900

# Table headers of fields whose names are long; a space lets a header wrap in a narrow column.
_HEADERS = {"batch_size": "batch", "image_size": "size", "latent_dim": "z dim", "g_width": "G width",
            "d_width": "D width", "spectral_norm": "spectral norm", "diffaugment": "diff augment",
            "num_samples": "grid images", "max_images": "max images", "ema_decay": "EMA decay", "scale_lr": "scale lr"}
_NETWORK_ROLES = {"generator": ("G", "Generator"), "discriminator": ("D", "Discriminator")}
_STEP_KEYS = ("epoch", "step", "loss_d", "loss_g", "d_real", "d_fake")
_MAX_GRID_PIXELS = 4096 * 4096  # a grid of 64 images of 256x256 is 2066x2066; a larger header is not a grid
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Colours of runs 1-12: matplotlib's ten, then two more that none of them resembles.
_COLOURS = [f"C{i}" for i in range(10)] + ["black", "#b8860b"]


@dataclass
class _Run:
    """One run folder as compare reads it: what could be read, and a line for each file that could not."""

    dir: Path
    config: TrainConfig | None = None
    history: dict = field(default_factory=dict)
    networks: dict[str, str] = field(default_factory=dict)  # {"G": "LeakyGenerator"} for networks not built in
    problems: list[str] = field(default_factory=list)

    @property
    def steps(self) -> list[dict]:
        return self.history.get("steps", [])


# ------------------------------------------------------------------------------------------ choosing runs

def is_run_folder(path: str | Path) -> bool:
    """A folder that a training run wrote: it holds a config.json, a history.json or a checkpoint."""
    path = Path(path)
    return path.is_dir() and any((path / name).is_file() for name in (CONFIG, HISTORY, CHECKPOINT))


def list_runs(root: str | Path = "generated", image_size: int | None = None, match: str | None = None,
              last: int | None = None) -> list[Path]:
    """The run folders under `root`, least recently trained first (by their newest config.json or history.json).

    `image_size` keeps the runs of that size (a run whose config.json is unreadable is kept, so compare can say
    so), `match` those whose folder name matches a glob pattern ("*lr_g*", "dcgan-32px*"), `last` the `last`
    most recently trained of those.
    """
    runs = [path for path in Path(root).iterdir() if is_run_folder(path)] if Path(root).is_dir() else []
    if image_size is not None:
        runs = [run for run in runs if _image_size(run) in (image_size, None)]
    return select_runs(sorted(runs, key=_trained_at), match, last)


def select_runs(run_dirs: list[Path], match: str | None = None, last: int | None = None) -> list[Path]:
    """`run_dirs` whose folder name matches the glob `match`, then the last `last` of them (in their order)."""
    if match is not None:
        run_dirs = [run for run in run_dirs if fnmatch.fnmatchcase(run.name, match)]
    if last is not None:
        if last < 1:
            raise UserError(f"last={last}: choose how many of the runs trained last to show (1 or more)")
        run_dirs = run_dirs[-last:]
    return run_dirs


def _trained_at(run_dir: Path) -> float:
    return max((run_dir / name).stat().st_mtime for name in (CONFIG, HISTORY, CHECKPOINT) if (run_dir / name).is_file())


def _image_size(run_dir: Path) -> int | None:
    try:
        return int(json.loads((run_dir / CONFIG).read_text())["image_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_run_folders(run_dirs: list[str | Path]) -> list[Path]:
    """The folders as Paths; a UserError naming every one that is not a run (missing: with the closest name)."""
    paths, refused = [Path(run_dir) for run_dir in run_dirs], []
    for path in paths:
        if not path.exists():
            siblings = [p.name for p in path.parent.iterdir() if is_run_folder(p)] if path.parent.is_dir() else []
            close = difflib.get_close_matches(path.name, siblings, n=1)
            refused.append(f"{path} does not exist" + (f" (did you mean {path.parent / close[0]}?)" if close else ""))
        elif not is_run_folder(path):
            refused.append(f"{path} is not a run folder (no {CONFIG}, {HISTORY} or {CHECKPOINT})")
    if refused:
        raise UserError("compare_runs: " + "; ".join(refused) + ". Pass run folders as train() returns them "
                        "(result.run_dir), or leave the list out to compare the runs under generated/")
    return paths


# --------------------------------------------------------------------------------------------- reading

def read_runs(run_dirs: list[str | Path]) -> list[_Run]:
    """Each run's settings, history and networks; what cannot be read is left out and said in `problems`."""
    return [_read_run(Path(run_dir)) for run_dir in run_dirs]


def _read_run(run_dir: Path) -> _Run:
    """A damaged config.json or history.json is taken from the checkpoint as training does (utils.run.read_run);
    without a checkpoint to recover it from, the run is shown as unreadable with that one line."""
    run = _Run(run_dir)
    try:
        run.config, history = read_run(run_dir)
    except UserError as error:
        run.problems.append(f"{error}; it is shown as unreadable")
        return run
    try:
        run.history = _checked_history(history)
    except ValueError as error:
        run.problems.append(f"{run_dir / HISTORY} is unreadable ({_reason(error)}): its curves are not shown")
    run.networks = _own_networks(run_dir)
    return run


def _checked_history(history) -> dict:
    """The history if it has the shape train() writes (a hand edit may not), else a ValueError saying where not."""
    if not isinstance(history, dict) or not isinstance(history.get("steps", []), list) \
            or not isinstance(history.get("epochs", []), list):
        raise ValueError("not a dict with lists 'steps' and 'epochs'")
    for number, record in enumerate(history.get("steps", []), 1):
        if not isinstance(record, dict) or not all(isinstance(record.get(key), (int, float)) for key in _STEP_KEYS):
            raise ValueError(f"step record {number} lacks a number for one of {', '.join(_STEP_KEYS)}")
    for number, record in enumerate(history.get("epochs", []), 1):
        if not isinstance(record, dict) or not isinstance(record.get("fid", 0.0) or 0.0, (int, float)):
            raise ValueError(f"epoch record {number} is not a dict with a numeric 'fid'")
    return history


def _own_networks(run_dir: Path) -> dict[str, str]:
    """{"G": class name} for each network that is not the built-in one, from the checkpoint's record of them.

    The checkpoint is memory-mapped with weights_only=True: only its small "networks" entry is read, and no file
    can run code. A run without a readable checkpoint has no record: its networks are taken as built in.
    """
    try:
        state = load_data(run_dir / CHECKPOINT, "checkpoint", UserError, "", mmap=True)
        described = state.get("networks", {}) if isinstance(state, dict) else {}
    except UserError:  # no checkpoint, or one compare cannot read: nothing to tell about networks
        return {}
    own = {}
    for role, (short, builtin) in _NETWORK_ROLES.items():
        name = str(described.get(role, builtin)).split(" ", 1)[0]
        if name != builtin:
            own[short] = name
    return own


def _reason(error: Exception) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"not valid JSON at line {error.lineno}, column {error.colno}: truncated or hand-edited?"
    return f"{type(error).__name__}: {str(error)[:100]}"


def _last_grid(run_dir: Path) -> tuple[int, np.ndarray | None, str]:
    """(epoch, RGB pixels, "") of the run's last sample grid; (epoch, None, problem) when it cannot be shown.

    The size in the PNG's header is checked before anything is decoded: a header may announce 20000x20000
    pixels (1.2 GB decoded) in a file of a few bytes.
    """
    frames = list_frames(run_dir)
    if not frames:
        return 0, None, ""
    epoch, path = frames[-1]
    try:
        with path.open("rb") as file:
            header = file.read(24)
        if header[:8] == _PNG_SIGNATURE and len(header) == 24:
            width, height = struct.unpack(">II", header[16:24])
            if width * height > _MAX_GRID_PIXELS:
                return epoch, None, (f"{path} says it is {width}x{height} pixels, far more than a sample grid: "
                                     "not shown (replace or delete it)")
        with Image.open(path) as grid:
            return epoch, np.asarray(grid.convert("RGB")), ""
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return epoch, None, f"{path} is not a readable PNG ({_reason(error)}): not shown"


# ------------------------------------------------------------------------------------- what differs

def differing_fields(configs: list[TrainConfig]) -> list[str]:
    """The fields (fixed or tunable, not speed settings nor `epochs`) whose value is not the same in all `configs`.

    `epochs` is left out: the table has one "epochs" column (done, and the target where it differs).
    """
    names = [name for name in FIXED_FIELDS + TUNABLE_FIELDS if name not in HOW_FIELDS + ("epochs",)] + ["recipe"]
    return [name for name in names if len({repr(getattr(config, name)) for config in configs}) > 1]


def _differences(runs: list[_Run]) -> list[tuple[str, list[str]]]:
    """(name, value of each run) for each setting or network in which the readable runs differ."""
    readable = [run for run in runs if run.config is not None]
    columns = [(name, [_cell(getattr(run.config, name)) if run.config else "?" for run in runs])
               for name in differing_fields([run.config for run in readable])]
    for short in ("G", "D"):
        values = [run.networks.get(short, "built-in") for run in runs]
        if len(set(values)) > 1:
            columns.append((short, values))
    return columns


def run_labels(run_dirs: list[str | Path]) -> list[str]:
    """A short label per run: the values in which it differs from the reference run ("lr_g=0.001",
    "G=LeakyGenerator", "recipe=improved"), or "common settings" for the reference run itself."""
    return _labels(read_runs(run_dirs))


def _labels(runs: list[_Run]) -> list[str]:
    """Each differing value is compared with a reference: the recipe's default where a run has it (the main run
    of notebook 03 before its tweaks), else the value most runs share; with neither, every run shows its own.
    The values a run's recipe sets ("improved": its rates, loss, ...) are said by "recipe=improved" alone."""
    columns = _differences(runs)
    readable = [run.config for run in runs if run.config is not None]
    recipes = [config.recipe for config in readable]
    defaults = TrainConfig(recipe="dcgan" if "dcgan" in recipes else _most_shared(recipes) or "dcgan")
    reference = {}
    for name, values in columns:
        default = "built-in" if name in ("G", "D") else _cell(getattr(defaults, name))
        reference[name] = default if default in values else _most_shared(values)
    labels = []
    for i, run in enumerate(runs):
        if run.config is None:
            labels.append("settings unreadable")
            continue
        own_recipe = TrainConfig(recipe=run.config.recipe)   # what its recipe sets, when it is not the reference's
        changed = [f"{name}={values[i]}" for name, values in columns if values[i] != reference[name] and not (
            name in IMPROVED_RECIPE and run.config.recipe != defaults.recipe
            and values[i] == _cell(getattr(own_recipe, name)))]
        labels.append(", ".join(changed) or "common settings")
    return labels


def _most_shared(values: list[str]) -> str | None:
    """The value more than half of `values` have, if any."""
    return next((value for value in set(values) if values.count(value) > len(values) / 2), None)


# --------------------------------------------------------------------------------------------- the table

def comparison_table(run_dirs: list[str | Path], fid: dict | None = None) -> str:
    """A Markdown table: one row per run (#, FID, epochs, the differing values, last losses, what the diagnosis saw
    in the last epoch), then the folders."""
    return _table(read_runs(run_dirs), fid)


def _table(runs: list[_Run], fid: dict | None) -> str:
    differing = [(_HEADERS.get(name, name), values) for name, values in _differences(runs)]
    fixed = ["#", "FID", "epochs"]
    rows = [[str(number), _fid_cell(run, fid), _epochs_cell(run)] for number, run in enumerate(runs, 1)]
    losses = [[_pair(run, "loss_d", "loss_g"), _pair(run, "d_real", "d_fake"), _seen_cell(run)] for run in runs]
    header = fixed + [name for name, _ in differing] + ["D / G loss", "D(x) / D(G(z))", "seen"]
    body = [row + [values[i] for _, values in differing] + loss for i, (row, loss) in enumerate(zip(rows, losses))]
    if table_width_px([header, *body]) > TABLE_WIDTH_PX:  # too many differences for a column each: one column
        labels = _labels(runs)
        header = fixed + ["what differs"] + header[-3:]
        body = [row + [labels[i]] + loss for i, (row, loss) in enumerate(zip(rows, losses))]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    folders = [f"{number}. `{run.dir}`" + (" (unreadable: see above)" if run.problems else "")
               for number, run in enumerate(runs, 1)]
    return "\n".join(lines) + "\n\nRun folders:\n\n" + "\n".join(folders)


def table_width_px(rows: list[list[str]], char_px: float = 8.0, padding_px: float = 16.0) -> float:
    """About how wide a notebook draws a Markdown table: each column as wide as its longest cell (a header's
    longest word, as headers wrap at spaces), in characters of a 14 px font, plus the cells' padding."""
    header, *body = rows
    widths = [max([max(len(word) for word in name.split())] + [len(row[i]) for row in body])
              for i, name in enumerate(header)]
    return sum(width * char_px + padding_px for width in widths)


def _fid_cell(run: _Run, fid: dict | None) -> str:
    given = fid or {}
    score = given.get(run.dir, given.get(str(run.dir), _last_fid(run.history)))
    return f"{score:.1f}" if score is not None else "-"


def _epochs_cell(run: _Run) -> str:
    if run.problems and not run.history:
        return "unreadable"
    done = len(run.history.get("epochs", []))
    target = run.config.epochs if run.config else done
    return str(done) if target == done else f"{done} of {target}"


def _pair(run: _Run, first: str, second: str) -> str:
    """The last logged values of two curves, "0.69 / 2.10": one column for D's and G's loss, one for D's verdicts."""
    last = run.steps[-1] if run.steps else {}
    return f"{last[first]:.2f} / {last[second]:.2f}" if last else "-"


def _seen_cell(run: _Run) -> str:
    """What the diagnosis saw in the run's last epoch, "mode collapse from 3" (utils/diagnose.py); "-" for none."""
    epochs = run.history.get("epochs", [])
    seen = epochs[-1].get("diagnosis", {}) if epochs else {}
    return ", ".join(f"{problem} from {since(epochs, problem)}" for problem in seen) or "-"


def _last_fid(history: dict) -> float | None:
    scored = [epoch["fid"] for epoch in history.get("epochs", []) if epoch.get("fid") is not None]
    return scored[-1] if scored else None


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and ("/" in value or "\\" in value):  # a data folder or URL: its last part
        return Path(value.rstrip("/\\")).name or value
    return str(value)


# -------------------------------------------------------------------------------------------- the figure

def plot_runs(run_dirs: list[str | Path], fig: Figure | None = None) -> Figure:
    """Top: the last sample grid of each run. Below: D's and G's loss and D's verdicts, one colour per run; the
    legend under them. Draws into `fig` when given (a Figure of FIGURE_WIDTH inches looks best)."""
    return _plot(read_runs(run_dirs), fig)


def _plot(runs: list[_Run], fig: Figure | None = None) -> Figure:
    labels = [f"{number}: {label}" for number, label in enumerate(_labels(runs), 1)]
    columns = len(runs) if len(runs) <= 6 else math.ceil(len(runs) / 2)
    grid_rows = math.ceil(len(runs) / columns)
    tile = min(2.2, (FIGURE_WIDTH - 0.3) / columns)  # inches per grid
    title_chars = max(12, int(tile * 72 / (8 * 0.62)))  # characters of an 8 pt title that fit in one tile
    titles = [_wrap(label, title_chars) for label in labels]
    title_lines = max(title.count("\n") + 2 for title in titles)  # + the "epoch N" line

    curves = [_curves(run) for run in runs]
    outliers = {key: _outliers([c[key] for c in curves]) for key in ("loss_d", "loss_g")}
    twins = _twins(curves)
    legend_labels = _legend_labels(labels, outliers, twins)
    legend_rows = sum(max(legend_labels[i].count("\n") + 1 for i in range(start, min(start + 3, len(runs))))
                      for start in range(0, len(runs), 3))

    grids = [_last_grid(run.dir) for run in runs]
    aspect = max([pixels.shape[0] / pixels.shape[1] for _, pixels, _ in grids if pixels is not None] or [1.0])
    grids_height = grid_rows * (tile * aspect + 0.17 * title_lines + 0.1)
    legend_height = 0.25 + 0.17 * legend_rows
    fig = fig or Figure(figsize=(FIGURE_WIDTH, grids_height + 2.9 + legend_height), layout="constrained")
    if fig.get_layout_engine() is not None:  # room at the edges, so that no title touches them
        fig.get_layout_engine().set(h_pad=0.1, w_pad=0.08)
    top, middle, bottom = fig.subfigures(3, 1, height_ratios=[grids_height, 2.9, legend_height])
    _draw_grids(top.subplots(grid_rows, columns, squeeze=False).ravel(), runs, titles, grids)
    _draw_curves(middle.subplots(1, 3), curves, outliers, twins)
    handles = [Line2D([], [], color=_COLOURS[number], linewidth=2, **_twin_markers(*twins[number]))
               for number in range(len(runs))]
    bottom.legend(handles, legend_labels, loc="center", ncols=min(len(runs), 3), fontsize=8, frameon=False)
    return fig


def _legend_labels(labels: list[str], outliers: dict[str, list[tuple[int, float]]],
                   twins: list[tuple[int, list[int]]]) -> list[str]:
    """The runs' labels wrapped to a third of the figure's width, each saying which of its curves is off the scale
    and which other runs' curves are the same as its own."""
    legend_chars = int(FIGURE_WIDTH * 72 / (8 * 0.6) / min(len(labels), 3)) - 6
    legend_labels = [_wrap(label, legend_chars) for label in labels]
    for index, (_, group) in enumerate(twins):
        if len(group) > 1:
            legend_labels[index] += f"\n(same curves as {', '.join(str(i + 1) for i in group if i != index)})"
    for key, title in (("loss_d", "D loss"), ("loss_g", "G loss")):
        for index, peak in outliers[key]:
            legend_labels[index] += f"\n({title} up to {peak:,.0f}: off the scale)"
    return legend_labels


def _draw_grids(axes, runs: list[_Run], titles: list[str], grids: list[tuple[int, np.ndarray | None, str]]) -> None:
    """Each run's last grid under its label and epoch in its colour; "unreadable" or "no grid yet" where none."""
    for number, (ax, run, title, (epoch, pixels, problem)) in enumerate(zip(axes, runs, titles, grids)):
        if problem:
            run.problems.append(problem)
        if pixels is not None:
            ax.imshow(pixels)
        else:
            ax.text(0.5, 0.5, "unreadable" if problem or run.problems else "no grid yet", ha="center", va="center",
                    fontsize=8, color="gray", transform=ax.transAxes)
        ax.set_title(title + (f"\nepoch {epoch}" if epoch else ""), fontsize=8, color=_COLOURS[number])
        ax.set_axis_off()
    for ax in axes[len(runs):]:
        ax.set_visible(False)


def _draw_curves(panels, curves: list[dict[str, list[float]]], outliers: dict[str, list[tuple[int, float]]],
                 twins: list[tuple[int, list[int]]]) -> None:
    """D loss, G loss and D's verdicts against epochs, one colour per run; a run off the scale of a loss is left
    out of that panel's scale and drawn as triangles on its top edge, the title saying which. Runs whose curves
    are identical (the same settings in two folders) each get hollow markers of their own shape and size, on the
    line's points in turn, so that the one drawn last does not hide the others."""
    for number, curve in enumerate(curves):
        x = curve["x"]
        # a short run has few points: dots, so that a 1-epoch run's single point shows
        dots = dict(marker="o", markersize=3) if len(x) < 20 else {}
        place, group = twins[number]
        every = max(1, len(x) // (10 * len(group)))  # about ten markers each, the twins' in turn
        spread = dict(markevery=slice(place * every, None, len(group) * every)) if 1 < len(group) <= len(x) else {}
        style = dict(color=_COLOURS[number], linewidth=1, **(_twin_markers(place, group) | spread or dots))
        panels[0].plot(x, curve["loss_d"], **style)
        panels[1].plot(x, curve["loss_g"], **style)
        panels[2].plot(x, curve["d_real"], **style)
        panels[2].plot(x, curve["d_fake"], linestyle="--", **{**style, "linewidth": 0.8})
    for ax, key, title in ((panels[0], "loss_d", "D loss"), (panels[1], "loss_g", "G loss")):
        if outliers[key]:
            scale = [c[key] for i, c in enumerate(curves) if i not in dict(outliers[key])]
            low, high = _limits(scale)
            ax.set_ylim(low, high)
            for index, _ in outliers[key]:  # a triangle on the top edge where the run is above it
                above = [x for x, y in zip(curves[index]["x"], curves[index][key]) if y > high]
                ax.plot(above, [high] * len(above), linestyle="none", marker="^", markersize=5, color=_COLOURS[index],
                        clip_on=False)
            numbers = ", ".join(str(index + 1) for index, _ in outliers[key])
            title += f"\n({'runs' if len(outliers[key]) > 1 else 'run'} {numbers} off the scale)"
        ax.set_title(title, fontsize=9)
    panels[2].set_title("D(x) solid, D(G(z)) dashed", fontsize=9)
    panels[2].set_ylim(0, 1)
    panels[2].axhline(0.5, color="gray", linestyle=":", linewidth=1)
    for ax in panels:
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5))


def _twins(curves: list[dict[str, list[float]]]) -> list[tuple[int, list[int]]]:
    """For each run: its place among the runs whose curves are exactly its own, and those runs (itself alone when
    no other run's are)."""
    keys = [tuple((name, tuple(values)) for name, values in sorted(curve.items())) for curve in curves]
    groups = [[other for other, key in enumerate(keys) if key == keys[index]] for index in range(len(keys))]
    return [(group.index(index), group) for index, group in enumerate(groups)]


_TWIN_MARKERS = "osD^vP"


def _twin_markers(place: int, group: list[int]) -> dict:
    """Hollow markers of a shape of its own for a run whose curves have identical twins; none for a run alone."""
    if len(group) < 2:
        return {}
    return dict(marker=_TWIN_MARKERS[place % len(_TWIN_MARKERS)], markersize=5 + 2 * place, fillstyle="none")


def _curves(run: _Run) -> dict[str, list[float]]:
    return {"x": epoch_positions(run.history), **{key: [s[key] for s in run.steps] for key in _STEP_KEYS[2:]}}


def _outliers(series: list[list[float]]) -> list[tuple[int, float]]:
    """(index, peak) of each run whose values are far above the others' (a diverged run), which would flatten them.

    A run is an outlier when its 95th percentile is over 5 times (plus 1) the lower median of all runs' 95th
    percentiles: G loss 2,000 beside runs at 1-5 is; a run at 8 beside runs at 2 is not.
    """
    highs = [float(np.percentile(values, 95)) if values else None for values in series]
    known = sorted(high for high in highs if high is not None)
    if len(known) < 2:
        return []
    reference = known[(len(known) - 1) // 2]
    return [(index, max(series[index])) for index, high in enumerate(highs)
            if high is not None and high > 5 * reference + 1]


def _limits(series: list[list[float]]) -> tuple[float, float]:
    values = [value for values in series for value in values] or [0.0, 1.0]
    low, high = min(values), max(values)
    pad = 0.05 * (high - low or 1.0)
    return low - pad, high + pad


def _wrap(text: str, width: int) -> str:
    """Wrap at ", " and "-" where possible, and inside a long word (a folder name) where not."""
    return "\n".join(textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=True)) or text


def epoch_positions(history: dict) -> list[float]:
    """Each logged step's position in epochs (2.5 = half way through epoch 3), whatever the batch size.

    A history always starts at epoch 1, so each epoch's first step follows the previous epoch's last one.
    """
    ends: dict[int, int] = {}
    for record in history.get("steps", []):
        ends[record["epoch"]] = record["step"]
    positions = []
    for record in history.get("steps", []):
        start = ends.get(record["epoch"] - 1, 0)
        positions.append(record["epoch"] - 1 + (record["step"] - start) / max(ends[record["epoch"]] - start, 1))
    return positions


# ----------------------------------------------------------------------------------------------- compare

def compare_runs(run_dirs: list[str | Path] | None = None, fid: dict | None = None, *, root: str | Path = "generated",
                 image_size: int | None = None, match: str | None = None, last: int | None = None) -> Figure:
    """Show the table and the figure of the runs in a notebook (print the table elsewhere); return the figure.

    The runs are `run_dirs` (folders as train() returns them, in that order), else every run under `root` (of
    `image_size` when given), least recently trained first; `match` (a glob on the folder name, "*lr_g*") and `last` (the N trained last) narrow
    either. More than 12 runs: the last 12 are shown, saying so. `fid` ({run_dir: score}) overrides the FID that
    a run's history holds.
    """
    if run_dirs is None:
        run_dirs = list_runs(root, image_size, match, last)
        if not run_dirs:
            what = " and ".join(filter(None, [f"{image_size}x{image_size} faces" if image_size else "",
                                              f"a folder name matching {match!r}" if match else ""]))
            raise UserError(f"compare_runs: no runs under {root}/" + (f" with {what}" if what else "")
                            + ": train one first (notebook 03), or pass the run folders")
    else:
        run_dirs = select_runs(check_run_folders(run_dirs), match, last)
        if not run_dirs:
            raise UserError("compare_runs needs at least one run folder: train first (notebook 03)"
                            + (f"; none of the folders given matches {match!r}" if match else ""))
    notes = []
    if len(run_dirs) > MAX_RUNS:
        notes.append(f"showing the last {MAX_RUNS} of {len(run_dirs)} runs: choose others with last=, match= "
                     "or a list of run folders")
        run_dirs = run_dirs[-MAX_RUNS:]
    runs = read_runs(run_dirs)
    fig = _plot(runs)  # after reading the grids: their problems are known for the table
    table = _table(runs, fid)
    notes += [problem for run in runs for problem in run.problems]
    for note in notes:
        print(note)
    if in_notebook():
        from IPython.display import Markdown, display

        display(Markdown(table))
        display(fig)
    else:
        print(table)
    return fig
