"""What a GAN practitioner looking over the learner's shoulder would say after each epoch: what is going wrong, since
which epoch, and the one knob to turn first.

    >>> diagnose = Diagnosis(config, real_images)           # utils/training.py, once per run
    >>> diagnose(history, grid)                              # after each epoch: the lines to print, if any
    ["mode collapse since epoch 1: the grid's samples are 12% as varied as the real images, and D(G(z)) = 0.98 ..."]

It measures only what each epoch produces anyway, on the CPU, once per epoch (14 ms at 32x32, 90 ms at 64x64 on a
busy 2-core CPU): the grid of the fixed-noise samples (the uint8 grid saved in samples/, so a resumed run measures
exactly what an uninterrupted one did), the history's logged losses and D's verdicts, and 64 of the real images.
Each epoch's `signals` and `diagnosis` ({problem: line}) go into its record of the history: saved, resumed, shaded
by utils/visualize.py and listed by utils/compare.py. A healthy run says nothing.

The problems, each with the part of notebook 03's Troubleshooting that explains it:
- mode collapse: the samples' variety (their root mean square pairwise distance, against the real images') low while
  D takes them for real, or fallen to half of its own best once the samples had formed;
- D wins: D(x) above 0.99 and D(G(z)) below 0.01 for half the epoch or more (G then gets almost no gradient);
- G fools D: D(G(z)) above D(x) for most of the epoch, a sign of G outrunning D (usually before a collapse);
- checkerboard artefacts: the samples' power at the stride-2 frequencies of the transposed convolutions (every
  other pixel), against the neighbouring frequencies, compared with the same ratio for the real images;
- divergence: losses ten times above any earlier epoch's, or non-finite samples;
- no progress: samples that stopped changing between epochs while the losses stay flat.
Where one problem explains another, only the first to fix is said (`first_to_fix`). The thresholds below were set on
real runs: docs/troubleshooting/README.md, "What train() says about these runs".
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# Thresholds, measured on the runs of docs/troubleshooting/README.md and on healthy runs (the table is there).
FORMED = 0.4                 # samples this varied (of the real images' variety) are past a young G's blobs
COLLAPSE_VARIETY = 0.35      # variety below this share of the real images' while D takes the samples for real...
COLLAPSE_DROP = 0.5          # ...or, once formed, below this share of its own best so far and under DROP_VARIETY
DROP_VARIETY = 0.5
D_CERTAIN = 0.99             # D(x) above this and D(G(z)) below 1 - this: D is certain...
D_WON = 0.5                  # ...in this share of the epoch's logged steps: D has won
FOOLED_BY = 0.05             # D(G(z)) above D(x) by this much on average over the epoch (0.5 and 0.5 is a draw)
MOST = 0.8                   # "most of the epoch": this share of its logged steps
CHECKER_RATIO = 15.0         # the stride-2 peak of the spectrum this many times the real images' (2 epochs' mean)
DIVERGED = 10.0              # an epoch's mean loss this many times the largest of the earlier epochs', and above 10
MIN_SAMPLES = 8              # fewer fixed-noise samples than this say too little about variety
STILL = 0.05                 # samples changed less than this share of the real images' variety since the last epoch
FLAT = 0.05                  # and the epoch's mean losses moved by less than this share

DCGAN_LR = 2e-4              # both learning rates of the DCGAN recipe (TrainConfig's defaults)

TROUBLESHOOTING = {  # the sections of notebook 03's Troubleshooting, by problem
    "mode collapse": "Mode collapse", "D wins": "D wins", "G fools D": "Mode collapse",
    "checkerboard": "Checkerboard artefacts", "divergence": "Divergence", "no progress": "D wins",
}


# ------------------------------------------------------------------------------------------------ signals

def untile(grid: np.ndarray, count: int, size: int, nrow: int = 8, padding: int = 2) -> torch.Tensor:
    """The `count` images of `size` px of a grid made by utils.visualize.image_grid ((H, W, 3) uint8), as floats
    (N, 3, size, size) in [-1, 1]."""
    pixels = torch.from_numpy(np.array(grid)).permute(2, 0, 1).float().div(127.5).sub(1)
    step = size + padding
    return torch.stack([pixels[:, padding + (i // nrow) * step:][:, :size, padding + (i % nrow) * step:][:, :, :size]
                        for i in range(count)])


def variety(images: torch.Tensor) -> float:
    """The root mean square distance between two different images of the set, per pixel (0: all identical)."""
    flat = images.flatten(1).double()
    n = len(flat)
    if n < 2:
        return 0.0
    # the mean squared distance over pairs is twice the variance about the mean image (times n / (n - 1))
    spread = (flat - flat.mean(0)).pow(2).sum(1).mean().item()
    return math.sqrt(2 * spread * n / (n - 1) / flat.shape[1])


def stride_peak(images: torch.Tensor) -> float:
    """How far the power at the stride-2 frequencies (period 2 pixels down, across, diagonally) stands above that of
    their neighbouring frequencies, averaged over the images: about 1 for a smooth spectrum (real faces, noise),
    far above 1 for a checkerboard."""
    x = images.double()
    x = x - x.mean(dim=(2, 3), keepdim=True)
    power = torch.fft.fft2(x).abs().pow(2).mean(dim=(0, 1))  # (H, W)
    h, w = power.shape
    peak = neighbours = 0.0
    for fy, fx in ((h // 2, 0), (0, w // 2), (h // 2, w // 2)):
        peak += power[fy, fx].item()
        around = [power[(fy + dy) % h, (fx + dx) % w].item() for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                  if (dy or dx) and ((fy + dy) % h, (fx + dx) % w) != (0, 0)]
        neighbours += sum(around) / len(around)
    return peak / max(neighbours, 1e-12)


def signals(samples: torch.Tensor, previous: torch.Tensor | None, real: dict) -> dict:
    """The epoch's measurements, relative to the real images' (`real_reference`): "variety" (1: as varied as the
    real images), "checker" (1: as little stride-2 pattern as they have), "change" since the previous epoch's
    samples (in units of the real images' variety; absent without them), and "finite" (only when False)."""
    finite = bool(torch.isfinite(samples).all())
    samples = torch.nan_to_num(samples)
    out = {"checker": round(stride_peak(samples) / real["checker"], 3)}
    if len(samples) >= MIN_SAMPLES:
        out["variety"] = round(variety(samples) / real["variety"], 4)
    if previous is not None:
        change = (samples - previous).pow(2).mean().sqrt().item()
        out["change"] = round(change / real["variety"], 4)
    if not finite:
        out["finite"] = False
    return out


def real_reference(images: torch.Tensor, count: int = 64) -> dict:
    """The real images' variety and stride-2 peak, from `count` of them spread evenly over the data set (uint8)."""
    index = torch.linspace(0, len(images) - 1, min(count, len(images))).long()
    real = images[index].cpu().float().div(127.5).sub(1)
    return {"variety": max(variety(real), 1e-6), "checker": max(stride_peak(real), 1e-6)}


# ----------------------------------------------------------------------------------------------- detectors

def findings(epochs: list[dict], steps: list[dict]) -> dict[str, str]:
    """{problem: what is seen} for the last of `epochs` (records with "signals"), from its signals, those of the
    earlier epochs and `steps`, the history's step records of that epoch. Empty for a healthy epoch."""
    now, earlier = epochs[-1]["signals"], [e["signals"] for e in epochs[:-1] if "signals" in e]
    seen = {}
    loss_d = _mean(steps, "loss_d")
    loss_g = _mean(steps, "loss_g")
    if not now.get("finite", True) or not (math.isfinite(loss_d) and math.isfinite(loss_g)):
        seen["divergence"] = "the samples or losses are no longer finite numbers"
    elif earlier and max(abs(loss_d), abs(loss_g)) > max(10.0, DIVERGED * max(
            max(abs(e.get("loss_d", 0)), abs(e.get("loss_g", 0))) for e in earlier)):
        seen["divergence"] = (f"the losses jumped to {loss_d:.3g} (D) and {loss_g:.3g} (G), ten times any earlier "
                              "epoch's")
    if steps and _share(steps, lambda s: s["d_real"] > D_CERTAIN and s["d_fake"] < 1 - D_CERTAIN) >= D_WON:
        seen["D wins"] = (f"D(x) = {steps[-1]['d_real']:.2f} and D(G(z)) = {steps[-1]['d_fake']:.2f}: D is certain, "
                          "so G gets almost no gradient")
    if steps and _share(steps, lambda s: s["d_fake"] > s["d_real"]) >= MOST \
            and _mean(steps, "d_fake") > _mean(steps, "d_real") + FOOLED_BY:
        seen["G fools D"] = (f"D(G(z)) = {_mean(steps, 'd_fake'):.2f} is above D(x) = {_mean(steps, 'd_real'):.2f}: "
                             "G outruns D")
    # a young G draws near-identical blobs too, but D rejects them: low variety is a collapse when D takes the
    # samples for real (and for as long as the variety stays low), or when the samples had become varied and lost it
    best = max([e.get("variety", 0) for e in earlier] + [now.get("variety", 0)])
    collapsed = len(epochs) > 1 and "mode collapse" in epochs[-2].get("diagnosis", {})
    low = now.get("variety", 1) < COLLAPSE_VARIETY and ("G fools D" in seen or collapsed)
    if low or (best >= FORMED and now.get("variety", 1) < min(COLLAPSE_DROP * best, DROP_VARIETY)):
        seen["mode collapse"] = f"the grid's samples are {now['variety']:.0%} as varied as the real images" + (
            f" (they were {best:.0%})" if best > 2 * now["variety"] else "")
    # the blobs of a young G carry the pattern too: it is a problem on samples that have become varied; averaged
    # with the previous epoch's, as it flickers from one epoch to the next
    pattern = (now["checker"] + earlier[-1]["checker"]) / 2 if earlier and "checker" in earlier[-1] else now["checker"]
    if pattern > CHECKER_RATIO and now.get("variety", 1) >= FORMED:
        seen["checkerboard"] = (f"the samples carry a 2-pixel pattern {pattern:.0f} times stronger than the real "
                                "images'")
    previous = earlier[-1] if earlier else None
    if (now.get("change") is not None and now["change"] < STILL and previous is not None
            and "loss_d" in previous and _moved(previous, loss_d, loss_g) < FLAT and "D wins" not in seen):
        seen["no progress"] = (f"the samples changed by {now['change']:.0%} of the real images' variety since the last "
                               "epoch, and the losses stay flat")
    return first_to_fix(seen)


def first_to_fix(seen: dict[str, str]) -> dict[str, str]:
    """The problems to name, with one change to try first: those another one explains are left out or folded in
    (a collapsed G fools D, may carry a pattern and changes little; a G that gets no gradient from a D that has won
    stops changing or falls onto one pattern, and its loss soars)."""
    seen = dict(seen)
    if "mode collapse" in seen:
        fooled = seen.pop("G fools D", "")
        seen.pop("checkerboard", None)
        seen.pop("no progress", None)
        if fooled:
            seen["mode collapse"] += ", and " + fooled.split(": G outruns D")[0]
    if "D wins" in seen:
        for explained in ("no progress", "divergence", "checkerboard", "mode collapse"):
            seen.pop(explained, None)
    return seen


def _mean(steps: list[dict], key: str) -> float:
    return sum(s[key] for s in steps) / len(steps) if steps else 0.0


def _share(steps: list[dict], test) -> float:
    return sum(1 for s in steps if test(s)) / len(steps)


def _moved(previous: dict, loss_d: float, loss_g: float) -> float:
    """How much the epoch's mean losses moved since the previous epoch's, relative to their size."""
    return max(abs(loss_d - previous["loss_d"]) / max(abs(previous["loss_d"]), 1e-3),
               abs(loss_g - previous["loss_g"]) / max(abs(previous["loss_g"]), 1e-3))


# ---------------------------------------------------------------------------------------- what to change

def knob(problem: str, config) -> str:
    """The first change to try for `problem`, with the current values (as notebook 03's Troubleshooting advises)."""
    improved = "" if config.loss == "hinge" else ", or try recipe='improved'"
    # the DCGAN rates are the reference of a plain run; the improved recipe has faster ones of its own
    high = [name for name in ("lr_g", "lr_d") if getattr(config, name) > DCGAN_LR and config.loss != "hinge"]
    to_dcgan = " and ".join(f"{name} (now {getattr(config, name):g})" for name in high) + \
        f" to the DCGAN recipe's {DCGAN_LR:g}"
    if problem in ("mode collapse", "G fools D"):
        if config.lr_g > config.lr_d:
            return f"lower lr_g (now {config.lr_g:g}) to at most lr_d (now {config.lr_d:g}){improved}"
        return f"lower lr_g (now {config.lr_g:g}){improved}"
    if problem in ("D wins", "no progress"):
        if high:
            return f"lower {to_dcgan}{improved}"
        return f"slow D down: lower lr_d (now {config.lr_d:g}) to {config.lr_d / 2:g}{improved}"
    if problem == "checkerboard":
        return (f"lower {to_dcgan} and train longer: the pattern fades as G learns" if high else
                f"train longer (epochs, now {config.epochs}): the pattern fades as G learns")
    amp = "" if config.amp == "off" else ", or amp='off'"
    return f"lower lr_g and lr_d (now {config.lr_g:g} and {config.lr_d:g}) to half{amp}{improved}"


def since(epochs: list[dict], problem: str) -> int:
    """The first epoch of the unbroken stretch of epochs, ending with the last one, that had `problem`."""
    first = epochs[-1]["epoch"]
    for record in reversed(epochs[:-1]):
        if problem not in record.get("diagnosis", {}):
            break
        first = record["epoch"]
    return first


class Diagnosis:
    """After each epoch, `diagnosis(history, grid)` measures the epoch's signals, records them and what they show
    in the epoch's record (history["epochs"][-1]), and returns the lines to print: one per problem seen."""

    def __init__(self, config, real_images: torch.Tensor, previous_grid: Path | None = None):
        """`real_images`: the data set (uint8); `previous_grid`: the last epoch's grid PNG when the run resumes."""
        self.config = config
        self.real = real_reference(real_images)
        self.previous = None
        if previous_grid is not None and previous_grid.is_file():
            with Image.open(previous_grid) as grid:
                self.previous = self._samples(np.asarray(grid.convert("RGB")))

    def _samples(self, grid: np.ndarray) -> torch.Tensor:
        return untile(grid, self.config.num_samples, self.config.image_size)

    def __call__(self, history: dict, grid: np.ndarray) -> list[str]:
        record = history["epochs"][-1]
        steps = [s for s in history["steps"] if s["epoch"] == record["epoch"]]
        samples = self._samples(grid)
        record["signals"] = {**signals(samples, self.previous, self.real),
                             "loss_d": round(_mean(steps, "loss_d"), 4), "loss_g": round(_mean(steps, "loss_g"), 4)}
        self.previous = samples
        lines = {problem: f"{problem} since epoch {since(history['epochs'], problem)}: {evidence}: "
                          f"{knob(problem, self.config)} (see notebook 03's Troubleshooting: "
                          f"{TROUBLESHOOTING[problem]})"
                 for problem, evidence in findings(history["epochs"], steps).items()}
        if lines:
            record["diagnosis"] = lines
        return list(lines.values())
