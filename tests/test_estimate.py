"""utils.estimate: the time a long cell announces comes from this machine's measurements, and says what to lower."""

import dataclasses
import json
from contextlib import closing
from pathlib import Path

import torch

from utils import environment
from utils.config import TrainConfig
from utils.environment import _save_trial
from utils.estimate import fid_estimate, fid_images_to_score, format_duration, measured_speed, training_estimate, \
    training_speed
from utils.metrics import dataset_id, reference_cache_file, weights_id
from utils.run import CONFIG, HISTORY, default_run_dir
from utils.step import time_training_steps

CPU = torch.device("cpu")


def past_run(root: Path, config: TrainConfig, speeds: list[float], cut_short: float | None = None) -> Path:
    """A run folder whose history.json holds epochs at `speeds` images/s (and one cut short by max_minutes)."""
    folder = root / default_run_dir(config).name
    folder.mkdir(parents=True)
    config.save(folder / CONFIG)
    epochs = [{"epoch": i, "seconds": 1.0, "images_per_s": speed} for i, speed in enumerate(speeds, 1)]
    if cut_short is not None:
        epochs.append({"epoch": len(epochs) + 1, "seconds": 1.0, "images_per_s": cut_short, "steps": 3})
    (folder / HISTORY).write_text(json.dumps({"steps": [], "epochs": epochs}))
    return folder


def test_durations_read_as_estimates():
    assert [format_duration(s) for s in (0.2, 40, 89, 360, 3599, 11_111)] == \
           ["about 1 s", "about 40 s", "about 89 s", "about 6 min", "about 1 h 00 min", "about 3 h 05 min"]


def test_the_estimate_uses_the_epochs_measured_here_and_warns_on_a_cpu_with_what_to_lower(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "generated"
    past = past_run(root, TrainConfig(lr_g=1e-3), [20.0, 44.0, 45.0, 46.0], cut_short=5.0)   # same networks: counts
    past_run(root, TrainConfig(g_width=32), [500.0])                                         # other widths: not
    assert measured_speed(TrainConfig(), root) == (45.0, f"the epochs of {past} on this machine")

    first, warning = training_estimate(TrainConfig(), CPU, 20_000, root=root).splitlines()   # one duration
    assert first == (f"25 epochs x 20,000 images at about 45 images/s (the epochs of {past} on this machine): about "
                     "3 h 05 min here")
    assert warning == ('warning: over 30 minutes on a CPU: size = "cpu" picks values that train in minutes here (or '
                       'lower epochs, max_images, image_size, g_width and d_width), or use a GPU')
    assert training_estimate(TrainConfig(epochs=1, max_images=2000), CPU, 2_000, root=root) == \
           f"1 epoch x 2,000 images at about 45 images/s (the epochs of {past} on this machine): about 44 s here"
    assert "warning" not in training_estimate(TrainConfig(), torch.device("meta"), 20_000, root=root)  # not a CPU

    config = TrainConfig(epochs=3, image_size=32)   # a resumed run counts only the epochs left
    run = past_run(root, config, [100.0, 100.0])
    assert training_estimate(config, CPU, 1_000, root=root).startswith("1 epoch (epochs 3-3; 2 done) x 1,000 images")
    assert training_estimate(dataclasses.replace(config, epochs=2), CPU, 1_000, root=root) == \
           f"{run.relative_to(tmp_path)} already has 2 epochs: nothing to train, it only loads (seconds)"


def test_with_no_epochs_measured_the_speed_is_timed_by_the_cpu_trial_or_on_the_device(tmp_path, monkeypatch):
    """On a CPU the figure that train() itself reads to choose the precision, less the loop's share."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANIME_GAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ANIME_GAN_AMP", raising=False)
    config = TrainConfig(image_size=16, g_width=8, d_width=8, batch_size=32, epochs=2)
    monkeypatch.setattr(environment, "cpu_has_bf16", lambda: False)   # the cache below holds fp32 candidates only
    _save_trial(config, {"fp32 NCHW": 300.0, "fp32 channels_last": 400.0})
    assert training_estimate(config, CPU, 12_000) == \
           "2 epochs x 12,000 images at about 300 images/s (from the CPU trial): about 80 s here"   # 0.75 x 400
    assert training_estimate(dataclasses.replace(config, channels_last="off"), CPU, 12_000).endswith(
        "about 2 min here")   # 0.75 x 300
    larger = dataclasses.replace(config, batch_size=64, amp="off", channels_last="off")   # timed at its own batch
    torch.manual_seed(0)
    before = torch.get_rng_state()
    assert 0 < training_speed(larger, CPU)[0] != 0.75 * 300.0
    assert torch.equal(torch.get_rng_state(), before)   # the run learns the same
    with closing(time_training_steps(config, ["fp16 channels_last"], device=CPU)) as rounds:   # a GPU's timer, T4 path
        assert next(rounds)["fp16 channels_last"] > 0


def test_fid_estimate_counts_the_real_images_until_cached_says_what_fewer_samples_cost_and_warns_on_a_cpu(tmp_path):
    assert fid_estimate(1_000, 10.0, CPU, "fid_samples") == \
           "FID: 1,000 images through Inception at about 10.0 images/s (timed now on cpu): about 2 min here"
    assert fid_estimate(3_000, 10.0, CPU, "fid_samples", samples=1_000).splitlines()[1] == \
           ("1,000 samples per score: FID reads higher than with the usual 10,000 (its bias falls as 1 / samples), so "
            "compare only scores of equal settings")
    assert fid_estimate(20_000, 2.0, CPU, "fid_samples and fid_real").endswith(
        "warning: over 30 minutes on a CPU: lower fid_samples and fid_real (1,000 to 2,000), or use a GPU")
    assert fid_estimate(3_000, 1.0, CPU, "fid_samples and fid_real", samples=1_000).endswith(   # already few: no
        "warning: over 30 minutes on a CPU even at 1,000 samples (is other work slowing this CPU?): use a GPU, or "
        "skip FID (compute_fid = False)")   # advice to lower them to what they are
    images = torch.zeros(300, 3, 16, 16, dtype=torch.uint8)
    config = TrainConfig(data_dir=str(tmp_path), fid_samples=1000, fid_real=200)
    assert fid_images_to_score(config, images, generators=2) == 200 + 2 * 1000
    cache = reference_cache_file(tmp_path, dataset_id(images), 200, weights_id(""))
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"cached")
    assert fid_images_to_score(config, images, generators=2) == 2 * 1000
