"""Faults performed for real: SIGKILL mid-epoch and mid-checkpoint, divergence, malicious and corrupt checkpoints,
bad parameters and unwritable folders. Each test checks what the user is left with afterwards."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from utils import training
from utils.config import TrainConfig, config_to_argv
from utils.errors import ConfigError
from utils.train import main
from utils.run import CHECKPOINT, frame_path, list_frames, read_checkpoint
from utils.training import TrainingDiverged, train

from between_saves import frozen_between_saves

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(tmp_path, name="run", **overrides) -> TrainConfig:
    # fp32 channels_last pinned: the CPU trial behind "auto" is measured again when an epoch contradicts it, and a
    # busy machine can then flip the layout between a reference run and the run compared with it
    values = dict(data="synthetic", data_dir=str(tmp_path / "data"), max_images=128, image_size=16, latent_dim=16,
                  g_width=8, d_width=8, batch_size=32, epochs=2, device="cpu", amp="off", channels_last="on",
                  log_every=2, num_samples=16, out=str(tmp_path / name))
    return TrainConfig(**values | overrides)


def flatten(value, prefix=""):
    """Every tensor and plain value of a checkpoint, by its path: ('generator.0.weight', tensor), ..."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from flatten(item, f"{prefix}{key}.")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from flatten(item, f"{prefix}{index}.")
    else:
        yield prefix.rstrip("."), value


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def assert_same_training_state(a: dict, b: dict) -> None:
    """torch.equal on every tensor of two checkpoints; plain values equal, except the wall-clock timings."""
    flat_a, flat_b = dict(flatten(a)), dict(flatten(b))
    assert flat_a.keys() == flat_b.keys()
    for key, value in flat_a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, flat_b[key]), key
        elif not key.endswith((".seconds", ".images_per_s")):
            assert value == flat_b[key], key


# ------------------------------------------------------------------------------------- SIGKILL + resume

def start(config: TrainConfig, log: Path, stop_in_checkpoint_write: Path | None = None) -> subprocess.Popen:
    """`python -m utils.train` on one CPU thread (as the in-process reference run), output to `log`; with
    `stop_in_checkpoint_write`, its first checkpoint write stops half-way (STOPS_IN_CHECKPOINT_WRITE, below)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    how = ["-m", "utils.train"] if stop_in_checkpoint_write is None else \
        ["-c", STOPS_IN_CHECKPOINT_WRITE, str(stop_in_checkpoint_write)]
    with open(log, "ab") as output:
        return subprocess.Popen([sys.executable, *how, *config_to_argv(config)], cwd=REPO, env=env, stdout=output,
                                stderr=subprocess.STDOUT)


def wait_until(condition, process: subprocess.Popen, log: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"training exited ({process.returncode}) before the fault:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:   # a hang guard only
            process.kill()
            pytest.fail(f"timed out waiting:\n{log.read_text()[-3000:]}")
        time.sleep(0.01)


def temporaries(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob(".checkpoint.*.tmp.pt"))


def kill_mid_epoch(process: subprocess.Popen, run_dir: Path, log: Path) -> int:
    """SIGKILL once an epoch is saved, while the steps of the next one run; returns the epochs the checkpoint holds."""
    with frozen_between_saves(process, run_dir, log) as done:   # tests/between_saves.py: nothing half-written
        process.kill()
        process.wait()
    return done


# utils.train whose first checkpoint write stops after its first MiB of torch.save's real output, touches the file
# named by its first argument and waits there: the test kills it mid-write every time, however busy the machine
STOPS_IN_CHECKPOINT_WRITE = """
import io, sys, threading, torch
from pathlib import Path
from utils.train import main

marker, save = Path(sys.argv.pop(1)), torch.save

class Stopping(io.FileIO):
    def write(self, data):
        written = super().write(data)
        if self.tell() >= 2**20:
            marker.touch()
            threading.Event().wait()
        return written

def stopping_save(obj, path, *args, **kwargs):
    if not Path(path).name.startswith(".checkpoint."):
        return save(obj, path, *args, **kwargs)
    with Stopping(path, "w") as file:
        save(obj, file, *args, **kwargs)

torch.save = stopping_save
main()
"""


def kill_mid_checkpoint_write(config: TrainConfig, log: Path, marker: Path) -> subprocess.Popen:
    """Start training; SIGKILL it while torch.save writes its first checkpoint's temporary file (before the rename)."""
    process = start(config, log, stop_in_checkpoint_write=marker)
    wait_until(marker.exists, process, log)
    process.kill()
    process.wait()
    return process


def test_sigkill_mid_epoch_and_mid_checkpoint_write_then_resume_ends_with_the_same_weights(tmp_path):
    # The improved recipe with DiffAugment: EMA, spectral norm's power-iteration vectors and DiffAugment's
    # randomness all have to survive the restarts. Widths 48 make a ~4 MB checkpoint, of which the killed write
    # leaves 1 MiB.
    config = tiny(tmp_path, "killed", max_images=192, g_width=48, d_width=48, epochs=4, recipe="improved", ema_decay=0.9,
                  diffaugment="color,translation,cutout")
    run_dir, log = Path(config.out), tmp_path / "train.log"
    reference = train(dataclasses.replace(config, out=str(tmp_path / "uninterrupted")), progress=False)

    # 1) killed in the middle of an epoch: the checkpoint of the last complete epoch is intact
    process = start(config, log)
    done = kill_mid_epoch(process, run_dir, log)
    assert process.returncode == -signal.SIGKILL and 1 <= done < config.epochs
    assert read_checkpoint(run_dir / CHECKPOINT)["epoch"] == done
    assert [epoch for epoch, _ in list_frames(run_dir)] == list(range(1, done + 1))

    # 2) resumed, then killed while writing a checkpoint: the previous one stays complete and loadable
    process = kill_mid_checkpoint_write(config, log, marker=tmp_path / "writing")
    assert process.returncode == -signal.SIGKILL
    leftover = temporaries(run_dir)
    assert len(leftover) == 1 and leftover[0].name == f".checkpoint.{process.pid}.tmp.pt"
    frames = [epoch for epoch, _ in list_frames(run_dir)]
    saving = frames[-1]  # the epoch whose grid was drawn and whose checkpoint was being written
    assert frames == list(range(1, saving + 1)) and saving == done + 1
    assert read_checkpoint(run_dir / CHECKPOINT)["epoch"] == saving - 1
    assert (run_dir / "samples" / f"epoch_{saving:03d}.png").exists()

    # 3) resumed to the end: the same weights, optimiser moments, EMA, RNG state, history and frames as without kills
    process = start(config, log)
    assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert temporaries(run_dir) == []  # the half-written file is gone
    assert [epoch for epoch, _ in list_frames(run_dir)] == [1, 2, 3, 4]  # one per epoch: no gaps, no duplicates
    final, expected = read_checkpoint(run_dir / CHECKPOINT), read_checkpoint(reference.run_dir / CHECKPOINT)
    assert final["epoch"] == 4 and final["ema"] is not None
    assert_same_training_state({k: v for k, v in final.items() if k != "config"},
                               {k: v for k, v in expected.items() if k != "config"})
    assert json.loads((run_dir / "history.json").read_text()) == final["history"]
    for epoch in (1, 2, 3, 4):
        assert frame_path(run_dir, epoch).read_bytes() == frame_path(reference.run_dir, epoch).read_bytes()
    assert log.read_text().count("resuming") == 2


@pytest.mark.parametrize("recipe", [dict(), dict(recipe="improved", ema_decay=0.9, diffaugment="color,translation,cutout")],
                         ids=["dcgan", "improved"])
def test_an_fp16_run_killed_mid_epoch_resumes_to_the_weights_and_scaler_of_an_uninterrupted_one(tmp_path, recipe):
    """The T4's path (fp16 autocast, GradScaler, fused Adam), run on the CPU: the scaler's scale and its count of
    steps since the last overflow survive the kill too, or the resumed run would scale its losses differently."""
    config = tiny(tmp_path, "killed", epochs=8, amp="fp16", **recipe)
    run_dir, log = Path(config.out), tmp_path / "train.log"
    reference = train(dataclasses.replace(config, out=str(tmp_path / "uninterrupted")), progress=False)

    process = start(config, log)
    done = kill_mid_epoch(process, run_dir, log)
    assert process.returncode == -signal.SIGKILL and 1 <= done < config.epochs
    process = start(config, log)
    assert process.wait(timeout=300) == 0, log.read_text()[-3000:]

    final, expected = read_checkpoint(run_dir / CHECKPOINT), read_checkpoint(reference.run_dir / CHECKPOINT)
    assert final["epoch"] == 8 and final["precision"] == "fp16 channels_last" and final["scaler"]
    assert_same_training_state({k: v for k, v in final.items() if k != "config"},
                               {k: v for k, v in expected.items() if k != "config"})
    assert log.read_text().count("fp16 on a CPU runs a T4's path") == 2 and "resuming" in log.read_text()


def test_leftovers_of_a_killed_epoch_are_cleared_on_resume(tmp_path):
    """A kill between an epoch's sample grid and its checkpoint leaves a grid (and temporaries) ahead of it."""
    config = tiny(tmp_path, epochs=1)
    train(config, progress=False)
    run_dir = Path(config.out)
    frame_path(run_dir, 2).write_bytes(frame_path(run_dir, 1).read_bytes())  # what a kill at that point leaves
    (run_dir / ".checkpoint.999999.tmp.pt").write_bytes(b"half a checkpoint")
    (run_dir / "samples" / ".epoch_002.999999.tmp.png").write_bytes(b"half a png")

    train(tiny(tmp_path, epochs=1), progress=False)  # resume with nothing left to train

    assert [epoch for epoch, _ in list_frames(run_dir)] == [1]
    assert [p.name for p in run_dir.glob(".*")] == [".lock"] and list((run_dir / "samples").glob(".*")) == []


# ------------------------------------------------------------------------------------------- divergence

def nan_images(count: int = 128) -> torch.Tensor:
    """Images that make every loss NaN (what a corrupt batch or an exploding network leads to)."""
    images = torch.randint(0, 256, (count, 3, 16, 16), generator=torch.Generator().manual_seed(0)).float()
    images[:, :, 4:8, 4:8] = float("nan")
    return images


def test_divergence_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny(tmp_path, epochs=1)
    train(config, progress=False)
    run_dir = Path(config.out)
    good = {name: (run_dir / name).read_bytes() for name in (CHECKPOINT, "history.json")}

    # the CPU reads every step: the first step of epoch 2 (step 5) is the one that diverged
    with pytest.raises(TrainingDiverged, match=r"training diverged at epoch 2, step 5: loss_d=nan.*last good checkpoint"):
        train(tiny(tmp_path, epochs=3), progress=False, images=nan_images())

    assert {name: (run_dir / name).read_bytes() for name in good} == good  # untouched
    state = read_checkpoint(run_dir / CHECKPOINT)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["generator"].values())
    assert [epoch for epoch, _ in list_frames(run_dir)] == [1]
    resumed = train(tiny(tmp_path, epochs=2), progress=False)  # with good data, it carries on from epoch 1
    assert [e["epoch"] for e in resumed.history["epochs"]] == [1, 2]


def test_cli_reports_divergence_and_exits_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(training, "load_dataset", lambda config, progress=True: nan_images())
    config = tiny(tmp_path, epochs=2)

    with pytest.raises(SystemExit) as exit_info:
        main(config_to_argv(config))

    assert exit_info.value.code == 1
    assert last_line(capsys.readouterr().err).startswith("error: training diverged at epoch 1, step 1: loss_d=nan")
    assert not (Path(config.out) / CHECKPOINT).exists() and list_frames(config.out) == []


# ------------------------------------------------------------------------------------ untrusted files

class Payload:
    """Unpickling this calls open(marker, 'w'): code that runs just by loading the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"epoch": 1, "generator": Payload(marker), "config": {}}, path)
    return path


def test_the_payload_really_runs_code_when_loaded_unsafely(tmp_path):
    """Proves the next tests' pickle is dangerous: the plain pickle loader creates the marker file."""
    checkpoint = malicious_checkpoint(tmp_path / "evil.pt", tmp_path / "pwned")
    torch.load(checkpoint, weights_only=False)
    assert (tmp_path / "pwned").exists()


def test_load_checkpoint_refuses_a_malicious_pickle_without_running_it(tmp_path):
    checkpoint = malicious_checkpoint(tmp_path / "evil.pt", tmp_path / "pwned")

    with pytest.raises(ValueError, match="refused to load .*evil.pt: it holds Python objects other than tensors"):
        read_checkpoint(checkpoint)
    assert not (tmp_path / "pwned").exists()


def test_training_on_a_folder_with_a_malicious_checkpoint_fails_clearly(tmp_path, capsys):
    config = tiny(tmp_path)
    Path(config.out).mkdir()
    malicious_checkpoint(Path(config.out) / CHECKPOINT, tmp_path / "pwned")

    with pytest.raises(ValueError, match="refused to load"):
        train(config, progress=False)
    with pytest.raises(SystemExit) as exit_info:
        main(config_to_argv(config))

    assert exit_info.value.code == 1
    assert last_line(capsys.readouterr().err).startswith(f"error: refused to load {Path(config.out) / CHECKPOINT}")
    assert not (tmp_path / "pwned").exists()
    assert list_frames(config.out) == []


def test_a_truncated_checkpoint_fails_clearly(tmp_path):
    config = tiny(tmp_path, epochs=1)
    train(config, progress=False)
    checkpoint = Path(config.out) / CHECKPOINT
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])

    with pytest.raises(ValueError, match=r"checkpoint.pt is not a readable checkpoint .*Move it away"):
        train(tiny(tmp_path, epochs=2), progress=False)


@pytest.mark.parametrize("path,ignored", [
    ("kaggle.json", True), ("notebooks/kaggle.json", True), ("data/anime/1.jpg", True), ("data/cache/faces.npy", True),
    ("generated/dcgan-64/checkpoint.pt", True), ("data/README.md", False), ("generated/README.md", False),
    ("utils/training.py", False),
])
def test_gitignore_keeps_credentials_data_and_runs_out_of_git(path, ignored):
    result = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=REPO)
    assert result.returncode == (0 if ignored else 1)


# ------------------------------------------------------------------------------------ bad parameters

def test_an_unwritable_output_folder_fails_before_any_training(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    monkeypatch.setattr(training, "load_dataset", lambda *a, **k: pytest.fail("training started"))
    config = tiny(tmp_path, out=str(blocker / "run"))

    with pytest.raises(ValueError, match=r"config field 'out': cannot write to .*file.txt/run .*choose a writable folder"):
        train(config, progress=False)
    with pytest.raises(SystemExit) as exit_info:
        main(config_to_argv(config))

    assert exit_info.value.code == 1
    assert last_line(capsys.readouterr().err).startswith("error: config field 'out': cannot write to")
    assert blocker.read_text() == "a file, not a folder"


def test_a_missing_fid_weights_file_fails_before_any_training(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "load_dataset", lambda *a, **k: pytest.fail("training started"))
    config = tiny(tmp_path, fid_every=1, fid_weights=str(tmp_path / "missing.pth"))

    with pytest.raises(ConfigError, match="config field 'fid_weights' points to .*missing.pth"):
        train(config, progress=False)
    assert not Path(config.out).exists()
