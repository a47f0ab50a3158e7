"""The device choices of utils/environment.py, in particular the CPU's timed trial for amp and channels_last."""

import json

import pytest
import torch

from utils import environment
from utils.config import TrainConfig
from utils.environment import choose_amp_and_layout, cpu_trial, trial_cache_file

CPU = torch.device("cpu")


def fake(results: dict, calls: list):
    def measure(candidates):
        calls.append(list(candidates))
        return {name: results[name] for name in candidates}
    return measure


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ANIME_GAN_CACHE_DIR", str(tmp_path / "cache"))
    return trial_cache_file()


@pytest.mark.parametrize("bf16_speed,chosen", [(80.0, None), (105.0, None), (130.0, torch.bfloat16)],
                         ids=["bf16 slower", "bf16 within the margin", "bf16 clearly faster"])
def test_the_trial_picks_bf16_only_when_it_is_clearly_faster_than_fp32(empty_cache, monkeypatch, bf16_speed, chosen):
    monkeypatch.setattr(environment, "cpu_has_bf16", lambda: True)
    results = {"fp32 NCHW": 90.0, "fp32 channels_last": 100.0, "bf16 NCHW": 50.0, "bf16 channels_last": bf16_speed}
    calls = []

    trial = cpu_trial(TrainConfig(), measure=fake(results, calls))

    assert calls == [list(results)]
    assert trial.amp is chosen and trial.channels_last  # never below the best fp32 candidate
    assert "just measured" in trial.summary and "fp32 channels_last 100" in trial.summary


def test_without_bf16_instructions_only_fp32_is_tried(empty_cache, monkeypatch):
    monkeypatch.setattr(environment, "cpu_has_bf16", lambda: False)
    calls = []
    trial = cpu_trial(TrainConfig(), measure=fake({"fp32 NCHW": 60.0, "fp32 channels_last": 50.0}, calls))
    assert calls == [["fp32 NCHW", "fp32 channels_last"]]
    assert trial.amp is None and not trial.channels_last


def test_the_trial_runs_once_per_network_size_and_is_then_read_from_the_cache(empty_cache, monkeypatch):
    monkeypatch.setattr(environment, "cpu_has_bf16", lambda: False)
    calls = []
    measure = fake({"fp32 NCHW": 60.0, "fp32 channels_last": 70.0}, calls)

    first = cpu_trial(TrainConfig(image_size=32), measure=measure)
    again = cpu_trial(TrainConfig(image_size=32, epochs=3, lr_g=1e-3), measure=measure)  # same networks
    other = cpu_trial(TrainConfig(image_size=16), measure=measure)

    assert len(calls) == 2 and "cached" in again.summary and again.channels_last == first.channels_last
    assert "just measured" in other.summary
    assert len(json.loads(empty_cache.read_text())) == 2


def test_explicit_settings_are_used_as_given(empty_cache):
    off = TrainConfig(amp="off", channels_last="off")
    assert choose_amp_and_layout(CPU, off) == (None, False, "")
    assert not empty_cache.exists()  # nothing to decide: nothing measured


def test_a_real_trial_on_this_cpu_returns_a_choice_and_caches_it(empty_cache):
    config = TrainConfig(image_size=16, latent_dim=16, g_width=8, d_width=8)

    amp, channels_last, summary = choose_amp_and_layout(CPU, config)

    assert amp in (None, torch.bfloat16) and isinstance(channels_last, bool)
    results = next(iter(json.loads(empty_cache.read_text()).values()))
    assert set(results) >= {"fp32 NCHW", "fp32 channels_last"} and all(v > 0 for v in results.values())
    assert summary.startswith("CPU trial (just measured") and summary.endswith(f"-> {'bf16' if amp else 'fp32'} "
                                                                              f"{'channels_last' if channels_last else 'NCHW'}")


def test_the_trial_leaves_the_random_state_alone(empty_cache):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    cpu_trial(TrainConfig(image_size=16, latent_dim=16, g_width=8, d_width=8))
    assert torch.equal(torch.get_rng_state(), before)


def test_bf16_on_a_cpu_without_bf16_instructions_is_refused_naming_the_field(monkeypatch):
    monkeypatch.setattr(environment, "cpu_has_bf16", lambda: False)
    with pytest.raises(ValueError, match="config field 'amp' is 'bf16' but this CPU has no native bf16"):
        choose_amp_and_layout(CPU, TrainConfig(amp="bf16"))
