"""Caused for real: no file the package reads can run code, every write is atomic and durable, a run folder survives
what a careless hand does to it (damaged JSON or checkpoint, an older checkpoint copied in, a rename while training),
and every bad input is one line. Each test plants the real broken file, runs the real subprocess or makes the race.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import torch

from utils import files, training
from utils.config import MAX_SEED, TrainConfig, config_to_argv
from utils.downloads import DownloadError
from utils.errors import ConfigError, UserError
from utils.metrics import load_inception
from utils.run import CHECKPOINT, CONFIG, HISTORY, CheckpointError, list_frames, load_models, read_checkpoint, \
    saved_config
from utils.training import epoch_generators, train

from between_saves import frozen_between_saves
from test_run import IMAGES, REPO, cli, one_line_error, run, start, tiny

HUB_NAME = "weights-inception-2015-12-05-6726825d.pth"   # where torch hub keeps the downloaded FID weights

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def cli_of(config: TrainConfig, *extra: str) -> subprocess.CompletedProcess:
    return cli(*config_to_argv(config), *extra)


def no_training(monkeypatch):
    """Any attempt to decode data (the step before the first epoch) fails the test."""
    monkeypatch.setattr(training, "load_dataset", lambda *a, **k: pytest.fail("training started"))


@dataclasses.dataclass
class Payload:
    """Unpickling this calls open(marker, 'w'): code that runs just by loading the file."""

    marker: Path

    def __reduce__(self):
        return open, (str(self.marker), "w")


def plant_payload(path: Path, marker: Path, legacy: bool = False) -> Path:
    """A real PyTorch file whose loading with weights_only=False creates `marker` (zip or the old format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        torch.save({"Conv2d_1a_3x3.conv.weight": Payload(marker)}, file, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.mark.parametrize("legacy", [False, True])
def test_the_planted_payload_really_runs_code_when_loaded_unsafely(tmp_path, legacy):
    """Proves the payload of the tests below is dangerous: torch-fidelity's own loader would run it."""
    torch.load(plant_payload(tmp_path / "evil.pth", tmp_path / "pwned", legacy), weights_only=False)
    assert (tmp_path / "pwned").exists()


# --------------------------------------------------------------------------- 1. no file this project reads runs code

@pytest.mark.parametrize("content", ["payload", "legacy payload", "text", "empty", "other tensors", "a checkpoint",
                                     "missing"])
def test_fid_weights_that_are_not_the_inception_weights_are_refused_before_training(tmp_path, monkeypatch, content):
    """A payload (in the zip or the old non-zip format the official weights use) is refused without running it."""
    weights = tmp_path / "pt_inception-2015-12-05-evil.pth"
    if content.endswith("payload"):
        plant_payload(weights, tmp_path / "pwned", legacy=content == "legacy payload")
    elif content in ("text", "empty"):
        weights.write_text("<html>404 Not Found</html>" if content == "text" else "")
    elif content == "other tensors":
        torch.save({"fc.weight": torch.zeros(3, 3)}, weights)
    elif content == "a checkpoint":
        run(tiny(tmp_path, "donor"))
        shutil.copy(tmp_path / "donor" / CHECKPOINT, weights)
    no_training(monkeypatch)

    with pytest.raises(ConfigError, match=rf"{re.escape(str(weights))}\W.*a pt_inception-2015-12-05-\*\.pth "
                                          "file") as error:
        train(tiny(tmp_path, fid_every=1, fid_weights=str(weights)), progress=False)
    assert "\n" not in str(error.value) and not (tmp_path / "pwned").exists() and not (tmp_path / "run").exists()
    if content.endswith("payload"):
        assert f"refused to load {weights}: it holds Python objects other than tensors" in str(error.value)


def test_fid_weights_downloaded_or_cached_as_other_bytes_are_refused_without_running_them(tmp_path, monkeypatch):
    """A download that is not the published file is not kept; torch hub's cached copy is read as data only too."""
    inception = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    plant_payload(tmp_path / "site" / HUB_NAME, tmp_path / "pwned")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "site"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{HUB_NAME}"
        monkeypatch.setattr(inception, "URL_INCEPTION_V3", url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        with pytest.raises(DownloadError, match=rf"could not download the FID Inception weights: {re.escape(url)} did "
                                                r"not send the expected file \(invalid hash value.*nothing was kept"):
            load_inception("")
    finally:
        server.shutdown()
    assert list((tmp_path / "torch" / "hub" / "checkpoints").iterdir()) == []

    cached = plant_payload(tmp_path / "torch" / "hub" / "checkpoints" / HUB_NAME, tmp_path / "pwned", legacy=True)
    with pytest.raises(DownloadError, match=rf"refused to load {re.escape(str(cached))}.*Delete it to download it "
                                            "again") as error:
        load_inception("")
    assert "\n" not in str(error.value) and not (tmp_path / "pwned").exists()


def test_only_utils_files_calls_torch_load_and_nothing_unpickles_otherwise():
    """The audit, kept: every PyTorch file goes through files.load_data (weights_only=True); no pickle.load, no
    np.load(allow_pickle=True)."""
    callers = set()
    for path in (REPO / "utils").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
                keywords = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
                if (owner, node.func.attr) == ("torch", "load"):
                    callers.add(path.name)
                    assert keywords.get("weights_only") is True, path
                assert (owner, node.func.attr) not in (("pickle", "load"), ("pickle", "loads")), path
                assert not (node.func.attr == "load" and keywords.get("allow_pickle") is True), path
    assert callers == {"files.py"}


# ---------------------------------------------------------------------------------- 2. atomic and durable writes

def test_a_write_is_synced_before_its_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(files.os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                        real_fsync(fd)))
    monkeypatch.setattr(files.os, "replace", lambda a, b: (events.append(("replace", str(a))), real_replace(a, b)))

    TrainConfig(epochs=3).save(tmp_path / CONFIG)

    tmp = str(tmp_path / f".config.{os.getpid()}.tmp.json")
    assert events == [("fsync", tmp), ("replace", tmp), ("fsync", str(tmp_path))]
    assert TrainConfig.load(tmp_path / CONFIG).epochs == 3


def test_a_full_disk_while_rewriting_config_json_keeps_the_old_file(tmp_path):
    from small_disk import small_disk

    with small_disk(tmp_path / "disk", size="64k") as disk:
        TrainConfig(epochs=3).save(disk / CONFIG)
        before = (disk / CONFIG).read_bytes()
        (disk / "filler").write_bytes(b"\0" * ((64 << 10) - 4096 - len(before)))  # leaves too little for a copy
        with pytest.raises(UserError, match=rf"no space left to write {re.escape(str(disk / CONFIG))}"):
            TrainConfig(epochs=4, out="x" * 2000).save(disk / CONFIG)
        assert (disk / CONFIG).read_bytes() == before and not list(disk.glob(".config.*"))


@pytest.mark.parametrize("name,damage", [(CONFIG, "empty"), (CONFIG, "invalid value"), (CONFIG, "not settings"),
                                         (HISTORY, "truncated"), (HISTORY, "not a history"), (HISTORY, "edited")])
def test_a_run_whose_config_or_history_json_is_damaged_resumes_from_its_checkpoint_and_says_so(tmp_path, capsys,
                                                                                                 name, damage):
    run(tiny(tmp_path))
    run_dir = tmp_path / "run"
    text = (run_dir / name).read_text()
    edited = json.loads(text)
    if damage == "edited":
        edited["epochs"][0]["seconds"] = 0.5
    (run_dir / name).write_text({"empty": "", "truncated": text[:len(text) // 2], "not settings": "[]",
                                 "not a history": "[1, 2]", "edited": json.dumps(edited),
                                 "invalid value": text.replace('"lr_g": 0.0002', '"lr_g": -1')}[damage])
    assert saved_config(run_dir).lr_g == 2e-4          # what the CLI continues with: the checkpoint's settings
    capsys.readouterr()

    if (name, damage) == (CONFIG, "empty"):   # through the command line, which reads config.json first
        result = cli_of(tiny(tmp_path, epochs=2))
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
        out = result.stdout
    else:
        run(tiny(tmp_path, epochs=2))
        out = capsys.readouterr().out

    lines = [line for line in out.splitlines() if "rewritten from" in line]
    assert len(lines) == 1 and str(run_dir / name) in lines[0] and "continuing after epoch 1" in lines[0]
    assert read_checkpoint(run_dir / CHECKPOINT)["epoch"] == 2 and TrainConfig.load(run_dir / CONFIG).lr_g == 2e-4
    assert json.loads((run_dir / HISTORY).read_text()) == read_checkpoint(run_dir / CHECKPOINT)["history"]


def test_a_damaged_config_json_without_a_checkpoint_is_moved_aside_by_a_new_run(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / CONFIG).write_text("{")

    result = cli_of(tiny(tmp_path))  # nothing trained to continue: a new run, the damaged file kept aside

    assert result.returncode == 0, result.stderr[-3000:]
    assert (f"{run_dir}: the folder held files of an earlier run but no {CHECKPOINT}: moved them to "
            f"{run_dir / 'earlier-1'}/ (nothing deleted); starting a new run here") in result.stdout
    assert (run_dir / "earlier-1" / CONFIG).read_text() == "{" and TrainConfig.load(run_dir / CONFIG).epochs == 1


def test_an_older_checkpoint_copied_in_moves_the_later_epochs_aside_and_says_so(tmp_path, capsys):
    run(tiny(tmp_path))
    run_dir = tmp_path / "run"
    shutil.copy(run_dir / CHECKPOINT, tmp_path / "epoch1.pt")
    run(tiny(tmp_path, epochs=3))
    later = {epoch: frame.read_bytes() for epoch, frame in list_frames(run_dir) if epoch > 1}
    history = (run_dir / HISTORY).read_text()
    shutil.copy(tmp_path / "epoch1.pt", run_dir / CHECKPOINT)  # "go back to epoch 1"
    capsys.readouterr()

    result = run(tiny(tmp_path, epochs=1))  # opens the run: nothing to train

    out = capsys.readouterr().out
    assert f"moved them to {run_dir / 'earlier-1'}/ (nothing deleted)" in out and "holds epochs 1-1" in out
    aside = run_dir / "earlier-1"
    assert {epoch: frame.read_bytes() for epoch, frame in list_frames(aside)} == later
    assert (aside / HISTORY).read_text() == history
    assert [e for e, _ in list_frames(run_dir)] == [1] and result.epochs_done == 1
    assert json.loads((run_dir / HISTORY).read_text()) == read_checkpoint(run_dir / CHECKPOINT)["history"]


@pytest.mark.parametrize("fate", ["renamed", "deleted"])
def test_a_run_folder_renamed_or_deleted_while_training_ends_it_with_one_line_saying_where_its_epochs_are(tmp_path,
                                                                                                         fate):
    config, log = tiny(tmp_path, epochs=1000), tmp_path / "train.log"
    run_dir, moved = tmp_path / "run", tmp_path / "renamed"
    process = start(config_to_argv(config), log)
    # between two saves: renamed after an epoch's grid and before its checkpoint, the grid would be one ahead, as
    # after a kill there (a resume clears it, test_faults.py)
    with frozen_between_saves(process, run_dir, log) as saved:
        if fate == "renamed":
            run_dir.rename(moved)
        else:
            shutil.rmtree(run_dir)

    assert process.wait(timeout=300) == 1
    text = log.read_text()
    line = text.strip().splitlines()[-1]
    assert "Traceback" not in text and not run_dir.exists()  # never recreated under its old name
    assert line.startswith(f"error: {run_dir} was moved or deleted while training: stopped at epoch")
    if fate == "deleted":
        return
    assert read_checkpoint(moved / CHECKPOINT)["epoch"] == saved
    assert f", with {saved} saved. To continue, move it back or set out to its new place" in line
    assert [e for e, _ in list_frames(moved)] == list(range(1, saved + 1))


# ------------------------------------------------------------------------------------------ 3. one line per bad input

@pytest.mark.parametrize("change", [dict(lr_g=-1.0), dict(image_size=24), dict(image_size="32"), dict(seed=10**14),
                                    dict(epochs=0)])
def test_train_validates_fields_assigned_after_the_config_was_built(tmp_path, monkeypatch, change):
    config = tiny(tmp_path)
    for name, value in change.items():
        setattr(config, name, value)
    no_training(monkeypatch)

    with pytest.raises(ConfigError, match=rf"config field '{next(iter(change))}' must be") as error:
        train(config, progress=False)
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()


def test_a_huge_seed_is_one_line_and_the_largest_allowed_one_trains(tmp_path):
    line = one_line_error(cli_of(tiny(tmp_path), "--seed", str(10**14)), code=2)
    assert f"error: config field 'seed' must be in [0, {MAX_SEED}]" in line
    epoch_generators(MAX_SEED, 10**6, torch.device("cpu"), rank=7)  # the largest seed's generators exist
    assert run(tiny(tmp_path, seed=MAX_SEED)).epochs_done == 1


def test_networks_that_cannot_be_allocated_are_refused_before_any_allocation(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match="can't allocate memory"):  # what torch says otherwise (it fails at once)
        torch.empty(10**15, dtype=torch.uint8)
    no_training(monkeypatch)
    for field, value in (("latent_dim", 10**12), ("g_width", 10**6), ("d_width", 10**20)):
        with pytest.raises(ConfigError, match=r"config fields 'latent_dim' .* make networks of .* parameters: training "
                                              r"them needs at least .* GiB and cpu has .* GiB free") as error:
            train(tiny(tmp_path, **{field: value}), progress=False)
        assert "\n" not in str(error.value)
    line = one_line_error(cli_of(tiny(tmp_path, g_width=10**6)))
    assert line.startswith("error: config fields 'latent_dim' (16), 'g_width' (1000000)")


def first(tensors: dict) -> str:
    return next(iter(tensors))


TAMPERED = {   # right keys, wrong values: what a hand-made or foreign-but-similar checkpoint holds
    "generator shape": lambda state: state["generator"].update({first(state["generator"]): torch.zeros(2, 2)}),
    "discriminator dtype": lambda state: state["discriminator"].update(
        {name: tensor.double() for name, tensor in state["discriminator"].items()}),
    "discriminator not a tensor": lambda state: state["discriminator"].update({first(state["discriminator"]): [1.0]}),
    "optimiser moment": lambda state: state["opt_g"]["state"][0].update(exp_avg=torch.zeros(3)),
    "fixed noise": lambda state: state.update(fixed_noise=torch.zeros(4, 16, 1, 1)),
    "rng": lambda state: state["rng"].update(cpu=torch.zeros(3)),
    "epoch": lambda state: state.update(epoch="1"),
    "precision": lambda state: state.update(precision=["bf16", "channels_last"]),
}


@pytest.mark.parametrize("part", [*TAMPERED, "truncated", "payload"])
def test_a_damaged_or_malicious_checkpoint_is_refused_in_one_line(tmp_path, part):
    run(tiny(tmp_path))
    path = tmp_path / "run" / CHECKPOINT
    if part == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif part == "payload":   # refused without running it, by the command line too
        plant_payload(path, tmp_path / "pwned")
        assert one_line_error(cli_of(tiny(tmp_path, epochs=2))).startswith(f"error: refused to load {path}: it holds "
                                                                          "Python objects other than tensors")
    else:
        state = torch.load(path, weights_only=True)
        TAMPERED[part](state)
        torch.save(state, path)

    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))}.*Move it away to start a new run") as error:
        run(tiny(tmp_path, epochs=2))
    assert "\n" not in str(error.value) and not (tmp_path / "pwned").exists()
    assert [e for e, _ in list_frames(tmp_path / "run")] == [1]
    if part == "precision":
        assert "(missing or not what this code writes: precision)" in str(error.value)
    if part in ("generator shape", "discriminator dtype"):
        with pytest.raises(CheckpointError, match=re.escape(str(path))):
            load_models(tmp_path / "run")


@pytest.mark.parametrize("where", ["is", "inside", "holds", "data_dir", "under a file"])
def test_out_may_not_be_the_data_folder_in_it_or_around_it_nor_unwritable(tmp_path, monkeypatch, where):
    faces, blocker = tmp_path / "faces", tmp_path / "file.txt"
    faces.mkdir()
    blocker.write_text("a file, not a folder")
    out = {"is": faces, "inside": faces / "run", "holds": tmp_path, "data_dir": tmp_path / "data",
           "under a file": blocker / "run"}[where]
    no_training(monkeypatch)
    config = tiny(tmp_path, data=str(faces), out=str(out))

    with pytest.raises(ConfigError, match=r"config field 'out'.*(the data folder|is data_dir|cannot write to .*"
                                          "choose a writable folder)") as error:
        train(config, progress=False)
    assert "\n" not in str(error.value) and blocker.read_text() == "a file, not a folder"
    assert not (faces / "samples").exists() and not (faces / "run").exists() and not (tmp_path / "samples").exists()
    if where in ("is", "under a file"):
        assert one_line_error(cli_of(config)).startswith("error: config field 'out'")


class StandInInception(torch.nn.Module):
    """A fixed random conv + global average in place of the 95 MB Inception: 8 features, instantly."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(images.float() / 127.5 - 1)).mean(dim=(2, 3))


def test_a_damaged_fid_statistics_cache_fails_before_the_first_epoch_and_a_good_run_scores(tmp_path, monkeypatch):
    from utils.metrics import dataset_id, reference_cache_file, weights_id

    monkeypatch.setattr(training, "load_inception", lambda weights: StandInInception())
    config = tiny(tmp_path, fid_every=1, fid_samples=32)
    cache = plant_payload(reference_cache_file(config.data_dir, dataset_id(IMAGES), 0, weights_id("")), tmp_path / "pwned")

    steps = []

    class Probe:  # a live plot: told about every few steps trained
        def update(self, history, **kwargs):
            steps.append(history["steps"][-1:])

    with pytest.raises(UserError, match=rf"refused to load {re.escape(str(cache))}.*Delete it: the statistics are "
                                        "computed again") as error:
        run(config, live_plot=Probe())
    assert "\n" not in str(error.value) and not (tmp_path / "pwned").exists()
    torch.save({"mean": torch.zeros(3)}, cache)  # readable, but not statistics
    with pytest.raises(UserError, match="does not hold FID statistics"):
        run(config, live_plot=Probe())
    assert steps == [] and not (tmp_path / "run" / CHECKPOINT).exists()  # refused before the first step

    cache.unlink()
    result = run(config)
    assert result.history["epochs"][0]["fid"] > 0 and cache.is_file()  # computed before epoch 1, cached
