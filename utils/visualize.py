"""Pictures of a run: sample grids, the curves of its history, and a live view while training. What a notebook shows
is drawn with pyplot; what is only saved or redrawn uses a bare `Figure` (no GUI backend, freed when dropped)."""

import io
import math
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, PngImagePlugin

from utils.errors import UserError
from utils.files import MAKER, atomic_path, output_file
from utils.models import to_uint8


def image_grid(images: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    """Tile images (N, C, H, W) into one uint8 image (3, H', W') with 2-pixel gaps. Floats are read as G's [-1, 1]
    (not stretched to their own range), so a grid's brightness means the same in every epoch."""
    images = images.detach().cpu()
    return torchvision.utils.make_grid(images if images.dtype == torch.uint8 else to_uint8(images), nrow, padding=2)


def write_png(image: np.ndarray, path: str | Path) -> Path:
    """Save a uint8 (H, W, 3) image as a PNG, atomically, marked as this project's (MAKER as its Software)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", MAKER)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", pnginfo=info)
    return Path(path)


def read_grid(path: Path) -> np.ndarray:
    """A sample grid's RGB pixels (H, W, 3); a UserError if it is unreadable or a decompression bomb."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as grid:
                return np.asarray(grid.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise UserError(f"{path} is not a readable image ({error}): delete it, or replace it with that epoch's "
                        "grid") from None


def enlarged(image: np.ndarray) -> np.ndarray:
    """`image` (H, W, 3) enlarged by the smallest whole factor to 512 px wide (not a thumbnail), in sharp squares."""
    scale = math.ceil(512 / image.shape[1])
    return image.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else image


def show_images(images: torch.Tensor, title: str = "", nrow: int = 8, figsize=(8, 8)):
    """Draw `image_grid(images)` in a pyplot figure (for notebooks) and return the figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    ax.imshow(image_grid(images, nrow).permute(1, 2, 0).numpy())
    ax.set_axis_off()
    ax.set_title(title)
    return fig


def _figsize(history: dict) -> tuple[float, float]:
    return 5.0 * (3 if any(epoch.get("fid") is not None for epoch in history.get("epochs", [])) else 2), 3.5


def plot_history(history: dict, fig=None):
    """Plot D's and G's loss and D's verdicts per logged step, FID per epoch where measured, into `fig` (a Figure or
    SubFigure) or a new pyplot figure; mark where a setting changed and shade the epochs the diagnosis named."""
    if fig is None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=_figsize(history), layout="constrained")
    steps = history.get("steps", [])
    dots = dict(marker="o", markersize=3) if len(steps) < 60 else {}  # so that even a single step shows
    scored = [epoch for epoch in history.get("epochs", []) if epoch.get("fid") is not None]
    axes = fig.subplots(1, 3 if scored else 2, squeeze=False)[0]
    losses, verdicts = axes[:2]
    verdicts.axhline(0.5, color="gray", linestyle="--", linewidth=1, label="0.5: can't tell")
    verdicts.set_ylim(0, 1)
    curves = ((losses, {"loss_d": "D loss", "loss_g": "G loss"}, "loss"),
              (verdicts, {"d_real": "D(x): real", "d_fake": "D(G(z)): fake"}, "probability 'real'"))
    for ax, labels, ylabel in curves:
        for key, label in labels.items():
            ax.plot([s["step"] for s in steps], [s[key] for s in steps], label=label, **dots)
        ax.set(xlim=(0, None), xlabel="step", ylabel=ylabel)
        ax.legend()
    if not steps:  # nothing measured yet: no made-up scale
        losses.set(xticks=[], yticks=[])
        verdicts.set_xticks([])
    changes: dict[int, list[str]] = {}  # step -> the settings changed there as the run continued
    for change in history.get("changes", []):
        changes.setdefault(change["step"], []).append(f"{change['field']} {change['from']} -> {change['to']}")
    for row, (at, labels) in enumerate(sorted(changes.items())):  # dotted, named in a band above (a row each)
        for ax in axes[:2]:
            ax.axvline(at, color="tab:red", linestyle=":", linewidth=1.2)
        right_half = at > sum(losses.get_xlim()) / 2
        losses.annotate(", ".join(labels), (at, 1), xycoords=("data", "axes fraction"), textcoords="offset points",
                        xytext=(-2 if right_half else 2, 3 + 12 * row), ha="right" if right_half else "left",
                        va="bottom", fontsize=9, color="tab:red", annotation_clip=False)
    pad = 6 + 12 * len(changes) + (4 if changes else 0)  # the titles go above the band
    for row, (first, last, problem) in enumerate(diagnosis_marks(history)):  # shaded, named at the foot (a row each)
        for ax in axes[:2]:
            ax.axvspan(first, last, color="tab:red", alpha=0.1, linewidth=0)
        verdicts.annotate(problem, (first, 0), xycoords=("data", "axes fraction"), xytext=(2, 3 + 11 * row),
                          textcoords="offset points", fontsize=8, color="tab:red", va="bottom")
    if scored:
        axes[2].plot([e["epoch"] for e in scored], [e["fid"] for e in scored], marker="o")
        axes[2].set(xlabel="epoch", ylabel="FID")
    for ax, title in zip(axes, ("Losses", "Discriminator's verdict", "FID (lower is better)")):
        ax.set_title(title, pad=pad)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def diagnosis_marks(history: dict) -> list[tuple[int, int, str]]:
    """(first step, last step, problem) of each stretch of epochs with a problem, from the previous epoch's end."""
    # each epoch's last logged step (the hand loop of notebook 03 logs steps without epochs)
    ends = {record["epoch"]: record["step"] for record in history.get("steps", []) if "epoch" in record}
    going, marks = {}, []  # going: problem -> (first step, last step) of a stretch that may go on
    for record in history.get("epochs", []):
        seen = record.get("diagnosis", {}) if record["epoch"] in ends else {}
        marks += [(*going.pop(problem), problem) for problem in list(going) if problem not in seen]
        for problem in seen:
            going[problem] = (going.get(problem, (ends.get(record["epoch"] - 1, 0),))[0], ends[record["epoch"]])
    return sorted(marks + [(first, last, problem) for problem, (first, last) in going.items()])


def save_history_plot(history: dict, path: str | Path) -> Path:
    """Save `plot_history(history)` as a PNG, e.g. RUN_DIR/history.png."""
    fig = plot_history(history, Figure(figsize=_figsize(history), layout="constrained"))
    with atomic_path(output_file(path, "path")) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": MAKER})
    return Path(path)


def in_notebook() -> bool:
    """True inside a running Jupyter kernel (Jupyter, Colab, Kaggle), where output can be redrawn in place."""
    from IPython import get_ipython  # installed with ipywidgets

    return getattr(get_ipython(), "kernel", None) is not None  # get_ipython() is None outside IPython


class LivePlot:
    """One notebook output redrawn in place while training (curves and the last grid) at most every `every_seconds`,
    rarer where a redraw is slow (2 s on a busy 2-core CPU) so that it takes at most `max_share` of the time."""

    def __init__(self, every_seconds: float = 5.0, max_share: float = 0.2):
        self.every_seconds, self.max_share = every_seconds, max_share
        self._id = uuid.uuid4().hex  # of the one notebook output, redrawn in place
        self._last_draw, self._draw_seconds = -math.inf, 0.0
        self._grid, self._title = None, ""  # the last epoch's grid (uint8, H x W x 3) and its title

    def update(self, history: dict, grid: np.ndarray | None = None, title: str = "", force: bool = False) -> None:
        """Redraw if it is time (or `force`); `grid` (uint8, H x W x 3) is shown under `title` until the next."""
        if grid is not None:
            self._grid, self._title = grid, title
        now = time.monotonic()
        wait = max(self.every_seconds, self._draw_seconds * (1 / self.max_share - 1))
        if (not force and now - self._last_draw < wait) or not in_notebook():
            return
        from IPython import display

        buffer = io.BytesIO()
        self.figure(history).savefig(buffer, format="png", dpi=80)
        picture = display.Image(data=buffer.getvalue(), format="png")
        display.display(picture, display_id=self._id, update=self._last_draw > -math.inf)
        self._last_draw = time.monotonic()
        self._draw_seconds = self._last_draw - now

    def figure(self, history: dict) -> Figure:
        """The picture as it would be drawn now."""
        width, height = _figsize(history)
        fig = Figure(figsize=(width + height + 1, height + 1), layout="constrained")
        curves, samples = fig.subfigures(1, 2, width_ratios=[width, height + 1])
        plot_history(history, curves)
        ax = samples.subplots()
        if self._grid is not None:
            ax.imshow(self._grid)
        ax.set_title(self._title or "each epoch's samples\nwill be shown here")
        ax.set_axis_off()
        return fig
