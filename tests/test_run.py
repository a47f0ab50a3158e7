"""The run folder (utils/run.py): names, changes applied or refused, one process per folder, nothing deleted.

The command line tests run `python -m utils.train` for real in a subprocess (one CPU thread, 16x16 synthetic
faces, widths 8), as a learner's shell would; the others call `train()` in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from utils.config import TrainConfig
from utils.errors import ConfigError
from utils.run import CHECKPOINT, RunInUse, default_run_dir, frame_path, list_frames, load_models, read_checkpoint
from utils.training import train

REPO = Path(__file__).resolve().parents[1]
IMAGES = torch.randint(0, 256, (128, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(tmp_path, name="run", **overrides) -> TrainConfig:
    """128 images of 16x16, batch 32: 4 steps per epoch."""
    values = dict(image_size=16, latent_dim=16, g_width=8, d_width=8, batch_size=32, epochs=1, device="cpu",
                  log_every=2, num_samples=16, out=str(tmp_path / name))
    return TrainConfig(**values | overrides)


def run(config: TrainConfig, **kwargs):
    return train(config, progress=False, images=IMAGES, **kwargs)


def cli_args(tmp_path, out, *extra) -> list[str]:
    return ["--data", "synthetic", "--data-dir", str(tmp_path / "data"), "--max-images", "128", "--image-size", "16",
            "--latent-dim", "16", "--g-width", "8", "--d-width", "8", "--batch-size", "32", "--device", "cpu",
            "--log-every", "2", "--num-samples", "16", "--out", str(out), *extra]


def cli(*args, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "utils.train", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300, **kwargs)


def start_cli(*args, log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(log, "ab") as output:
        # SIGINT as a terminal's Ctrl-C delivers it, even where this suite runs as a background job (whose
        # children start with SIGINT ignored, and Python then keeps it so)
        return subprocess.Popen([sys.executable, "-m", "utils.train", *args], cwd=REPO, env=env, stdout=output,
                                stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(condition, process: subprocess.Popen, log: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, f"exited early ({process.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, log.read_text()[-3000:]   # a hang guard only
        time.sleep(0.02)


def released(run_dir: Path) -> bool:
    """The lock was released by its holder: the file stays (every process locks that one file), empty."""
    return (run_dir / ".lock").read_text() == ""


# ------------------------------------------------------------------------------------------------ names

def test_run_folders_are_named_from_the_settings_that_change_what_is_learned():
    assert default_run_dir(TrainConfig()) == Path("generated/dcgan-64px")
    assert default_run_dir(TrainConfig(lr_g=1e-3)) == Path("generated/dcgan-64px-lr_g=0.001")
    assert default_run_dir(TrainConfig(image_size=32, beta1=0.9, batch_size=64)) == \
        Path("generated/dcgan-32px-batch_size=64-beta1=0.9")
    assert default_run_dir(TrainConfig(recipe="improved")) == Path("generated/improved-64px")  # its own defaults
    assert default_run_dir(TrainConfig(recipe="improved", lr_g=1e-4)) == Path("generated/improved-64px-lr_g=0.0001")
    assert default_run_dir(TrainConfig(data="kaggle", diffaugment="color,cutout")) == \
        Path("generated/dcgan-64px-data=kaggle-diffaugment=color+cutout")
    assert default_run_dir(TrainConfig(data="path/to/faces.zip")) == Path("generated/dcgan-64px-data=faces")
    # how long, how fast, how often: the same run
    for same in (dict(epochs=50), dict(amp="off"), dict(log_every=10), dict(max_minutes=5.0), dict(fid_every=1)):
        assert default_run_dir(TrainConfig(**same)) == Path("generated/dcgan-64px"), same


def test_a_tweak_without_out_trains_a_sibling_run_and_leaves_the_first_intact(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    first = run(tiny(tmp_path, out=""))
    checkpoint = (first.run_dir / CHECKPOINT).read_bytes()

    again = run(tiny(tmp_path, out="", epochs=2))       # more epochs: the same run continues
    sibling = run(tiny(tmp_path, out="", lr_g=1e-3))    # another learning rate: a new run beside it

    assert again.run_dir == first.run_dir and again.epochs_done == 2
    assert sibling.run_dir == first.run_dir.with_name(first.run_dir.name + "-lr_g=0.001")
    assert sibling.epochs_done == 1 and list_frames(first.run_dir)[-1][0] == 2
    assert (first.run_dir / CHECKPOINT).read_bytes() != checkpoint  # trained on by `again`, not by `sibling`
    assert read_checkpoint(sibling.run_dir / CHECKPOINT)["config"]["lr_g"] == 1e-3
    assert f"run folder: {sibling.run_dir}" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ changes that apply

def test_a_changed_learning_rate_and_beta_are_used_after_resuming(tmp_path, capsys):
    run(tiny(tmp_path, "tweaked"))
    run(tiny(tmp_path, "kept"))
    capsys.readouterr()

    tweaked = run(tiny(tmp_path, "tweaked", epochs=2, lr_g=1e-3, beta1=0.9))
    kept = run(tiny(tmp_path, "kept", epochs=2))

    out = capsys.readouterr().out
    assert "lr_g: 0.0002 -> 0.001 from epoch 2" in out and "beta1: 0.5 -> 0.9 from epoch 2" in out
    state = read_checkpoint(tmp_path / "tweaked" / CHECKPOINT)
    # the optimiser trained epoch 2 with the new values (load_state_dict alone would have restored the old ones)
    assert [(g["lr"], g["betas"]) for g in state["opt_g"]["param_groups"]] == [(1e-3, (0.9, 0.999))]
    assert [(g["lr"], g["betas"]) for g in state["opt_d"]["param_groups"]] == [(2e-4, (0.9, 0.999))]
    assert not torch.equal(tweaked.generator.state_dict()["0.weight"], kept.generator.state_dict()["0.weight"])
    changes = [(c["field"], c["from"], c["to"], c["epoch"], c["step"]) for c in tweaked.history["changes"]]
    assert changes == [("epochs", 1, 2, 2, 4), ("lr_g", 0.0002, 0.001, 2, 4), ("beta1", 0.5, 0.9, 2, 4)]
    saved = TrainConfig.load(tmp_path / "tweaked" / "config.json")
    assert (saved.lr_g, saved.beta1, saved.epochs) == (1e-3, 0.9, 2)
    assert json.loads((tmp_path / "tweaked" / "history.json").read_text())["changes"] == tweaked.history["changes"]


def test_a_call_that_trains_nothing_writes_nothing(tmp_path, capsys):
    run(tiny(tmp_path, epochs=2))
    run_dir = tmp_path / "run"

    def files() -> dict:  # the lock file is the lock's, rewritten by each holder
        return {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in run_dir.rglob("*")
                if path.is_file() and path.name != ".lock"}

    before = files()
    again = run(tiny(tmp_path, epochs=2, lr_g=1e-3))  # all epochs done: the new rate applies to nothing

    assert "already has 2 epochs" in capsys.readouterr().out
    assert files() == before
    assert again.epochs_done == 2 and "changes" not in again.history


def test_the_same_folder_spelled_differently_is_the_same_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "faces").mkdir()
    run(tiny(tmp_path, data="faces"))
    for spelling in ("./faces/", str(tmp_path / "faces")):
        assert run(tiny(tmp_path, data=spelling, epochs=2)).epochs_done == 2
    with pytest.raises(ConfigError, match=r"data: '\./faces/' -> 'other'"):
        run(tiny(tmp_path, data="other", epochs=3))


# ----------------------------------------------------------------------------------- changes refused

def test_cli_refuses_another_image_size_before_decoding_anything_and_without_a_traceback(tmp_path):
    out = tmp_path / "run"
    assert cli(*cli_args(tmp_path, out, "--epochs", "1")).returncode == 0
    caches = sorted((tmp_path / "data" / "cache").iterdir())

    refused = cli(*cli_args(tmp_path, out, "--epochs", "2", "--image-size", "32", "--g-width", "16"))

    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    assert "  image_size: 16 -> 32\n  g_width: 8 -> 16\n" in refused.stderr
    assert "To continue that run, set image_size=16, g_width=8" in refused.stderr
    assert sorted((tmp_path / "data" / "cache").iterdir()) == caches  # no 32px cache was built
    assert read_checkpoint(out / CHECKPOINT)["epoch"] == 1


def test_cli_refuses_another_recipe_listing_the_fields_it_sets(tmp_path):
    out = tmp_path / "run"
    assert cli(*cli_args(tmp_path, out, "--epochs", "1")).returncode == 0

    refused = cli(*cli_args(tmp_path, out, "--epochs", "2", "--recipe", "improved"))

    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    for line in ("loss: 'bce' -> 'hinge'", "ema_decay: 0.0 -> 0.999", "spectral_norm: False -> True"):
        assert f"  {line} (set by recipe: 'dcgan' -> 'improved')" in refused.stderr
    assert "To continue that run, set recipe='dcgan'" in refused.stderr


def test_cli_continues_with_the_runs_own_values_for_options_not_given(tmp_path):
    """The EMA of a run started with --ema-decay survives a resume that does not repeat it."""
    out = tmp_path / "run"
    assert cli(*cli_args(tmp_path, out, "--epochs", "1", "--ema-decay", "0.99", "--lr-d", "4e-4")).returncode == 0

    resumed = cli(*cli_args(tmp_path, out, "--epochs", "2"))

    assert resumed.returncode == 0, resumed.stderr
    assert f"continuing {out}: options not given keep the run's values" in resumed.stdout
    state = read_checkpoint(out / CHECKPOINT)
    assert state["epoch"] == 2 and state["ema"] is not None and state["ema"]["updates"].item() == 8
    assert (state["config"]["ema_decay"], state["config"]["lr_d"]) == (0.99, 4e-4)
    assert "lr_d:" not in resumed.stdout and "epochs: 1 -> 2 from epoch 2" in resumed.stdout


def test_your_own_networks_train_resume_and_are_checked(tmp_path):
    def wide_generator():
        torch.manual_seed(0)
        return nn.Sequential(nn.ConvTranspose2d(16, 64, 4, 1, 0), nn.BatchNorm2d(64), nn.ReLU(),   # 4x4
                             nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),   # 8x8
                             nn.ConvTranspose2d(32, 3, 4, 2, 1), nn.Tanh())                        # 16x16

    first = run(tiny(tmp_path), generator=wide_generator())
    resumed = run(tiny(tmp_path, epochs=2), generator=wide_generator())

    assert resumed.epochs_done == 2 and list_frames(first.run_dir)[-1][0] == 2
    with pytest.raises(ConfigError, match="was trained with another generator: Sequential"):
        run(tiny(tmp_path, epochs=3))  # the built-in G cannot continue it
    generator, _, _ = load_models(first.run_dir, generator=wide_generator())
    assert torch.equal(generator.state_dict()["0.weight"], resumed.generator.state_dict()["0.weight"])
    with pytest.raises(ConfigError, match=r"turns z of shape \(2, 16, 1, 1\) into \(2, 3, 8, 8\); training needs \(2, 3, 16, 16\)"):
        run(tiny(tmp_path, "small"), generator=nn.Sequential(*list(wide_generator())[:6], nn.Conv2d(32, 3, 1)))
    assert "G=Sequential" in str(default_run_dir(tiny(tmp_path, out=""), "G=Sequential1a2b3c"))


# ------------------------------------------------------------------------------- one process per folder

def test_a_second_process_on_a_training_run_fails_at_once_and_touches_nothing(tmp_path):
    out, log = tmp_path / "run", tmp_path / "first.log"
    first = start_cli(*cli_args(tmp_path, out, "--epochs", "1000"), log=log)
    try:
        wait_for(lambda: (out / CHECKPOINT).exists(), first, log)
        foreign_tmp = out / ".checkpoint.999999.tmp.pt"   # a temporary file, as if being written by the first
        foreign_tmp.write_bytes(b"in progress")

        second = cli(*cli_args(tmp_path, out, "--epochs", "1000"))

        assert second.returncode == 1 and "Traceback" not in second.stderr
        assert second.stderr.strip().splitlines()[-1] == (
            f"error: {out} is in use: another process is training in it. Wait for it to finish or stop it (a "
            "notebook: Kernel > Interrupt; a shell: Ctrl-C), or train in another folder")   # no command line
        assert (out / ".lock").read_text() == ""   # the holder's command line (a URL's token) is never written
        assert first.poll() is None
        assert foreign_tmp.exists()  # cleaned only by the lock's holder
    finally:
        first.kill()
        first.wait()

    resumed = cli(*cli_args(tmp_path, out, "--epochs", str(read_checkpoint(out / CHECKPOINT)["epoch"] + 1)))

    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and released(out) and not foreign_tmp.exists()


def test_the_lock_is_held_while_training_and_released_after(tmp_path):
    config = tiny(tmp_path)
    seen = []

    class Probe:  # a live plot that tries to open the same run from inside training
        def update(self, history, grid=None, title="", force=False):
            if not seen:
                with pytest.raises(RunInUse, match="is in use: another process is training in it"):
                    train(config, progress=False, images=IMAGES)
                seen.append(True)

    train(config, progress=False, images=IMAGES, live_plot=Probe())
    assert seen and run(tiny(tmp_path, epochs=2)).epochs_done == 2  # released: a later call trains


# --------------------------------------------------------------------------------------- nothing deleted

def test_a_new_run_in_a_folder_of_an_earlier_run_moves_its_files_aside(tmp_path, capsys):
    run(tiny(tmp_path, epochs=2))
    run_dir = tmp_path / "run"
    grids = {epoch: path.read_bytes() for epoch, path in list_frames(run_dir)}
    history = (run_dir / "history.json").read_text()
    shutil.move(run_dir / CHECKPOINT, tmp_path / "elsewhere.pt")  # what "move it away" means

    result = run(tiny(tmp_path, epochs=1, seed=7))

    assert "moved them to" in capsys.readouterr().out
    aside = run_dir / "earlier-1"
    assert {epoch: path.read_bytes() for epoch, path in list_frames(aside)} == grids
    assert (aside / "history.json").read_text() == history
    assert TrainConfig.load(aside / "config.json").seed == 42
    assert result.epochs_done == 1 and [e for e, _ in list_frames(run_dir)] == [1]


def test_a_first_epoch_killed_before_its_checkpoint_is_simply_trained_again(tmp_path):
    """Its grid is the one thing the missing checkpoint makes obsolete: no earlier-N folder for it."""
    run(tiny(tmp_path))
    run_dir = tmp_path / "run"
    (run_dir / CHECKPOINT).unlink()
    (run_dir / "history.json").unlink()  # the order of writes: grid, checkpoint, history

    assert run(tiny(tmp_path)).epochs_done == 1
    assert not list(run_dir.glob("earlier-*")) and [e for e, _ in list_frames(run_dir)] == [1]


# ------------------------------------------------------------------------------------------- interrupts

def test_ctrl_c_ends_with_what_was_saved_and_how_to_resume(tmp_path):
    out, log = tmp_path / "run", tmp_path / "train.log"
    process = start_cli(*cli_args(tmp_path, out, "--epochs", "1000"), log=log)
    wait_for(lambda: (out / CHECKPOINT).exists(), process, log)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    text = log.read_text()
    saved = read_checkpoint(out / CHECKPOINT)["epoch"]

    assert "Traceback" not in text
    # Ctrl-C lands in an epoch, or (on a fast CPU, often) between one epoch's save and the next one's first step
    epochs = "epoch 1 is saved" if saved == 1 else f"epochs 1-{saved} are saved"
    said = f": {epochs} in {out / CHECKPOINT}. Run the same again to resume from epoch {saved + 1}"
    assert (f"interrupted: training stopped during epoch {saved + 1}{said}" in text
            or f"interrupted: training stopped after epoch {saved}{said}" in text), text[-600:]
    assert released(out) and not list(out.glob(".*.tmp.*"))
    resumed = cli(*cli_args(tmp_path, out, "--epochs", str(saved + 1)))
    assert resumed.returncode == 0 and f"resuming {out} after epoch {saved}" in resumed.stdout


def test_an_interrupt_in_a_notebook_says_what_is_saved_and_that_the_cells_below_did_not_run(tmp_path, monkeypatch):
    """Kernel > Interrupt in epoch 2 (raised here where the live plot is drawn): one epoch saved, said so in words,
    and that the interrupt also skipped the cells queued below (Jupyter stops the queue on it)."""
    from utils import training
    from utils.errors import Interrupted

    class KernelInterrupt:   # the first step of epoch 2 is where the learner presses it
        def update(self, history, grid=None, title="", force=False):
            if history["steps"] and history["steps"][-1]["epoch"] == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(training, "in_notebook", lambda: True)
    with pytest.raises(Interrupted) as stopped:
        run(tiny(tmp_path, epochs=3), live_plot=KernelInterrupt())
    assert str(stopped.value) == (f"training stopped during epoch 2: epoch 1 is saved in {tmp_path / 'run' / CHECKPOINT}"
                                  "; the cells below did not run: re-run this cell to resume from epoch 2")
    assert run(tiny(tmp_path, epochs=2)).epochs_done == 2   # and it does


def test_our_errors_in_a_notebook_show_one_line_and_stop_the_notebook(tmp_path):
    """IPython renders our errors by their message alone; the cell still fails, so 'Run all' stops there."""
    nbformat = pytest.importorskip("nbformat")
    papermill = pytest.importorskip("papermill")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
                                                "from utils.errors import ConfigError\n"
                                                "raise ConfigError(\"config field 'epochs' must be >= 1; got 0\")"),
                      nbformat.v4.new_code_cell("print('never reached')")]
    nbformat.write(notebook, tmp_path / "in.ipynb")

    with pytest.raises(papermill.PapermillExecutionError):
        papermill.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                                   progress_bar=False, cwd=str(tmp_path))

    failing, after = [cell for cell in nbformat.read(tmp_path / "out.ipynb", as_version=4).cells
                      if cell.cell_type == "code"]
    error = [out for out in failing.outputs if out.output_type == "error"][0]
    assert error.ename == "ConfigError" and len(error.traceback) == 1
    assert "config field 'epochs' must be >= 1; got 0" in error.traceback[0] and "File" not in error.traceback[0]
    assert after.outputs == []


# ----------------------------------------------------------------------------------------- warnings

def test_a_run_whose_d_has_won_says_so_under_the_epoch_and_at_the_end(tmp_path):
    # fp32 channels_last pinned, not the CPU trial's choice: lr 1 amplifies every rounding, and the exact D(x) = 1.00
    # / D(G(z)) = 0.00 failed in the bf16 the trial picks on an AMX Xeon (the layout it picks varies too)
    done = cli(*cli_args(tmp_path, tmp_path / "run", "--epochs", "3", "--max-images", "256", "--lr-g", "1",
                         "--lr-d", "1", "--amp", "off", "--channels-last", "on"))

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    said = lines[lines.index(next(line for line in lines if line.startswith("epoch 3/3:"))) + 1]
    assert said.startswith("  D wins since epoch ") and "D(x) = 1.00 and D(G(z)) = 0.00" in said
    assert "lower lr_g (now 1) and lr_d (now 1) to the DCGAN recipe's 0.0002, or try recipe='improved'" in said
    assert said.endswith("(see notebook 03's Troubleshooting: D wins)")
    assert lines[-1] == "still seen in the last epoch: " + said.strip()
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert "D wins" in history["epochs"][-1]["diagnosis"]


# ------------------------------------------------------------------------------------------ a full disk

@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs: room for a grid, not for a checkpoint (needs root; skipped where mounting is refused)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_while_saving_the_checkpoint_says_which_file_and_how_much_space(tmp_path, small_disk):
    out = small_disk / "run"
    failed = cli(*cli_args(tmp_path, out, "--epochs", "2", "--g-width", "48", "--d-width", "48"))

    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert f"error: no space left to write {out / CHECKPOINT}: it needs about" in failed.stderr
    assert "MiB free. Free some space" in failed.stderr
    assert not list(out.glob(".*.tmp.*")) and released(out)


def test_frame_path_names_epoch_with_at_least_three_digits(tmp_path):
    assert frame_path(tmp_path, 7) == tmp_path / "samples" / "epoch_007.png"
    assert frame_path(str(tmp_path), 1234).name == "epoch_1234.png"


def test_list_frames_sorts_by_epoch_number_and_ignores_other_files(tmp_path):
    for epoch in (10, 2, 1000, 999, 1):
        frame_path(tmp_path, epoch).parent.mkdir(parents=True, exist_ok=True)
        frame_path(tmp_path, epoch).touch()
    for other in ("notes.txt", ".epoch_003.123.tmp.png", "epoch_abc.png", "epoch_004.png.bak", "grid.png"):
        (tmp_path / "samples" / other).touch()

    frames = list_frames(tmp_path)

    assert [epoch for epoch, _ in frames] == [1, 2, 10, 999, 1000]
    assert [path for _, path in frames] == [frame_path(tmp_path, e) for e in (1, 2, 10, 999, 1000)]


def test_list_frames_of_a_run_without_samples_is_empty(tmp_path):
    assert list_frames(tmp_path) == []
