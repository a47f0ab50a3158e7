"""How long notebook 06's explorer takes to redraw its grid (9 faces) on this machine's CPU, at 64x64 and the
default widths (what a slider move costs: decode, tile, enlarge, PNG).

    python benchmarks/explorer_redraw.py [--threads 1 2] [--rounds 20]

The weights are random (the time does not depend on them); BatchNorm is frozen to 64 latents as in a real run.
Prints the load average too: on a shared machine the numbers mean little without it.
"""
import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from utils.generate import FaceExplorer, Faces, _png, face_set_latents, frozen_statistics
from utils.models import Generator

parser = argparse.ArgumentParser()
parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
parser.add_argument("--rounds", type=int, default=20)
args = parser.parse_args()

torch.manual_seed(0)
fixed = face_set_latents(42, 64, 128)
decoder = frozen_statistics(Generator(64, 128, 64), fixed)
faces = Faces(decoder, fixed, Path("benchmark"), 0, 42, 128, 64, torch.device("cpu"))
explorer = FaceExplorer(faces)
print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; torch {torch.__version__}")
for threads in args.threads:
    torch.set_num_threads(threads)
    seconds, png_seconds = [], []
    for round in range(args.rounds):
        image = explorer.render(seed=round, position=0.5, strengths=(round % 7 - 3.0, 0.0, 1.0))
        started = time.perf_counter()
        _png(image)
        seconds.append(explorer.seconds)
        png_seconds.append(time.perf_counter() - started)
    seconds, png_seconds = seconds[2:], png_seconds[2:]  # the first calls allocate
    print(f"{threads} thread(s): redraw of 9 faces at 64x64: decode + grid median "
          f"{statistics.median(seconds) * 1000:.0f} ms (best {min(seconds) * 1000:.0f}), PNG of the {image.shape[1]}-pixel grid median "
          f"{statistics.median(png_seconds) * 1000:.0f} ms")
