"""Comparing runs (utils/compare.py) on real tiny runs trained here."""

import itertools
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb
from matplotlib.backends.backend_agg import FigureCanvasAgg
from torch import nn

from utils.compare import (FIGURE_WIDTH, TABLE_WIDTH_PX, compare_runs, comparison_table, differing_fields,
                           epoch_positions, list_runs, plot_runs, run_labels, table_width_px)
from utils.config import TrainConfig
from utils.errors import UserError
from utils.models import Generator
from utils.run import CHECKPOINT
from utils.training import train

IMAGES = torch.randint(0, 256, (128, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
BASE = dict(image_size=16, latent_dim=16, g_width=8, d_width=8, epochs=2, device="cpu", num_samples=16, log_every=2,
            amp="off")

pytestmark = pytest.mark.usefixtures("one_thread")


class LeakyGenerator(nn.Sequential):
    """Notebook 03's own generator: the built-in one with LeakyReLU(0.2) in place of every ReLU."""

    def __init__(self):
        super().__init__(*[nn.LeakyReLU(0.2) if isinstance(layer, nn.ReLU) else layer
                           for layer in Generator(16, 16, 8)])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three sibling runs as notebook 03 makes them: the defaults, another lr_g, another batch size; then a
    run of the defaults' settings with your own generator, and a run of another image size."""
    root = tmp_path_factory.mktemp("compare")
    made = []
    for name, change in (("a", {}), ("b", {"lr_g": 1e-3}), ("c", {"batch_size": 64})):
        config = TrainConfig(**BASE | {"batch_size": 32} | change, out=str(root / "generated" / name))
        made.append(train(config, progress=False, images=IMAGES).run_dir)
    torch.manual_seed(0)
    own = train(TrainConfig(**BASE | {"batch_size": 32}, out=str(root / "generated" / "own")), progress=False,
                images=IMAGES, generator=LeakyGenerator()).run_dir
    big = train(TrainConfig(**BASE | {"image_size": 32, "batch_size": 32}, out=str(root / "generated" / "big")),
                progress=False, images=torch.zeros(64, 3, 32, 32, dtype=torch.uint8)).run_dir
    trained_in_order(*made, own, big)
    return root, made, own


def trained_in_order(*run_dirs):
    """Files' times 10 s apart, in this order (a file system may give runs trained in one second the same time)."""
    for number, run_dir in enumerate(run_dirs):
        for name in ("config.json", "history.json", "checkpoint.pt"):
            os.utime(run_dir / name, (1e9 + 10 * number, 1e9 + 10 * number))


def sibling(run_dir, name, **settings):
    """A copy of a real run under another (long) folder name, with some settings and its losses changed by hand."""
    copy = run_dir.parent / name
    shutil.copytree(run_dir, copy)
    config = TrainConfig.load(copy / "config.json")
    TrainConfig.from_dict(config.to_dict() | {k: v for k, v in settings.items() if k != "loss_g_times"}).save(
        copy / "config.json")
    if "loss_g_times" in settings:  # a diverged run: G loss in the thousands, as in "Make D win"
        history = json.loads((copy / "history.json").read_text())
        for record in history["steps"]:
            record["loss_g"] *= settings["loss_g_times"]
        (copy / "history.json").write_text(json.dumps(history))
    return copy


@pytest.fixture(scope="module")
def many(runs, tmp_path_factory):
    """12 runs with long folder names: the real ones, copies with other lr_g and beta1, one diverged."""
    root, made, own = runs
    long = "dcgan-16px-batch_size=32-latent_dim=16-g_width=8-d_width=8-num_samples=16"
    copies = [sibling(made[i % 3], f"{long}-try-{i:02d}", lr_g=1e-4 * (i + 1), beta1=0.5 + 0.03 * i,
                      **({"loss_g_times": 3000.0} if i == 4 else {})) for i in range(8)]
    return [*made, own, *copies]


def test_list_runs_finds_the_run_folders_of_one_image_size_least_recently_trained_first(runs):
    root, made, own = runs
    assert list_runs(root / "generated", image_size=16) == [*made, own]
    assert len(list_runs(root / "generated")) == 5
    (root / "generated" / "notes").mkdir()  # not a run
    assert list_runs(root / "generated", image_size=16) == [*made, own]
    os.utime(made[0] / "history.json")  # a run trained again (resumed) is the last one trained
    assert list_runs(root / "generated", image_size=16)[-1] == made[0]
    trained_in_order(*made, own, root / "generated" / "big")


def test_runs_are_chosen_by_the_last_n_a_name_pattern_or_a_list(runs, capsys):
    root, made, own = runs
    assert list_runs(root / "generated", image_size=16, last=2) == [made[2], own]
    assert list_runs(root / "generated", match="[ab]") == made[:2]
    assert list_runs(root / "generated", match="*o*", last=1) == [own]

    fig = compare_runs(root=root / "generated", image_size=16, last=2)
    assert "| 1 | - | 2 |" in capsys.readouterr().out and len(fig.axes) == 2 + 3  # two grids, three panels
    compare_runs([made[2], made[0], own], match="[ac]")
    table = capsys.readouterr().out
    assert table.index(str(made[2])) < table.index(str(made[0])) and str(own) not in table
    with pytest.raises(UserError, match="no runs under .* matching 'nothing\\*'"):
        compare_runs(root=root / "generated", match="nothing*")


def test_the_table_shows_one_epochs_column_and_only_the_fields_that_differ(runs):
    _, made, _ = runs
    configs = [TrainConfig.load(run / "config.json") for run in made]
    assert differing_fields(configs) == ["batch_size", "lr_g"]

    table = comparison_table(made, fid={made[1]: 123.456})

    header, rule, *rows = table.splitlines()
    assert header == "| # | FID | epochs | batch | lr_g | D / G loss | D(x) / D(G(z)) | seen |"
    assert rows[0].startswith("| 1 | - | 2 | 32 | 0.0002 |")
    assert rows[1].startswith("| 2 | 123.5 | 2 | 32 | 0.001 |")
    assert rows[2].startswith("| 3 | - | 2 | 64 | 0.0002 |")
    assert table.endswith(f"1. `{made[0]}`\n2. `{made[1]}`\n3. `{made[2]}`")
    assert run_labels(made) == ["common settings", "lr_g=0.001", "batch_size=64"]  # each label: its tweak
    assert run_labels(made[1:]) == ["batch_size=32, lr_g=0.001", "batch_size=64"]  # lr_g: the recipe's is the reference
    assert run_labels(made[:1]) == ["common settings"]  # a run alone
    twin = made[0].with_name("a-twin")  # same settings, same networks: the folder names tell them apart
    shutil.copytree(made[0], twin)
    assert run_labels([made[0], twin, made[1]]) == ["common settings", "common settings", "lr_g=0.001"]
    shutil.rmtree(twin)

    TrainConfig.from_dict(configs[0].to_dict() | {"epochs": 5}).save(made[2].parent / "a5.json")
    shutil.copytree(made[0], made[0].with_name("a5"))
    shutil.move(made[2].parent / "a5.json", made[0].with_name("a5") / "config.json")
    header, _, first, longer = comparison_table([made[0], made[0].with_name("a5")]).splitlines()[:4]
    assert header.count("epochs") == 1 and longer.startswith("| 2 | - | 2 of 5 |")  # 2 done of the 5 it is set to
    shutil.rmtree(made[0].with_name("a5"))


def test_your_own_networks_are_named_in_the_labels_and_the_table(runs):
    _, made, own = runs
    assert run_labels([made[0], own]) == ["common settings", "G=LeakyGenerator"]
    assert run_labels([*made, own]) == ["common settings", "lr_g=0.001", "batch_size=64", "G=LeakyGenerator"]
    header, _, builtin, leaky = comparison_table([made[0], own]).splitlines()[:4]
    assert "| G |" in header and "| built-in |" in builtin and "| LeakyGenerator |" in leaky


def test_the_table_fits_a_notebook_for_12_runs(many):
    table = comparison_table(many)
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.split("\n\n")[0].splitlines()]
    del rows[1]  # the |---| rule
    assert table_width_px(rows) <= TABLE_WIDTH_PX
    assert rows[0][:3] == ["#", "FID", "epochs"] and rows[0].count("epochs") == 1
    assert len(rows) == 1 + 12


def draw(fig):
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def text_boxes(fig, renderer):
    """(what, bbox) of every visible text the figure draws outside its images: titles, tick and axis labels, legends."""
    boxes = []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        texts = [("title", ax.title), ("xlabel", ax.xaxis.label), ("ylabel", ax.yaxis.label)]
        if ax.axison:  # the tick labels drawn: those inside the axis' limits
            (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
            texts += [("tick", t) for t in ax.get_xticklabels() if x0 <= t.get_position()[0] <= x1]
            texts += [("tick", t) for t in ax.get_yticklabels() if y0 <= t.get_position()[1] <= y1]
        for what, text in texts:
            if text.get_visible() and text.get_text():
                boxes.append((f"{what} {text.get_text()!r} of axes {fig.axes.index(ax)}", text.get_window_extent(renderer)))
    for sub in [fig, *fig.subfigs]:
        for legend in sub.legends:
            boxes.append(("legend", legend.get_window_extent(renderer)))
    return boxes


def overlapping(a, b, tolerance=0.5) -> bool:
    return (min(a.x1, b.x1) - max(a.x0, b.x0) > tolerance) and (min(a.y1, b.y1) - max(a.y0, b.y0) > tolerance)


@pytest.mark.parametrize("count", [1, 2, 6, 12])
def test_no_text_overlaps_another_or_an_axes_for_1_to_12_runs_with_long_names(many, count):
    runs = many[-count:] if count < 12 else many
    fig = plot_runs(runs)
    renderer = draw(fig)
    texts = text_boxes(fig, renderer)
    axes = [(f"axes {i}", ax.get_window_extent(renderer)) for i, ax in enumerate(fig.axes) if ax.get_visible()]
    whole = fig.bbox

    assert fig.get_size_inches()[0] == FIGURE_WIDTH
    assert len([what for what, _ in texts if what.startswith("title")]) == count + 3  # a title per grid and panel
    for (what_a, a), (what_b, b) in itertools.combinations(texts, 2):
        assert not overlapping(a, b), f"{what_a} overlaps {what_b}"
    for (what, box), (name, ax) in itertools.product(texts, axes):
        assert not overlapping(box, ax), f"{what} overlaps {name}"
    for what, box in texts:
        assert box.x0 >= whole.x0 - 1 and box.x1 <= whole.x1 + 1 and box.y0 >= whole.y0 - 1 and box.y1 <= whole.y1 + 1, \
            f"{what} is cut off by the figure's edge"
    for (name_a, a), (name_b, b) in itertools.combinations(axes, 2):
        assert not overlapping(a, b), f"{name_a} overlaps {name_b}"


def test_a_diverged_run_does_not_flatten_the_others_and_is_said(many):
    fig = plot_runs(many[-6:])  # the diverged copy (try-04) is the 3rd of these
    g_loss = fig.axes[6 + 1]
    others = [max(line.get_ydata()) for i, line in enumerate(g_loss.lines[:6]) if i != 2]
    diverged = max(g_loss.lines[2].get_ydata())

    low, high = g_loss.get_ylim()
    assert diverged > 1000 and high < diverged / 100 and high >= max(others)
    assert "run 3 off the scale" in g_loss.get_title()
    pinned = g_loss.lines[-1]  # where the diverged run is, on the top edge
    assert pinned.get_marker() == "^" and set(pinned.get_ydata()) == {high} and pinned.get_color() == g_loss.lines[2].get_color()
    legend = [text.get_text() for text in fig.subfigs[2].legends[0].get_texts()]
    assert "(G loss up to" in legend[2] and "off the scale" in legend[2]
    assert not any("off the scale" in text for i, text in enumerate(legend) if i != 2)
    assert "off the scale" not in fig.axes[6].get_title()  # D's losses are not affected


def test_curves_line_up_by_epoch_whatever_the_batch_size(runs):
    _, made, _ = runs
    small, large = (json.loads((made[i] / "history.json").read_text()) for i in (0, 2))
    assert epoch_positions(small) == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]   # 4 steps per epoch, each read
    assert epoch_positions(large) == [0.5, 1.0, 1.5, 2.0]                         # 2 steps per epoch

    fig = plot_runs(made)

    d_loss = fig.axes[3]  # after the three grids
    assert [list(line.get_xdata()) for line in d_loss.lines] == [epoch_positions(small)] * 2 + [epoch_positions(large)]
    assert [ax.get_title().replace("\n", " ") for ax in fig.axes[:3]] == [
        f"{n}: {label} epoch 2" for n, label in enumerate(run_labels(made), 1)]


def test_runs_with_identical_curves_all_stay_visible(runs):
    """The same settings in two folders train the same curves: each run keeps its own colour on screen (hollow
    markers of its own shape, spread in turn along the line), and the legend says which runs they are."""
    _, made, _ = runs
    twin = made[0].with_name("a-twin")
    shutil.copytree(made[0], twin)
    try:
        fig = plot_runs([made[0], twin, made[1]])
        draw(fig)
        pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
        box = fig.axes[3].get_window_extent()  # the D loss panel, after the three grids
        panel = pixels[int(fig.bbox.height - box.y1):int(fig.bbox.height - box.y0), int(box.x0):int(box.x1)]
        for number in range(3):
            colour = np.array(to_rgb(fig.axes[3].lines[number].get_color())) * 255
            assert (np.abs(panel - colour).max(axis=-1) < 20).sum() > 20, f"run {number + 1} is hidden"
        lines = fig.axes[3].lines
        assert lines[0].get_marker() != lines[1].get_marker() and lines[2].get_marker() in ("None", "o", "")
        legend = [text.get_text() for text in fig.subfigs[2].legends[0].get_texts()]
        assert legend[0].endswith("(same curves as 2)") and legend[1].endswith("(same curves as 1)")
        assert "same curves" not in legend[2]
    finally:
        shutil.rmtree(twin)


def test_compare_runs_needs_a_run():
    with pytest.raises(UserError, match="at least one run folder"):
        compare_runs([])


def test_folders_that_are_not_runs_are_refused_naming_them(runs):
    root, made, _ = runs
    misspelt = made[1].with_name("bb")
    foreign = root / "generated" / "photos"
    foreign.mkdir(exist_ok=True)
    (foreign / "cat.jpg").write_bytes(b"jpeg")

    with pytest.raises(UserError) as refused:
        compare_runs([made[0], misspelt, foreign])

    message = str(refused.value)
    assert "\n" not in message
    assert f"{misspelt} does not exist (did you mean {made[1]}?)" in message
    assert f"{foreign} is not a run folder" in message and str(made[0]) not in message


def png_announcing(width: int, height: int) -> bytes:
    """A PNG whose header says width x height, with almost no pixel data (what a decompression bomb looks like)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def damage_file(path: Path, damage: str) -> None:
    if damage == "truncate":
        path.write_text(path.read_text()[:40])
    elif damage == "edit":
        value = json.loads(path.read_text())
        if path.name == "history.json":
            value["steps"][0]["loss_g"] = "big"
        else:
            value["epochs"] = -3
        path.write_text(json.dumps(value))
    else:
        path.write_bytes(png_announcing(20000, 20000))


@pytest.mark.parametrize("damage, file", [("truncate", "history.json"), ("truncate", "config.json"),
                                          ("edit", "config.json")])
def test_a_damaged_json_file_of_a_run_with_a_checkpoint_is_read_from_the_checkpoint(runs, damage, file, capsys):
    _, made, _ = runs
    broken = made[1].with_name(f"recovered-{damage}-{file.replace('/', '_')}")
    shutil.copytree(made[1], broken)
    damage_file(broken / file, damage)

    table = comparison_table([made[0], broken])

    assert "unreadable" not in table and table.replace(str(broken), "") == \
        comparison_table([made[0], made[1]]).replace(str(made[1]), "")


@pytest.mark.parametrize("damage, file, said", [
    ("truncate", "history.json", "history.json is not valid JSON"),
    ("truncate", "config.json", "config.json is not valid JSON"),
    ("edit", "history.json", "history.json is unreadable (ValueError: step record 1 lacks a number"),
    ("edit", "config.json", "config.json: config field 'epochs'"),
    ("bomb", "samples/epoch_002.png", "epoch_002.png says it is 20000x20000 pixels"),
])
def test_a_damaged_run_is_shown_as_unreadable_with_one_line_naming_the_file(runs, damage, file, said, capsys):
    """Without a checkpoint to recover them from (see the next test), damaged files make a run unreadable."""
    _, made, _ = runs
    broken = made[1].with_name(f"broken-{damage}-{file.replace('/', '_')}")
    shutil.copytree(made[1], broken)
    (broken / CHECKPOINT).unlink()
    path = broken / file
    damage_file(path, damage)

    fig = compare_runs([made[0], broken])

    lines = capsys.readouterr().out.splitlines()
    [line] = [line for line in lines if said in line]
    assert str(path) in line and "Traceback" not in "\n".join(lines)
    assert f"2. `{broken}` (unreadable: see above)" in lines
    assert fig.axes[0].get_title().startswith("1: ")
    shutil.rmtree(broken)


def test_more_than_12_runs_show_the_last_12_saying_so(many, capsys):
    extra = sibling(many[0], "a-13th-run", lr_g=0.002)

    fig = compare_runs([*many, extra])

    out = capsys.readouterr().out
    assert "showing the last 12 of 13 runs: choose others with last=, match= or a list of run folders" in out
    assert f"`{many[0]}`" not in out and f"12. `{extra}`" in out
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 12 + 3
    shutil.rmtree(extra)


def test_a_run_with_one_logged_point_shows_as_a_dot(runs, tmp_path):
    """A 1-epoch run shorter than log_every has a single point per curve: without a marker it would not show."""
    _, made, _ = runs
    short = made[1].with_name("one-logged-point")
    shutil.copytree(made[1], short)
    history = json.loads((short / "history.json").read_text())
    history["steps"] = history["steps"][:1]
    (short / "history.json").write_text(json.dumps(history))

    fig = compare_runs([made[0], short])

    (d_loss,) = [ax for ax in fig.axes if ax.get_title().startswith("D loss")]
    (single,) = [line for line in d_loss.lines if len(line.get_xdata()) == 1]
    assert single.get_marker() == "o" and single.get_markersize() > 0
