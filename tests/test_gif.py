import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from utils.errors import UserError
from utils import gif
from utils.gif import main, make_gif, show_gif, write_gif
from utils.run import frame_path
from utils.visualize import image_grid, write_png

REPO = Path(__file__).resolve().parents[1]
GRID = 2 * (16 + 2) + 2  # four 16x16 images, two per row
SCALE = 14  # the whole factor that makes a 38 px grid at least 512 px wide (utils.visualize.enlarged)
WIDE = GRID * SCALE


def save_grid(images: torch.Tensor, path: Path, nrow: int = 2) -> np.ndarray:
    """Write `images` as training writes a sample grid; returns the grid's pixels."""
    grid = image_grid(images, nrow).permute(1, 2, 0).numpy()
    write_png(grid, path)
    return grid


def write_run(run_dir: Path, epochs: int, gray: bool = True) -> None:
    """A run folder with one 2x2 grid per epoch; `gray`: epoch e is a uniform gray that brightens with e."""
    for epoch in range(1, epochs + 1):
        gray_level = -1 + 2 * epoch / (epochs + 1) if gray else 0.0
        save_grid(torch.full((4, 3, 16, 16), gray_level), frame_path(run_dir, epoch))


def read_gif(path: Path) -> tuple[list[np.ndarray], list[int], int]:
    """(frames, per-frame durations in ms, loop count) as a GIF viewer sees them."""
    with Image.open(path) as gif:
        frames = [(np.asarray(frame.convert("RGB")), frame.info["duration"]) for frame in ImageSequence.Iterator(gif)]
        return [image for image, _ in frames], [ms for _, ms in frames], gif.info["loop"]


def grid_pixels(frames: list[np.ndarray]) -> list[int]:
    """A pixel inside each frame's first tile, below the label strip."""
    return [frame[len(frame) - WIDE + 5 * SCALE, 5 * SCALE, 0] for frame in frames]


def test_make_gif_has_a_frame_per_epoch_in_order_the_last_held_and_a_long_run_spread(tmp_path, capsys, monkeypatch):
    write_run(tmp_path, epochs=12)
    out = make_gif(tmp_path, frame_ms=120, hold_last_ms=900)
    assert out == tmp_path / "training.gif"
    frames, durations, loop = read_gif(out)
    assert len(frames) == 12 and durations == [120] * 11 + [900] and loop == 0  # loops forever
    height, width, _ = frames[0].shape
    assert width == WIDE and height > WIDE  # enlarged, and the label strip is added above the grid
    assert np.allclose(grid_pixels(frames), [round(255 * epoch / 13) for epoch in range(1, 13)], atol=2)  # in order
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples", "training.gif"]  # no temp files
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(gif, "MAX_FRAMES", 4)
    frames, durations, _ = read_gif(make_gif(tmp_path, hold_last_ms=900))
    assert len(frames) == 4 and durations == [200, 200, 200, 900]
    expected = [round(255 * epoch / 13) for epoch in (1, 5, 8, 12)]   # the first, the last and two between
    assert np.allclose(grid_pixels(frames), expected, atol=2)
    assert capsys.readouterr().out == "gif: 12 grids: animating 4 of them, evenly spread from epoch 1 to epoch 12\n"


def test_make_gif_labels_each_frame_with_its_epoch_and_writes_where_asked(tmp_path):
    write_run(tmp_path, epochs=3, gray=False)  # identical grids: only the labels tell frames apart
    frames, _, _ = read_gif(make_gif(tmp_path, out=tmp_path / "gifs" / "labelled.gif"))
    assert len(frames) == 3 and not (tmp_path / "training.gif").exists()  # a GIF merges identical frames
    strip = frames[0].shape[0] - WIDE
    assert strip > 0
    for a, b in [(0, 1), (1, 2), (0, 2)]:
        assert not np.array_equal(frames[a][:strip], frames[b][:strip])
        assert np.array_equal(frames[a][strip:], frames[b][strip:])
    assert (frames[0][:strip] > 128).any()  # text is drawn, not just a blank strip


def test_small_grids_are_enlarged_by_a_whole_factor_with_sharp_pixels(tmp_path):
    few_colours = torch.randint(0, 4, (4, 3, 16, 16)) / 3 * 2 - 1   # 64 colours: a GIF keeps each one exactly
    grid = save_grid(few_colours, frame_path(tmp_path, 1))
    enlarged = read_gif(make_gif(tmp_path))[0][0][-WIDE:]   # below the label strip
    assert enlarged.shape == (WIDE, WIDE, 3) and WIDE >= 512 > WIDE - GRID
    assert np.array_equal(enlarged, grid.repeat(SCALE, axis=0).repeat(SCALE, axis=1))   # pixel for pixel, sharp
    save_grid(torch.rand(4, 3, 64, 64) * 2 - 1, frame_path(tmp_path / "wide", 1), nrow=8)   # 4 x 66 + 2 = 266 px: x2
    assert read_gif(make_gif(tmp_path / "wide"))[0][0].shape[1] == 2 * 266
    save_grid(torch.rand(8, 3, 64, 64) * 2 - 1, frame_path(tmp_path / "wider", 1), nrow=8)  # 530 px: as it is
    assert read_gif(make_gif(tmp_path / "wider"))[0][0].shape[1] == 530


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_the_memory_of_a_gif_does_not_grow_with_the_epochs(tmp_path):
    """4x the epochs costs no more memory: frames are encoded as read, at most MAX_FRAMES of them (20 here). One
    subprocess makes both GIFs; its peak rises in the second only by what that needs beyond the first."""
    grid = save_grid(torch.rand(4, 3, 16, 16) * 2 - 1, frame_path(tmp_path / "short", 1))
    for run, epochs in (("short", 40), ("long", 160)):
        for epoch in range(1, epochs + 1):
            path = frame_path(tmp_path / run, epoch)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.roll(grid, epoch, axis=1)).save(path)   # every epoch a different grid
    code = ("import resource, sys; from utils import gif; gif.MAX_FRAMES = 20\n"
            "peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux\n"
            "before = peak(); gif.make_gif(sys.argv[1]); short = peak()\n"
            "gif.make_gif(sys.argv[2]); print(short - before, peak() - short)")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "short"), str(tmp_path / "long")], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    short, growth = map(int, result.stdout.split()[-2:])
    assert growth < 8 * 2**20, (short, growth)   # without the cap: +37 MB here


UNREADABLE = r"samples/epoch_002.png is not a readable image \(.+\): delete it, or replace it with that epoch's grid$"


@pytest.mark.parametrize("case,message", [
    ("empty", UNREADABLE), ("text", UNREADABLE), ("truncated", UNREADABLE),
    ("announces 20000 px", r"image \(Image size \(400000000 pixels\) exceeds limit"),   # past Pillow's error
    ("announces 10000 px", r"image \(Image size \(100000000 pixels\) exceeds limit"),   # past Pillow's warning
    ("another size", r"epoch_002.png is not the size of .*epoch_001.png: a GIF needs one frame size"),
])
def test_a_bad_grid_is_refused_in_one_line_naming_it_and_nothing_is_written(tmp_path, case, message):
    write_run(tmp_path, epochs=2)
    grid = frame_path(tmp_path, 2)
    if case in ("empty", "text", "truncated"):
        grid.write_bytes({"empty": b"", "text": b"notes: this is not a PNG"}.get(case, grid.read_bytes()[:60]))
    elif case.startswith("announces"):
        Image.new("1", (int(case.split()[1]),) * 2).save(grid)   # a small file announcing a huge image
    else:
        save_grid(torch.zeros(4, 3, 8, 8), grid)
    with pytest.raises(UserError, match=message):
        make_gif(tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == ["samples"]  # no GIF, no temporary file


@pytest.mark.parametrize("options,message", [
    (dict(frame_ms=5), r"frame_ms \(--frame-ms\) must be 20 to 655,350 milliseconds; got 5 \(GIF stores 1/100 s"),
    (dict(hold_last_ms=-5), r"hold_last_ms \(--hold-last-ms\) must be 20 to 655,350 milliseconds; got -5"),
    (dict(hold_last_ms=700_000), r"hold_last_ms .* got 700000"),
])
def test_durations_a_gif_cannot_hold_are_refused_before_any_work(tmp_path, options, message):
    write_run(tmp_path, epochs=2)
    with pytest.raises(UserError, match=message):
        make_gif(tmp_path, **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples"]


def test_write_gif_holds_the_last_frame_only_when_asked(tmp_path):
    frames = [np.full((10, 12, 3), value, np.uint8) for value in (0, 120, 250)]
    _, durations, loop = read_gif(write_gif(frames, tmp_path / "a.gif", frame_ms=50))
    assert durations == [50, 50, 50] and loop == 0
    assert read_gif(write_gif(frames, tmp_path / "b.gif", frame_ms=50, hold_last_ms=500))[1] == [50, 50, 500]
    assert read_gif(write_gif(frames, tmp_path / "b.gif", frame_ms=20, hold_last_ms=20))[1] == [20, 20, 20]  # shortest
    assert read_gif(write_gif(frames[:1], tmp_path / "c.gif", hold_last_ms=700))[1] == [700]  # one frame: a still


def test_show_gif_tells_where_to_download(tmp_path, monkeypatch, capsys):
    for name in ("COLAB_RELEASE_TAG", "KAGGLE_KERNEL_RUN_TYPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    gif = write_gif([np.zeros((4, 4, 3), np.uint8)], tmp_path / "x.gif")
    for variable, value, said in ((None, None, f"Saved to {gif}"), ("KAGGLE_KERNEL_RUN_TYPE", "Interactive",
                                  "/kaggle/working"), ("COLAB_RELEASE_TAG", "release", f"files.download('{gif}')")):
        if variable:
            monkeypatch.setenv(variable, value)
        show_gif(gif)
        assert said in capsys.readouterr().out


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "utils.gif", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_the_command_line_writes_the_gif_and_prints_its_path(tmp_path, capsys):
    write_run(tmp_path, epochs=3)
    result = run_cli(str(tmp_path), "--out", str(tmp_path / "x.gif"))
    assert result.returncode == 0 and result.stdout.strip() == str(tmp_path / "x.gif"), result.stderr
    assert read_gif(tmp_path / "x.gif")[1] == [200, 200, 2000]  # the documented defaults
    main([str(tmp_path), "--out", str(tmp_path / "y.gif"), "--frame-ms", "70", "--hold-last-ms", "300"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "y.gif")
    assert read_gif(tmp_path / "y.gif")[1] == [70, 70, 300]


@pytest.mark.parametrize("args,message", [
    (["{run}", "--out", "{run}/samples/epoch_001.png"], "error: out (--out) {run}/samples/epoch_001.png is in {run}/"),
    (["{run}", "--out", "{run}"], "error: out (--out) {run} is a folder: pass the name of the file"),
    (["{run}", "--frame-ms", "5"], "error: frame_ms (--frame-ms) must be 20 to 655,350 milliseconds; got 5"),
    (["{run}"], "error: {run}/samples/epoch_004.png is not a readable image (cannot identify image file"),
    (["{run}/nothing"], "error: no sample grids in {run}/nothing/samples: train first"),
])
def test_the_command_line_prints_each_refusal_in_one_line(tmp_path, args, message):
    write_run(tmp_path, epochs=4)
    frame_path(tmp_path, 4).write_text("a text file with a grid's name")
    result = run_cli(*[arg.format(run=tmp_path) for arg in args])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith(message.format(run=tmp_path))
