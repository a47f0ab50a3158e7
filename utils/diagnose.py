"""After each epoch, what a GAN practitioner would say: the problem seen (mode collapse, D wins, G fools D,
checkerboard, divergence, no progress), since when, and the knob to turn first, from what the epoch made anyway
against 64 real images. Thresholds and the runs they were measured on: docs/troubleshooting/README.md."""

import itertools
import math
from pathlib import Path

import numpy as np
import torch

from utils.visualize import read_grid

FORMED = 0.4                 # samples this varied (a share of the real images' variety) are past a young G's blobs
COLLAPSE_VARIETY = 0.35      # variety below this while D takes the samples for real is a collapse...
COLLAPSE_DROP = 0.5          # ...and so, once formed, is falling below this share of its best (at most of 1)
D_CERTAIN, D_WON = 0.99, 0.5  # D(x) above 0.99 and D(G(z)) below 0.01 in half the epoch's logged steps: D has won
FOOLED_BY, MOST = 0.05, 0.8  # D(G(z)) above D(x) in 80% of the steps, and by 0.05 on the mean (0.5, 0.5 is a draw)
CHECKER = 0.065              # a 2-pixel pattern this strong, in the real images' variety (2 epochs' mean; theirs ~0.02)
DIVERGED = 10.0              # an epoch's mean loss this many times the largest of the earlier epochs', and above 10
STILL, FLAT = 0.05, 0.05     # samples changed by under 5% of the real variety, the mean losses by under 5%: stuck
DCGAN_LR = 2e-4              # both learning rates of the DCGAN recipe (TrainConfig's defaults)

TROUBLESHOOTING = {"mode collapse": "Mode collapse", "D wins": "D wins", "G fools D": "Mode collapse",  # notebook 03
                   "checkerboard": "Checkerboard artefacts", "divergence": "Divergence", "no progress": "D wins"}


def untile(grid: np.ndarray, count: int, size: int, nrow: int = 8, padding: int = 2) -> torch.Tensor:
    """The `count` images of a grid made by utils.visualize.image_grid ((H, W, 3) uint8) as floats in [-1, 1]."""
    pixels = torch.from_numpy(np.array(grid)).permute(2, 0, 1).float().div(127.5).sub(1)
    step = size + padding
    return torch.stack([pixels[:, padding + (i // nrow) * step:][:, :size, padding + (i % nrow) * step:][:, :, :size]
                        for i in range(count)])


def variety(images: torch.Tensor) -> float:
    """The root mean square distance between two different images of the set, per pixel (0: all identical)."""
    # the mean squared distance over pairs of images is twice their (unbiased) variance about the mean image
    return math.sqrt(2 * images.flatten(1).double().var(0).mean().item()) if len(images) > 1 else 0.0


def stride_pattern(images: torch.Tensor) -> float:
    """The strength (root mean square, per pixel) of the 2-pixel pattern: the stride-2 frequencies of the spectrum."""
    power = torch.fft.fft2(images.double()).abs().pow(2).mean(dim=(0, 1))  # (H, W)
    h, w = power.shape[0] // 2, power.shape[1] // 2  # the stride-2 frequencies: down, across and diagonally
    return math.sqrt(power[[h, 0, h], [0, w, w]].sum().item()) / power.numel()


def findings(epochs: list[dict], steps: list[dict]) -> dict[str, str]:
    """{problem: what is seen} in the last of `epochs` and its logged `steps`; a cause hides what it explains."""
    now, earlier = epochs[-1]["signals"], [e["signals"] for e in epochs[:-1] if "signals" in e]
    if steps and sum(s["d_real"] > D_CERTAIN and s["d_fake"] < 1 - D_CERTAIN for s in steps) >= D_WON * len(steps):
        # G gets no gradient: its samples stop changing or fall onto one pattern, and its loss soars
        return {"D wins": f"D(x) = {steps[-1]['d_real']:.2f} and D(G(z)) = {steps[-1]['d_fake']:.2f}: D is certain, "
                          "so G gets almost no gradient"}
    loss_d, loss_g = _mean(steps, "loss_d"), _mean(steps, "loss_g")
    seen = {}
    if not (math.isfinite(loss_d) and math.isfinite(loss_g)):
        seen["divergence"] = "the losses are no longer finite numbers"
    elif earlier and max(abs(loss_d), abs(loss_g)) > max(10.0, DIVERGED * max(
            max(abs(e["loss_d"]), abs(e["loss_g"])) for e in earlier)):
        seen["divergence"] = (f"the losses jumped to {loss_d:.3g} (D) and {loss_g:.3g} (G), ten times any earlier "
                              "epoch's")
    d_real, d_fake = _mean(steps, "d_real"), _mean(steps, "d_fake")
    fooled = sum(s["d_fake"] > s["d_real"] for s in steps) >= MOST * len(steps) and d_fake > d_real + FOOLED_BY
    # a young G's blobs are alike too, but D rejects them: low variety is a collapse while D takes the samples for
    # real (and as long as it stays low), or when samples that had become varied lose it
    variety_now = now.get("variety", 1)
    best = max([e.get("variety", 0) for e in earlier] + [now.get("variety", 0)])
    collapsed = len(epochs) > 1 and "mode collapse" in epochs[-2].get("diagnosis", {})
    if (variety_now < COLLAPSE_VARIETY and (fooled or collapsed)) or \
            (best >= FORMED and variety_now < COLLAPSE_DROP * min(best, 1)):
        # a collapsed G fools D, may carry a pattern and changes little: the collapse is the one to fix
        return seen | {"mode collapse": f"the grid's samples are {variety_now:.0%} as varied as the real images"
                       + (f" (they were {best:.0%})" if best > 2 * variety_now else "")
                       + (f", and D(G(z)) = {d_fake:.2f} is above D(x) = {d_real:.2f}" if fooled else "")}
    if fooled:
        seen["G fools D"] = f"D(G(z)) = {d_fake:.2f} is above D(x) = {d_real:.2f}: G outruns D"
    # a young G's blobs carry the pattern too; averaged over two epochs, as it flickers from one to the next (an
    # older run's records lack "pattern": the epoch after its resume stands alone)
    pattern = (now["pattern"] + earlier[-1].get("pattern", now["pattern"])) / 2 if earlier else now["pattern"]
    if pattern > CHECKER and variety_now >= FORMED:
        seen["checkerboard"] = (f"a 2-pixel pattern covers the samples, at {pattern:.1%} of the real images' variety "
                                f"(healthy runs stay under {CHECKER:.1%})")
    moved = max(abs(mean - earlier[-1][key]) / max(abs(earlier[-1][key]), 1e-3)  # relative to the losses' size
                for key, mean in (("loss_d", loss_d), ("loss_g", loss_g))) if earlier else 1.0
    if now.get("change", 1) < STILL and moved < FLAT:
        seen["no progress"] = (f"the samples changed by {now['change']:.0%} of the real images' variety since the last "
                               "epoch, and the losses stay flat")
    return seen


def _mean(steps: list[dict], key: str) -> float:
    return sum(s[key] for s in steps) / len(steps) if steps else 0.0


def knob(problem: str, config) -> str:
    """The first change to try for `problem`, with the current values (as notebook 03's Troubleshooting advises)."""
    improved = "" if config.loss == "hinge" else ", or try recipe='improved'"
    # the DCGAN rates are the reference of a plain run; the improved recipe has faster ones of its own
    high = " and ".join(f"{name} (now {getattr(config, name):g})" for name in ("lr_g", "lr_d")
                        if getattr(config, name) > DCGAN_LR and config.loss != "hinge")
    to_dcgan = f"lower {high} to the DCGAN recipe's {DCGAN_LR:g}"
    if problem in ("mode collapse", "G fools D"):
        limit = f" to at most lr_d (now {config.lr_d:g})" if config.lr_g > config.lr_d else ""
        return f"lower lr_g (now {config.lr_g:g}){limit}{improved}"
    if problem in ("D wins", "no progress"):
        slow_d = f"slow D down: lower lr_d (now {config.lr_d:g}) to {config.lr_d / 2:g}"
        return (to_dcgan if high else slow_d) + improved
    if problem == "checkerboard":
        return (f"{to_dcgan} and train longer" if high else f"train longer (epochs, now {config.epochs})") + \
            ": the pattern fades as G learns"
    amp = "" if config.amp == "off" else ", or amp='off'"
    return f"lower lr_g and lr_d (now {config.lr_g:g} and {config.lr_d:g}) to half{amp}{improved}"


def since(epochs: list[dict], problem: str) -> int:
    """The first epoch of the unbroken stretch of epochs, ending with the last one, that had `problem`."""
    stretch = itertools.takewhile(lambda record: problem in record.get("diagnosis", {}), reversed(epochs[:-1]))
    return [epochs[-1], *stretch][-1]["epoch"]


class Diagnosis:
    """`diagnosis(history, grid)` after each epoch: the signals and what they show go into the epoch's record, the lines
    to print are returned. `previous_grid`: the grid before a resume, so that it measures as an uninterrupted run."""

    def __init__(self, config, real_images: torch.Tensor, previous_grid: Path | None = None):
        self.config = config
        index = torch.linspace(0, len(real_images) - 1, min(64, len(real_images))).long()  # spread over the set
        real = real_images[index].cpu().float().div(127.5).sub(1)
        self.real_variety = max(variety(real), 1e-6)
        resumed = previous_grid is not None and previous_grid.is_file()  # the last epoch's samples, for "change"
        self.previous = untile(read_grid(previous_grid), config.num_samples, config.image_size) if resumed else None

    def __call__(self, history: dict, grid: np.ndarray) -> list[str]:
        record = history["epochs"][-1]
        steps = [s for s in history["steps"] if s["epoch"] == record["epoch"]]
        samples = untile(grid, self.config.num_samples, self.config.image_size)
        # pattern, variety and change in the real images' variety (variety 1: as varied as they are)
        signals = {"pattern": round(stride_pattern(samples) / self.real_variety, 4),
                   "loss_d": round(_mean(steps, "loss_d"), 4), "loss_g": round(_mean(steps, "loss_g"), 4)}
        if len(samples) >= 8:  # fewer samples say too little about variety
            signals["variety"] = round(variety(samples) / self.real_variety, 4)
        if self.previous is not None:
            signals["change"] = round((samples - self.previous).pow(2).mean().sqrt().item() / self.real_variety, 4)
        record["signals"], self.previous = signals, samples
        lines = {problem: f"{problem} since epoch {since(history['epochs'], problem)}: {evidence}: "
                          f"{knob(problem, self.config)} (see notebook 03's Troubleshooting: "
                          f"{TROUBLESHOOTING[problem]})"
                 for problem, evidence in findings(history["epochs"], steps).items()}
        if lines:
            record["diagnosis"] = lines
        return list(lines.values())
