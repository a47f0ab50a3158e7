"""Training speed: the seed-style notebook loop against this project's training path, in one process.

    python benchmarks/train_speed.py                         # synthetic faces written as JPEGs, auto device
    python benchmarks/train_speed.py --data path/to/images --device cuda --variants

(a) baseline, as the popular anime-DCGAN notebooks do it: torchvision ImageFolder + PIL + transforms +
    DataLoader (workers, pinned memory), fp32, D ending in a Sigmoid with BCELoss, a fresh batch of fakes for
    G's step, and `.item()` on the losses and scores every step;
(b) ours: utils.training.train() on the same images, same model (latent 128, widths 64), same batch and size.

Both are timed in steady state (after warm-up) on the same device. Ours is timed twice: "steps" is the median
of the epochs' own images/s (the steps only), "end to end" the wall clock of whole epochs after the first,
including drawing the grid and writing the grid, the checkpoint and the history (in the background). The cache
lines time decoding the JPEGs into the uint8 cache (utils.data) and loading that cache again. The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from utils.config import TrainConfig  # noqa: E402
from utils.data import load_dataset  # noqa: E402
from utils.environment import describe_device, pick_device  # noqa: E402
from utils.models import Discriminator, Generator  # noqa: E402
from utils.synthetic import synthetic_faces  # noqa: E402
from utils.training import train  # noqa: E402


def write_synthetic_jpegs(folder: Path, count: int, image_size: int) -> Path:
    from PIL import Image

    images = synthetic_faces(count, image_size, seed=0).permute(0, 2, 3, 1).numpy()
    target = folder / "images"
    target.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        Image.fromarray(image).save(target / f"{index:06d}.jpg", quality=95)
    return folder


def image_root(data: Path) -> Path:
    """ImageFolder wants <root>/<class>/<images>: find the folder whose subfolder holds the images."""
    if any(p.suffix.lower() in (".jpg", ".jpeg", ".png") for p in data.iterdir()):
        raise SystemExit(f"--data {data}: put the images in a subfolder (e.g. {data}/images/*.jpg), as ImageFolder expects")
    return data


def time_baseline(root: Path, device: torch.device, image_size: int, batch_size: int, workers: int,
                  warmup: int, steps: int) -> float:
    """Images per second of the seed-style loop, over `steps` steps after `warmup` steps."""
    dataset = datasets.ImageFolder(root, transform=transforms.Compose([
        transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]))
    loader = DataLoader(dataset, batch_size, shuffle=True, num_workers=workers, pin_memory=device.type == "cuda",
                        drop_last=True, persistent_workers=workers > 0)
    generator = Generator(image_size, 128, 64).to(device)
    discriminator = nn.Sequential(Discriminator(image_size, 64), nn.Sigmoid()).to(device)
    opt_g = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCELoss()
    done, started = 0, None
    while True:
        for real, _ in loader:
            real = real.to(device)
            # discriminator step
            opt_d.zero_grad()
            real_preds = discriminator(real)
            real_loss = bce(real_preds, torch.ones_like(real_preds))
            real_score = real_preds.mean().item()
            fake = generator(torch.randn(batch_size, 128, 1, 1, device=device))
            fake_preds = discriminator(fake.detach())
            fake_loss = bce(fake_preds, torch.zeros_like(fake_preds))
            fake_score = fake_preds.mean().item()
            loss_d = real_loss + fake_loss
            loss_d.backward()
            opt_d.step()
            # generator step, on a fresh batch of fakes
            opt_g.zero_grad()
            preds = discriminator(generator(torch.randn(batch_size, 128, 1, 1, device=device)))
            loss_g = bce(preds, torch.ones_like(preds))
            loss_g.backward()
            opt_g.step()
            _ = (loss_d.item(), loss_g.item(), real_score, fake_score)
            done += 1
            if done == warmup:
                started = time.perf_counter()
            if done == warmup + steps:
                return steps * batch_size / (time.perf_counter() - started)


def time_ours(images: torch.Tensor, device: torch.device, epochs: int, out: Path, **overrides) -> tuple[float, float]:
    """(steps, end to end) images/s of ours, both over the epochs after the first (warm-up, autotuning, the CPU trial).

    The first call trains the warm-up epoch; the second continues the run for the rest, and its wall clock (every
    epoch's steps, grid, checkpoint and history, and the wait for the last write) gives the end-to-end figure.
    """
    config = TrainConfig(image_size=images.shape[-1], epochs=1, device=str(device), out=str(out), **overrides)
    train(config, progress=False, images=images)
    started = time.perf_counter()
    history = train(dataclasses.replace(config, epochs=epochs), progress=False, images=images).history
    wall = time.perf_counter() - started
    timed = history["epochs"][1:]
    trained = sum(e["images_per_s"] * e["seconds"] for e in timed)
    return statistics.median(e["images_per_s"] for e in timed), trained / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", type=Path, help="folder with a subfolder of images (default: synthetic faces as JPEGs)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--synthetic-count", type=int, default=4096, help="images written when --data is not given")
    parser.add_argument("--workers", type=int, default=2, help="baseline DataLoader workers (the notebooks use 2-3)")
    parser.add_argument("--baseline-steps", type=int, default=0, help="0 = 60 on a GPU, 12 on a CPU")
    parser.add_argument("--ours-images", type=int, default=0, help="images per epoch for ours (0 = all; CPU default 768)")
    parser.add_argument("--epochs", type=int, default=0, help="epochs of ours, the first is warm-up (0 = 4 on a GPU, 3 on a CPU)")
    parser.add_argument("--variants", action="store_true", help="also time ours with each speed option switched")
    parser.add_argument("--variant", action="append", default=[], help="time only this variant (repeatable)")
    args = parser.parse_args()

    device = pick_device(args.device)
    on_gpu = device.type == "cuda"
    print(describe_device(device))
    work = Path(tempfile.mkdtemp(prefix="train-speed-"))
    data = args.data or write_synthetic_jpegs(work / "jpegs", args.synthetic_count, args.image_size)
    root = image_root(data)

    # the decoded cache: build once from the JPEGs, then load again (memory-mapped)
    config = TrainConfig(data=str(root), data_dir=str(work / "data"), image_size=args.image_size,
                         max_images=args.ours_images or (0 if on_gpu else 768))
    started = time.perf_counter()
    load_dataset(config, progress=False)
    cache_build_s = time.perf_counter() - started
    started = time.perf_counter()
    images = load_dataset(config, progress=False)
    cache_load_s = time.perf_counter() - started

    common = dict(batch_size=args.batch_size)
    baseline = time_baseline(root, device, args.image_size, args.batch_size, args.workers,
                             warmup=10 if on_gpu else 2, steps=args.baseline_steps or (60 if on_gpu else 12))
    print(f"baseline: {baseline:,.0f} images/s", flush=True)
    epochs = args.epochs or (4 if on_gpu else 3)
    ours, ours_end_to_end = time_ours(images, device, epochs, work / "ours", **common)
    rows = [("baseline: ImageFolder + DataLoader, fp32, .item() per step", baseline, None),
            ("ours: utils.training (defaults for this device)", ours, ours_end_to_end)]
    variants = {}
    if args.variants or args.variant:
        # each choice of "auto" switched, so the table shows what each is worth on this device
        options = [("CUDA graphs off", dict(cuda_graphs="off")),
                   ("amp off", dict(amp="off")), ("amp bf16", dict(amp="bf16")), ("amp fp16", dict(amp="fp16")),
                   ("amp fp16, CUDA graphs on", dict(amp="fp16", cuda_graphs="on")),
                   ("amp fp16, CUDA graphs off", dict(amp="fp16", cuda_graphs="off")),
                   ("amp bf16, CUDA graphs off", dict(amp="bf16", cuda_graphs="off")),
                   ("channels_last off", dict(channels_last="off")), ("channels_last on", dict(channels_last="on")),
                   ("data in host memory", dict(data_on_device="off")),
                   ("batch 512, lr x sqrt(4)", dict(batch_size=512, scale_lr=True)),
                   ("batch 512, lr x sqrt(4), amp off", dict(batch_size=512, scale_lr=True, amp="off")),
                   ("batch 1024, lr x sqrt(8)", dict(batch_size=1024, scale_lr=True))]
        if not on_gpu:
            options = [(name, option) for name, option in options
                       if name in ("amp off", "amp bf16", "channels_last off", "channels_last on")]
        for name, overrides in [(n, o) for n, o in options if not args.variant or n in args.variant]:
            try:
                variants[name] = time_ours(images, device, epochs, work / name.replace(" ", "-").replace(",", ""),
                                           **{**common, **overrides})
            except Exception as error:  # one failing option must not hide the others' numbers
                print(f"ours, {name}: failed: {type(error).__name__}: {str(error)[:200]}", flush=True)
                continue
            rows.append((f"ours, {name}", *variants[name]))
            print(f"ours, {name}: {variants[name][0]:,.0f} images/s (steps), {variants[name][1]:,.0f} end to end",
                  flush=True)

    print(f"\n{'training path':<62}{'steps img/s':>12}{'vs baseline':>13}{'end to end':>12}")
    for name, value, end_to_end in rows:
        print(f"{name:<62}{value:>12,.0f}{value / baseline:>12.2f}x" + (f"{end_to_end:>12,.0f}" if end_to_end else ""))
    print(f"\ncache: decoding {len(images):,} images into the cache took {cache_build_s:.2f} s; loading it again "
          f"{cache_load_s:.3f} s")
    print(json.dumps({
        "device": describe_device(device), "image_size": args.image_size, "batch_size": args.batch_size,
        "images": len(images), "img_per_s_baseline": round(baseline, 1), "img_per_s_ours": round(ours, 1),
        "img_per_s_ours_end_to_end": round(ours_end_to_end, 1),
        "ratio": round(ours / baseline, 2), "cache_build_s": round(cache_build_s, 3),
        "cache_load_s": round(cache_load_s, 4),
        "variants": {k: {"steps": round(v[0], 1), "end_to_end": round(v[1], 1)} for k, v in variants.items()},
        "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
    }))


if __name__ == "__main__":
    main()
