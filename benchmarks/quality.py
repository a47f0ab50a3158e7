"""Sample quality: plain DCGAN against the improved recipe, equal wall-clock budget, side by side, scored by FID.

    # the CPU protocol (issue 4): 32x32, 15 minutes each, FID of 2,000 samples against 5,000 real images
    python benchmarks/quality.py --data faces.zip --image-size 32 --minutes 15 --fid-samples 2000 --fid-real 5000 \
        --fid-weights pt_inception-2015-12-05.pth
    # the GPU protocol: 64x64, 10 minutes each, 10,000 samples against the whole set
    python benchmarks/quality.py --data faces.zip --image-size 64 --minutes 10 --fid-samples 10000 --fid-real 0
    # a variant beside the two recipes: NAME=training options (each run is scored against DCGAN)
    python benchmarks/quality.py ... --variant "improved-da=--recipe improved --diffaugment color,translation,cutout"

Both recipes train through `python -m utils.train` (the notebooks' code) on the same data with the same seed.
By default they run at the same time (on a CPU each with an equal share of the threads), so both see the same load;
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
from utils.environment import describe_device, pick_device  # noqa: E402
from utils.metrics import fid_for_config  # noqa: E402
from utils.run import load_models  # noqa: E402


def train_command(options: list[str], args: argparse.Namespace, out: Path) -> list[str]:
    return [sys.executable, "-m", "utils.train", "--data", str(args.data), "--data-dir", str(args.data_dir),
            "--image-size", str(args.image_size), *options, "--epochs", "100000",
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
    parser.add_argument("--recipes", default="dcgan,improved",
                        help="the recipes to train (with --score-only: any runs NAME-<image size> in --out)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=OPTIONS",
                        help="another run beside the recipes, e.g. 'lr-x2=--recipe improved --lr-d 2e-3'")
    parser.add_argument("--sequential", action="store_true", help="train one recipe after the other")
    parser.add_argument("--score-only", action="store_true", help="skip training: score the runs already in --out")
    args = parser.parse_args()

    runs = {recipe: ["--recipe", recipe] for recipe in args.recipes.split(",")}  # run name -> training options
    for variant in args.variant:
        name, _, options = variant.partition("=")
        if not name or not options:
            raise SystemExit(f"--variant {variant!r}: expected NAME=OPTIONS, e.g. 'lr-x2=--recipe improved --lr-d 2e-3'")
        runs[name] = options.split()
    device = pick_device(args.device)
    print(describe_device(device), flush=True)
    config = TrainConfig(data=args.data, data_dir=str(args.data_dir), image_size=args.image_size, seed=args.seed,
                         fid_samples=args.fid_samples, fid_real=args.fid_real, fid_weights=args.fid_weights)
    images = load_dataset(config)  # build the decoded cache once, before the timed runs

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not args.sequential and device.type == "cpu":
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // len(runs)))
    args.out.mkdir(parents=True, exist_ok=True)
    logs, processes = {}, {}
    started = time.time()
    for name, options in {} if args.score_only else runs.items():
        out = args.out / f"{name}-{args.image_size}"
        logs[name] = open(args.out / f"{name}-{args.image_size}.log", "w")
        processes[name] = subprocess.Popen(train_command(options, args, out), cwd=ROOT, env=env,
                                           stdout=logs[name], stderr=subprocess.STDOUT)
        if args.sequential:
            processes[name].wait()
    for name, process in processes.items():
        if process.wait() != 0:
            raise SystemExit(f"training {name} failed: see {logs[name].name}")
    if processes:
        print(f"trained {', '.join(runs)} in {(time.time() - started) / 60:.1f} minutes", flush=True)

    fid = fid_for_config(config, images, device)
    results = {}
    for name in runs:
        generator, _, history = load_models(args.out / f"{name}-{args.image_size}")
        generator = generator.to(device)
        epochs = history["epochs"]
        results[name] = {
            "fid": round(fid.score_generator(generator, generator.latent_dim, args.fid_samples, seed=args.seed), 2),
            "epochs": len(epochs), "steps": history["steps"][-1]["step"],
            "train_minutes": round(sum(e["seconds"] for e in epochs) / 60, 2),
        }
        print(f"{name:>16}: FID {results[name]['fid']:.2f} after {results[name]['steps']} steps "
              f"({results[name]['train_minutes']} min)", flush=True)
    for name, r in results.items():
        if name != "dcgan" and "dcgan" in results:
            r["ratio_to_dcgan"] = round(r["fid"] / results["dcgan"]["fid"], 3)
    ratio = results.get("improved", {}).get("ratio_to_dcgan")
    print(f"\n{'run':<16}{'FID':>10}{'steps':>10}{'minutes':>10}{'/ dcgan':>10}")
    for name, r in results.items():
        print(f"{name:<16}{r['fid']:>10.2f}{r['steps']:>10}{r['train_minutes']:>10}{r.get('ratio_to_dcgan', ''):>10}")
    if ratio is not None:
        print(f"FID(improved) / FID(dcgan) = {ratio:.3f}")
    print(json.dumps({
        "device": describe_device(device), "image_size": args.image_size, "minutes_each": None if args.score_only else args.minutes,
        "side_by_side": not args.sequential, "fid_samples": args.fid_samples,
        "fid_real": args.fid_real or len(images), "real_images": len(images), "results": results,
        "ratio": ratio, "runs": None if args.score_only else {name: " ".join(options) for name, options in runs.items()},
        "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
    }))


if __name__ == "__main__":
    main()
