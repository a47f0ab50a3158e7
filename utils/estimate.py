"""How long the long cells (training, FID) take here, from what was measured on this machine: an earlier run's epochs
with the same step cost, else the CPU trial (cached), else a few steps timed now on the GPU (utils.step's timer). One
line, one duration.

    >>> print(training_estimate(config, pick_device("auto"), len(images)))
    20 epochs x 7,000 images at about 480 images/s (from the CPU trial): about 5 min here
"""

from __future__ import annotations

import math
import statistics
import time
from contextlib import closing
from pathlib import Path

import torch

from utils.config import TrainConfig
from utils.environment import (EPOCH_SHARE, TRIAL_BATCH, amp_setting, candidate_name, cpu_epoch_speed, pick_amp,
                               pick_channels_last)
from utils.metrics import dataset_id, reference_cache_file, weights_id
from utils.run import CONFIG, GENERATED, HISTORY, read_history_file, run_dir_of
from utils.step import time_training_steps

LONG_ON_CPU_S = 30 * 60   # past this a CPU run is worth shrinking: a warning names the values to lower
# The fields that decide how fast a training step is: a run with the same ones measured the speed of this one.
SPEED_FIELDS = ("image_size", "latent_dim", "g_width", "d_width", "spectral_norm", "batch_size", "diffaugment",
                "loss")
FID_REFERENCE_SAMPLES = 10_000   # fewer generated images bias FID upward (the bias falls as 1 / samples)


def format_duration(seconds: float) -> str:
    """'about 40 s', 'about 6 min', 'about 3 h 05 min': as precise as an estimate deserves."""
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    return f"about {minutes} min" if minutes < 60 else f"about {minutes // 60} h {minutes % 60:02d} min"


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def epochs_done(run_dir: Path) -> int:
    """How many epochs a run folder already holds (0 for a new run, or one whose history.json is damaged)."""
    history, _ = read_history_file(run_dir)
    return len(history["epochs"]) if history else 0


def measured_speed(config: TrainConfig, root: str | Path = GENERATED) -> tuple[float, str] | None:
    """(images/s, where) from the latest run under `root` whose step costs the same: the median of its last three
    whole epochs (the first pays for warming up; one slowed by other work should not decide)."""
    found = []
    for config_file in Path(root).glob(f"*/{CONFIG}"):
        history, _ = read_history_file(config_file.parent)   # another run's damaged history is passed over
        try:
            saved = TrainConfig.load(config_file)
        except (OSError, ValueError):
            continue
        speeds = [epoch["images_per_s"] for epoch in (history or {}).get("epochs", []) if "steps" not in epoch
                  and type(epoch.get("images_per_s")) in (int, float) and 0 < epoch["images_per_s"] < math.inf]
        if speeds and all(getattr(saved, name) == getattr(config, name) for name in SPEED_FIELDS):
            found.append(((config_file.parent / HISTORY).stat().st_mtime, speeds, config_file.parent))
    if not found:
        return None
    _, speeds, run_dir = max(found, key=lambda run: run[0])
    return statistics.median(speeds[-3:]), f"the epochs of {run_dir} on this machine"


def training_speed(config: TrainConfig, device: torch.device, root: str | Path = GENERATED) -> tuple[float, str]:
    """(images/s, where the figure comes from) of `config`'s epochs here: measured epochs, else the CPU trial (a few
    steps of the run's batch timed now where it is larger than the trial's) times EPOCH_SHARE, else steps timed now."""
    measured = measured_speed(config, root)
    if measured is not None:
        return measured
    if device.type == "cpu":
        candidate, speed = cpu_epoch_speed(config)
        if config.batch_size <= TRIAL_BATCH:
            return speed, "from the CPU trial"
    else:
        channels_last = pick_channels_last(device, config.channels_last, config.compile)
        candidate = candidate_name(pick_amp(device, *amp_setting(config)), channels_last)
    with closing(time_training_steps(config, [candidate], config.batch_size, device)) as rounds:
        speed = max(next(rounds)[candidate] for _ in range(3))   # the fastest of 3: the first also waits for warm-up
    if device.type == "cpu":
        return EPOCH_SHARE * speed, "from the CPU trial"
    return speed, f"{config.batch_size}-image training steps timed now on {device}"


def training_estimate(config: TrainConfig, device: torch.device, num_images: int, root: str | Path = GENERATED,
                      run_dir: Path | None = None) -> str:
    """What training the epochs still to train in `run_dir` (default: `config`'s) on `num_images` images takes
    here, in one line; on a CPU past LONG_ON_CPU_S a warning naming what to lower."""
    run_dir = run_dir_of(config) if run_dir is None else run_dir
    done = epochs_done(run_dir)
    remaining = config.epochs - done
    if remaining <= 0:
        return f"{run_dir} already has {plural(done, 'epoch')}: nothing to train, it only loads (seconds)"
    speed, source = training_speed(config, device, root)
    seconds = remaining * num_images / speed
    resumed = f" (epochs {done + 1}-{config.epochs}; {done} done)" if done else ""
    line = (f"{plural(remaining, 'epoch')}{resumed} x {num_images:,} images at about {speed:,.0f} images/s "
            f"({source}): {format_duration(seconds)} here")
    if device.type == "cpu" and seconds > LONG_ON_CPU_S:
        line += (f"\nwarning: over {LONG_ON_CPU_S // 60} minutes on a CPU: size = \"cpu\" picks values that train in "
                 "minutes here (or lower epochs, max_images, image_size, g_width and d_width), or use a GPU")
    return line


def fid_estimate(images_to_score: int, images_per_s: float, device: torch.device, lower: str,
                 samples: int = FID_REFERENCE_SAMPLES) -> str:
    """What scoring `images_to_score` images through Inception takes, what `samples` per score cost in precision;
    on a CPU past LONG_ON_CPU_S a warning naming `lower` (the parameters that set the count)."""
    seconds = images_to_score / images_per_s
    line = (f"FID: {images_to_score:,} images through Inception at about {images_per_s:,.1f} images/s (timed now on "
            f"{device}): {format_duration(seconds)} here")
    if samples < FID_REFERENCE_SAMPLES:
        line += (f"\n{samples:,} samples per score: FID reads higher than with the usual {FID_REFERENCE_SAMPLES:,} "
                 "(its bias falls as 1 / samples), so compare only scores of equal settings")
    if device.type == "cpu" and seconds > LONG_ON_CPU_S:
        line += f"\nwarning: over {LONG_ON_CPU_S // 60} minutes on a CPU" + (
            f": lower {lower} (1,000 to 2,000), or use a GPU" if samples > 2_000 else
            f" even at {samples:,} samples (is other work slowing this CPU?): use a GPU, or skip FID (compute_fid = "
            "False)")
    return line


def fid_images_to_score(config: TrainConfig, real_images: torch.Tensor, generators: int) -> int:
    """How many images FID runs through Inception for `generators` scores: `fid_samples` each, plus the real
    reference set where its statistics are not cached yet."""
    cached = reference_cache_file(config.data_dir, dataset_id(real_images), config.fid_real,
                                  weights_id(config.fid_weights)).is_file()
    real = 0 if cached else min(config.fid_real or len(real_images), len(real_images))
    return real + generators * config.fid_samples


def inception_speed(fid, image_size: int, batch: int = 8) -> float:
    """Images/s of an FID scorer's feature extractor on its device, timed on one batch after a warm-up batch."""
    images = torch.zeros(batch, 3, image_size, image_size, dtype=torch.uint8, device=fid.device)
    with torch.no_grad():
        fid.feature_extractor(images[:2])
        started = time.perf_counter()
        fid.feature_extractor(images).sum().item()
    return batch / (time.perf_counter() - started)
