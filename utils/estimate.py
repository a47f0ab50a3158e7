"""How long the long cells (training, FID) take here, in one line: on a CPU from the cached CPU trial, on a GPU from a
few steps timed now; past 30 minutes on a CPU a warning names what to lower."""

import time
from contextlib import closing
from functools import partial
from pathlib import Path

import torch

from utils.config import TrainConfig
from utils.environment import choose_device, cpu_epoch_speed
from utils.metrics import dataset_id, reference_cache_file, weights_id
from utils.run import read_history_file, run_dir_of
from utils.step import time_training_steps

LONG_MINUTES = 30   # past this on a CPU a run is worth shrinking: a warning names the values to lower
FID_REFERENCE_SAMPLES = 10_000   # fewer generated images bias FID upward (the bias falls as 1 / samples)


def format_duration(seconds: float) -> str:
    """'about 40 s', 'about 6 min', 'about 3 h 05 min': as precise as an estimate deserves."""
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    return f"about {minutes} min" if minutes < 60 else f"about {minutes // 60} h {minutes % 60:02d} min"


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def training_estimate(config: TrainConfig, device: torch.device, num_images: int, run_dir: Path | None = None) -> str:
    """How long the epochs that `run_dir` (default: `config`'s) has still to train on `num_images` images take here."""
    run_dir = run_dir_of(config) if run_dir is None else run_dir
    history, _ = read_history_file(run_dir)   # a damaged history.json: a new run
    done = len(history["epochs"]) if history else 0
    remaining = config.epochs - done
    if remaining <= 0:
        return f"{run_dir} already has {plural(done, 'epoch')}: nothing to train, it only loads (seconds)"
    if device.type == "cpu":
        speed, source = cpu_epoch_speed(config), "from the CPU trial"
    else:   # the fastest of three steps of the run's batch as training will run them (the first also warms up)
        candidate = choose_device(config, partial(time_training_steps, config)).candidate
        with closing(time_training_steps(config, [candidate], config.batch_size, device)) as rounds:
            speed = max(next(rounds)[candidate] for _ in range(3))
        source = f"{config.batch_size}-image training steps timed now on {device}"
    seconds = remaining * num_images / speed
    resumed = f" (epochs {done + 1}-{config.epochs}; {done} done)" if done else ""
    line = (f"{plural(remaining, 'epoch')}{resumed} x {num_images:,} images at about {speed:,.0f} images/s "
            f"({source}): {format_duration(seconds)} here")
    if device.type == "cpu" and seconds > LONG_MINUTES * 60:
        line += (f"\nwarning: over {LONG_MINUTES} minutes on a CPU: size = \"cpu\" picks values that train in "
                 "minutes here (or lower epochs, max_images, image_size, g_width and d_width), or use a GPU")
    return line


def fid_estimate(images_to_score: int, images_per_s: float, device: torch.device, lower: str,
                 samples: int = FID_REFERENCE_SAMPLES) -> str:
    """What scoring `images_to_score` images through Inception takes, what `samples` per score cost in precision;
    on a CPU past LONG_MINUTES a warning naming `lower` (the parameters that set the count)."""
    seconds = images_to_score / images_per_s
    line = (f"FID: {images_to_score:,} images through Inception at about {images_per_s:,.1f} images/s (timed now on "
            f"{device}): {format_duration(seconds)} here")
    if samples < FID_REFERENCE_SAMPLES:
        line += (f"\n{samples:,} samples per score: FID reads higher than with the usual {FID_REFERENCE_SAMPLES:,} "
                 "(its bias falls as 1 / samples), so compare only scores of equal settings")
    if device.type == "cpu" and seconds > LONG_MINUTES * 60:   # lowering `lower` helps only where it is not low already
        advice = f"lower {lower} (1,000 to 2,000), " if samples > 2_000 else ""
        line += f"\nwarning: over {LONG_MINUTES} minutes on a CPU: {advice}use a GPU, or skip FID (compute_fid=False)"
    return line


def fid_images_to_score(config: TrainConfig, real_images: torch.Tensor, generators: int) -> int:
    """Images FID runs through Inception for `generators` scores: `fid_samples` each, and the real ones until cached."""
    cached = reference_cache_file(config.data_dir, dataset_id(real_images), config.fid_real,
                                  weights_id(config.fid_weights)).is_file()
    real = 0 if cached else min(config.fid_real or len(real_images), len(real_images))
    return real + generators * config.fid_samples


def inception_speed(fid, image_size: int) -> float:
    """Images/s of an FID scorer's network on its device, timed on 16 images (per image, 8 run faster than 200)."""
    images = torch.zeros(16, 3, image_size, image_size, dtype=torch.uint8, device=fid.device)
    with torch.no_grad():
        fid.feature_extractor(images[:2])
        started = time.perf_counter()
        fid.feature_extractor(images).sum().item()
    return len(images) / (time.perf_counter() - started)
