"""Turn a run's per-epoch sample grids into an animated GIF: watch the faces emerge, epoch by epoch.

    >>> show_gif(make_gif("generated/dcgan-64px"))    # -> generated/dcgan-64px/training.gif
    python -m utils.gif generated/dcgan-64px [--out FILE.gif] [--frame-ms 200] [--hold-last-ms 2000]
"""

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from utils.errors import UserError, run_cli
from utils.files import MAKER_BYTES, SAMPLES, atomic_path, list_frames, output_file
from utils.visualize import enlarged, in_notebook, read_grid

MAX_FRAMES = 100   # a longer run shows this many of its grids, evenly spread: memory stays bounded


def write_gif(frames: Iterable[np.ndarray], out: str | Path, frame_ms: int = 100, hold_last_ms: int | None = None,
              count: int | None = None) -> Path:
    """Write uint8 (H, W, 3) frames (a list, or an iterator of `count`) as a looping GIF, the last one shown for
    `hold_last_ms` (default: `frame_ms`); Pillow encodes each frame as it comes, never holding the RGB frames."""
    for name, value in (("frame_ms", frame_ms), ("hold_last_ms", hold_last_ms)):
        if value is not None and not 20 <= value <= 655_350:
            raise UserError(f"{name} (--{name.replace('_', '-')}) must be 20 to 655,350 milliseconds; got {value} "
                            "(GIF stores 1/100 s, at most 65,535 of them; browsers play < 20 ms as 100 ms)")
    output_file(out, "out (--out)")
    count = len(frames) if count is None else count
    frames = map(Image.fromarray, frames)
    first = next(frames)
    durations = [frame_ms] * (count - 1) + [hold_last_ms or frame_ms]
    with atomic_path(out) as tmp:
        first.save(tmp, format="GIF", save_all=True, append_images=frames, loop=0, comment=MAKER_BYTES,
                   duration=durations if count > 1 else durations[0])  # a list only for animations
    return Path(out)


def make_gif(run_dir: str | Path, out: str | Path | None = None, frame_ms: int = 200, hold_last_ms: int = 2000) -> Path:
    """Animate RUN_DIR/samples/epoch_*.png, labelled "epoch N" and small grids enlarged with sharp pixels, into
    RUN_DIR/training.gif or `out`: at most MAX_FRAMES grids, evenly spread. A refusal leaves no file."""
    run_dir = Path(run_dir)
    frames = list_frames(run_dir)
    if not frames:
        raise UserError(f"no sample grids in {run_dir / SAMPLES}: train first "
                        f"(notebook 03 or `python -m utils.train --out {run_dir}`)")
    if len(frames) > MAX_FRAMES:
        print(f"gif: {len(frames)} grids: animating {MAX_FRAMES} of them, evenly spread from epoch {frames[0][0]} "
              f"to epoch {frames[-1][0]}")
        frames = [frames[round(i)] for i in np.linspace(0, len(frames) - 1, MAX_FRAMES)]   # the first and the last
    shape = read_grid(frames[0][1]).shape   # a GIF has one frame size: the first grid's

    def images():
        for epoch, path in frames:
            grid = read_grid(path)
            if grid.shape != shape:
                raise UserError(f"{path} is not the size of {frames[0][1]}: a GIF needs one frame size; move the "
                                f"grids of the other run out of {path.parent}")
            yield add_label(enlarged(grid), f"epoch {epoch}")

    return write_gif(images(), run_dir / "training.gif" if out is None else out, frame_ms, hold_last_ms, len(frames))


def add_label(image: np.ndarray, text: str) -> np.ndarray:
    """`image` (H, W, 3) with a dark strip on top carrying `text` (covering no face), its font scaled to the width."""
    height, width, _ = image.shape
    font_size = max(10, width // 24)
    strip = round(font_size * 1.6)
    canvas = Image.new("RGB", (width, height + strip), (16, 16, 16))
    canvas.paste(Image.fromarray(image), (0, strip))
    ImageDraw.Draw(canvas).text((width / 2, strip / 2), text, fill=(255, 255, 255),
                                font=ImageFont.load_default(size=font_size), anchor="mm")
    return np.asarray(canvas)


def show_gif(path: str | Path) -> None:
    """Show the GIF inline in a notebook and print how to download it on this platform."""
    path = Path(path).resolve()
    if in_notebook():
        from IPython.display import Image as NotebookImage, display

        display(NotebookImage(filename=str(path), embed=True))
    if "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ:
        print(f"Download: from google.colab import files; files.download('{path}')")
    elif "KAGGLE_KERNEL_RUN_TYPE" in os.environ:
        print(f"Saved to {path}: download it from the notebook's Output tab (which keeps /kaggle/working only).")
    else:
        print(f"Saved to {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m utils.gif", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="run folder written by training (it holds samples/epoch_001.png, ...)")
    parser.add_argument("--out", default=None, help="GIF to write (default: RUN_DIR/training.gif)")
    parser.add_argument("--frame-ms", type=int, default=200, help="milliseconds per epoch, 20 to 655350 (default: 200)")
    parser.add_argument("--hold-last-ms", type=int, default=2000,
                        help="milliseconds the last epoch stays before looping, 20 to 655350 (default: 2000)")
    args = parser.parse_args(argv)
    run_cli(lambda: print(make_gif(args.run_dir, args.out, args.frame_ms, args.hold_last_ms)))


if __name__ == "__main__":
    main()
