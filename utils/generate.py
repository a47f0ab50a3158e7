"""Use what you trained: faces as PNG files, one face picked and kept, morphs between chosen faces.

    python -m utils.generate RUN_DIR --n 1000 --out faces/ [--seed S] [--grid FILE] [--size PX]
    python -m utils.generate RUN_DIR --morph seed42_0007.png grid:12 --out morph.gif [--steps 24] [--size 256]

    >>> faces = load_faces("generated/dcgan-64px")         # the run's generator (its EMA when the run kept one)
    >>> generate(faces, 1000, "faces/")                     # faces/seed42_0000.png ... faces/seed42_0999.png
    >>> z = face_latent(faces, "seed42_0007.png")           # or "grid:12" (or 12): face 12 of the run's 8x8 grid
    >>> torch.save(z, "my_face.pt"); faces.decode(torch.load("my_face.pt"))   # the same face, any time later
    >>> morph(faces, ["seed42_0007.png", "grid:12"], "morph.gif")              # a looping slerp between them

A face is its name: `seedS_NNNN.png` is face NNNN of the latents drawn 64 at a time from seed S, the same however
many are drawn; the first 64 of the run's seed are its fixed noise (`grid:7` = seed42_0007.png). A face looks the
same alone or in a batch: BatchNorm uses the fixed noise's statistics, frozen once (`frozen_statistics`).
"""

from __future__ import annotations

import argparse
import copy
import math
import re
from collections.abc import Iterator
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
from utils.explore import slerp
from utils.files import CHECKPOINT, CONFIG, list_frames, output_file, output_folder
from utils.models import sampling, to_uint8
from utils.run import models_from_checkpoint, read_checkpoint
from utils.visualize import image_grid, write_png

BLOCK = 64  # latents are drawn this many at a time: face i of a seed does not depend on how many are drawn
MAX_FACES = 100_000        # faces of one set (--n, the NNNN of a face name): far past what FID needs
MAX_SIZE = 2048            # pixels per face (--size)
MAX_MORPH_PIXELS = 2**28   # frames x pixels of a morph: what the GIF encoder holds (1 byte a pixel) stays bounded
FACE_NAME = re.compile(r"seed(\d+)_(\d+)\.png")
GRID_NAME = re.compile(r"grid:(\d+)")


class NotARun(UserError, FileNotFoundError):
    """The folder given is not a run folder, or holds no finished epoch yet."""


class FaceError(UserError, ValueError):
    """A face, a number of faces, a size, a seed or a number of steps that cannot be used."""


@dataclass
class Faces:
    """A run's generator ready to decode faces one by one: `decode(z)`, the fixed noise, what it was trained with."""

    generator: nn.Module        # a copy in eval mode, BatchNorm frozen to the fixed noise's statistics
    fixed_noise: Tensor         # the latents of the run's sample grids (num_samples, latent_dim, 1, 1), on the CPU
    run_dir: Path
    epoch: int                  # the checkpoint's epoch: the faces are those of samples/epoch_NNN.png
    seed: int                   # the run's seed: the set whose first 64 faces are the fixed noise
    latent_dim: int
    image_size: int
    device: torch.device
    batch_size: int             # faces per forward pass, sized to the device's memory

    def decode(self, z: Tensor) -> Tensor:
        """Latents (N, latent_dim, 1, 1) or one (latent_dim, 1, 1) -> uint8 images (N, 3, S, S) on the CPU."""
        z = z.reshape(-1, self.latent_dim, 1, 1).float()
        with torch.no_grad():
            return torch.cat([to_uint8(self.generator(chunk.to(self.device))).cpu()
                              for chunk in z.split(self.batch_size)])


def load_faces(run_dir: str | Path, device: str = "auto", generator: nn.Module | None = None) -> Faces:
    """Load a run's generator (its EMA weights if kept) for decoding faces on `device`; NotARun (one line) if
    `run_dir` is not a run folder or has no finished epoch. Your own generator class: pass a fresh instance."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not ((run_dir / CONFIG).is_file() or (run_dir / CHECKPOINT).is_file()):
        raise NotARun(f"{run_dir} is not a run folder (no {CONFIG} or {CHECKPOINT} in it): pass the folder training "
                      "wrote, e.g. generated/dcgan-64px (notebook 03 and `python -m utils.train` print it)")
    if not (run_dir / CHECKPOINT).is_file():
        raise NotARun(f"{run_dir} has no finished epoch yet (no {CHECKPOINT}): train it for at least one epoch "
                      f"(notebook 03, or `python -m utils.train --out {run_dir}`), then generate")
    state = read_checkpoint(run_dir / CHECKPOINT)
    trained, _, _ = models_from_checkpoint(state, run_dir, generator=generator)
    config = state["config"]
    fixed_noise = state["fixed_noise"].float()
    device = pick_device(device)
    decoder = frozen_statistics(trained, fixed_noise).to(device)
    return Faces(decoder, fixed_noise, run_dir, state["epoch"], config["seed"], config["latent_dim"],
                 config["image_size"], device, _batch_size(decoder, config["latent_dim"], device))


def frozen_statistics(generator: nn.Module, reference_z: Tensor) -> nn.Module:
    """A copy of `generator` in eval mode whose BatchNorm layers normalise with the batch statistics of one
    train-mode pass of `reference_z`: it decodes that batch as the sample grids do, and any latent as if part of it."""
    decoder = copy.deepcopy(generator).float().cpu()
    layers = [m for m in decoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    statistics: dict[nn.Module, tuple[Tensor, Tensor]] = {}

    def record(layer: nn.Module, inputs: tuple[Tensor]) -> None:
        x = inputs[0].transpose(0, 1).flatten(1)  # (channels, everything else)
        statistics[layer] = (x.mean(dim=1), x.var(dim=1, unbiased=False))  # train mode normalises by the biased one

    hooks = [layer.register_forward_pre_hook(record) for layer in layers]
    try:
        with sampling(decoder):
            decoder(reference_z.float())
    finally:
        for hook in hooks:
            hook.remove()
    for layer in layers:
        mean, var = statistics[layer]
        layer.running_mean.copy_(mean)
        layer.running_var.copy_(var)
    return decoder.eval().requires_grad_(False)


def _batch_size(decoder: nn.Module, latent_dim: int, device: torch.device) -> int:
    """Faces per forward pass: a quarter of the GPU's free memory (256 MiB on a CPU, which gains nothing from more)
    over what one face's activations take, measured with one face."""
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda m, i, out: sizes.append(out.numel() * out.element_size()))
             for m in decoder.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            decoder(torch.zeros(1, latent_dim, 1, 1, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    budget = torch.cuda.mem_get_info(device)[0] // 4 if device.type == "cuda" else 256 * 2**20
    return int(max(1, min(4096, budget // max(1, sum(sizes)))))


# ------------------------------------------------------------------------------------------------ faces by name

def face_set_latents(seed: int, count: int, latent_dim: int) -> Tensor:
    """The first `count` latents of the set of `seed`, (count, latent_dim, 1, 1): drawn BLOCK at a time from one
    generator, so a face's latent does not depend on `count`; the first block is the fixed noise of a run of `seed`."""
    blocks = _latent_blocks(seed, latent_dim)
    return torch.cat([next(blocks) for _ in range(math.ceil(count / BLOCK))])[:count]


def _latent_blocks(seed: int, latent_dim: int) -> Iterator[Tensor]:
    """The set of `seed`, BLOCK latents at a time, for as long as it is asked."""
    random = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randn(BLOCK, latent_dim, 1, 1, generator=random)


def face_name(seed: int, index: int, count: int = 0) -> str:
    """seed42_0007.png: the file name that makes face `index` of the set of `seed` again (4 digits, more if needed)."""
    return f"seed{seed}_{index:0{max(4, len(str(count - 1)))}d}.png"


def face_latent(faces: Faces, face: str | int) -> Tensor:
    """The latent (latent_dim, 1, 1) of a face: "seed42_0007.png" (a generated file, a path is fine too), "grid:12"
    or 12 (face 12 of the run's fixed 8x8 grid, counted row by row from 0). Save it with torch.save; decode it with
    `faces.decode(z)`, also with a later epoch's generator: the same face as training goes on."""
    if isinstance(face, int) or GRID_NAME.fullmatch(str(face)) or str(face).isdigit():
        index = face if isinstance(face, int) else int(str(face).removeprefix("grid:"))
        if not 0 <= index < len(faces.fixed_noise):
            raise FaceError(f"face grid:{index} does not exist: the grid of {faces.run_dir} has faces 0 to "
                            f"{len(faces.fixed_noise) - 1} (row by row from the top left)")
        return faces.fixed_noise[index].clone()
    match = FACE_NAME.fullmatch(Path(str(face)).name)
    if match is None:
        raise FaceError(f"face {face!r} is neither a generated face's file name (like seed42_0007.png) nor a face of "
                        f"the run's grid (like grid:12, 0 to {len(faces.fixed_noise) - 1})")
    seed, index = int(match.group(1)), int(match.group(2))
    if seed > MAX_SEED or index >= MAX_FACES:
        raise FaceError(f"face {face!r} is not one this project writes: seeds are 0 to {MAX_SEED:,} and faces 0 to "
                        f"{MAX_FACES - 1:,} (seed42_0007.png)")
    return face_set_latents(seed, index + 1, faces.latent_dim)[index]


def face_latents(faces: Faces, chosen: list[str | int]) -> Tensor:
    """The latents of several faces (see `face_latent`), stacked: (len(chosen), latent_dim, 1, 1)."""
    return torch.stack([face_latent(faces, face) for face in chosen])


def grid_face_history(faces: Faces, face: str | int) -> list[tuple[int, np.ndarray]]:
    """(epoch, uint8 (S, S, 3) image) of one face of the fixed grid ("grid:12" or 12) cut from every epoch's saved
    grid: earlier generators are gone, but their grids show that face as training went on."""
    index = face if isinstance(face, int) else int(str(face).removeprefix("grid:"))
    face_latent(faces, index)  # refuses an index outside the grid
    size, row, col = faces.image_size, *divmod(index, 8)  # the grids are 8 faces wide with 2-pixel gaps
    history = []
    for epoch, path in list_frames(faces.run_dir):
        with Image.open(path) as grid:
            tiles = np.asarray(grid.convert("RGB"))
        history.append((epoch, tiles[2 + row * (size + 2):2 + row * (size + 2) + size,
                                     2 + col * (size + 2):2 + col * (size + 2) + size].copy()))
    return history


# -------------------------------------------------------------------------------------------------- to files

def generate(faces: Faces | str | Path, n: int, out: str | Path, seed: int | None = None,
             grid: str | Path | None = None, size: int | None = None) -> list[Path]:
    """Write faces 0..n-1 of the set of `seed` (default: the run's) as OUT/seedS_NNNN.png, `size` px each; return
    the paths. `grid` also writes the first 64 as one 8x8 PNG. Bad inputs are refused before anything is written."""
    check_inputs(n=n, size=size, seed=seed)
    out = output_folder(out, "out (--out)", FACE_NAME)
    grid = output_file(grid, "grid (--grid)") if grid is not None else None
    faces = faces if isinstance(faces, Faces) else load_faces(faces)
    seed = faces.seed if seed is None else seed
    blocks, per_batch = _latent_blocks(seed, faces.latent_dim), max(1, faces.batch_size // BLOCK)
    paths = []
    with tqdm(total=n, desc=f"faces -> {out}", unit="face") as bar:
        for start in range(0, n, per_batch * BLOCK):   # latents drawn as they are decoded: memory stays bounded
            count = min(per_batch * BLOCK, n - start)
            images = faces.decode(torch.cat([next(blocks) for _ in range(math.ceil(count / BLOCK))])[:count])
            for offset, image in enumerate(images):
                path = out / face_name(seed, start + offset, n)
                write_png(resized(image, size), path)
                paths.append(path)
            bar.update(len(images))
    if grid is not None:
        write_png(image_grid(faces.decode(face_set_latents(seed, min(n, BLOCK), faces.latent_dim)))
                  .permute(1, 2, 0).numpy(), grid)
    return paths


def check_inputs(n: int | None = None, size: int | None = None, seed: int | None = None,
                 steps: int | None = None, faces: int = 2) -> None:
    """Refuse a number of faces, a size, a seed or a morph's steps out of range (FaceError, one line each); a
    morph's `size` is the side of its frames."""
    most_steps = max(1, MAX_MORPH_PIXELS // (faces * (size or 1) ** 2))
    for name, value, low, high, unit in (
            ("n", n, 1, MAX_FACES, " faces"), ("size", size, 1, MAX_SIZE, " pixels"), ("seed", seed, 0, MAX_SEED, ""),
            ("steps", steps, 1, most_steps, f" frames per face for {faces} faces of {size} px (a GIF holds at most "
                                            f"{MAX_MORPH_PIXELS:,} pixels in all)")):
        if value is not None and not low <= value <= high:
            raise FaceError(f"{name} (--{name}) must be {low:,} to {high:,}{unit}; got {value:,}")


def resized(image: Tensor, size: int | None) -> np.ndarray:
    """A uint8 (3, S, S) image as (size, size, 3): nearest neighbour when enlarging (sharp pixels), Lanczos when
    shrinking; unchanged when `size` is None."""
    array = image.permute(1, 2, 0).numpy()
    if size is None or size == array.shape[0]:
        return array
    method = Image.NEAREST if size > array.shape[0] else Image.LANCZOS
    return np.asarray(Image.fromarray(array).resize((size, size), method))


# ------------------------------------------------------------------------------------------------------ morph

def morph_frames(faces: Faces, chosen: list[str | int] | Tensor, steps: int = 24,
                 size: int = 256) -> Iterator[np.ndarray]:
    """uint8 (H, W, 3) frames of a loop through the chosen faces, slerping `steps` frames from each to the next,
    decoded as asked for, enlarged (sharp) by the smallest whole factor that reaches `size` pixels."""
    latents = chosen if isinstance(chosen, Tensor) else face_latents(faces, chosen)
    if len(latents) < 2:
        raise FaceError(f"a morph needs at least two faces to move between; got {len(latents)}")
    check_inputs(size=size)
    scale = math.ceil(size / faces.image_size)
    check_inputs(size=scale * faces.image_size, steps=steps, faces=len(latents))
    return _morph_frames(faces, latents, steps, scale)


def _morph_frames(faces: Faces, latents: Tensor, steps: int, scale: int) -> Iterator[np.ndarray]:
    for k in range(len(latents)):
        leg = torch.cat([slerp(latents[k:k + 1], latents[(k + 1) % len(latents)][None], step / steps)
                         for step in range(steps)])
        for image in faces.decode(leg):
            yield image.repeat_interleave(scale, 1).repeat_interleave(scale, 2).permute(1, 2, 0).numpy()


def morph(faces: Faces | str | Path, chosen: list[str | int] | Tensor, out: str | Path, steps: int = 24,
          size: int = 256, frame_ms: int = 60) -> Path:
    """Write a looping GIF that morphs through the chosen faces (names, grid indices or latents); returns `out`."""
    from utils.gif import write_gif

    output_file(out, "out (--out)")
    check_inputs(size=size, steps=steps, faces=len(chosen))
    faces = faces if isinstance(faces, Faces) else load_faces(faces)
    return write_gif(morph_frames(faces, chosen, steps, size), out, frame_ms, count=len(chosen) * steps)


# --------------------------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> None:
    """The command line: a UserError (not a run, no finished epoch, a folder with other files) prints one line."""
    parser = argparse.ArgumentParser(prog="python -m utils.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="run folder written by training (it holds checkpoint.pt)")
    parser.add_argument("--out", required=True, help="folder for the faces; with --morph, the GIF to write")
    parser.add_argument("--n", type=int, default=64, help="how many faces to write (default: 64)")
    parser.add_argument("--seed", type=int, default=None,
                        help="which set of faces (default: the run's seed, whose first 64 faces are its sample grid)")
    parser.add_argument("--grid", default=None, help="also write the first 64 faces as one 8x8 PNG here")
    parser.add_argument("--size", type=int, default=None,
                        help="pixels per face (default: the run's image size; with --morph: at least 256)")
    parser.add_argument("--morph", nargs="+", metavar="FACE", default=None,
                        help="write a looping GIF through these faces instead: seed42_0007.png (a generated face), "
                             "grid:12 (face 12 of the run's grid)")
    parser.add_argument("--steps", type=int, default=24, help="with --morph: frames from one face to the next")
    parser.add_argument("--device", default="auto", help="'auto' (a GPU if there is one), 'cuda', 'mps' or 'cpu'")
    args = parser.parse_args(argv)

    def command() -> None:
        # before loading anything: a typo costs nothing
        if args.morph is None:
            check_inputs(n=args.n, size=args.size, seed=args.seed)
            output_folder(args.out, "out (--out)", FACE_NAME)
            output_file(args.grid, "grid (--grid)") if args.grid else None
        else:
            check_inputs(size=args.size or 256, steps=args.steps, faces=len(args.morph))
            output_file(args.out, "out (--out)")
        faces = load_faces(args.run_dir, args.device)
        if args.morph is not None:
            path = morph(faces, args.morph, args.out, args.steps, args.size or 256)
            print(f"morph of {len(args.morph)} faces, {len(args.morph) * args.steps} frames: {path}")
            return
        paths = generate(faces, args.n, args.out, args.seed, args.grid, args.size)
        print(f"{len(paths)} faces of {faces.run_dir} (epoch {faces.epoch}) in {args.out}: {paths[0].name} ... "
              f"{paths[-1].name}" + (f"; grid: {args.grid}" if args.grid else ""))

    run_cli(command)


if __name__ == "__main__":
    main()
