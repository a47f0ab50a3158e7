"""Pictures of a run: sample grids, the loss/score curves, and a live view while training.

    >>> from utils.visualize import save_grid, show_images, plot_history, LivePlot
    >>> save_grid(generator(fixed_noise), "grid.png")                   # images in [-1, 1]
    >>> show_images(real_batch, "real faces");                          # in a notebook
    >>> plot_history(json.load(open(run_dir / "history.json")));       # marks where a setting changed
    >>> live = LivePlot(every_seconds=5)                                 # notebook 03, during training
    >>> live.update(history, grid=image_grid(samples).permute(1, 2, 0).numpy(), title="epoch 3")

`show_images` and `plot_history` draw with pyplot so a notebook shows them on their own
(end the line with `;` to avoid a second copy from the cell's return value); everything
that only saves or redraws uses a bare `matplotlib.figure.Figure`, which needs no GUI
backend and is freed as soon as it is dropped.
"""

from __future__ import annotations

import io
import math
import time
from pathlib import Path

import numpy as np

import torch
import torchvision
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, PngImagePlugin

from utils.files import MAKER, atomic_path, output_file


def image_grid(images: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    """Tile images (N, C, H, W) into one uint8 image (3, H', W') with 2-pixel gaps.

    Float images are read as the generator's [-1, 1] range (-1 black, +1 white) rather
    than stretched to their own min..max, so a grid's brightness means the same thing
    in every epoch. uint8 images (real data, 0..255) are tiled as they are.
    """
    images = images.detach().cpu()
    if images.dtype == torch.uint8:
        return torchvision.utils.make_grid(images, nrow=nrow, padding=2)
    grid = torchvision.utils.make_grid(images.float(), nrow=nrow, padding=2, normalize=True, value_range=(-1, 1))
    return grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Save `image_grid(images)` as a PNG (atomically, creating parent folders)."""
    return write_png(image_grid(images, nrow).permute(1, 2, 0).numpy(), path)


def write_png(image: np.ndarray, path: str | Path) -> Path:
    """Save a uint8 (H, W, 3) image as a PNG, atomically, marked as this project's (`MAKER`, as its Software)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", MAKER)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", pnginfo=info)
    return Path(path)


MIN_WIDTH = 512   # a grid animated or shown narrower than this is enlarged: a 16 px run is not a thumbnail


def enlarged(image: np.ndarray) -> np.ndarray:
    """`image` (H, W, 3) enlarged by the smallest whole factor that makes it at least MIN_WIDTH pixels wide, with
    nearest-neighbour pixels (each one a sharp square, no blur); as it is when it is that wide already."""
    scale = math.ceil(MIN_WIDTH / image.shape[1])
    return image.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else image


def show_images(images: torch.Tensor, title: str = "", nrow: int = 8, figsize=(8, 8)):
    """Draw `image_grid(images)` in a pyplot figure (for notebooks) and return the figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    ax.imshow(image_grid(images, nrow).permute(1, 2, 0).numpy())
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return fig


def _has_fid(history: dict) -> bool:
    return any(epoch.get("fid") is not None for epoch in history.get("epochs", []))


def _history_figsize(history: dict) -> tuple[float, float]:
    return (5.0 * (3 if _has_fid(history) else 2), 3.5)


def plot_history(history: dict, fig=None):
    """Plot a run's history.json: losses and D's scores per logged step, FID per epoch.

    Panels: (1) D and G loss; (2) D(x), the probability D gives real images, and
    D(G(z)), the one it gives fakes, with the 0.5 line where D cannot tell them apart;
    (3) FID, only when some epoch has one. A dotted vertical line marks each step where a
    setting changed as the run continued (history["changes"], e.g. a new lr_g), labelled
    with the change in a band above the panel, one row per change, so no label crosses a
    curve or another label. The epochs in which the run's diagnosis (utils/diagnose.py) saw a problem are shaded
    red, named at the foot of D's verdict. Curves of few points get dots, so even one step shows. An empty
    history gives empty, labelled panels. Draws into `fig` (a Figure or SubFigure) when
    given, else a new pyplot figure.
    """
    if fig is None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=_history_figsize(history), layout="constrained")
    steps = history.get("steps", [])
    step = [s["step"] for s in steps]
    dots = dict(marker="o", markersize=3) if len(steps) < 60 else {}
    axes = fig.subplots(1, 3 if _has_fid(history) else 2, squeeze=False)[0]

    losses = axes[0]
    losses.plot(step, [s["loss_d"] for s in steps], label="D loss", **dots)
    losses.plot(step, [s["loss_g"] for s in steps], label="G loss", **dots)
    losses.set(xlabel="step", ylabel="loss")
    losses.legend()

    scores = axes[1]
    scores.plot(step, [s["d_real"] for s in steps], label="D(x): real", **dots)
    scores.plot(step, [s["d_fake"] for s in steps], label="D(G(z)): fake", **dots)
    scores.axhline(0.5, color="gray", linestyle="--", linewidth=1, label="0.5: can't tell")
    scores.set(xlabel="step", ylabel="probability 'real'", ylim=(0, 1))
    scores.legend()
    for ax in axes[:2]:
        ax.set_xlim(left=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if not steps:  # nothing to measure yet: no made-up scale
            ax.set_xticks([])
    if not steps:
        losses.set_yticks([])

    band = _mark_changes(axes[:2], change_marks(history))
    _mark_diagnoses(axes[:2], diagnosis_marks(history))
    losses.set_title("Losses", pad=6 + band)
    scores.set_title("Discriminator's verdict", pad=6 + band)
    if len(axes) == 3:
        _plot_fid(axes[2], history, pad=6 + band)
    return fig


def _mark_changes(axes, marks: list[tuple[int, str]]) -> float:
    """A dotted line at each change's step in every panel, its label above the first panel (a row per change,
    left of the line in the right half), so no label crosses a curve or another; returns the band's height in
    points, for the titles to go above it."""
    for row, (at, label) in enumerate(marks):
        for ax in axes:
            ax.axvline(at, color="tab:red", linestyle=":", linewidth=1.2)
        right_half = at > sum(axes[0].get_xlim()) / 2
        axes[0].annotate(label, (at, 1), xycoords=("data", "axes fraction"),
                         xytext=(-2 if right_half else 2, 3 + 12 * row), textcoords="offset points",
                         ha="right" if right_half else "left", va="bottom", fontsize=9, color="tab:red",
                         annotation_clip=False)
    return 12 * len(marks) + (4 if marks else 0)


def _plot_fid(ax, history: dict, pad: float) -> None:
    """FID of every epoch that has one, against epochs."""
    scored = [e for e in history["epochs"] if e.get("fid") is not None]
    ax.plot([e["epoch"] for e in scored], [e["fid"] for e in scored], marker="o")
    ax.set_title("FID (lower is better)", pad=pad)
    ax.set(xlabel="epoch", ylabel="FID")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def diagnosis_marks(history: dict) -> list[tuple[int, int, str]]:
    """(first step, last step, "mode collapse") of each unbroken stretch of epochs in which the diagnosis saw it."""
    ends, last = {}, 0  # epoch -> (the step it started after, its last step)
    for record in history.get("steps", []):
        if "epoch" not in record:  # a live point given without its epoch: the others place the epochs
            continue
        ends[record["epoch"]] = (ends.get(record["epoch"], (last,))[0], record["step"])
        last = record["step"]
    stretches: dict[str, list[int]] = {}
    marks = []
    for record in history.get("epochs", []):
        epoch, seen = record["epoch"], record.get("diagnosis", {})
        for problem in list(stretches):
            if problem not in seen:
                marks.append((*stretches.pop(problem), problem))
        for problem in seen:
            if epoch in ends:
                stretches.setdefault(problem, [ends[epoch][0], ends[epoch][1]])[1] = ends[epoch][1]
    return sorted(marks + [(first, last, problem) for problem, (first, last) in stretches.items()])


def _mark_diagnoses(axes, marks: list[tuple[int, int, str]]) -> None:
    """Shade each stretch in every panel, its problem written at the foot of the second panel (a row each)."""
    for row, (first, last, problem) in enumerate(marks):
        for ax in axes:
            ax.axvspan(first, last, color="tab:red", alpha=0.1, linewidth=0)
        axes[1].annotate(problem, (first, 0), xycoords=("data", "axes fraction"), xytext=(2, 3 + 11 * row),
                         textcoords="offset points", fontsize=8, color="tab:red", va="bottom")


def change_marks(history: dict) -> list[tuple[int, str]]:
    """(step, "lr_g 0.0002 -> 0.001") for every group of changes applied as a run continued, in order."""
    marks: dict[int, list[str]] = {}
    for change in history.get("changes", []):
        marks.setdefault(change["step"], []).append(f"{change['field']} {change['from']} -> {change['to']}")
    return [(step, ", ".join(labels)) for step, labels in sorted(marks.items())]


def save_history_plot(history: dict, path: str | Path) -> Path:
    """Save `plot_history(history)` as a PNG (atomically), e.g. RUN_DIR/history.png."""
    output_file(path, "path")
    fig = plot_history(history, Figure(figsize=_history_figsize(history), layout="constrained"))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": MAKER})
    return Path(path)


def in_notebook() -> bool:
    """True inside a running Jupyter kernel (Jupyter, Colab, Kaggle), where output can be redrawn in place."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class LivePlot:
    """One notebook output, redrawn in place while training: the curves and the latest epoch's grid.

    What the learner sees, in order: train() draws the picture once before its first step (empty, labelled
    axes, or the saved history's curves when a run resumes), so it sits above everything the epochs print;
    under it come each epoch's progress bar (gone when the epoch ends) and its "epoch N/M: ..." line. The
    curves are the run's history, as `plot_history` draws it after training: a point per step on the CPU (where
    reading the losses is free, train() records every step), a point per `log_every` steps on a GPU. The
    picture is redrawn at most every `every_seconds` (rarer where a redraw is slow, see `max_share`), and at
    each epoch's end with its grid, which stays on screen until the next. Each redraw renders a fresh bare
    Figure to PNG and drops it, so hundreds of updates leak no figures and never touch pyplot's GUI machinery.
    Outside Jupyter (CLI, tests) `update` draws nothing; the CLI prints its progress instead.
    """

    def __init__(self, every_seconds: float = 5.0, max_share: float = 0.2):
        """Redraw at most every `every_seconds`, and rarer where one redraw is slow (a busy 2-core CPU takes
        about 2 s): redrawing takes at most `max_share` of the time, the rest is left to training."""
        self.every_seconds = every_seconds
        self.max_share = max_share
        self._draw_seconds = 0.0  # how long the last redraw took
        self._enabled = in_notebook()
        self._handle = None  # IPython DisplayHandle of the output being redrawn
        self._last_draw = -math.inf
        self._grid: np.ndarray | None = None
        self._title = ""

    def update(self, history: dict, grid: np.ndarray | None = None, title: str = "", force: bool = False) -> None:
        """Redraw if `every_seconds` have passed since the last redraw (or `force`).

        `grid` is the latest sample grid as uint8 (H, W, 3) (`image_grid(...).permute(1, 2, 0).numpy()`),
        shown under `title` until the next one.
        """
        if grid is not None:
            self._grid, self._title = grid, title
        if not self._enabled:
            return
        now = time.monotonic()
        wait = max(self.every_seconds, self._draw_seconds * (1 / self.max_share - 1))
        if not force and now - self._last_draw < wait:
            return

        from IPython import display as ipython_display

        picture = ipython_display.Image(data=self._render(history), format="png")
        self._last_draw = time.monotonic()
        self._draw_seconds = self._last_draw - now
        if self._handle is None:
            self._handle = ipython_display.display(picture, display_id=True)
        else:
            self._handle.update(picture)

    def close(self) -> None:
        """Stop redrawing this output; the last picture stays, a later `update` starts a new one."""
        self._handle = None
        self._last_draw = -math.inf
        self._grid = None

    def figure(self, history: dict) -> Figure:
        """The picture as it would be drawn now: the curves, and beside them the last grid once there is one."""
        width, height = _history_figsize(history)
        if self._grid is None:
            fig = Figure(figsize=(width, height), layout="constrained")
            plot_history(history, fig)
            if not history.get("steps"):
                fig.suptitle("training: the curves start with the first steps", fontsize=10, color="gray")
            return fig
        fig = Figure(figsize=(width + height + 1, height + 1), layout="constrained")
        curves, samples = fig.subfigures(1, 2, width_ratios=[width, height + 1])
        plot_history(history, curves)
        ax = samples.subplots()
        ax.imshow(self._grid)
        ax.set_title(self._title)
        ax.set_axis_off()
        return fig

    def _render(self, history: dict) -> bytes:
        buffer = io.BytesIO()
        self.figure(history).savefig(buffer, format="png", dpi=80)
        return buffer.getvalue()
