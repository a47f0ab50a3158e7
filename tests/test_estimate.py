"""utils.estimate: the time a long cell announces comes from this machine's measurements, and says what to lower."""

import dataclasses
import json
from contextlib import closing

import pytest
import torch

from utils import environment
from utils.config import TrainConfig
from utils.environment import cpu_trial
from utils.estimate import fid_estimate, fid_images_to_score, format_duration, training_estimate
from utils.metrics import dataset_id, reference_cache_file, weights_id
from utils.run import CONFIG, HISTORY, default_run_dir
from utils.step import time_training_steps

CPU = torch.device("cpu")
SMALL = TrainConfig(image_size=16, g_width=8, d_width=8, batch_size=32, epochs=25)


@pytest.fixture
def trial(tmp_path, monkeypatch):
    """SMALL's CPU trial cached at 300 (NCHW) and 400 (channels_last) fp32 images/s, in a fresh working folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANIME_GAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ANIME_GAN_AMP", raising=False)
    monkeypatch.setattr(environment, "cpu_has_bf16", lambda: False)   # the cache holds fp32 candidates only
    cpu_trial(SMALL, lambda candidates: ({"fp32 NCHW": 300.0, "fp32 channels_last": 400.0} for _ in range(5)))


def test_durations_read_as_estimates():
    assert [format_duration(s) for s in (0.2, 40, 89, 360, 3599, 11_111)] == \
           ["about 1 s", "about 40 s", "about 89 s", "about 6 min", "about 1 h 00 min", "about 3 h 05 min"]


def test_on_a_cpu_the_estimate_is_the_trials_less_the_loops_share_and_warns_with_what_to_lower(trial):
    assert training_estimate(SMALL, CPU, 20_000) == \
           "25 epochs x 20,000 images at about 300 images/s (from the CPU trial): about 28 min here"   # 0.75 x 400
    assert training_estimate(dataclasses.replace(SMALL, epochs=2), CPU, 12_000) == \
           "2 epochs x 12,000 images at about 300 images/s (from the CPU trial): about 80 s here"
    assert training_estimate(dataclasses.replace(SMALL, channels_last="off"), CPU, 20_000).splitlines()[1] == \
           ('warning: over 30 minutes on a CPU: size = "cpu" picks values that train in minutes here (or lower '
            'epochs, max_images, image_size, g_width and d_width), or use a GPU')   # 0.75 x 300: 37 min


def test_a_resumed_run_counts_only_the_epochs_left(trial, tmp_path):
    config = dataclasses.replace(SMALL, epochs=3)
    run = default_run_dir(config)
    run.mkdir(parents=True)
    config.save(run / CONFIG)
    (run / HISTORY).write_text(json.dumps({"steps": [], "epochs": [{"epoch": 1}, {"epoch": 2}]}))
    assert training_estimate(config, CPU, 1_000).startswith("1 epoch (epochs 3-3; 2 done) x 1,000 images")
    assert training_estimate(dataclasses.replace(config, epochs=2), CPU, 1_000) == \
           f"{run} already has 2 epochs: nothing to train, it only loads (seconds)"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_estimate_times_steps_of_the_runs_batch_now(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = TrainConfig(image_size=16, g_width=8, d_width=8, batch_size=64, epochs=2)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    line = training_estimate(config, torch.device("cuda"), 1_000)
    assert "images/s (64-image training steps timed now on cuda)" in line and "warning" not in line
    assert torch.equal(torch.get_rng_state(), before)   # the run learns the same


def test_the_timer_runs_a_t4s_fp16_step_on_the_cpu():
    with closing(time_training_steps(SMALL, ["fp16 channels_last"], device=CPU)) as rounds:
        assert next(rounds)["fp16 channels_last"] > 0


def test_fid_estimate_counts_the_real_images_until_cached_says_what_fewer_samples_cost_and_warns_on_a_cpu(tmp_path):
    assert fid_estimate(1_000, 10.0, CPU, "fid_samples") == \
           "FID: 1,000 images through Inception at about 10.0 images/s (timed now on cpu): about 2 min here"
    assert fid_estimate(3_000, 10.0, CPU, "fid_samples", samples=1_000).splitlines()[1] == \
           ("1,000 samples per score: FID reads higher than with the usual 10,000 (its bias falls as 1 / samples), so "
            "compare only scores of equal settings")
    assert fid_estimate(20_000, 2.0, CPU, "fid_samples and fid_real").endswith(
        "warning: over 30 minutes on a CPU: lower fid_samples and fid_real (1,000 to 2,000), use a GPU, or skip FID "
        "(compute_fid=False)")
    assert fid_estimate(3_000, 1.0, CPU, "fid_samples and fid_real", samples=1_000).endswith(   # already few: no
        "warning: over 30 minutes on a CPU: use a GPU, or skip FID (compute_fid=False)")   # advice to lower them
    images = torch.zeros(300, 3, 16, 16, dtype=torch.uint8)
    config = TrainConfig(data_dir=str(tmp_path), fid_samples=1000, fid_real=200)
    assert fid_images_to_score(config, images, generators=2) == 200 + 2 * 1000
    cache = reference_cache_file(tmp_path, dataset_id(images), 200, weights_id(""))
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"cached")
    assert fid_images_to_score(config, images, generators=2) == 2 * 1000
