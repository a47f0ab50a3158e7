"""Turn a run's per-epoch sample grids into an animated GIF: watch the faces emerge.

    >>> from utils.gif import make_gif, show_gif
    >>> show_gif(make_gif("generated/dcgan-64"))      # -> generated/dcgan-64/training.gif

or from a shell:

    python -m utils.gif generated/dcgan-64 [--out FILE.gif] [--frame-ms 200] [--hold-last-ms 2000]

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

from utils.files import atomic_path
from utils.run import list_frames
from utils.visualize import in_notebook


def write_gif(frames: list[np.ndarray], out: str | Path, frame_ms: int = 100, hold_last_ms: int | None = None) -> Path:
    """Write uint8 (H, W, 3) frames as a GIF that loops forever (atomically); returns `out`.

    `frame_ms` is each frame's duration in milliseconds, `hold_last_ms` the last frame's
    (default: the same). GIF stores durations in 1/100 s, so they round to 10 ms.
    """
    if not frames:
        raise ValueError("write_gif needs at least one frame; got an empty list")
    if frame_ms <= 0:
        raise ValueError(f"frame_ms must be > 0 milliseconds; got {frame_ms}")
    durations = [frame_ms] * (len(frames) - 1) + [frame_ms if hold_last_ms is None else hold_last_ms]
    with atomic_path(out) as tmp:
        iio.imwrite(tmp, np.stack(frames), extension=".gif", is_batch=True, loop=0,
                    duration=durations if len(frames) > 1 else durations[0])  # Pillow: a list only for animations
    return Path(out)


def make_gif(run_dir: str | Path, out: str | Path | None = None, frame_ms: int = 200, hold_last_ms: int = 2000,
             label: bool = True) -> Path:
    """Animate RUN_DIR/samples/epoch_*.png (in epoch order) into RUN_DIR/training.gif or `out`.

    Raises FileNotFoundError when the run has no grids yet, and ValueError naming the
    file when a grid's size differs from the first one's (e.g. a run resumed at another
    image size or sample count): a GIF has one frame size.
    """
    run_dir = Path(run_dir)
    frames = list_frames(run_dir)
    if not frames:
        raise FileNotFoundError(f"no sample grids in {run_dir / 'samples'}: train first "
                                f"(notebook 03 or `python -m utils.train --out {run_dir}`)")
    images = []
    for epoch, path in frames:
        with Image.open(path) as grid:
            image = np.asarray(grid.convert("RGB"))
        if images and image.shape != images[0].shape:
            raise ValueError(f"{path} is {image.shape[1]}x{image.shape[0]} pixels but {frames[0][1]} is "
                             f"{images[0].shape[1]}x{images[0].shape[0]}: a GIF needs one frame size; "
                             f"move the grids of the other run out of {path.parent}")
        images.append(image)
    if label:
        images = [add_label(image, f"epoch {epoch}") for image, (epoch, _) in zip(images, frames)]
    return write_gif(images, run_dir / "training.gif" if out is None else out, frame_ms, hold_last_ms)


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
    parser = argparse.ArgumentParser(prog="python -m utils.gif",
                                     description="Animate a run's per-epoch sample grids (RUN_DIR/samples) into a GIF.")
    parser.add_argument("run_dir", help="run folder written by training (it holds samples/epoch_001.png, ...)")
    parser.add_argument("--out", default=None, help="GIF to write (default: RUN_DIR/training.gif)")
    parser.add_argument("--frame-ms", type=int, default=200, help="milliseconds per epoch (default: 200)")
    parser.add_argument("--hold-last-ms", type=int, default=2000,
                        help="milliseconds the last epoch stays before looping (default: 2000)")
    parser.add_argument("--no-label", dest="label", action="store_false", help="do not draw 'epoch N' above each frame")
    args = parser.parse_args(argv)
    try:
        path = make_gif(args.run_dir, args.out, args.frame_ms, args.hold_last_ms, args.label)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(1, f"error: {error}\n")
    print(path)


if __name__ == "__main__":
    main()
