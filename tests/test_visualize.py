import dataclasses

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from utils import visualize
from utils.config import TrainConfig
from utils.training import train
from utils.visualize import LivePlot, image_grid, plot_history, save_history_plot, write_png


def history(num_steps: int = 4, fid_epochs: tuple[int, ...] = (), changes=()) -> dict:
    steps = [{"epoch": 1 + i // 2, "step": 50 * (i + 1), "loss_d": 1.0 + i, "loss_g": 2.0 - 0.1 * i,
              "d_real": 0.7, "d_fake": 0.3, "seconds": 1.0 * i} for i in range(num_steps)]
    epochs = [{"epoch": e, "seconds": 10.0} | ({"fid": 200.0 / e} if e in fid_epochs else {}) for e in range(1, 4)]
    changes = [{"epoch": 2, "step": step, "field": field, "from": old, "to": new} for step, field, old, new in changes]
    return {"steps": steps, "epochs": epochs, "changes": changes}


@pytest.mark.parametrize("value, pixel", [(-1.0, 0), (0.0, 128), (1.0, 255)])
def test_image_grid_maps_the_fixed_range_minus_one_to_one_and_tiles_uint8_as_it_is(value, pixel):
    assert image_grid(torch.rand(64, 3, 64, 64)).shape == (3, 8 * (64 + 2) + 2, 8 * (64 + 2) + 2)
    # constant images: per-image or per-grid min-max scaling would turn all of them black (or NaN)
    grid = image_grid(torch.full((4, 3, 8, 8), value), nrow=2)
    assert grid.dtype == torch.uint8 and (grid[:, 2:10, 2:10] == pixel).all()
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(image_grid(images, nrow=2)[:, 12:20, 12:20], images[3])


def test_a_grid_is_written_whole_or_not_at_all(tmp_path):
    grid = image_grid(torch.rand(64, 3, 16, 16) * 2 - 1).permute(1, 2, 0).numpy()
    path = write_png(grid, tmp_path / "a" / "grid.png")
    with pytest.raises(TypeError):  # an image PIL cannot encode fails half way
        write_png(np.zeros((4, 4, 3), dtype=complex), path)
    with Image.open(path) as png:
        assert png.size == (146, 146) and np.array_equal(np.asarray(png.convert("RGB")), grid)
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]


def test_plot_history_draws_losses_and_verdicts_then_fid_when_measured(tmp_path):
    losses, verdicts = plot_history(history(), Figure()).axes
    assert list(losses.lines[0].get_xdata()) == [50, 100, 150, 200]
    assert list(losses.lines[0].get_ydata()) == [1.0, 2.0, 3.0, 4.0]
    assert 0.5 in verdicts.lines[0].get_ydata()  # the "can't tell" line
    fid = plot_history(history(fid_epochs=(1, 3)), Figure()).axes[2]
    assert list(fid.lines[0].get_xdata()) == [1, 3] and list(fid.lines[0].get_ydata()) == [200.0, 200.0 / 3]
    for empty in ({}, {"steps": [], "epochs": []}):
        assert [len(ax.lines[-1].get_xdata()) for ax in plot_history(empty, Figure()).axes] == [0, 0]

    path = save_history_plot(history(fid_epochs=(2,)), tmp_path / "history.png")
    with Image.open(path) as png:
        assert png.width > 2 * png.height  # three panels side by side


def test_changes_are_marked_with_labels_above_the_panel_crossing_no_curve_title_or_each_other():
    changed = history(8, changes=[(100, "lr_g", 0.0002, 0.001), (100, "epochs", 2, 4), (150, "batch_size", 64, 128)])
    fig = plot_history(changed, Figure(figsize=(10, 3.5), layout="constrained"))
    FigureCanvasAgg(fig).draw()
    losses = fig.axes[0]
    for ax in fig.axes[:2]:
        assert [list(line.get_xdata()) for line in ax.lines if len(set(line.get_xdata())) == 1] == [[100] * 2, [150] * 2]
    assert [text.get_text() for text in losses.texts] == ["lr_g 0.0002 -> 0.001, epochs 2 -> 4", "batch_size 64 -> 128"]
    labels = [text.get_window_extent() for text in losses.texts]
    assert len(labels) == 2 and all(text.get_fontsize() >= 9 for text in losses.texts)
    for label in labels:  # above the axes, under the title, inside the figure
        assert losses.get_window_extent().y1 <= label.y0 and label.y1 <= losses.title.get_window_extent().y0
        assert fig.bbox.x0 <= label.x0 and label.x1 <= fig.bbox.x1
    assert labels[0].y1 <= labels[1].y0  # a row per change
    assert not plot_history(history(), Figure()).axes[0].texts  # no change, no mark


class Display:
    """Stands in for IPython.display.display: records what would be shown, then redrawn in place."""

    def __init__(self):
        self.shown, self.updates, self.ids = [], [], set()

    def __call__(self, picture, display_id=None, update=False):
        self.ids.add(display_id)   # one output, redrawn in place
        (self.updates if update else self.shown).append(picture)


@pytest.fixture
def display(monkeypatch):
    fake = Display()
    monkeypatch.setattr(pytest.importorskip("IPython.display"), "display", fake)
    return fake


def test_live_plot_redraws_one_output_at_most_every_n_seconds_keeping_the_last_grid(monkeypatch, display):
    import matplotlib.pyplot as plt

    LivePlot(every_seconds=0).update(history(), force=True)
    assert display.shown == []  # outside Jupyter: nothing
    monkeypatch.setattr(visualize, "in_notebook", lambda: True)
    open_figures = plt.get_fignums()
    live = LivePlot(every_seconds=3600)
    live.update(history())
    live.update(history(), grid=image_grid(torch.rand(16, 3, 16, 16)).permute(1, 2, 0).numpy(), title="epoch 1")
    assert len(display.shown) == 1 and not display.updates  # within every_seconds: skipped
    live.update(history(6), force=True)  # mid-epoch: no grid passed, the last one stays
    assert len(display.updates) == 1 and display.updates[0].data.startswith(b"\x89PNG")
    assert len(display.ids) == 1 and None not in display.ids  # one output, redrawn in place
    assert live.figure(history(6)).axes[-1].images and not LivePlot().figure(history()).axes[-1].images
    assert plt.get_fignums() == open_figures  # nothing left open in pyplot


def test_live_plot_redraws_rarer_when_a_redraw_is_slow(monkeypatch, display):
    """A redraw that takes 2 s (a busy 2-core CPU) must not take more than max_share of the training's time."""
    monkeypatch.setattr(visualize, "in_notebook", lambda: True)
    clock = [100.0]
    monkeypatch.setattr(visualize.time, "monotonic", lambda: clock[0])

    class Slow(LivePlot):
        def figure(self, history):
            clock[0] += 2.0
            return Figure(figsize=(1, 1))

    live = Slow(every_seconds=5, max_share=0.2)
    live.update(history())
    for _ in range(7):  # 7 s after the redraw ended: past every_seconds, within 4 x 2 s
        clock[0] += 1.0
        live.update(history())
    assert len(display.shown) == 1 and not display.updates
    clock[0] += 1.0  # 8 s: the redraw took 2 of the last 10 s
    live.update(history())
    live.update(history(), force=True)  # an epoch's end is always drawn
    assert len(display.updates) == 2


class Recording(LivePlot):
    """A LivePlot that notes (epochs done, points on the D-loss curve) of every picture it draws."""

    def __init__(self):
        super().__init__(every_seconds=0, max_share=1.0)
        self.seen = []

    def figure(self, history):
        fig = super().figure(history)
        self.seen.append((len(history["epochs"]), len(fig.axes[0].lines[0].get_xdata())))
        return fig


def test_a_cpu_run_shows_a_point_per_step_and_a_resumed_run_keeps_its_earlier_epochs(tmp_path, monkeypatch, display):
    """6 steps of 16 images an epoch, fewer than log_every: the CPU records every step, live and in the history."""
    config = TrainConfig(image_size=16, latent_dim=16, g_width=8, d_width=8, batch_size=16, epochs=1, log_every=100,
                         device="cpu", amp="off", num_samples=16, out=str(tmp_path / "run"))
    images = torch.randint(0, 256, (96, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(visualize, "in_notebook", lambda: True)
    first, resumed = Recording(), Recording()
    train(config, progress=False, images=images, live_plot=first)
    result = train(dataclasses.replace(config, epochs=2), progress=False, images=images, live_plot=resumed)

    assert [points for _, points in first.seen] == list(range(0, 6 + 1)) + [6]  # drawn before the first step
    assert resumed.seen[0] == (1, 6)  # before its first step: epoch 1's six steps, from the checkpoint
    assert [points for _, points in resumed.seen[1:7]] == list(range(7, 12 + 1)) and resumed.seen[-1] == (2, 12)
    assert len(display.shown) == len(display.ids) == 2  # an output per run, redrawn in place
    whole_run = plot_history(result.history, Figure())
    assert list(whole_run.axes[0].lines[0].get_xdata()) == list(range(1, 12 + 1))
