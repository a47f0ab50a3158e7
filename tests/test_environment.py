"""utils/environment.py: `choose_device`, the CPU's timed trial for amp and channels_last (its rounds, its cache), the
ANIME_GAN_AMP override and the device of each torchrun process."""

import json
import os
import subprocess
import sys
from functools import partial
from itertools import chain, repeat
from pathlib import Path

import pytest
import torch

from utils import environment
from utils.config import TrainConfig
from utils.environment import choose_device, cpu_trial, pick_device, trial_cache_file
from utils.errors import ConfigError
from utils.run import CHECKPOINT, read_checkpoint
from utils.step import time_training_steps
from utils.training import train

REPO = Path(__file__).resolve().parents[1]
TINY = dict(image_size=16, latent_dim=16, g_width=8, d_width=8, batch_size=16, device="cpu")
FP32 = {"fp32 NCHW": 60.0, "fp32 channels_last": 100.0}
IMAGES = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)


def rounds_of(*rounds: dict):
    """A measure callback that yields `rounds` ({candidate: images/s}), the last one again forever; `measure.calls`
    holds the candidates of each call, `measure.drawn` counts the rounds drawn."""
    def measure(candidates):
        measure.calls.append(list(candidates))
        for timing in chain(rounds, repeat(rounds[-1])):
            measure.drawn += 1
            yield {name: timing[name] for name in candidates}
    measure.calls, measure.drawn = [], 0
    return measure


def never(candidates):
    pytest.fail(f"measured {candidates}")


def entries() -> list[dict]:
    return list(json.loads(trial_cache_file().read_text()).values())


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ANIME_GAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ANIME_GAN_AMP", raising=False)   # these tests decide "auto" themselves
    monkeypatch.setattr(environment, "cpu_has_bf16", lambda: False)


@pytest.mark.parametrize("bf16,speeds,chosen", [
    (True, {**FP32, "bf16 NCHW": 50.0, "bf16 channels_last": 80.0}, "fp32 channels_last"),
    (True, {**FP32, "bf16 NCHW": 50.0, "bf16 channels_last": 105.0}, "fp32 channels_last"),   # within the margin
    (True, {**FP32, "bf16 NCHW": 50.0, "bf16 channels_last": 130.0}, "bf16 channels_last"),
    (False, {"fp32 NCHW": 60.0, "fp32 channels_last": 50.0}, "fp32 NCHW"),                    # 20% faster
    (False, {"fp32 NCHW": 52.0, "fp32 channels_last": 50.0}, "fp32 channels_last")])          # within the margin
def test_auto_leaves_fp32_channels_last_only_for_a_candidate_clearly_faster(empty_cache, monkeypatch, bf16, speeds,
                                                                             chosen):
    """On the Intel Xeon with AVX512-BF16 (no AMX) bf16 was slower; without bf16 instructions it is not even tried."""
    monkeypatch.setattr(environment, "cpu_has_bf16", lambda: bf16)
    monkeypatch.setenv("ANIME_GAN_VERBOSE", "1")
    measure = rounds_of(speeds)
    choice = choose_device(TrainConfig(**TINY), measure)
    assert measure.calls == [list(speeds)]
    assert choice.candidate == chosen and choice.log.endswith(f"-> {chosen}")
    assert f"CPU trial (images/s of training steps): fp32 NCHW {speeds['fp32 NCHW']:.0f}" in choice.log
    monkeypatch.setenv("ANIME_GAN_VERBOSE", "0")
    assert "CPU trial" not in choice.log


def test_settings_given_explicitly_are_used_as_given_narrow_the_trial_or_are_refused(empty_cache, monkeypatch):
    choice = choose_device(TrainConfig(**TINY, amp="off", channels_last="off"), measure=never)
    assert (choice.device, choice.amp, choice.channels_last, choice.cuda_graphs, choice.trial) == \
           (torch.device("cpu"), None, False, False, None)
    assert "mixed precision: off (fp32), channels_last: off" in choice.log and "CPU trial" not in choice.log
    with pytest.raises(ConfigError, match="config field 'amp' is 'bf16' but this CPU has no native bf16"):
        choose_device(TrainConfig(**TINY, amp="bf16"), measure=never)
    assert not trial_cache_file().exists()  # nothing to decide: nothing measured

    monkeypatch.setattr(environment, "cpu_has_bf16", lambda: True)   # one setting given: the trial decides the other
    measure = rounds_of({"fp32 NCHW": 100.0, "fp32 channels_last": 50.0, "bf16 NCHW": 40.0, "bf16 channels_last": 90.0})
    assert choose_device(TrainConfig(**TINY), measure).candidate == "fp32 NCHW"
    assert choose_device(TrainConfig(**TINY, amp="bf16"), measure).candidate == "bf16 channels_last"
    assert choose_device(TrainConfig(**TINY, channels_last="on"), measure).candidate == "bf16 channels_last"


def test_a_device_missing_here_is_refused_and_under_torchrun_cuda_means_the_gpu_numbered_local_rank(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="^config field 'device' is 'mps' but this machine has no mps device"):
        pick_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda") == torch.device("cuda", 0)      # not started by torchrun: the first GPU
    with pytest.raises(ConfigError, match="config field 'device' is 'cuda:2', but this process would drive cuda:2 "
                                          r"and only 2 GPU\(s\) are visible"):
        pick_device("cuda:2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert pick_device("cuda") == pick_device("auto") == pick_device("cuda:0") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"only 1 GPU\(s\) are visible: .* at most one process per GPU"):
        pick_device("cuda")


def test_the_trial_outvotes_rounds_slowed_by_other_work_and_runs_once_per_network_size(empty_cache):
    """Other work slows channels_last's first three rounds: three rounds alone would pick NCHW."""
    busy = [{"fp32 NCHW": 60.0, "fp32 channels_last": slowed} for slowed in (30.0, 33.0, 31.0)]
    quiet = [{"fp32 NCHW": 60.0, "fp32 channels_last": 70.0}, {"fp32 NCHW": 61.0, "fp32 channels_last": 71.0}]
    measure = rounds_of(*busy, *quiet)
    assert choose_device(TrainConfig(**TINY), measure).candidate == "fp32 channels_last"
    assert measure.drawn == 5
    assert entries() == [{"images_per_s": {"fp32 NCHW": 61.0, "fp32 channels_last": 71.0}}]
    again = cpu_trial(TrainConfig(**TINY, epochs=3, lr_g=1e-3), measure=never)   # the same networks: read back
    assert again == entries()[0]["images_per_s"] and cpu_trial(TrainConfig(image_size=32), rounds_of(FP32)) == FP32
    assert len(entries()) == 2


def test_a_real_trial_on_this_cpu_leaves_the_random_state_alone_and_is_cached(empty_cache):
    config = TrainConfig(**TINY)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    choice = choose_device(config, partial(time_training_steps, config))
    assert torch.equal(torch.get_rng_state(), before)
    assert choice.amp is None and set(entries()[0]["images_per_s"]) == {"fp32 NCHW", "fp32 channels_last"}
    assert all(v > 0 for v in entries()[0]["images_per_s"].values())


def test_a_resumed_run_keeps_the_precision_its_epochs_trained_with_whatever_the_trial_picks_since(
        empty_cache, tmp_path, capsys, monkeypatch):
    """The trial's figures are printed with ANIME_GAN_VERBOSE=1 only."""
    config = TrainConfig(**TINY, epochs=1, log_every=2, out=str(tmp_path / "run"))
    cpu_trial(config, rounds_of({"fp32 NCHW": 60.0, "fp32 channels_last": 100.0}))
    monkeypatch.setenv("ANIME_GAN_VERBOSE", "1")
    train(config, progress=False, images=IMAGES)
    log = capsys.readouterr().out
    assert "CPU trial (images/s of training steps): fp32 NCHW 60, fp32 channels_last 100 -> " \
           "fp32 channels_last" in log and "channels_last: on" in log

    monkeypatch.setenv("ANIME_GAN_VERBOSE", "")
    trial_cache_file().unlink()   # measured again: new runs pick NCHW
    cpu_trial(config, rounds_of({"fp32 NCHW": 100.0, "fp32 channels_last": 50.0}))
    resumed = train(TrainConfig(**config.to_dict() | {"epochs": 2}), progress=False, images=IMAGES)
    log = capsys.readouterr().out
    assert "CPU trial (" not in log and "channels_last: on" in log
    assert "this run continues as fp32 channels_last, as its earlier epochs trained (the CPU trial picks fp32 NCHW " \
           "for new runs)" in log
    assert read_checkpoint(resumed.run_dir / CHECKPOINT)["precision"] == "fp32 channels_last"


def test_anime_gan_amp_replaces_auto_but_not_an_explicit_amp(empty_cache, monkeypatch):
    monkeypatch.setenv("ANIME_GAN_AMP", "off")
    forced = choose_device(TrainConfig(**TINY, channels_last="off"), never)
    assert forced.amp is None and "mixed precision: off (fp32), from ANIME_GAN_AMP, channels_last: off" in forced.log
    monkeypatch.setenv("ANIME_GAN_AMP", "bf16")
    explicit = choose_device(TrainConfig(**TINY, amp="off", channels_last="off"), never)
    assert explicit.amp is None and "ANIME_GAN_AMP" not in explicit.log
    monkeypatch.setenv("ANIME_GAN_AMP", "fp16")   # a T4's path on the CPU: nothing timed, the T4's channels_last
    t4_path = choose_device(TrainConfig(**TINY), never)
    assert (t4_path.amp, t4_path.channels_last, t4_path.candidate) == (torch.float16, True, "fp16 channels_last")
    assert "mixed precision: torch.float16, from ANIME_GAN_AMP" in t4_path.log and "T4's path" in t4_path.log
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    with pytest.raises(ConfigError, match=r"^environment variable ANIME_GAN_AMP is 'fp16', which runs on a CUDA GPU "
                                          r"or a CPU, not on mps"):
        choose_device(TrainConfig(**TINY | {"device": "mps"}), never)


def test_a_wrong_anime_gan_amp_stops_a_real_training_process_in_one_line(tmp_path):
    """(tests/test_notebooks.py runs the series under ANIME_GAN_AMP=fp16: a value that works reaches the process.)"""
    argv = ["--data", "synthetic", "--image-size", "16", "--device", "cpu", "--data-dir", str(tmp_path / "data"),
            "--out", str(tmp_path / "run")]
    refused = subprocess.run([sys.executable, "-m", "utils.train", *argv], cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, "ANIME_GAN_AMP": "fp8"}, timeout=300)
    assert refused.returncode == 1 and not (tmp_path / "run").exists()
    assert refused.stderr.strip() == ("error: environment variable ANIME_GAN_AMP must be 'auto', 'bf16', 'fp16' or "
                                      "'off'; got 'fp8' (unset it to let each run choose)")


def test_a_test_session_leaves_the_users_cache_untouched(tmp_path, monkeypatch):
    """A pytest session with its own HOME trains on the CPU ("auto": the trial runs and is cached): the cache goes to
    the session's temporary folder (tests/conftest.py), nothing to ~/.cache/anime-face-gan."""
    home, base = tmp_path / "home", tmp_path / "pytest"
    home.mkdir()
    (tmp_path / "test_tiny.py").write_text(
        "import torch\nfrom utils.config import TrainConfig\nfrom utils.training import train\n\n"
        "def test_tiny_cpu_run(tmp_path):\n"
        f"    config = TrainConfig(**{TINY!r}, epochs=1, out=str(tmp_path / 'run'))\n"
        "    train(config, progress=False, images=torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8))\n")
    env = {name: value for name, value in os.environ.items()
           if name not in ("ANIME_GAN_CACHE_DIR", "XDG_CACHE_HOME", "ANIME_GAN_AMP")}
    env |= {"HOME": str(home), "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}

    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
                           f"--basetemp={base}", "test_tiny.py"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)

    assert done.returncode == 0, done.stdout + done.stderr
    assert not (home / ".cache" / "anime-face-gan").exists()
    assert [path.parent.name for path in base.rglob("cpu-trials.json")] == ["machine-cache0"]
    monkeypatch.delenv("ANIME_GAN_CACHE_DIR")   # and without the fixture, the cache would have gone there
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(home))
    assert trial_cache_file() == home / ".cache" / "anime-face-gan" / "cpu-trials.json"
