"""Training speed of two checkouts of this project, measured in turns in one run: did a change make `train()` slower?

    git worktree add /tmp/before <commit>
    python benchmarks/before_after.py /tmp/before .            # before, after

Each round trains, in a fresh subprocess of each checkout (its own `utils`), the same run: 64x64 synthetic faces,
the reference networks (latent 100, widths 64), batch 128, on the CPU, with the precision and layout pinned (fp32
and bf16 where the CPU has bf16 instructions, both channels_last), so the CPU trial's choice does not enter. The
first epoch is warm-up; the figure is the median images/s of the others, and "end to end" the images of those
epochs over the wall clock of the whole call (grids, checkpoints, history). The checkouts take turns, round after
round, so a burst of other work on the machine slows one round of each rather than all rounds of one. The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from utils.environment import cpu_has_bf16, describe_device  # noqa: E402

# Run inside each checkout: prints {"steps": images/s, "end_to_end": images/s}.
CHILD = """
import json, statistics, sys, time, torch
from utils.config import TrainConfig
from utils.synthetic import synthetic_faces
from utils.training import train
out, amp, images_count, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
images = synthetic_faces(images_count, 64, seed=0)
config = TrainConfig(image_size=64, epochs=epochs, device="cpu", amp=amp, channels_last="on", out=out)
started = time.perf_counter()
history = train(config, progress=False, images=images).history
wall = time.perf_counter() - started
timed = history["epochs"][1:]
print(json.dumps({"steps": statistics.median(e["images_per_s"] for e in timed),
                  "end_to_end": sum(e["images_per_s"] * e["seconds"] for e in timed) / wall}))
"""


def time_checkout(checkout: Path, amp: str, images: int, epochs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="before-after-") as work:
        env = {**os.environ, "ANIME_GAN_CACHE_DIR": work, "PYTHONPATH": str(checkout)}
        env.pop("ANIME_GAN_AMP", None)
        done = subprocess.run([sys.executable, "-c", CHILD, f"{work}/run", amp, str(images), str(epochs)], cwd=checkout,
                              env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=int, default=768)
    parser.add_argument("--epochs", type=int, default=3, help="the first is warm-up")
    parser.add_argument("--amp", action="append", choices=["off", "bf16"],
                        help="time only this precision (repeatable; default: fp32, and bf16 where the CPU has it)")
    args = parser.parse_args()
    precisions = args.amp or ["off"] + (["bf16"] if cpu_has_bf16() else [])
    results = {amp: {"before": [], "after": []} for amp in precisions}
    for round_ in range(1, args.rounds + 1):
        for amp in precisions:
            for name in ("before", "after"):
                timing = time_checkout(getattr(args, name).resolve(), amp, args.images, args.epochs)
                results[amp][name].append(timing)
                print(f"round {round_}, amp={amp}, {name}: {timing['steps']:,.0f} images/s (steps), "
                      f"{timing['end_to_end']:,.0f} end to end", flush=True)
    summary = {}
    for amp, runs in results.items():
        before, after = (statistics.median(r["steps"] for r in runs[name]) for name in ("before", "after"))
        summary[amp] = {"before": round(before, 1), "after": round(after, 1), "ratio": round(after / before, 3)}
        print(f"amp={amp}: before {before:,.1f}, after {after:,.1f} images/s (median of {args.rounds} rounds): "
              f"x{after / before:.3f}")
    print(json.dumps({"device": describe_device(torch.device("cpu")),
                      "load_average": os.getloadavg()[0], "images": args.images, "epochs": args.epochs,
                      "results": summary, "before": str(args.before), "after": str(args.after)}))


if __name__ == "__main__":
    main()
