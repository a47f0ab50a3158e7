"""Turn a run's per-epoch sample grids into an animated GIF: watch the faces emerge.

    >>> from utils.gif import make_gif, show_gif
    >>> show_gif(make_gif("generated/dcgan-64px"))    # -> generated/dcgan-64px/training.gif

    python -m utils.gif generated/dcgan-64px [--out FILE.gif] [--frame-ms 200] [--max-frames 100]

Every frame is the same fixed noise after one more epoch, labelled "epoch N", the last held longer.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from utils.errors import UserError, run_cli
from utils.files import MAKER_BYTES, SAMPLES, atomic_path, list_frames, output_file
from utils.visualize import enlarged, in_notebook

# GIF stores durations in 1/100 s, at most 65535 of them; browsers play anything under 20 ms as 100 ms
MIN_FRAME_MS, MAX_FRAME_MS = 20, 655_350
MAX_FRAMES = 100          # a longer run shows this many of its grids, evenly spread: memory stays bounded
MAX_GRID_PIXELS = 8192**2  # far above any grid training writes; a PNG announcing more is refused before decoding


class GifError(UserError, ValueError):
    """A GIF cannot be made as asked: a duration out of range, an unreadable or mismatched grid."""


class NoSampleGrids(UserError, FileNotFoundError):
    """The run folder has no sample grids yet."""


def write_gif(frames: Iterable[np.ndarray], out: str | Path, frame_ms: int = 100, hold_last_ms: int | None = None,
              count: int | None = None) -> Path:
    """Write uint8 (H, W, 3) frames (a list, or an iterator of `count`) as a looping GIF; returns `out`.
    `hold_last_ms` is the last frame's duration (default: `frame_ms`); GIF rounds durations to 10 ms."""
    count = len(frames) if count is None else count
    if count < 1:
        raise GifError("write_gif needs at least one frame; got none")
    _check_gif_options(out, frame_ms, hold_last_ms)
    return _write_frames(map(Image.fromarray, frames), count, Path(out), frame_ms, hold_last_ms)


def _write_frames(frames: Iterator[Image.Image], count: int, out: Path, frame_ms: int,
                  hold_last_ms: int | None) -> Path:
    """Encode `count` frames as they arrive: Pillow holds one palette byte a pixel per frame, never RGB frames."""
    durations = [frame_ms] * (count - 1) + [frame_ms if hold_last_ms is None else hold_last_ms]
    first = next(frames)
    with atomic_path(out) as tmp:
        first.save(tmp, format="GIF", save_all=True, append_images=frames, loop=0, comment=MAKER_BYTES,
                   duration=durations if count > 1 else durations[0])  # a list only for animations
    return out


def make_gif(run_dir: str | Path, out: str | Path | None = None, frame_ms: int = 200, hold_last_ms: int = 2000,
             label: bool = True, max_frames: int = MAX_FRAMES) -> Path:
    """Animate RUN_DIR/samples/epoch_*.png into RUN_DIR/training.gif or `out`, small grids enlarged with sharp
    pixels. A run of more than `max_frames` epochs shows that many grids, evenly spread, saying so. Every refusal
    (no grids, an option out of range, an unreadable, duplicated or differently sized grid) comes before writing."""
    run_dir = Path(run_dir)
    out = run_dir / "training.gif" if out is None else Path(out)
    _check_gif_options(out, frame_ms, hold_last_ms)
    if max_frames < 2:
        raise GifError(f"max_frames (--max-frames) must be >= 2 (the first and the last epoch); got {max_frames}")
    frames = list_frames(run_dir)
    if not frames:
        raise NoSampleGrids(f"no sample grids in {run_dir / SAMPLES}: train first "
                            f"(notebook 03 or `python -m utils.train --out {run_dir}`)")
    for (epoch, first), (next_epoch, second) in zip(frames, frames[1:]):
        if epoch == next_epoch:
            raise GifError(f"{first} and {second} are both the grid of epoch {epoch}: move one of them out of "
                           f"{first.parent} (training writes {first.parent.name}/epoch_{epoch:03d}.png)")
    chosen = _spread(frames, max_frames)
    if len(chosen) < len(frames):
        print(f"gif: {len(frames)} grids, more than max_frames={max_frames}: animating {len(chosen)} of them, evenly "
              f"spread from epoch {chosen[0][0]} to epoch {chosen[-1][0]} (a larger max_frames shows more, and "
              "needs more memory)")
    sizes = [(_grid_size(path, epoch), path) for epoch, path in chosen]   # headers only: every refusal comes first
    for size, path in sizes:
        if size != sizes[0][0]:
            raise GifError(f"{path} is {size[0]}x{size[1]} pixels but {sizes[0][1]} is {sizes[0][0][0]}x"
                           f"{sizes[0][0][1]}: a GIF needs one frame size; move the grids of the other run out of "
                           f"{path.parent}")

    def images() -> Iterator[Image.Image]:
        for epoch, path in chosen:
            image = enlarged(_read_grid(path, epoch))
            yield Image.fromarray(add_label(image, f"epoch {epoch}") if label else image)

    return _write_frames(images(), len(chosen), out, frame_ms, hold_last_ms)


def _spread(frames: list[tuple[int, Path]], limit: int) -> list[tuple[int, Path]]:
    """At most `limit` of `frames`, evenly spaced, the first and the last always among them."""
    if len(frames) <= limit:
        return frames
    step = (len(frames) - 1) / (limit - 1)   # > 1, so no index comes twice
    return [frames[round(i * step)] for i in range(limit)]


@contextmanager
def _open_grid(path: Path, epoch: int) -> Iterator[Image.Image]:
    """The grid at `path`, opened (header read, pixels not yet); a GifError naming it when it is not one."""
    fix = f"delete it or replace it with the grid of epoch {epoch}"
    try:
        with warnings.catch_warnings():   # sizes Pillow only warns about are refused below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            grid = Image.open(path)
    except Image.DecompressionBombError:
        raise GifError(f"{path} announces more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, far more than any sample "
                       f"grid (Pillow refuses it as a possible decompression bomb): {fix}") from None
    except (OSError, ValueError) as error:   # not an image, truncated, empty
        raise GifError(f"{path} is not a readable image ({error}): {fix}") from None
    with grid:
        if grid.width * grid.height > MAX_GRID_PIXELS:
            raise GifError(f"{path} announces {grid.width}x{grid.height} pixels, more than any sample grid (at most "
                           f"{MAX_GRID_PIXELS:,} pixels): {fix}")
        yield grid


def _grid_size(path: Path, epoch: int) -> tuple[int, int]:
    with _open_grid(path, epoch) as grid:
        return grid.size


def _read_grid(path: Path, epoch: int) -> np.ndarray:
    with _open_grid(path, epoch) as grid:
        try:
            return np.asarray(grid.convert("RGB"))
        except (OSError, ValueError) as error:   # pixel data truncated or corrupt
            raise GifError(f"{path} is not a readable image ({error}): delete it or replace it with the grid of "
                           f"epoch {epoch}") from None


def _check_gif_options(out: str | Path, frame_ms: int, hold_last_ms: int | None) -> None:
    """Refuse, before any work, durations a GIF cannot hold and an `out` that `output_file` refuses."""
    for name, value in (("frame_ms", frame_ms), ("hold_last_ms", hold_last_ms)):
        if value is not None and not MIN_FRAME_MS <= value <= MAX_FRAME_MS:
            raise GifError(f"{name} (--{name.replace('_', '-')}) must be {MIN_FRAME_MS} to {MAX_FRAME_MS:,} "
                           f"milliseconds; got {value} (GIF stores 1/100 s, and browsers play frames shorter than "
                           f"{MIN_FRAME_MS} ms for 100 ms)")
    output_file(out, "out (--out)")


def add_label(image: np.ndarray, text: str) -> np.ndarray:
    """`image` (H, W, 3) with a dark strip on top carrying `text` (covering no face), its font scaled to the width."""
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
    parser = argparse.ArgumentParser(prog="python -m utils.gif", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="run folder written by training (it holds samples/epoch_001.png, ...)")
    parser.add_argument("--out", default=None, help="GIF to write (default: RUN_DIR/training.gif)")
    parser.add_argument("--frame-ms", type=int, default=200,
                        help="milliseconds per epoch, 20 to 655350 (default: 200)")
    parser.add_argument("--hold-last-ms", type=int, default=2000,
                        help="milliseconds the last epoch stays before looping, 20 to 655350 (default: 2000)")
    parser.add_argument("--no-label", dest="label", action="store_false",
                        help="do not draw 'epoch N' above each frame")
    parser.add_argument("--max-frames", type=int, default=MAX_FRAMES,
                        help=f"a longer run shows this many of its grids, evenly spread (default: {MAX_FRAMES})")
    args = parser.parse_args(argv)
    run_cli(lambda: print(make_gif(args.run_dir, args.out, args.frame_ms, args.hold_last_ms, args.label,
                                   args.max_frames)))


if __name__ == "__main__":
    main()
