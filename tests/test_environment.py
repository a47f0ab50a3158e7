"""The device choices of utils/environment.py, in particular the CPU's timed trial for amp and channels_last."""

import json

import pytest
import torch

from utils import environment
from utils.config import TrainConfig
from utils.environment import choose_amp_and_layout, cpu_trial, trial_cache_file
from utils.step import time_training_steps

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
    """On the Intel Xeon with AVX512-BF16 (no AMX) bf16 was ~30% slower: "auto" must then stay on fp32."""
    monkeypatch.setattr(environment, "cpu_has_bf16", lambda: True)
    results = {"fp32 NCHW": 90.0, "fp32 channels_last": 100.0, "bf16 NCHW": 50.0, "bf16 channels_last": bf16_speed}
    calls = []

    trial = cpu_trial(TrainConfig(), measure=fake(results, calls))

    assert calls == [list(results)]
    assert trial.amp is chosen and trial.channels_last  # never below the best fp32 candidate
    assert "just measured" in trial.summary and "fp32 channels_last 100" in trial.summary


@pytest.mark.parametrize("nchw,channels_last", [(60.0, False), (52.0, True)],
                         ids=["NCHW 20% faster", "NCHW within the margin"])
def test_without_bf16_instructions_only_fp32_is_tried(empty_cache, monkeypatch, nchw, channels_last):
    monkeypatch.setattr(environment, "cpu_has_bf16", lambda: False)
    calls = []
    trial = cpu_trial(TrainConfig(), measure=fake({"fp32 NCHW": nchw, "fp32 channels_last": 50.0}, calls))
    assert calls == [["fp32 NCHW", "fp32 channels_last"]]
    assert trial.amp is None and trial.channels_last is channels_last


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
    assert choose_amp_and_layout(CPU, off, measure=lambda names: pytest.fail("measured")) == (None, False, "")
    assert not empty_cache.exists()  # nothing to decide: nothing measured


def test_a_real_trial_on_this_cpu_returns_a_choice_and_caches_it(empty_cache):
    config = TrainConfig(image_size=16, latent_dim=16, g_width=8, d_width=8, batch_size=16)

    amp, channels_last, summary = choose_amp_and_layout(CPU, config, lambda names: time_training_steps(config, names))

    assert amp in (None, torch.bfloat16) and isinstance(channels_last, bool)
    results = next(iter(json.loads(empty_cache.read_text()).values()))
    assert set(results) >= {"fp32 NCHW", "fp32 channels_last"} and all(v > 0 for v in results.values())
    assert summary.startswith("CPU trial (just measured") and summary.endswith(f"-> {'bf16' if amp else 'fp32'} "
                                                                              f"{'channels_last' if channels_last else 'NCHW'}")


def test_the_timed_steps_leave_the_random_state_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    speeds = time_training_steps(TrainConfig(image_size=16, latent_dim=16, g_width=8, d_width=8, batch_size=16),
                                 ["fp32 NCHW", "fp32 channels_last"], rounds=1)
    assert torch.equal(torch.get_rng_state(), before) and all(v > 0 for v in speeds.values())


def test_the_training_log_says_what_the_trial_measured_and_chose(empty_cache, tmp_path, capsys):
    from utils.training import train

    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    config = TrainConfig(image_size=16, latent_dim=16, g_width=8, d_width=8, batch_size=16, epochs=1, device="cpu",
                         out=str(tmp_path / "run"))
    train(config, progress=False, images=images)
    first = capsys.readouterr().out
    train(config.__class__(**config.to_dict() | {"out": str(tmp_path / "again")}), progress=False, images=images)
    again = capsys.readouterr().out

    chosen = next(line for line in first.splitlines() if line.startswith("CPU trial (just measured"))
    assert chosen.rsplit("-> ", 1)[1] in ("fp32 NCHW", "fp32 channels_last", "bf16 NCHW", "bf16 channels_last")
    layout = "on" if chosen.endswith("channels_last") else "off"
    assert f"channels_last: {layout}" in first
    assert "CPU trial (cached" in again and f"channels_last: {layout}" in again


def test_bf16_on_a_cpu_without_bf16_instructions_is_refused_naming_the_field(monkeypatch):
    monkeypatch.setattr(environment, "cpu_has_bf16", lambda: False)
    with pytest.raises(ValueError, match="config field 'amp' is 'bf16' but this CPU has no native bf16"):
        choose_amp_and_layout(CPU, TrainConfig(amp="bf16"), measure=lambda names: pytest.fail("measured"))
