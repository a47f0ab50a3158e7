"""A generator that travels: one TorchScript file, utils.generate's decoder, that samples with PyTorch alone.

    python -m utils.export generated/dcgan-64px --out generator.pt
"""

import argparse
import copy
import json
import warnings
from pathlib import Path

import torch

from utils.errors import run_cli
from utils.files import MAKER_BYTES, atomic_path, output_file
from utils.generate import Faces, load_faces


def export_generator(run: Faces | str | Path, out: str | Path = "generator.pt") -> Path:
    """Write the run's generator as TorchScript to `out`, latent_dim and image_size attributes, origin in meta.json."""
    out = output_file(out, "out (--out)")
    faces = run if isinstance(run, Faces) else load_faces(run, "cpu")
    generator = copy.deepcopy(faces.generator).cpu()   # loads on any machine; `faces` keeps its own device
    generator.latent_dim, generator.image_size = faces.latent_dim, faces.image_size
    meta = json.dumps({"run": str(faces.run_dir), "epoch": faces.epoch, "seed": faces.seed}, indent=1)
    with warnings.catch_warnings(), atomic_path(out) as tmp:
        warnings.simplefilter("ignore")  # TorchScript is deprecated for torch.export, yet loads in any PyTorch 1.x+
        torch.jit.save(torch.jit.script(generator), str(tmp), _extra_files={"meta.json": meta, "software": MAKER_BYTES})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m utils.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="run folder written by training (it holds checkpoint.pt)")
    parser.add_argument("--out", default="generator.pt", help="TorchScript file to write (default: generator.pt)")
    args = parser.parse_args(argv)
    run_cli(lambda: print(export_generator(args.run_dir, args.out)))


if __name__ == "__main__":
    main()
