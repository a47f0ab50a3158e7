"""Several runs side by side: the last grid of each, their curves on shared axes, FID, and what differs.

    >>> from utils.compare import compare_runs, list_runs
    >>> compare_runs(list_runs("generated", image_size=64))      # notebook 03: every run you trained
    >>> compare_runs([dcgan.run_dir, improved.run_dir], fid={dcgan.run_dir: 172.4, improved.run_dir: 30.3})

Re-running a notebook with one value changed trains a sibling run (utils/run.py), so the runs to compare are
the folders under generated/. The table shows only the fields in which the runs differ, so a comparison reads
as "what I changed, and what it did". The curves are drawn against epochs (not steps), so runs with different
batch sizes line up.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from PIL import Image

from utils.config import TrainConfig
from utils.errors import UserError
from utils.run import CONFIG, FIXED_FIELDS, HISTORY, TUNABLE_FIELDS, list_frames, read_run
from utils.visualize import in_notebook

# Fields that say how fast a run went, not what it learned: left out of the table of differences.
_HOW_FIELDS = {"data_dir", "device", "amp", "channels_last", "compile", "cuda_graphs", "data_on_device", "log_every",
               "fid_every", "fid_samples", "fid_real", "fid_weights", "max_minutes", "sync_batchnorm"}


def list_runs(root: str | Path = "generated", image_size: int | None = None) -> list[Path]:
    """Run folders under `root` (those with a config.json and a history.json), oldest first; only `image_size` ones if given."""
    runs = []
    for config_file in sorted(Path(root).glob(f"*/{CONFIG}")):
        run_dir = config_file.parent
        if (run_dir / HISTORY).is_file() and (image_size is None or read_run(run_dir)[0].image_size == image_size):
            runs.append(run_dir)
    return sorted(runs, key=lambda run: (run / CONFIG).stat().st_mtime)


def differing_fields(configs: list[TrainConfig]) -> list[str]:
    """The fields (fixed or tunable, not speed settings) whose value is not the same in all `configs`."""
    names = [name for name in FIXED_FIELDS + TUNABLE_FIELDS if name not in _HOW_FIELDS] + ["recipe"]
    return [name for name in names if len({repr(getattr(config, name)) for config in configs}) > 1]


def comparison_table(run_dirs: list[str | Path], fid: dict | None = None) -> str:
    """A Markdown table: one row per run, a column per differing field, then epochs, last losses and FID."""
    runs = [(Path(run_dir), *read_run(run_dir)) for run_dir in run_dirs]
    changed = differing_fields([config for _, config, _ in runs if config is not None])
    header = ["run", *changed, "epochs", "loss_d", "loss_g", "D(x)", "D(G(z))", "FID"]
    rows = []
    for run_dir, config, history in runs:
        last = history.get("steps", [{}])[-1] if history.get("steps") else {}
        score = (fid or {}).get(run_dir, (fid or {}).get(str(run_dir), _last_fid(history)))
        rows.append([run_dir.name, *(_cell(getattr(config, name)) for name in changed), str(len(history.get("epochs", []))),
                     *(f"{last[key]:.3f}" if key in last else "-" for key in ("loss_d", "loss_g", "d_real", "d_fake")),
                     f"{score:.1f}" if score is not None else "-"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def run_labels(run_dirs: list[str | Path]) -> list[str]:
    """A short label per run: its values of the differing fields ("lr_g=0.001, batch_size=64"), else its folder name."""
    configs = [read_run(run_dir)[0] for run_dir in run_dirs]
    changed = differing_fields([config for config in configs if config is not None])
    labels = [", ".join(f"{name}={_cell(getattr(config, name))}" for name in changed) if config and changed
              else Path(run_dir).name for run_dir, config in zip(run_dirs, configs)]
    # runs that differ in something other than their settings (your own networks): their folders tell them apart
    return [Path(run_dir).name if labels.count(label) > 1 else label for run_dir, label in zip(run_dirs, labels)]


def plot_runs(run_dirs: list[str | Path], fig: Figure | None = None) -> Figure:
    """Top: the last sample grid of each run. Bottom: D's and G's loss and D's verdicts, one colour per run."""
    runs = [(Path(run_dir), read_run(run_dir)[1], label) for run_dir, label in zip(run_dirs, run_labels(run_dirs))]
    fig = fig or Figure(figsize=(max(10.0, 3.2 * len(runs)), 7.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.2, 1])
    for colour, (ax, (run_dir, _, label)) in enumerate(zip(top.subplots(1, len(runs), squeeze=False)[0], runs)):
        frames = list_frames(run_dir)
        if frames:
            epoch, path = frames[-1]
            with Image.open(path) as grid:
                ax.imshow(grid.convert("RGB"))
            label = f"{label}\nepoch {epoch}"
        ax.set_title(label, fontsize=9, color=f"C{colour}")
        ax.set_axis_off()
    panels = bottom.subplots(1, 3)
    for colour, (run_dir, history, label) in enumerate(runs):
        x = epoch_positions(history)
        steps = history.get("steps", [])
        style = dict(color=f"C{colour}", linewidth=1)
        panels[0].plot(x, [s["loss_d"] for s in steps], label=label, **style)
        panels[1].plot(x, [s["loss_g"] for s in steps], **style)
        panels[2].plot(x, [s["d_real"] for s in steps], **style)
        panels[2].plot(x, [s["d_fake"] for s in steps], linestyle="--", **{**style, "linewidth": 0.8})
    panels[0].set(title="D loss", xlabel="epoch")
    panels[1].set(title="G loss", xlabel="epoch")
    panels[2].set(title="D(x) solid, D(G(z)) dashed", xlabel="epoch", ylim=(0, 1))
    panels[2].axhline(0.5, color="gray", linestyle=":", linewidth=1)
    panels[0].legend(fontsize=7)
    return fig


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


def compare_runs(run_dirs: list[str | Path], fid: dict | None = None) -> Figure:
    """Show the table and the figure in a notebook (print the table elsewhere); return the figure."""
    if not run_dirs:
        raise UserError("compare_runs needs at least one run folder: train first (notebook 03)")
    table, fig = comparison_table(run_dirs, fid), plot_runs(run_dirs)
    if in_notebook():
        from IPython.display import Markdown, display

        display(Markdown(table))
        display(fig)
    else:
        print(table)
    return fig


def _last_fid(history: dict) -> float | None:
    scored = [epoch["fid"] for epoch in history.get("epochs", []) if epoch.get("fid") is not None]
    return scored[-1] if scored else None


def _cell(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
