"""The run folder (utils/run.py): names, changes applied or refused, one process per folder, nothing deleted.

Command line tests run `python -m utils.train` for real in a subprocess, as a learner's shell would; the helpers
here (tiny runs of 16x16 images) serve test_safety.py and test_faults.py too.
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
from utils.errors import ConfigError, Interrupted, UserError
from utils.run import CHECKPOINT, default_run_dir, frame_path, list_frames, load_models, read_checkpoint
from utils.training import train

from small_disk import small_disk

REPO = Path(__file__).resolve().parents[1]
IMAGES = torch.randint(0, 256, (128, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# 128 images of 16x16, batch 32: 4 steps per epoch; fp32 channels_last pinned, not the CPU trial's choice (which a
# busy machine can flip between a run and the run compared with it)
TINY = dict(data="synthetic", max_images=128, image_size=16, latent_dim=16, g_width=8, d_width=8, batch_size=32,
            device="cpu", amp="off", channels_last="on", log_every=2, num_samples=16)


def tiny(tmp_path, name="run", **overrides) -> TrainConfig:
    return TrainConfig(**TINY | dict(data_dir=str(tmp_path / "data"), epochs=1, out=str(tmp_path / name)) | overrides)


def run(config: TrainConfig, **kwargs):
    return train(config, progress=False, images=IMAGES, **kwargs)


def cli_args(tmp_path, out, *extra) -> list[str]:
    """The options of `tiny` a learner would type (the others keep their defaults, or a continued run's values)."""
    values = TINY | dict(data_dir=tmp_path / "data", out=out)
    return [word for name, value in values.items() for word in (f"--{name.replace('_', '-')}", str(value))] + [*extra]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "utils.train", *args], cwd=REPO, env=dict(os.environ,
                          OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)


def start(args: list[str], log: Path) -> subprocess.Popen:
    """`python -m utils.train args` (or `-c CODE args`) in the background, its output to `log`."""
    with open(log, "ab") as output:
        # SIGINT as a terminal's Ctrl-C delivers it, even where this suite runs as a background job (whose
        # children start with SIGINT ignored, and Python then keeps it so)
        return subprocess.Popen([sys.executable, *(args if args[0] == "-c" else ["-m", "utils.train", *args])],
                                cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=output, stderr=output,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(condition, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 300
    while not condition():
        assert process.poll() is None, f"exited early ({process.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, log.read_text()[-3000:]   # a hang guard only
        time.sleep(0.02)


def one_line_error(result: subprocess.CompletedProcess, code: int = 1) -> str:
    """The CLI failed with `code` and said why in one `error:` line, without a traceback; returns that line."""
    assert result.returncode == code and "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


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


def test_a_tweak_without_out_trains_a_sibling_run_and_the_same_data_however_spelled_continues(tmp_path, monkeypatch,
                                                                                              capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "faces").mkdir()
    first = run(tiny(tmp_path, out="", data="faces"))
    checkpoint = (first.run_dir / CHECKPOINT).read_bytes()

    again = run(tiny(tmp_path, out="", data="./faces/", epochs=2))        # more epochs: the same run continues
    sibling = run(tiny(tmp_path, out="", data=str(tmp_path / "faces"), lr_g=1e-3))   # another rate: a new run

    assert again.run_dir == first.run_dir and again.epochs_done == 2
    assert sibling.run_dir == first.run_dir.with_name(first.run_dir.name + "-lr_g=0.001")
    assert sibling.epochs_done == 1 and list_frames(first.run_dir)[-1][0] == 2
    assert (first.run_dir / CHECKPOINT).read_bytes() != checkpoint  # trained on by `again`, not by `sibling`
    assert read_checkpoint(sibling.run_dir / CHECKPOINT)["config"]["lr_g"] == 1e-3
    assert f"run folder: {sibling.run_dir}" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"data: '\./faces/' -> 'other'"):
        run(tiny(tmp_path, out=str(first.run_dir), data="other", epochs=3))


def test_a_changed_learning_rate_and_beta_are_used_after_resuming_and_a_call_that_trains_nothing_writes_nothing(
        tmp_path, capsys):
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

    # all epochs done: a new rate applies to nothing, and no file changes
    files = sorted((path, path.stat().st_mtime_ns) for path in (tmp_path / "kept").rglob("*") if path.is_file())
    again = run(tiny(tmp_path, "kept", epochs=2, lr_g=1e-3))
    assert "already has 2 epochs" in capsys.readouterr().out and again.epochs_done == 2
    assert sorted((path, path.stat().st_mtime_ns) for path in (tmp_path / "kept").rglob("*") if path.is_file()) == files
    assert len(again.history["changes"]) == 1   # epochs 1 -> 2


def test_cli_refuses_another_size_or_recipe_in_words_and_continues_with_the_runs_values_for_options_not_given(
        tmp_path):
    """The EMA and lr_d of a run started with them survive a resume that does not repeat them; fields that fix the
    networks are refused before anything is decoded."""
    out = tmp_path / "run"
    assert cli(*cli_args(tmp_path, out, "--epochs", "1", "--ema-decay", "0.99", "--lr-d", "4e-4")).returncode == 0
    caches = sorted((tmp_path / "data" / "cache").iterdir())

    size = cli(*cli_args(tmp_path, out, "--epochs", "2", "--image-size", "32", "--g-width", "16"))
    recipe = cli(*cli_args(tmp_path, out, "--epochs", "2", "--recipe", "improved"))

    for refused in (size, recipe):
        one_line_error(refused)   # exit status 1, no traceback
    assert "  image_size: 16 -> 32\n  g_width: 8 -> 16\n" in size.stderr
    assert "To continue that run, set image_size=16, g_width=8" in size.stderr
    for line in ("recipe: 'dcgan' -> 'improved'", "loss: 'bce' -> 'hinge'", "spectral_norm: False -> True"):
        assert f"\n  {line}\n" in recipe.stderr
    assert "To continue that run, set recipe='dcgan'. To start" in recipe.stderr   # the recipe alone sets them back
    assert sorted((tmp_path / "data" / "cache").iterdir()) == caches  # no 32px cache was built

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
    with pytest.raises(ConfigError, match="was trained with another generator: Sequential.*Pass that generator"):
        load_models(first.run_dir)
    generator, _, _ = load_models(first.run_dir, generator=wide_generator())
    assert torch.equal(generator.state_dict()["0.weight"], resumed.generator.state_dict()["0.weight"])
    with pytest.raises(ConfigError, match=r"turns z of shape \(2, 16, 1, 1\) into \(2, 3, 8, 8\); training needs \(2, 3, 16, 16\)"):
        run(tiny(tmp_path, "small"), generator=nn.Sequential(*list(wide_generator())[:6], nn.Conv2d(32, 3, 1)))
    assert "G=Sequential" in str(default_run_dir(tiny(tmp_path, out=""), "G=Sequential1a2b3c"))


def test_a_second_process_fails_at_once_touching_nothing_and_ctrl_c_ends_with_what_was_saved_and_how_to_resume(
        tmp_path):
    out, log = tmp_path / "run", tmp_path / "first.log"
    first = start(cli_args(tmp_path, out, "--epochs", "1000"), log)
    wait_for(lambda: (out / CHECKPOINT).exists(), first, log)
    foreign_tmp = out / ".checkpoint.999999.tmp.pt"   # a temporary file, as if being written by the first
    foreign_tmp.write_bytes(b"in progress")

    second = cli(*cli_args(tmp_path, out, "--epochs", "1000"))

    assert one_line_error(second) == (
        f"error: {out} is in use: another process is training in it. Wait for it to finish or stop it (a "
        "notebook: Kernel > Interrupt; a shell: Ctrl-C), or train in another folder")   # no command line
    assert (out / ".lock").read_text() == ""   # the holder's command line (a URL's token) is never written
    assert first.poll() is None and foreign_tmp.exists()  # cleaned only by the lock's holder

    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=60) == 130
    text, saved = log.read_text(), read_checkpoint(out / CHECKPOINT)["epoch"]
    assert "Traceback" not in text
    # Ctrl-C lands in an epoch, or (on a fast CPU, often) between one epoch's save and the next one's first step
    epochs = "epoch 1 is saved" if saved == 1 else f"epochs 1-{saved} are saved"
    said = f": {epochs} in {out / CHECKPOINT}. Run the same again to resume from epoch {saved + 1}"
    assert (f"interrupted: training stopped during epoch {saved + 1}{said}" in text
            or f"interrupted: training stopped after epoch {saved}{said}" in text), text[-600:]
    assert list(out.glob(".*.tmp.*")) == [foreign_tmp]   # the holder's own are gone; the lock is free:

    resumed = cli(*cli_args(tmp_path, out, "--epochs", str(saved + 1)))
    assert resumed.returncode == 0 and f"resuming {out} after epoch {saved}" in resumed.stdout
    assert (out / ".lock").read_text() == "" and not foreign_tmp.exists()


def test_a_new_run_in_a_folder_of_an_earlier_run_moves_its_files_aside_but_a_first_epoch_cut_short_trains_again(
        tmp_path, capsys):
    run(tiny(tmp_path, epochs=2))
    run_dir, aside = tmp_path / "run", tmp_path / "run" / "earlier-1"
    grids = {epoch: path.read_bytes() for epoch, path in list_frames(run_dir)}
    history = (run_dir / "history.json").read_text()
    shutil.move(run_dir / CHECKPOINT, tmp_path / "elsewhere.pt")  # what "move it away" means

    assert run(tiny(tmp_path, seed=7)).epochs_done == 1

    assert f"moved them to {aside}/ (nothing deleted); starting a new run" in capsys.readouterr().out
    assert {epoch: path.read_bytes() for epoch, path in list_frames(aside)} == grids
    assert (aside / "history.json").read_text() == history and TrainConfig.load(aside / "config.json").seed == 42
    assert [e for e, _ in list_frames(run_dir)] == [1]

    (run_dir / CHECKPOINT).unlink()   # killed before its first checkpoint (the writes: grid, checkpoint, history)
    (run_dir / "history.json").unlink()
    assert run(tiny(tmp_path, seed=7)).epochs_done == 1   # its grid is all the lost checkpoint makes obsolete
    assert sorted(run_dir.glob("earlier-*")) == [aside] and [e for e, _ in list_frames(run_dir)] == [1]


def test_the_lock_holds_against_this_process_and_an_interrupt_in_a_notebook_says_what_is_saved(tmp_path, monkeypatch):
    """Kernel > Interrupt in epoch 2 (raised here where the live plot is drawn): one epoch saved, said so in words,
    and that the interrupt also skipped the cells queued below (Jupyter stops the queue on it); the lock, which
    refused the same folder from inside training, is released."""
    from utils import training

    class KernelInterrupt:   # the first step of epoch 2 is where the learner presses it
        def update(self, history, grid=None, title="", force=False):
            if history["steps"] and history["steps"][-1]["epoch"] == 2:
                with pytest.raises(UserError, match="is in use: another process is training in it"):
                    run(tiny(tmp_path))
                raise KeyboardInterrupt

    monkeypatch.setattr(training, "in_notebook", lambda: True)
    with pytest.raises(Interrupted) as stopped:
        run(tiny(tmp_path, epochs=3), live_plot=KernelInterrupt())
    assert str(stopped.value) == (f"training stopped during epoch 2: epoch 1 is saved in {tmp_path / 'run' / CHECKPOINT}"
                                  "; the cells below did not run: re-run this cell to resume from epoch 2")
    assert run(tiny(tmp_path, epochs=2)).epochs_done == 2   # and it does


def test_our_errors_in_a_notebook_show_one_line_and_stop_the_notebook(tmp_path):
    """IPython renders our errors by their message alone; the cell still fails, so 'Run all' stops there."""
    nbformat, papermill = pytest.importorskip("nbformat"), pytest.importorskip("papermill")
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
    [error] = [out for out in failing.outputs if out.output_type == "error"]
    assert error.ename == "ConfigError" and len(error.traceback) == 1
    assert "config field 'epochs' must be >= 1; got 0" in error.traceback[0] and "File" not in error.traceback[0]
    assert after.outputs == []


def test_the_cli_ends_with_what_is_still_seen_in_the_last_epoch(tmp_path):
    # lr 1 makes D win (tests/test_diagnose.py says what the line holds)
    done = cli(*cli_args(tmp_path, tmp_path / "run", "--epochs", "3", "--max-images", "256", "--lr-g", "1",
                         "--lr-d", "1"))

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    said = lines[lines.index(next(line for line in lines if line.startswith("epoch 3/3:"))) + 1]
    assert said.startswith("  D wins since epoch ") and lines[-1] == "still seen in the last epoch: " + said.strip()


def test_a_full_disk_while_saving_the_checkpoint_says_which_file_and_how_much_space(tmp_path):
    with small_disk(tmp_path / "disk", size="256k") as disk:   # room for a grid, not for a checkpoint
        failed = cli(*cli_args(tmp_path, disk / "run", "--epochs", "2", "--g-width", "48", "--d-width", "48"))

        assert one_line_error(failed).startswith(f"error: no space left to write {disk / 'run' / CHECKPOINT}: it "
                                                 "needs about")
        assert "MiB free. Free some space" in failed.stderr
        assert not list((disk / "run").glob(".*.tmp.*")) and (disk / "run" / ".lock").read_text() == ""


def test_frames_are_named_with_at_least_three_digits_and_listed_by_epoch(tmp_path):
    assert frame_path(tmp_path, 7) == tmp_path / "samples" / "epoch_007.png" and list_frames(tmp_path) == []
    (tmp_path / "samples").mkdir()
    for name in ("epoch_010.png", "epoch_002.png", "epoch_1000.png", "epoch_999.png", "epoch_001.png", "notes.txt",
                 ".epoch_003.123.tmp.png", "epoch_abc.png", "epoch_004.png.bak", "grid.png"):
        (tmp_path / "samples" / name).touch()
    assert list_frames(tmp_path) == [(e, frame_path(tmp_path, e)) for e in (1, 2, 10, 999, 1000)]
