"""Use what you trained: faces as PNG files, a face picked by its name, morphs, sliders that redraw a grid.

    python -m utils.generate RUN_DIR --n 1000 --out faces/ [--seed S] [--grid FILE] [--size PX]
    python -m utils.generate RUN_DIR --morph seed42_0007.png grid:12 --out morph.gif [--steps 24] [--size 256]
"""

import argparse
import base64
import copy
import io
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from utils.config import MAX_SEED
from utils.environment import pick_device
from utils.errors import UserError, run_cli
from utils.explore import decode, slerp
from utils.files import CHECKPOINT, OutputRefused, list_frames, output_file, output_folder
from utils.gif import write_gif
from utils.run import load_models, read_checkpoint
from utils.visualize import enlarged, image_grid, in_notebook, read_grid, write_png

BLOCK = 64  # latents are drawn this many at a time: face i of a seed does not depend on how many are drawn
MAX_FACES = 100_000        # faces of one set (--n, the NNNN of a face name): far past what FID needs
MAX_MORPH_PIXELS = 2**28   # frames x pixels of a morph: what the GIF encoder holds (1 byte a pixel) stays bounded
FACE_NAME = re.compile(r"seed(\d{1,20})_(\d{1,20})\.png")   # at most 20 digits: int() refuses 4,300


@dataclass
class Faces:
    """A run's generator ready to decode faces, its fixed noise and what it was trained with."""

    generator: nn.Module        # a copy in eval mode, BatchNorm frozen to the fixed noise's statistics
    fixed_noise: Tensor         # the latents of the run's sample grids (num_samples, latent_dim, 1, 1), on the CPU
    run_dir: Path
    epoch: int                  # the checkpoint's epoch: the faces are those of samples/epoch_NNN.png
    seed: int                   # the run's seed: the set whose first 64 faces are the fixed noise
    latent_dim: int
    image_size: int
    device: torch.device

    def decode(self, z: Tensor) -> Tensor:
        """Latents (N, latent_dim, 1, 1) or one (latent_dim, 1, 1) -> uint8 images (N, 3, S, S) on the CPU."""
        return decode(self.generator, z.reshape(-1, self.latent_dim, 1, 1).float(), BLOCK)


def load_faces(run_dir: str | Path, device: str = "auto", generator: nn.Module | None = None) -> Faces:
    """A run's generator (its EMA weights if kept) decoding faces on `device` (`generator`: a run of your own class)."""
    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINT).is_file():
        raise UserError(f"{run_dir} is not a run folder with a finished epoch (no {CHECKPOINT} in it): pass the "
                        "folder training wrote, e.g. generated/dcgan-64px, once it has finished an epoch")
    state = read_checkpoint(run_dir / CHECKPOINT)
    trained, _, _ = load_models(run_dir, generator, state=state)
    config, fixed_noise, device = state["config"], state["fixed_noise"], pick_device(device)
    return Faces(frozen_statistics(trained, fixed_noise).to(device), fixed_noise, run_dir, state["epoch"],
                 config["seed"], config["latent_dim"], config["image_size"], device)


def frozen_statistics(generator: nn.Module, reference_z: Tensor) -> nn.Module:
    """A copy of `generator` in eval mode, its BatchNorm frozen to the batch statistics of `reference_z`: it decodes
    that batch as the sample grids do, and any latent as if part of it."""
    decoder = copy.deepcopy(generator).float().cpu()

    def freeze(layer: nn.Module, inputs: tuple[Tensor]) -> None:  # before each BatchNorm normalises in eval mode
        x = inputs[0].transpose(0, 1).flatten(1)  # (channels, everything else)
        layer.running_mean.copy_(x.mean(dim=1))
        layer.running_var.copy_(x.var(dim=1, unbiased=False))  # train mode normalises by the biased variance

    hooks = [layer.register_forward_pre_hook(freeze) for layer in decoder.modules()
             if isinstance(layer, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        decoder.eval()(reference_z)
    for hook in hooks:
        hook.remove()
    return decoder.requires_grad_(False)


def face_set_latents(seed: int, count: int, latent_dim: int) -> Tensor:
    """The latents (count, latent_dim, 1, 1) of faces 0, 1, ... of `seed` (seedS_NNNN.png); the run's begin its grid."""
    random = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn(BLOCK, latent_dim, 1, 1, generator=random) for _ in range(0, count, BLOCK)])[:count]


def face_latent(faces: Faces, face: str | int) -> Tensor:
    """The latent (latent_dim, 1, 1) of face "seed42_0007.png" (or its path), "grid:12" or 12 (of the run's grid, row
    by row from 0): `faces.decode(z)` draws it, also with a later epoch's generator."""
    index = str(face).removeprefix("grid:")
    if isinstance(face, int) or index.isdecimal():
        if not 0 <= int(index) < len(faces.fixed_noise):
            raise UserError(f"face grid:{index} does not exist: the grid has faces 0 to {len(faces.fixed_noise) - 1}")
        return faces.fixed_noise[int(index)].clone()
    match = FACE_NAME.fullmatch(Path(str(face)).name)
    if match is None:
        raise UserError(f"face {face!r} is neither a generated face's file name (like seed42_0007.png) nor a face of "
                        f"the run's grid (like grid:12, 0 to {len(faces.fixed_noise) - 1})")
    seed, index = map(int, match.groups())
    if seed > MAX_SEED or index >= MAX_FACES:
        raise UserError(f"face {face!r} is not one this project writes: seeds are 0 to {MAX_SEED:,} and faces 0 to "
                        f"{MAX_FACES - 1:,} (seed42_0007.png)")
    return face_set_latents(seed, index + 1, faces.latent_dim)[index]


def grid_face_history(faces: Faces, face: str | int) -> list[tuple[int, np.ndarray]]:
    """(epoch, uint8 (S, S, 3) image) of a face of the sample grid, cut from each epoch's grid: the face in training."""
    rows = (faces.fixed_noise == face_latent(faces, face)).flatten(1).all(dim=1).nonzero().flatten().tolist()
    if not rows:   # the grids hold the fixed noise's faces only (grid:12, or the run seed's first 64)
        raise UserError(f"face {face!r} is not a face of the run's grid (like grid:12): only those have a history")
    size, (row, col) = faces.image_size, divmod(rows[0], 8)  # the grids are 8 faces wide with 2-pixel gaps
    top, left = 2 + row * (size + 2), 2 + col * (size + 2)
    return [(epoch, read_grid(path)[top:top + size, left:left + size].copy())
            for epoch, path in list_frames(faces.run_dir)]


def check_inputs(n: int | None = None, size: int | None = None, seed: int | None = None,
                 steps: int | None = None, faces: int | None = None, smallest: int = 1) -> None:
    """A UserError naming the first input out of its range (sizes from `smallest`, the run's, when it is known)."""
    most_faces = max(2, MAX_MORPH_PIXELS // (size or 1) ** 2)   # one frame each
    most_steps = max(1, MAX_MORPH_PIXELS // ((faces or 2) * (size or 1) ** 2))
    for name, value, low, high, unit in (
            ("n", n, 1, MAX_FACES, " faces"), ("seed", seed, 0, MAX_SEED, ""),
            ("size", size, smallest, 2048, " pixels (faces are enlarged with sharp pixels, never shrunk)"),
            ("morph", faces, 2, most_faces, f" faces of {size} px (a GIF holds at most {MAX_MORPH_PIXELS:,} pixels)"),
            ("steps", steps, 1, most_steps, f" frames per face for {faces} faces of {size} px (a GIF holds at most "
                                            f"{MAX_MORPH_PIXELS:,} pixels in all)")):
        if value is not None and (type(value) is not int or not low <= value <= high):
            raise UserError(f"{name} (--{name}) must be {low:,} to {high:,}{unit}; got {value:,}")


def sharp(image: Tensor, size: int) -> np.ndarray:
    """A uint8 face (3, S, S) as (size, size, 3), enlarged by nearest neighbour: each pixel a sharp block."""
    return np.asarray(Image.fromarray(image.permute(1, 2, 0).numpy()).resize((size, size), Image.NEAREST))


def generate(faces: Faces | str | Path, n: int, out: str | Path, seed: int | None = None,
             grid: str | Path | None = None, size: int | None = None, device: str = "auto") -> list[Path]:
    """Write faces 0..n-1 of the set of `seed` (default: the run's) as OUT/seedS_NNNN.png, `size` px each (default:
    the run's), and the set's first 64 as one 8x8 PNG to `grid`; returns the paths."""
    check_inputs(n=n, size=size, seed=seed)   # before the run is loaded: a typo costs nothing
    out = output_folder(out, "out (--out)", FACE_NAME)
    grid = output_file(grid, "grid (--grid)") if grid is not None else None
    if grid is not None and grid.resolve().parent == out.resolve():   # it would replace a face, or be in the way next
        raise OutputRefused(f"grid (--grid) {grid} is inside out (--out) {out}, which holds the faces alone: write it "
                            "beside the folder")
    faces = faces if isinstance(faces, Faces) else load_faces(faces, device)
    seed, size = faces.seed if seed is None else seed, size or faces.image_size
    check_inputs(size=size, smallest=faces.image_size)
    paths = [out / f"seed{seed}_{index:04d}.png" for index in range(n)]   # a face's name does not depend on n
    images = (image for block in face_set_latents(seed, n, faces.latent_dim).split(BLOCK)
              for image in faces.decode(block))   # decoded a block at a time: memory stays bounded
    for path, image in tqdm(zip(paths, images), total=n, desc=f"faces -> {out}", unit="face"):
        write_png(sharp(image, size), path)
    if grid is not None:  # the set's first 64 faces, however many were asked for
        first = faces.decode(face_set_latents(seed, BLOCK, faces.latent_dim))
        write_png(image_grid(first).permute(1, 2, 0).numpy(), grid)
    return paths


def morph(faces: Faces | str | Path, chosen: list[str | int], out: str | Path, steps: int = 24, size: int = 256,
          device: str = "auto") -> Path:
    """Write a looping GIF through the chosen faces, `steps` slerped frames from each to the next, `size` px each."""
    check_inputs(size=size, steps=steps, faces=len(chosen))
    faces = faces if isinstance(faces, Faces) else load_faces(faces, device)
    check_inputs(size=size, smallest=faces.image_size)
    z = torch.stack([face_latent(faces, face) for face in chosen])
    legs = (torch.cat([slerp(z[k:k + 1], z[(k + 1) % len(z)][None], step / steps) for step in range(steps)])
            for k in range(len(z)))   # one leg decoded at a time, its frames encoded as they come
    frames = (sharp(image, size) for leg in legs for image in faces.decode(leg))
    return write_gif(frames, out, frame_ms=60, count=len(z) * steps)


class FaceExplorer:
    """Sliders over a 3x3 grid of faces: the picked pair with their slerp at `position` between them, then the faces
    of `seed`; every face moved by `strengths` along 3 random orthonormal latent directions."""

    def __init__(self, faces: Faces, pair: tuple[str | int, str | int] = ("grid:0", "grid:1")):
        self.faces, self.pair = faces, pair
        self.picked = torch.stack([face_latent(faces, face) for face in pair])
        gaussian = torch.randn(faces.latent_dim, 3, generator=torch.Generator().manual_seed(0))
        # orthonormal: a latent's coordinate along each is N(0, 1), so -3 to 3 spans what the generator saw
        self.directions = torch.linalg.qr(gaussian).Q.T.reshape(3, -1, 1, 1)
        self.seconds = 0.0  # how long the last render took

    def render(self, seed: int = 0, position: float = 0.5, strengths: tuple[float, ...] = ()) -> np.ndarray:
        """The grid as a uint8 (H, W, 3) image, enlarged (nearest neighbour) to at least 512 pixels wide."""
        started = time.perf_counter()
        mix = slerp(self.picked[:1], self.picked[1:], position)
        z = torch.cat([self.picked[:1], mix, self.picked[1:], face_set_latents(seed, 6, self.faces.latent_dim)])
        z = z + sum(strength * direction for strength, direction in zip(strengths, self.directions))
        image = enlarged(image_grid(self.faces.decode(z), nrow=3).permute(1, 2, 0).numpy())
        self.seconds = time.perf_counter() - started
        return image

    def show(self, seed: int = 0, position: float = 0.5, strengths: tuple[float, ...] | None = None) -> None:
        """Display `output` in a notebook."""
        if in_notebook():
            from IPython.display import display

            display(self.output(seed, position, strengths), raw=True)

    def output(self, seed: int = 0, position: float = 0.5, strengths: tuple[float, ...] | None = None) -> dict:
        """Sliders (`self.controls`: seed, position, directions) over the grid (`self.image`), redrawn in place, as a
        mime bundle that also holds a PNG of the grid for viewers that cannot draw widgets (papermill, GitHub)."""
        import ipywidgets as widgets

        style = {"style": {"description_width": "initial"}, "layout": widgets.Layout(width="420px")}
        self.controls = [widgets.IntSlider(seed, 0, 999, description="seed of the other faces", **style),
                         widgets.FloatSlider(position, min=0, max=1, step=0.05,
                                             description=f"{self.pair[0]} -> {self.pair[1]}", **style)]
        self.controls += [widgets.FloatSlider(value, min=-3, max=3, step=0.1, description=f"random direction {k + 1}",
                                              **style) for k, value in enumerate(strengths or (0.0,) * 3)]
        self.image, timing = widgets.Image(format="png"), widgets.Label()

        def redraw(_=None) -> None:
            seed, position, *strengths = (slider.value for slider in self.controls)
            self.image.value = _png(self.render(seed, position, tuple(strengths)))
            timing.value = f"drawn in {self.seconds * 1000:.0f} ms"

        redraw()
        for slider in self.controls:
            slider.observe(redraw, names="value")
        bundle = widgets.VBox([*self.controls, timing, self.image])._repr_mimebundle_()
        return bundle | {"image/png": base64.b64encode(self.image.value).decode()}


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)  # the default level takes 10x longer
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m utils.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="run folder written by training (it holds checkpoint.pt)")
    parser.add_argument("--out", required=True, help="folder for the faces; with --morph, the GIF to write")
    parser.add_argument("--n", type=int, default=64, help="how many faces to write (default: 64)")
    parser.add_argument("--seed", type=int, default=None, help="which set of faces (default: the run's, as its grid)")
    parser.add_argument("--grid", default=None, help="also write the set's first 64 faces as one 8x8 PNG here")
    parser.add_argument("--size", type=int, default=None,
                        help="pixels per face, enlarged with sharp pixels (default: the run's; with --morph: 256)")
    parser.add_argument("--morph", nargs="+", metavar="FACE", default=None,
                        help="write a looping GIF through these faces instead (seed42_0007.png, grid:12)")
    parser.add_argument("--steps", type=int, default=24, help="with --morph: frames from one face to the next")
    parser.add_argument("--device", default="auto", help="'auto' (a GPU if there is one), 'cuda', 'mps' or 'cpu'")
    args = parser.parse_args(argv)

    def command() -> None:
        if args.morph:
            print(morph(args.run_dir, args.morph, args.out, args.steps, args.size or 256, args.device))
        else:
            paths = generate(args.run_dir, args.n, args.out, args.seed, args.grid, args.size, args.device)
            print(f"{len(paths)} faces in {args.out}: {paths[0].name} ... {paths[-1].name}")

    run_cli(command)


if __name__ == "__main__":
    main()
