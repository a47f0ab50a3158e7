"""Turn a run's per-epoch sample grids into an animated GIF: watch the faces emerge.

    >>> from utils.gif import make_gif, show_gif
    >>> show_gif(make_gif("generated/dcgan-64px"))    # -> generated/dcgan-64px/training.gif

or from a shell:

    python -m utils.gif generated/dcgan-64px [--out FILE.gif] [--frame-ms 200] [--hold-last-ms 2000]

Every frame is the same fixed noise decoded by the generator after one more epoch, so
the animation shows the same faces sharpening. Each frame gets an "epoch N" strip on top
and the last frame is held longer, so the final result can be looked at before it loops.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from utils.errors import UserError, run_cli
from utils.files import atomic_path
from utils.run import list_frames
from utils.visualize import in_notebook

# GIF stores durations in 1/100 s, at most 65535 of them; browsers play anything under 20 ms as 100 ms
MIN_FRAME_MS, MAX_FRAME_MS = 20, 655_350


class GifError(UserError, ValueError):
    """A GIF cannot be made as asked: a duration out of range, an unreadable or mismatched grid, a folder as `out`."""


class NoSampleGrids(UserError, FileNotFoundError):
    """The run folder has no sample grids yet."""


def write_gif(frames: list[np.ndarray], out: str | Path, frame_ms: int = 100, hold_last_ms: int | None = None) -> Path:
    """Write uint8 (H, W, 3) frames as a GIF that loops forever (atomically); returns `out`.

    `frame_ms` is each frame's duration in milliseconds, `hold_last_ms` the last frame's
    (default: the same). GIF stores durations in 1/100 s, so they round to 10 ms.
    """
    if not frames:
        raise GifError("write_gif needs at least one frame; got an empty list")
    _check_gif_options(out, frame_ms, hold_last_ms)
    durations = [frame_ms] * (len(frames) - 1) + [frame_ms if hold_last_ms is None else hold_last_ms]
    with atomic_path(out) as tmp:
        iio.imwrite(tmp, np.stack(frames), extension=".gif", is_batch=True, loop=0,
                    duration=durations if len(frames) > 1 else durations[0])  # Pillow: a list only for animations
    return Path(out)


def make_gif(run_dir: str | Path, out: str | Path | None = None, frame_ms: int = 200, hold_last_ms: int = 2000,
             label: bool = True) -> Path:
    """Animate RUN_DIR/samples/epoch_*.png (in epoch order) into RUN_DIR/training.gif or `out`.

    Raises NoSampleGrids (a FileNotFoundError) when the run has no grids yet, and GifError (a
    ValueError) before reading any grid when a duration is out of range or `out` is a folder, and
    naming the file when a grid does not decode, when two grids are of one epoch (epoch_001.png and
    epoch_0001.png), or when a grid's size differs from the first one's (e.g. a run resumed at another
    image size or sample count): a GIF has one frame size.
    """
    run_dir = Path(run_dir)
    out = run_dir / "training.gif" if out is None else Path(out)
    _check_gif_options(out, frame_ms, hold_last_ms)
    frames = list_frames(run_dir)
    if not frames:
        raise NoSampleGrids(f"no sample grids in {run_dir / 'samples'}: train first "
                            f"(notebook 03 or `python -m utils.train --out {run_dir}`)")
    for (epoch, first), (next_epoch, second) in zip(frames, frames[1:]):
        if epoch == next_epoch:
            raise GifError(f"{first} and {second} are both the grid of epoch {epoch}: move one of them out of "
                           f"{first.parent} (training writes {first.parent.name}/epoch_{epoch:03d}.png)")
    images = []
    for epoch, path in frames:
        try:
            with Image.open(path) as grid:
                image = np.asarray(grid.convert("RGB"))
        except (OSError, ValueError) as error:   # not an image, truncated, empty, or Pillow's size limit
            raise GifError(f"{path} is not a readable image ({error}): delete it or replace it with the grid of "
                           f"epoch {epoch}") from error
        if images and image.shape != images[0].shape:
            raise GifError(f"{path} is {image.shape[1]}x{image.shape[0]} pixels but {frames[0][1]} is "
                           f"{images[0].shape[1]}x{images[0].shape[0]}: a GIF needs one frame size; "
                           f"move the grids of the other run out of {path.parent}")
        images.append(image)
    if label:
        images = [add_label(image, f"epoch {epoch}") for image, (epoch, _) in zip(images, frames)]
    return write_gif(images, out, frame_ms, hold_last_ms)


def _check_gif_options(out: str | Path, frame_ms: int, hold_last_ms: int | None) -> None:
    """Refuse what a GIF cannot hold, before any work: durations out of range, a folder as the output file."""
    for name, value in (("frame_ms", frame_ms), ("hold_last_ms", hold_last_ms)):
        if value is not None and not MIN_FRAME_MS <= value <= MAX_FRAME_MS:
            raise GifError(f"{name} (--{name.replace('_', '-')}) must be {MIN_FRAME_MS} to {MAX_FRAME_MS:,} "
                           f"milliseconds; got {value} (GIF stores 1/100 s, and browsers play frames shorter than "
                           f"{MIN_FRAME_MS} ms for 100 ms)")
    if Path(out).is_dir():
        raise GifError(f"out (--out) {out} is a folder: pass the GIF's file name, e.g. {Path(out) / 'training.gif'}")


def add_label(image: np.ndarray, text: str) -> np.ndarray:
    """Return `image` (H, W, 3) with a dark strip on top carrying `text`, so no face is covered.

    The font scales with the width so the label stays readable on large grids.
    """
    height, width, _ = image.shape
    font_size = max(10, width // 24)
    strip = round(font_size * 1.6)
    canvas = Image.new("RGB", (width, height + strip), (16, 16, 16))
    canvas.paste(Image.fromarray(image), (0, strip))
    draw = ImageDraw.Draw(canvas)
    draw.text((width / 2, strip / 2), text, fill=(255, 255, 255), font=_font(font_size), anchor="mm")
    return np.asarray(canvas)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: only the small fixed-size bitmap font
        return ImageFont.load_default()


def show_gif(path: str | Path) -> None:
    """Show the GIF inline in a notebook and print how to download it on this platform."""
    path = Path(path).resolve()
    if in_notebook():
        from IPython.display import Image as NotebookImage, display

        display(NotebookImage(filename=str(path), embed=True))
    if "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ:
        print(f"Download: from google.colab import files; files.download('{path}')")
    elif "KAGGLE_KERNEL_RUN_TYPE" in os.environ:
        if path.is_relative_to("/kaggle/working"):
            print(f"Saved to {path}: download it from the notebook's Output tab (/kaggle/working).")
        else:
            print(f"Saved to {path}: only /kaggle/working is kept as Output; copy it there to download it.")
    else:
        print(f"Saved to {path}")


def main(argv: list[str] | None = None) -> None:
    """The command line: a UserError (no grids, a bad duration, an unreadable grid) prints `error: ...`, exits 1."""
    parser = argparse.ArgumentParser(prog="python -m utils.gif",
                                     description="Animate a run's per-epoch sample grids (RUN_DIR/samples) into a GIF.")
    parser.add_argument("run_dir", help="run folder written by training (it holds samples/epoch_001.png, ...)")
    parser.add_argument("--out", default=None, help="GIF to write (default: RUN_DIR/training.gif)")
    parser.add_argument("--frame-ms", type=int, default=200, help="milliseconds per epoch, 20 to 655350 (default: 200)")
    parser.add_argument("--hold-last-ms", type=int, default=2000,
                        help="milliseconds the last epoch stays before looping, 20 to 655350 (default: 2000)")
    parser.add_argument("--no-label", dest="label", action="store_false", help="do not draw 'epoch N' above each frame")
    args = parser.parse_args(argv)
    run_cli(lambda: print(make_gif(args.run_dir, args.out, args.frame_ms, args.hold_last_ms, args.label)))


if __name__ == "__main__":
    main()
