"""trained_runs and choose_run: which run notebooks 04 and 05 work on by default (the one trained last), what they
say about it, and which others they offer."""

import dataclasses
import os
from pathlib import Path

from utils.choose import choose_run
from utils.config import TrainConfig
from utils.run import CHECKPOINT, CONFIG, default_run_dir, trained_runs


def make_run(root, name, written_at):
    folder = root / name
    (folder / "samples").mkdir(parents=True)
    (folder / CHECKPOINT).write_bytes(b"not read")
    os.utime(folder / CHECKPOINT, (written_at, written_at))
    return folder


def test_the_run_trained_last_comes_first_and_folders_without_a_checkpoint_are_left_out(tmp_path):
    old = make_run(tmp_path, "dcgan-64px", 1_000)
    new = make_run(tmp_path, "dcgan-32px-lr_g=0.001", 3_000)
    middle = make_run(tmp_path, "improved-32px", 2_000)
    (tmp_path / "dcgan-16px" / "samples").mkdir(parents=True)   # an epoch never finished: no checkpoint yet
    (tmp_path / "README.md").write_text("not a run")
    assert trained_runs(tmp_path) == [new, middle, old]

    os.utime(old / CHECKPOINT, (4_000, 4_000))   # continued later: its checkpoint is rewritten after every epoch
    assert trained_runs(tmp_path)[0] == old


def test_no_runs_yet(tmp_path):
    assert trained_runs(tmp_path) == []
    assert trained_runs(tmp_path / "missing") == []


# ------------------------------------------------------------------ choose_run: what notebooks 04 and 05 print and use

def trained(root, config: TrainConfig, written_at: float, name: str = "") -> Path:
    """A run folder as training leaves it (config.json, a grid, a checkpoint), its checkpoint written at `written_at`."""
    folder = root / (name or default_run_dir(config).name)
    (folder / "samples").mkdir(parents=True)
    config.save(folder / CONFIG)
    (folder / "samples" / "epoch_001.png").write_bytes(b"a grid")
    (folder / CHECKPOINT).write_bytes(b"not read")
    os.utime(folder / CHECKPOINT, (written_at, written_at))
    return folder


def test_choose_run_takes_the_run_trained_last_says_what_differs_and_how_to_pick_another(tmp_path):
    small = TrainConfig(image_size=32, g_width=32, d_width=32, epochs=3)
    first = trained(tmp_path, dataclasses.replace(small, lr_g=1e-3), 1_000)
    last = trained(tmp_path, small, 2_000)
    lines = []
    chosen = choose_run("", TrainConfig(), root=tmp_path, log=lines.append)   # the notebook left at its defaults
    assert chosen == last
    assert lines[0] == f"working on {last}: the run trained last (32x32, 1 epoch)"
    assert lines[1].startswith(f"note: this notebook's parameters differ from {last}'s settings (image_size 64 here, "
                               "32 in the run; g_width 64 here, 32 in the run; d_width 64 here, 32 in the run; "
                               "epochs 25 here, 3 in the run)")
    assert lines[2] == (f"other runs, newest first: {first.name}. To use one, set out = \"{first}\" (for example) "
                        "in the parameters cell and run again")
    assert len(lines) == 3

    lines.clear()   # the same settings: nothing to note
    choose_run("", small, root=tmp_path, log=lines.append)
    assert not any(line.startswith("note:") for line in lines)


def test_choose_run_skips_your_own_networks_and_for_notebook_05_other_recipes(tmp_path):
    """03 trains your own networks after its main run: 04 and 06 still take the main run, 05 the plain DCGAN."""
    dcgan = trained(tmp_path, TrainConfig(image_size=32), 1_000)
    improved = trained(tmp_path, TrainConfig(image_size=32, recipe="improved"), 2_000)
    own = trained(tmp_path, TrainConfig(image_size=32), 3_000,
                  name=default_run_dir(TrainConfig(image_size=32), "G=LeakyGenerator3f2a1c").name)
    assert choose_run("", TrainConfig(), root=tmp_path, log=lambda line: None) == improved   # 04: any recipe
    assert choose_run("", TrainConfig(), recipe="dcgan", root=tmp_path, log=lambda line: None) == dcgan
    assert choose_run(str(own), TrainConfig(), root=tmp_path, log=lambda line: None) == own   # named in `out`


def test_choose_run_without_a_trained_run_returns_none_and_an_explicit_out_wins(tmp_path):
    (tmp_path / "dcgan-64px" / "samples").mkdir(parents=True)   # a first epoch never finished
    assert choose_run("", TrainConfig(), root=tmp_path, log=lambda line: None) is None
    lines = []
    assert choose_run("runs/mine", TrainConfig(), root=tmp_path, log=lines.append) == Path("runs/mine")
    assert lines == ["working on runs/mine (the parameters' out)"]
