import io

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from utils import visualize
from utils.files import atomic_path
from utils.visualize import LivePlot, change_marks, image_grid, plot_history, save_grid, save_history_plot


def history(num_steps: int = 4, fid_epochs: tuple[int, ...] = ()) -> dict:
    steps = [{"epoch": 1 + i // 2, "step": 50 * (i + 1), "loss_d": 1.0 + i, "loss_g": 2.0 - 0.1 * i,
              "d_real": 0.7, "d_fake": 0.3, "seconds": 1.0 * i} for i in range(num_steps)]
    epochs = [{"epoch": e, "seconds": 10.0, "images_per_s": 100.0} | ({"fid": 200.0 / e} if e in fid_epochs else {})
              for e in range(1, 4)]
    return {"steps": steps, "epochs": epochs}


def test_image_grid_tiles_64_images_into_8x8_with_padding():
    grid = image_grid(torch.rand(64, 3, 64, 64) * 2 - 1)
    assert grid.shape == (3, 8 * (64 + 2) + 2, 8 * (64 + 2) + 2) == (3, 530, 530)
    assert grid.dtype == torch.uint8


@pytest.mark.parametrize("value, pixel", [(-1.0, 0), (0.0, 128), (1.0, 255)])
def test_image_grid_maps_the_fixed_range_minus_one_to_one(value, pixel):
    # Constant images: per-image or per-grid min-max scaling would turn all of them black (or NaN).
    grid = image_grid(torch.full((4, 3, 8, 8), value), nrow=2)
    first_tile = grid[:, 2:10, 2:10]
    assert (first_tile == pixel).all()


def test_image_grid_tiles_uint8_images_unchanged():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    grid = image_grid(images, nrow=2)
    assert grid.shape == (3, 22, 22)
    assert torch.equal(grid[:, 2:10, 2:10], images[0])
    assert torch.equal(grid[:, 12:20, 12:20], images[3])


def test_save_grid_writes_the_grid_as_png_and_leaves_no_temp_files(tmp_path):
    images = torch.rand(64, 3, 16, 16) * 2 - 1
    path = save_grid(images, tmp_path / "a" / "b" / "grid.png")

    assert path == tmp_path / "a" / "b" / "grid.png"
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (146, 146)
        pixels = np.asarray(png.convert("RGB"))
    assert np.array_equal(pixels, image_grid(images).permute(1, 2, 0).numpy())
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "grid.png"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_plot_history_has_loss_and_score_panels_plus_fid_when_measured():
    import matplotlib.pyplot as plt

    fig = plot_history(history())
    try:
        assert len(fig.axes) == 2
        losses, scores = fig.axes
        assert list(losses.lines[0].get_xdata()) == [50, 100, 150, 200]
        assert list(losses.lines[0].get_ydata()) == [1.0, 2.0, 3.0, 4.0]
        assert 0.5 in scores.lines[-1].get_ydata()  # the "can't tell" reference line
    finally:
        plt.close(fig)

    fig = plot_history(history(fid_epochs=(1, 3)), Figure())
    fid = fig.axes[2]
    assert len(fig.axes) == 3
    assert list(fid.lines[0].get_xdata()) == [1, 3]
    assert list(fid.lines[0].get_ydata()) == [200.0, 200.0 / 3]


@pytest.mark.parametrize("empty", [{}, {"steps": [], "epochs": []}])
def test_plot_history_of_an_empty_history_draws_empty_panels(empty):
    fig = plot_history(empty, Figure())
    assert len(fig.axes) == 2
    assert len(fig.axes[0].lines[0].get_xdata()) == 0


def test_save_history_plot_writes_a_png(tmp_path):
    path = save_history_plot(history(fid_epochs=(2,)), tmp_path / "history.png")
    with Image.open(path) as png:
        assert png.format == "PNG"
        width, height = png.size
    assert width > 2 * height  # three panels side by side
    assert [p.name for p in tmp_path.iterdir()] == ["history.png"]


class FakeDisplay:
    """Stands in for IPython.display.display: records what would be shown and redrawn."""

    def __init__(self):
        self.shown, self.updates = [], []

    def __call__(self, obj, display_id=False):
        self.shown.append(obj)
        assert display_id is True  # needed to redraw the same output in place
        return self

    def update(self, obj):
        self.updates.append(obj)


@pytest.fixture
def fake_display(monkeypatch):
    ipython_display = pytest.importorskip("IPython.display")
    fake = FakeDisplay()
    monkeypatch.setattr(ipython_display, "display", fake)
    return fake


def grid_array(seed: int = 0) -> np.ndarray:
    images = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return image_grid(images).permute(1, 2, 0).numpy()


def shown_png(picture) -> np.ndarray:
    with Image.open(io.BytesIO(picture.data)) as png:
        return np.asarray(png.convert("RGB"))


def test_live_plot_does_nothing_outside_jupyter(fake_display):
    live = LivePlot(every_seconds=0)
    for _ in range(3):
        live.update(history(), force=True)
    live.update({}, grid=grid_array(), force=True)
    live.close()
    assert fake_display.shown == [] and fake_display.updates == []


def test_live_plot_in_jupyter_redraws_one_output_at_most_every_n_seconds(monkeypatch, fake_display):
    import matplotlib.pyplot as plt

    monkeypatch.setattr(visualize, "in_notebook", lambda: True)
    grid = grid_array()
    open_figures = plt.get_fignums()
    live = LivePlot(every_seconds=3600)

    live.update(history(), grid, title="epoch 1")
    live.update(history(num_steps=6))  # within every_seconds: skipped
    live.update(history(num_steps=8, fid_epochs=(1,)), force=True)

    assert len(fake_display.shown) == 1 and len(fake_display.updates) == 1
    for picture in fake_display.shown + fake_display.updates:
        assert picture.format == "png" and picture.data.startswith(b"\x89PNG")
    assert plt.get_fignums() == open_figures  # nothing left open in pyplot

    live.close()
    live.update(history(), force=True)
    assert len(fake_display.shown) == 2  # after close, a new output


def test_live_plot_keeps_the_last_grid_on_screen_between_epochs(monkeypatch, fake_display):
    """Mid-epoch redraws pass no grid: the picture must still show the last epoch's, not lose it."""
    monkeypatch.setattr(visualize, "in_notebook", lambda: True)
    live = LivePlot(every_seconds=0)
    live.update(history(), force=True)
    without_grid = shown_png(fake_display.shown[0])

    live.update(history(), grid=grid_array(), title="epoch 1", force=True)
    with_grid = shown_png(fake_display.updates[-1])
    live.update(history(num_steps=5), force=True)  # a mid-epoch redraw
    mid_epoch = shown_png(fake_display.updates[-1])

    assert with_grid.shape[1] > without_grid.shape[1]  # the grid is drawn beside the curves
    assert mid_epoch.shape == with_grid.shape


def test_plot_history_marks_where_a_setting_changed():
    changed = history() | {"changes": [{"epoch": 2, "step": 100, "field": "lr_g", "from": 0.0002, "to": 0.001},
                                       {"epoch": 2, "step": 100, "field": "epochs", "from": 2, "to": 4}]}
    assert change_marks(changed) == [(100, "lr_g 0.0002 -> 0.001, epochs 2 -> 4")]

    fig = plot_history(changed, Figure())

    for ax in fig.axes[:2]:
        marks = [line for line in ax.lines if list(line.get_xdata()) == [100, 100]]
        assert len(marks) == 1
    assert "lr_g 0.0002 -> 0.001" in fig.axes[0].texts[0].get_text()
    assert not plot_history(history(), Figure()).axes[0].texts  # no change, no mark


def test_change_labels_sit_in_a_band_above_the_panel_crossing_no_curve_title_or_each_other():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    changed = history(num_steps=8) | {"changes": [
        {"epoch": 2, "step": 100, "field": "lr_g", "from": 0.0002, "to": 0.001},
        {"epoch": 3, "step": 150, "field": "batch_size", "from": 64, "to": 128}]}
    fig = plot_history(changed, Figure(figsize=(10, 3.5), layout="constrained"))
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    losses = fig.axes[0]
    panel = losses.get_window_extent(renderer)
    labels = [text.get_window_extent(renderer) for text in losses.texts]
    title = losses.title.get_window_extent(renderer)

    assert len(labels) == 2 and all(text.get_fontsize() >= 9 for text in losses.texts)
    for label in labels:
        assert label.y0 >= panel.y1  # above the axes: no curve is drawn there
        assert label.y1 <= title.y0  # under the title
        assert fig.bbox.x0 <= label.x0 and label.x1 <= fig.bbox.x1  # not cut off
    assert labels[0].y1 <= labels[1].y0  # one row per change


class Recording(LivePlot):
    """A LivePlot that notes (epochs done, points on the D-loss curve) of every picture it draws."""

    def __init__(self):
        super().__init__(every_seconds=0, max_share=1.0)
        self.seen = []

    def figure(self, history):
        fig = super().figure(history)
        self.seen.append((len(history["epochs"]), len(fig.axes[0].lines[0].get_xdata())))
        return fig


def tiny_cpu_run(tmp_path, epochs: int, live_plot=None):
    """6 steps of 16 images an epoch, fewer than log_every: on a GPU nothing would be logged until the epoch ends."""
    from utils.config import TrainConfig
    from utils.training import train

    config = TrainConfig(image_size=16, latent_dim=16, g_width=8, d_width=8, batch_size=16, epochs=epochs,
                         log_every=100, device="cpu", amp="off", num_samples=16, out=str(tmp_path / "run"))
    images = torch.randint(0, 256, (96, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return train(config, progress=False, images=images, live_plot=live_plot)


def test_a_cpu_run_shows_a_point_per_step_live_and_in_the_whole_run_plot(tmp_path, monkeypatch, fake_display):
    """The history itself has a point per step on the CPU, so the plot after training is the live one's."""
    monkeypatch.setattr(visualize, "in_notebook", lambda: True)
    live = Recording()
    result = tiny_cpu_run(tmp_path, epochs=2, live_plot=live)

    during_epoch_1 = [points for epochs_done, points in live.seen if epochs_done == 0]
    assert during_epoch_1[0] == 0  # the picture is drawn before the first step, above what the epochs print
    assert during_epoch_1[1:] == list(range(1, 6 + 1))  # then a point per step
    assert live.seen[-1] == (2, 12)  # at the end every step of both epochs is on the curve
    assert len(fake_display.shown) == 1  # one output, redrawn in place
    whole_run = plot_history(result.history, Figure())
    assert list(whole_run.axes[0].lines[0].get_xdata()) == list(range(1, 12 + 1))


def test_a_resumed_runs_live_plot_starts_from_its_saved_history(tmp_path, monkeypatch, fake_display):
    tiny_cpu_run(tmp_path, epochs=1)
    monkeypatch.setattr(visualize, "in_notebook", lambda: True)
    live = Recording()
    tiny_cpu_run(tmp_path, epochs=2, live_plot=live)

    assert live.seen[0] == (1, 6)  # before its first step: epoch 1's six steps, from the checkpoint
    assert [points for _, points in live.seen[1:7]] == list(range(7, 12 + 1)) and live.seen[-1] == (2, 12)


def test_live_plot_redraws_rarer_when_a_redraw_is_slow(monkeypatch, fake_display):
    """A redraw that takes 2 s (a busy 2-core CPU) must not take more than max_share of the training's time."""
    monkeypatch.setattr(visualize, "in_notebook", lambda: True)
    clock = [100.0]
    monkeypatch.setattr(visualize.time, "monotonic", lambda: clock[0])

    class Slow(LivePlot):
        def _render(self, history):
            clock[0] += 2.0  # the redraw takes 2 s
            return b"\x89PNG"

    live = Slow(every_seconds=5, max_share=0.2)
    live.update(history())
    for _ in range(7):  # 7 s after the redraw ended: past every_seconds, within 4 x 2 s
        clock[0] += 1.0
        live.update(history())
    assert len(fake_display.shown) == 1 and not fake_display.updates
    clock[0] += 1.0  # 8 s: the redraw took 2 of the last 10 s
    live.update(history())
    assert len(fake_display.updates) == 1
    live.update(history(), force=True)  # an epoch's end is always drawn
    assert len(fake_display.updates) == 2
