"""Faults performed for real: SIGKILL mid-epoch and mid-checkpoint, divergence (damaged and malicious checkpoints,
bad parameters and unwritable folders: test_safety.py). Each test checks what the user is left with afterwards."""

import dataclasses
import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from utils import training
from utils.config import config_to_argv
from utils.train import main
from utils.run import CHECKPOINT, frame_path, list_frames, read_checkpoint
from utils.training import train

from between_saves import frozen_between_saves
from test_run import start, tiny, wait_for

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


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


def assert_same_training_state(a: dict, b: dict) -> None:
    """torch.equal on every tensor of two checkpoints; plain values equal, except the settings (another `out`) and
    the wall-clock timings."""
    flat_a, flat_b = dict(flatten(a | {"config": {}})), dict(flatten(b | {"config": {}}))
    assert flat_a.keys() == flat_b.keys()
    for key, value in flat_a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, flat_b[key]), key
        elif not key.endswith((".seconds", ".images_per_s")):
            assert value == flat_b[key], key


# ------------------------------------------------------------------------------------- SIGKILL + resume

# utils.train whose first checkpoint write stops after its first MiB, touches the file named by its first argument
# and waits there: the test kills it mid-write every time, however busy the machine
STOPS_IN_CHECKPOINT_WRITE = """
import sys, threading
from pathlib import Path
from utils.train import main

marker, write_bytes = Path(sys.argv.pop(1)), Path.write_bytes

def stopping_write(path, data):
    if not path.name.startswith(".checkpoint."):
        return write_bytes(path, data)
    with open(path, "wb") as file:
        file.write(memoryview(data)[:2**20])
        file.flush()
    marker.touch()
    threading.Event().wait()

Path.write_bytes = stopping_write
main()
"""


def kill_between_saves(process: subprocess.Popen, run_dir: Path, log: Path) -> int:
    """SIGKILL once an epoch is saved, while the next one's steps run; returns the epochs the checkpoint holds."""
    with frozen_between_saves(process, run_dir, log) as done:   # tests/between_saves.py: nothing half-written
        process.kill()
        process.wait()
    return done


def test_sigkill_mid_epoch_and_mid_checkpoint_write_then_resume_ends_with_the_same_weights(tmp_path):
    # The improved recipe with DiffAugment: EMA, spectral norm's power-iteration vectors and DiffAugment's
    # randomness all have to survive the restarts. Widths 48 make a ~4 MB checkpoint, of which the killed write
    # leaves 1 MiB.
    config = tiny(tmp_path, "killed", max_images=192, g_width=48, d_width=48, epochs=4, recipe="improved",
                  ema_decay=0.9, diffaugment="color,translation,cutout")
    run_dir, log, argv = Path(config.out), tmp_path / "train.log", config_to_argv(config)
    reference = train(dataclasses.replace(config, out=str(tmp_path / "uninterrupted")), progress=False)

    # 1) killed in the middle of an epoch: the checkpoint of the last complete epoch is intact
    process = start(argv, log)
    done = kill_between_saves(process, run_dir, log)
    assert process.returncode == -signal.SIGKILL and 1 <= done < config.epochs
    assert read_checkpoint(run_dir / CHECKPOINT)["epoch"] == done
    assert [epoch for epoch, _ in list_frames(run_dir)] == list(range(1, done + 1))

    # 2) resumed, then killed while writing a checkpoint: the previous one stays complete and loadable
    process = start(["-c", STOPS_IN_CHECKPOINT_WRITE, str(tmp_path / "writing"), *argv], log)
    wait_for((tmp_path / "writing").exists, process, log)
    process.kill()
    assert process.wait() == -signal.SIGKILL
    assert list(run_dir.glob(".*.tmp.*")) == [run_dir / f".checkpoint.{process.pid}.tmp.pt"]
    frames = [epoch for epoch, _ in list_frames(run_dir)]
    saving = frames[-1]  # the epoch whose grid was drawn and whose checkpoint was being written
    assert frames == list(range(1, saving + 1)) and saving == done + 1
    assert read_checkpoint(run_dir / CHECKPOINT)["epoch"] == saving - 1

    # 3) resumed to the end: the same weights, optimiser moments, EMA, RNG state, history and frames as without kills
    process = start(argv, log)
    assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert list(run_dir.glob(".*.tmp.*")) == []  # the half-written file is gone
    assert [epoch for epoch, _ in list_frames(run_dir)] == [1, 2, 3, 4]  # one per epoch: no gaps, no duplicates
    final = read_checkpoint(run_dir / CHECKPOINT)
    assert final["epoch"] == 4 and final["ema"] is not None
    assert_same_training_state(final, read_checkpoint(reference.run_dir / CHECKPOINT))
    assert json.loads((run_dir / "history.json").read_text()) == final["history"]
    for epoch in (1, 2, 3, 4):
        assert frame_path(run_dir, epoch).read_bytes() == frame_path(reference.run_dir, epoch).read_bytes()
    assert log.read_text().count("resuming") == 2


def test_an_fp16_run_killed_mid_epoch_resumes_to_the_weights_and_scaler_of_an_uninterrupted_one(tmp_path):
    """A T4's default run (the DCGAN recipe in fp16: autocast, GradScaler, fused Adam) on the CPU: the scaler's scale
    and its count of steps since the last overflow survive the kill too (the EMA's: the test above)."""
    config = tiny(tmp_path, "killed", epochs=8, amp="fp16")
    run_dir, log = Path(config.out), tmp_path / "train.log"
    reference = train(dataclasses.replace(config, out=str(tmp_path / "uninterrupted")), progress=False)

    process = start(config_to_argv(config), log)
    assert 1 <= kill_between_saves(process, run_dir, log) < config.epochs
    assert start(config_to_argv(config), log).wait(timeout=300) == 0, log.read_text()[-3000:]

    final = read_checkpoint(run_dir / CHECKPOINT)
    assert final["epoch"] == 8 and final["precision"] == "fp16 channels_last" and final["scaler"]
    assert_same_training_state(final, read_checkpoint(reference.run_dir / CHECKPOINT))
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


def test_divergence_stops_the_command_line_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch,
                                                                                              capsys):
    config = tiny(tmp_path, epochs=1)
    train(config, progress=False)
    run_dir = Path(config.out)
    good = {name: (run_dir / name).read_bytes() for name in (CHECKPOINT, "history.json")}
    monkeypatch.setattr(training, "load_dataset", lambda config, progress=True: nan_images())

    with pytest.raises(SystemExit) as exit_info:
        main(config_to_argv(dataclasses.replace(config, epochs=3)))

    error = capsys.readouterr().err.strip().splitlines()[-1]   # the CPU reads every step: epoch 2's first diverged
    assert exit_info.value.code == 1 and "last good checkpoint" in error
    assert error.startswith("error: training diverged at epoch 2, step 5: loss_d=nan")
    assert {name: (run_dir / name).read_bytes() for name in good} == good  # untouched
    state = read_checkpoint(run_dir / CHECKPOINT)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["generator"].values())
    assert [epoch for epoch, _ in list_frames(run_dir)] == [1]
    monkeypatch.undo()
    resumed = train(tiny(tmp_path, epochs=2), progress=False)  # with good data, it carries on from epoch 1
    assert [e["epoch"] for e in resumed.history["epochs"]] == [1, 2]


@pytest.mark.parametrize("path,ignored", [
    ("kaggle.json", True), ("notebooks/kaggle.json", True), ("data/anime/1.jpg", True), ("data/cache/faces.npy", True),
    ("generated/dcgan-64/checkpoint.pt", True), ("data/README.md", False), ("generated/README.md", False),
    ("utils/training.py", False),
])
def test_gitignore_keeps_credentials_data_and_runs_out_of_git(path, ignored):
    result = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=Path(__file__).parents[1])
    assert result.returncode == (0 if ignored else 1)
