"""trained_runs and choose_run: which run notebooks 04 to 06 work on by default (the main run of their settings),
what they say about it, and which others they offer."""

import dataclasses
import os
import shutil
from pathlib import Path

from utils.choose import choose_run
from utils.config import TrainConfig
from utils.run import CHECKPOINT, CONFIG, default_run_dir, trained_runs

SMALL = TrainConfig(image_size=32, g_width=32, d_width=32, epochs=3)


def trained(root, config: TrainConfig, written_at: float, name: str = "", epochs_done: int = 1) -> Path:
    """A run folder as training leaves it (config.json, grids, a checkpoint), its checkpoint written at `written_at`."""
    folder = root / (name or default_run_dir(config).name)
    (folder / "samples").mkdir(parents=True)
    config.save(folder / CONFIG)
    for epoch in range(1, epochs_done + 1):
        (folder / "samples" / f"epoch_{epoch:03d}.png").write_bytes(b"a grid")
    (folder / CHECKPOINT).write_bytes(b"not read")
    os.utime(folder / CHECKPOINT, (written_at, written_at))
    return folder


def test_the_run_trained_last_comes_first_and_folders_without_a_checkpoint_are_left_out(tmp_path):
    assert trained_runs(tmp_path) == [] and trained_runs(tmp_path / "missing") == []
    old, new, middle = (trained(tmp_path, SMALL, at, name) for name, at in (("a", 1_000), ("b", 3_000), ("c", 2_000)))
    (tmp_path / "dcgan-16px" / "samples").mkdir(parents=True)   # an epoch never finished: no checkpoint yet
    (tmp_path / "README.md").write_text("not a run")
    assert trained_runs(tmp_path) == [new, middle, old]

    os.utime(old / CHECKPOINT, (4_000, 4_000))   # continued later: its checkpoint is rewritten after every epoch
    assert trained_runs(tmp_path)[0] == old


def test_the_main_run_of_the_settings_wins_over_tweaks_and_runs_trained_later(tmp_path):
    """After 03's lr_g tweak and 05's improved run, 04 and 06 still take the run of the series' settings."""
    main = trained(tmp_path, SMALL, 1_000, epochs_done=3)
    tweak = trained(tmp_path, dataclasses.replace(SMALL, lr_g=1e-3), 2_000)
    improved = trained(tmp_path, TrainConfig(image_size=32, g_width=32, d_width=32, recipe="improved"), 3_000)
    lines = []
    assert choose_run("", SMALL, root=tmp_path, log=lines.append) == main
    assert lines == [f"working on {main} (3 epochs): the main run of these settings (notebook 03's, not a tweak)",
                     "other runs, newest first (set out to one in the parameters cell to use it): "
                     "improved, lr_g=0.001"]
    lines.clear()   # each word of that list picks its run; so do the folder and its name
    for word in ("lr_g=0.001", tweak.name, str(tweak)):
        assert choose_run(word, SMALL, root=tmp_path, log=lines.append) == tweak
    assert lines[0] == f"working on {tweak} (1 of 3 epochs): named by out; it differs from these settings in lr_g"
    assert lines[1].endswith("improved, dcgan")   # the chosen run is not among the others; "dcgan" is the main run
    assert choose_run("improved", SMALL, root=tmp_path, log=lines.append) == improved
    assert choose_run("dcgan", SMALL, root=tmp_path, log=lines.append) == main


def test_notebook_05s_dcgan_baseline_is_never_a_tweak_nor_the_improved_run(tmp_path):
    """No main run at these settings: an untweaked DCGAN run of another size stands in, said in one line; a tweak
    trained later does not, and with only tweaks there is no baseline (05 trains one or says how)."""
    other_size = trained(tmp_path, TrainConfig(image_size=64), 1_000)
    trained(tmp_path, dataclasses.replace(SMALL, lr_g=1e-3), 2_000)
    trained(tmp_path, dataclasses.replace(SMALL, recipe="improved"), 3_000)
    lines = []
    assert choose_run("", SMALL, recipe="dcgan", root=tmp_path, log=lines.append) == other_size
    assert lines[0] == (f"working on {other_size} (1 of 25 epochs): no run of these settings yet "
                        f"({default_run_dir(SMALL).name}); the newest untweaked run; it differs from these settings "
                        "in image_size, g_width, d_width")
    assert lines[1].endswith(": lr_g=0.001")   # the improved run is not offered as the DCGAN baseline
    shutil.rmtree(other_size)
    lines.clear()
    assert choose_run("", SMALL, recipe="dcgan", root=tmp_path, log=lines.append) is None
    assert lines[0] == f"no run of these settings yet ({tmp_path / default_run_dir(SMALL).name})"


def test_your_own_networks_are_offered_but_never_taken_unless_named_and_out_is_used_as_given(tmp_path):
    """03 trains your own networks after its main run: 04 and 06 still take the main run."""
    (tmp_path / "dcgan-16px" / "samples").mkdir(parents=True)   # a first epoch never finished: no run yet
    lines = []
    assert choose_run("", SMALL, root=tmp_path, log=lines.append) is None and lines == []
    main = trained(tmp_path, SMALL, 1_000)
    own = trained(tmp_path, SMALL, 2_000, name=default_run_dir(SMALL, "G=LeakyGenerator3f2a1c").name)
    assert choose_run("", SMALL, root=tmp_path, log=lines.append) == main
    assert lines[1].endswith(": G=LeakyGenerator3f2a1c")
    assert choose_run("G=LeakyGenerator3f2a1c", SMALL, root=tmp_path, log=lines.append) == own
    lines.clear()
    assert choose_run("runs/mine", SMALL, root=tmp_path, log=lines.append) == Path("runs/mine")
    assert lines[0] == "working on runs/mine: named by out"
