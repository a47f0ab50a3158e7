"""Sample quality: plain DCGAN against the improved recipe, equal wall-clock budget, side by side, scored by FID.

    # the CPU protocol (issue 4): 32x32, 15 minutes each, FID of 2,000 samples against 5,000 real images
    python benchmarks/quality.py --data faces.zip --image-size 32 --minutes 15 --fid-samples 2000 --fid-real 5000 \
        --fid-weights pt_inception-2015-12-05.pth
    # the GPU protocol: 64x64, 10 minutes each, 10,000 samples against the whole set
    python benchmarks/quality.py --data faces.zip --image-size 64 --minutes 10 --fid-samples 10000 --fid-real 0 --sequential

Both recipes train through `python -m utils.train` (the notebooks' code) on the same data with the same seed.
By default they run at the same time, each with half of the CPU threads, so both see the same machine load;
--sequential runs one after the other (one GPU each in turn). FID uses the same reference statistics and the
same latents for both (utils/metrics.py); the improved recipe samples from its EMA generator, as notebook 05 does.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from utils.config import TrainConfig  # noqa: E402
from utils.data import load_dataset  # noqa: E402
from utils.environment import describe, pick_device  # noqa: E402
from utils.metrics import fid_for_config  # noqa: E402
from utils.training import load_models  # noqa: E402


def train_command(recipe: str, args: argparse.Namespace, out: Path) -> list[str]:
    return [sys.executable, "-m", "utils.train", "--data", str(args.data), "--data-dir", str(args.data_dir),
            "--image-size", str(args.image_size), "--recipe", recipe, "--epochs", "100000",
            "--max-minutes", str(args.minutes), "--out", str(out), "--device", args.device, "--seed", str(args.seed),
            "--log-every", "10"]  # the time budget is checked at every log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the real faces: folder, .zip or 'kaggle'")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "generated" / "quality")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--fid-samples", type=int, default=2000)
    parser.add_argument("--fid-real", type=int, default=5000, help="0 = the whole set")
    parser.add_argument("--fid-weights", default="", help="pt_inception-2015-12-05 weights (offline)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--recipes", default="dcgan,improved")
    parser.add_argument("--sequential", action="store_true", help="train one recipe after the other")
    parser.add_argument("--score-only", action="store_true", help="skip training: score the runs already in --out")
    args = parser.parse_args()

    recipes = args.recipes.split(",")
    device = pick_device(args.device)
    print(describe(device), flush=True)
    config = TrainConfig(data=args.data, data_dir=str(args.data_dir), image_size=args.image_size, seed=args.seed,
                         fid_samples=args.fid_samples, fid_real=args.fid_real, fid_weights=args.fid_weights)
    images = load_dataset(config)  # build the decoded cache once, before the timed runs

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not args.sequential and device.type == "cpu":
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // len(recipes)))
    args.out.mkdir(parents=True, exist_ok=True)
    logs, processes = {}, {}
    started = time.time()
    for recipe in [] if args.score_only else recipes:
        out = args.out / f"{recipe}-{args.image_size}"
        logs[recipe] = open(args.out / f"{recipe}-{args.image_size}.log", "w")
        processes[recipe] = subprocess.Popen(train_command(recipe, args, out), cwd=ROOT, env=env,
                                             stdout=logs[recipe], stderr=subprocess.STDOUT)
        if args.sequential:
            processes[recipe].wait()
    for recipe, process in processes.items():
        if process.wait() != 0:
            raise SystemExit(f"training {recipe} failed: see {logs[recipe].name}")
    if processes:
        print(f"trained {', '.join(recipes)} in {(time.time() - started) / 60:.1f} minutes", flush=True)

    fid = fid_for_config(config, images, device)
    results = {}
    for recipe in recipes:
        generator, _, history = load_models(args.out / f"{recipe}-{args.image_size}")
        generator = generator.to(device)
        epochs = history["epochs"]
        results[recipe] = {
            "fid": round(fid.score_generator(generator, generator.latent_dim, args.fid_samples, seed=args.seed), 2),
            "epochs": len(epochs), "steps": history["steps"][-1]["step"],
            "train_minutes": round(sum(e["seconds"] for e in epochs) / 60, 2),
        }
        print(f"{recipe:>10}: FID {results[recipe]['fid']:.2f} after {results[recipe]['steps']} steps "
              f"({results[recipe]['train_minutes']} min)", flush=True)
    ratio = results["improved"]["fid"] / results["dcgan"]["fid"] if {"dcgan", "improved"} <= results.keys() else None
    print(f"\n{'recipe':<12}{'FID':>10}{'steps':>10}{'minutes':>10}")
    for recipe, r in results.items():
        print(f"{recipe:<12}{r['fid']:>10.2f}{r['steps']:>10}{r['train_minutes']:>10}")
    if ratio is not None:
        print(f"FID(improved) / FID(dcgan) = {ratio:.3f}")
    print(json.dumps({
        "device": describe(device), "image_size": args.image_size, "minutes_each": args.minutes,
        "side_by_side": not args.sequential, "fid_samples": args.fid_samples,
        "fid_real": args.fid_real or len(images), "real_images": len(images), "results": results,
        "ratio": round(ratio, 3) if ratio is not None else None,
        "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
    }))


if __name__ == "__main__":
    main()
