"""Comparing runs (utils/compare.py) on real tiny runs trained here."""

import contextlib
import io
import itertools
import json
import os
import shutil

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from PIL import Image
from torch import nn

from utils.compare import FIGURE_WIDTH, compare_runs, list_runs
from utils.config import TrainConfig
from utils.errors import UserError
from utils.models import Generator
from utils.run import CHECKPOINT
from utils.training import train

IMAGES = torch.randint(0, 256, (128, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
BASE = dict(image_size=16, latent_dim=16, g_width=8, d_width=8, epochs=2, device="cpu", num_samples=16, log_every=2,
            amp="off", batch_size=32)

pytestmark = pytest.mark.usefixtures("one_thread")


class LeakyGenerator(nn.Sequential):
    """Notebook 03's own generator: the built-in one with LeakyReLU(0.2) in place of every ReLU."""

    def __init__(self):
        super().__init__(*[nn.LeakyReLU(0.2) if isinstance(layer, nn.ReLU) else layer
                           for layer in Generator(16, 16, 8)])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Sibling runs as notebook 03 makes them: the defaults, another lr_g, another batch size; then the defaults with
    your own generator, and a run of another image size."""
    root = tmp_path_factory.mktemp("compare")
    changes = (("a", {}), ("b", {"lr_g": 1e-3}), ("c", {"batch_size": 64}))
    made = [train(TrainConfig(**BASE | change, out=str(root / "generated" / name)), progress=False,
                  images=IMAGES).run_dir for name, change in changes]
    torch.manual_seed(0)
    own = train(TrainConfig(**BASE, out=str(root / "generated" / "own")), progress=False, images=IMAGES,
                generator=LeakyGenerator()).run_dir
    big = train(TrainConfig(**BASE | {"image_size": 32}, out=str(root / "generated" / "big")), progress=False,
                images=torch.zeros(64, 3, 32, 32, dtype=torch.uint8)).run_dir
    trained_in_order(*made, own, big)
    return root, made, own


def trained_in_order(*run_dirs):
    """Files' times 10 s apart, in this order (a file system may give runs trained in one second the same time)."""
    for number, run_dir in enumerate(run_dirs):
        for name in ("config.json", "history.json", "checkpoint.pt"):
            os.utime(run_dir / name, (1e9 + 10 * number, 1e9 + 10 * number))


def sibling(run_dir, name, loss_g_times=1.0, **settings):
    """A copy of a real run under another folder name, with some settings and G's losses changed by hand."""
    copy = run_dir.parent / name
    shutil.copytree(run_dir, copy)
    TrainConfig.from_dict(TrainConfig.load(copy / "config.json").to_dict() | settings).save(copy / "config.json")
    history = json.loads((copy / "history.json").read_text())
    for record in history["steps"]:
        record["loss_g"] *= loss_g_times
    (copy / "history.json").write_text(json.dumps(history))
    return copy


@pytest.fixture(scope="module")
def many(runs):
    """12 runs with long folder names: the real ones, copies with other lr_g and beta1, one diverged (G loss in
    the thousands, as in "Make D win")."""
    root, made, own = runs
    long = "dcgan-16px-batch_size=32-latent_dim=16-g_width=8-d_width=8-num_samples=16"
    copies = [sibling(made[i % 3], f"{long}-try-{i:02d}", loss_g_times=3000.0 if i == 4 else 1.0,
                      lr_g=1e-4 * (i + 1), beta1=0.5 + 0.03 * i) for i in range(8)]
    return [*made, own, *copies]


def table(run_dirs, **fid) -> str:
    """The table compare_runs prints outside a notebook, and the run folders under it."""
    with contextlib.redirect_stdout(io.StringIO()) as out:
        compare_runs(run_dirs, **fid)
    return out.getvalue()[out.getvalue().index("| # |"):]


def table_rows(run_dirs, **fid) -> list[list[str]]:
    return [line.strip("| ").split(" | ") for line in table(run_dirs, **fid).split("\n\n")[0].splitlines()]


def labels(run_dirs) -> list[str]:
    return [row[3] for row in table_rows(run_dirs)[2:]]


def test_runs_are_chosen_by_size_and_the_last_n_or_as_a_list_and_a_folder_not_a_run_is_refused(runs, capsys):
    root, made, own = runs
    generated = root / "generated"
    (generated / "notes").mkdir()  # not a run
    assert list_runs(generated, image_size=16) == [*made, own] and len(list_runs(generated)) == 5
    assert list_runs(generated, image_size=16, last=2) == [made[2], own]
    os.utime(made[0] / "history.json")  # a run trained again (resumed) is the last one trained
    assert list_runs(generated, image_size=16)[-1] == made[0]
    trained_in_order(*made, own, generated / "big")

    fig = compare_runs(root=generated, image_size=16, last=2)
    assert "| 1 | - | 2 |" in capsys.readouterr().out and len(fig.axes) == 2 + 3  # two grids, three panels
    compare_runs([made[2], made[0]])
    table = capsys.readouterr().out
    assert table.index(str(made[2])) < table.index(str(made[0])) and str(own) not in table
    with pytest.raises(UserError, match="no runs under .* of 8x8 faces"):
        compare_runs(root=generated, image_size=8)
    with pytest.raises(UserError, match="no runs among the folders given"):
        compare_runs([])
    with pytest.raises(UserError) as refused:
        compare_runs([made[0], made[1].with_name("bb"), generated / "notes"])
    message = str(refused.value)
    assert "\n" not in message and str(made[0]) not in message
    assert f"{made[1].with_name('bb')} does not exist; {generated / 'notes'} is not a run folder" in message


def test_each_run_is_labelled_by_what_it_changed_in_the_table(runs):
    _, made, own = runs
    header, _, *rows = table_rows(made, fid={made[1]: 123.456})
    assert header == ["#", "FID", "epochs", "what differs", "D / G loss", "D(x) / D(G(z))", "seen"]
    assert [row[:4] for row in rows] == [["1", "-", "2", "common settings"], ["2", "123.5", "2", "lr_g=0.001"],
                                         ["3", "-", "2", "batch_size=64"]]
    assert table(made).endswith(f"1. `{made[0]}`\n2. `{made[1]}`\n3. `{made[2]}`\n")
    assert labels(made[1:]) == ["batch_size=32, lr_g=0.001", "batch_size=64"]  # lr_g: the recipe's is the reference
    assert labels([*made, own]) == ["common settings", "lr_g=0.001", "batch_size=64", "G=LeakyGenerator"]
    twin = sibling(made[0], "a-twin")  # same settings, same networks: the folder names tell them apart
    longer = sibling(made[0], "a5", epochs=5)
    assert labels([made[0], twin, made[1]]) == ["common settings", "common settings", "lr_g=0.001"]
    assert table_rows([made[0], longer])[3][2] == "2 of 5"  # 2 done of the 5 it is set to
    for copy in (twin, longer):
        shutil.rmtree(copy)


def text_boxes(fig, renderer):
    """(what, bbox) of every visible text the figure draws outside its images: titles, tick and axis labels."""
    boxes = []
    for ax in (ax for ax in fig.axes if ax.get_visible()):
        texts = [("title", ax.title), ("xlabel", ax.xaxis.label), ("ylabel", ax.yaxis.label)]
        if ax.axison:  # the tick labels drawn: those inside the axis' limits
            (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
            texts += [("tick", t) for t in ax.get_xticklabels() if x0 <= t.get_position()[0] <= x1]
            texts += [("tick", t) for t in ax.get_yticklabels() if y0 <= t.get_position()[1] <= y1]
        boxes += [(f"{what} {text.get_text()!r} of axes {fig.axes.index(ax)}", text.get_window_extent(renderer))
                  for what, text in texts if text.get_visible() and text.get_text()]
    return boxes


def overlapping(a, b, tolerance=0.5) -> bool:
    return (min(a.x1, b.x1) - max(a.x0, b.x0) > tolerance) and (min(a.y1, b.y1) - max(a.y0, b.y0) > tolerance)


@pytest.mark.parametrize("count", [1, 6, 13])
def test_no_text_overlaps_another_or_an_axes_for_1_to_12_runs_with_long_names_and_of_13_the_last_12_show(many, count,
                                                                                                         capsys):
    fig = compare_runs(([many[0]] + many)[-count:])
    out = capsys.readouterr().out
    assert f"{min(count, 12)}. `{many[-1]}`" in out and f"{min(count, 12) + 1}. `" not in out
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    texts = text_boxes(fig, renderer)
    axes = [(f"axes {i}", ax.get_window_extent(renderer)) for i, ax in enumerate(fig.axes) if ax.get_visible()]

    assert fig.get_size_inches()[0] == FIGURE_WIDTH
    assert len([what for what, _ in texts if what.startswith("title")]) == min(count, 12) + 3  # one a grid and panel
    for (what_a, a), (what_b, b) in itertools.combinations(texts + axes, 2):
        assert not overlapping(a, b), f"{what_a} overlaps {what_b}"
    for what, box in texts:
        assert fig.bbox.x0 - 1 <= box.x0 and box.x1 <= fig.bbox.x1 + 1 and fig.bbox.y0 - 1 <= box.y0 \
            and box.y1 <= fig.bbox.y1 + 1, f"{what} is cut off by the figure's edge"


def test_a_diverged_run_does_not_flatten_the_others_and_is_said(many):
    fig = compare_runs(many[-6:])  # the diverged copy (try-04) is the 3rd of these
    g_loss = fig.axes[6 + 1]
    diverged = max(g_loss.lines[2].get_ydata())
    others = [max(line.get_ydata()) for i, line in enumerate(g_loss.lines) if i != 2]
    assert diverged > 1000 and max(others) <= g_loss.get_ylim()[1] < diverged / 100
    assert "run 3 off the scale" in g_loss.get_title() and "off the scale" not in fig.axes[6].get_title()


def test_curves_line_up_by_epoch_whatever_the_batch_size_and_a_single_point_shows(runs):
    _, made, _ = runs
    small = json.loads((made[0] / "history.json").read_text())
    short = made[1].with_name("one-logged-point")  # a 1-epoch run shorter than log_every
    shutil.copytree(made[1], short)
    (short / "history.json").write_text(json.dumps(small | {"steps": small["steps"][:1]}))

    fig = compare_runs([*made, short])

    d_loss = fig.axes[4]  # after the four grids
    by_epoch = [[0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]] * 2 + [[0.5, 1.0, 1.5, 2.0]]  # 4 steps an epoch, 2 at 64
    assert [list(line.get_xdata()) for line in d_loss.lines[:3]] == by_epoch
    assert len(d_loss.lines[3].get_xdata()) == 1 and d_loss.lines[3].get_marker() == "o"
    assert [ax.get_title().replace("\n", " ") for ax in fig.axes[:3]] == [
        "1: common settings epoch 2", "2: lr_g=0.001 epoch 2", "3: batch_size=64 epoch 2"]
    shutil.rmtree(short)


def test_runs_with_identical_curves_all_stay_visible(runs):
    """The same settings in two folders train the same curves: each run keeps its own colour on screen (hollow
    markers of its own shape, spread in turn along the line), and the titles say which runs they are."""
    _, made, _ = runs
    twin = sibling(made[0], "a-twin")
    fig = compare_runs([made[0], twin, made[1]])
    FigureCanvasAgg(fig).draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    box = fig.axes[3].get_window_extent()  # the D loss panel, after the three grids
    panel = pixels[int(fig.bbox.height - box.y1):int(fig.bbox.height - box.y0), int(box.x0):int(box.x1)]
    lines = fig.axes[3].lines
    for number in range(3):
        colour = np.array(to_rgb(lines[number].get_color())) * 255
        assert (np.abs(panel - colour).max(axis=-1) < 20).sum() > 20, f"run {number + 1} is hidden"
    assert lines[0].get_marker() != lines[1].get_marker() and lines[2].get_marker() in ("None", "o", "")
    titles = [ax.get_title().replace("\n", " ") for ax in fig.axes[:3]]
    assert "(same curves as 2)" in titles[0] and "(same curves as 1)" in titles[1] and "same" not in titles[2]
    shutil.rmtree(twin)


def damaged_copy(run_dir, damage, file, keep_checkpoint):
    broken = run_dir.with_name(f"{damage}-{file.replace('/', '_')}-{keep_checkpoint}")
    shutil.copytree(run_dir, broken)
    path = broken / file
    if damage == "truncate":
        path.write_text(path.read_text()[:40])
    elif damage == "edit":
        value = json.loads(path.read_text())
        if file == "history.json":
            value["steps"][0]["loss_g"] = "big"
        else:
            value["epochs"] = -3
        path.write_text(json.dumps(value))
    else:  # a small file announcing a huge image (utils.visualize.read_grid, tested with the GIF)
        Image.new("1", (20000, 20000)).save(path)
    if not keep_checkpoint:
        (broken / CHECKPOINT).unlink()
    return broken, path


@pytest.mark.parametrize("damage, file", [("truncate", "history.json"), ("edit", "history.json"),
                                          ("truncate", "config.json"), ("edit", "config.json")])
def test_a_damaged_json_file_of_a_run_with_a_checkpoint_is_read_from_the_checkpoint(runs, damage, file):
    _, made, _ = runs
    broken, _ = damaged_copy(made[1], damage, file, keep_checkpoint=True)
    shown = table([made[0], broken])
    assert "unreadable" not in shown
    assert shown.replace(str(broken), "") == table([made[0], made[1]]).replace(str(made[1]), "")
    shutil.rmtree(broken)


@pytest.mark.parametrize("damage, file, said", [
    ("truncate", "history.json", "history.json is not valid JSON"),
    ("truncate", "config.json", "config.json is not valid JSON"),
    ("edit", "history.json", "history.json is not a training history (steps and epochs with numbers in epoch,"),
    ("edit", "config.json", "config.json: config field 'epochs'"),
    ("announce", "samples/epoch_002.png", "epoch_002.png is not a readable image (Image size (400000000 pixels)"),
])
def test_a_damaged_run_is_shown_as_unreadable_with_one_line_naming_the_file(runs, damage, file, said, capsys):
    """Without a checkpoint to recover them from, damaged files make a run unreadable."""
    _, made, _ = runs
    broken, path = damaged_copy(made[1], damage, file, keep_checkpoint=False)

    fig = compare_runs([made[0], broken])

    lines = capsys.readouterr().out.splitlines()
    [line] = [line for line in lines if said in line]
    assert str(path) in line and "Traceback" not in "\n".join(lines)
    assert f"2. `{broken}` (unreadable: see above)" in lines
    assert fig.axes[0].get_title().startswith("1: ")
    shutil.rmtree(broken)
