"""Issue 21, caused for real: no file the package reads can run code, every write is atomic and durable, a run folder
survives what a careless hand does to it (damaged JSON, an older checkpoint copied in, a rename while training), and
every bad input is one line. Each test plants the real broken file, runs the real subprocess or makes the real race.
"""

from __future__ import annotations

import ast
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from utils import files, training
from utils.compare import comparison_table, list_runs, read_runs
from utils.config import MAX_SEED, TrainConfig, config_to_argv
from utils.downloads import DownloadError
from utils.errors import ConfigError, UserError
from utils.metrics import FID, load_inception
from utils.run import (CHECKPOINT, CONFIG, HISTORY, CheckpointError, list_frames, read_checkpoint,
                       saved_config)
from utils.run import load_models
from utils.training import epoch_generators, train

from between_saves import frozen_between_saves

REPO = Path(__file__).resolve().parents[1]
IMAGES = torch.randint(0, 256, (128, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
HUB_NAME = "weights-inception-2015-12-05-6726825d.pth"   # where torch hub keeps the downloaded FID weights

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(tmp_path, name="run", **overrides) -> TrainConfig:
    """128 images of 16x16, batch 32: 4 steps per epoch."""
    values = dict(data="synthetic", data_dir=str(tmp_path / "data"), max_images=128, image_size=16, latent_dim=16,
                  g_width=8, d_width=8, batch_size=32, epochs=1, device="cpu", log_every=2, num_samples=16,
                  amp="off", channels_last="off", out=str(tmp_path / name))
    return TrainConfig(**values | overrides)


def run(config: TrainConfig, **kwargs):
    return train(config, progress=False, images=IMAGES, **kwargs)


def cli(config: TrainConfig, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "utils.train", *config_to_argv(config), *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def one_line_error(result: subprocess.CompletedProcess, code: int = 1) -> str:
    """The CLI failed with `code` and said why in one `error:` line, without a traceback; returns that line."""
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def no_training(monkeypatch):
    """Any attempt to decode data (the step before the first epoch) fails the test."""
    monkeypatch.setattr(training, "load_dataset", lambda *a, **k: pytest.fail("training started"))


class Payload:
    """Unpickling this calls open(marker, 'w'): code that runs just by loading the file."""

    def __init__(self, marker: Path):
        self.marker = marker

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

@pytest.mark.parametrize("legacy", [False, True])  # the official weights use torch's old (non-zip) format
def test_fid_weights_holding_a_payload_are_refused_before_training_without_running_it(tmp_path, monkeypatch, legacy):
    weights = plant_payload(tmp_path / "pt_inception-2015-12-05-evil.pth", tmp_path / "pwned", legacy)
    no_training(monkeypatch)

    with pytest.raises(ConfigError, match=rf"refused to load {re.escape(str(weights))}: it holds Python objects other "
                                          r"than tensors .*Set config field 'fid_weights'") as error:
        train(tiny(tmp_path, fid_every=1, fid_weights=str(weights)), progress=False)

    assert "\n" not in str(error.value) and not (tmp_path / "pwned").exists()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content", ["text", "empty", "other tensors", "a checkpoint"])
def test_a_file_that_is_not_the_inception_weights_is_refused_before_training(tmp_path, monkeypatch, content):
    weights = tmp_path / "weights.pth"
    if content == "text":
        weights.write_text("<html>404 Not Found</html>")
    elif content == "empty":
        weights.write_bytes(b"")
    elif content == "other tensors":
        torch.save({"fc.weight": torch.zeros(3, 3)}, weights)
    else:
        run(tiny(tmp_path, "donor"))
        shutil.copy(tmp_path / "donor" / CHECKPOINT, weights)
    no_training(monkeypatch)

    with pytest.raises(ConfigError, match=rf"{re.escape(str(weights))}\W.*Set config field 'fid_weights' to a "
                                          r"pt_inception-2015-12-05-\*\.pth file") as error:
        train(tiny(tmp_path, fid_every=1, fid_weights=str(weights)), progress=False)
    assert "\n" not in str(error.value)


def test_the_cli_refuses_payload_weights_in_one_line(tmp_path):
    weights = plant_payload(tmp_path / "evil.pth", tmp_path / "pwned")

    line = one_line_error(cli(tiny(tmp_path, fid_every=1, fid_weights=str(weights))))

    assert line.startswith(f"error: refused to load {weights}: it holds Python objects other than tensors")
    assert not (tmp_path / "pwned").exists() and list_frames(tmp_path / "run") == []


def test_downloaded_weights_replaced_by_a_payload_are_refused_without_running_it(tmp_path, monkeypatch):
    """The download path: torch hub's cached copy is read as data only too."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = plant_payload(tmp_path / "torch" / "hub" / "checkpoints" / HUB_NAME, tmp_path / "pwned", legacy=True)

    with pytest.raises(DownloadError, match=rf"refused to load {re.escape(str(cached))}.*Delete it to download it "
                                            "again") as error:
        load_inception("")
    assert "\n" not in str(error.value) and not (tmp_path / "pwned").exists()


class _Serve(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_a_download_of_other_bytes_than_the_published_weights_is_refused_and_not_kept(tmp_path, monkeypatch):
    inception = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    payload = plant_payload(tmp_path / "evil.pth", tmp_path / "pwned")
    handler = type("Handler", (_Serve,), {"body": payload.read_bytes()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{HUB_NAME}"
        monkeypatch.setattr(inception, "URL_INCEPTION_V3", url)
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        with pytest.raises(DownloadError, match=rf"could not download the FID Inception weights: {re.escape(url)} did "
                                                r"not send the expected file \(invalid hash value.*nothing was kept"):
            load_inception("")
    finally:
        server.shutdown()
    assert not (tmp_path / "pwned").exists()
    assert list((tmp_path / "torch" / "hub" / "checkpoints").iterdir()) == []


def test_a_cached_fid_statistics_file_holding_a_payload_is_refused_without_running_it(tmp_path):
    cache = plant_payload(tmp_path / "fid-ref.pt", tmp_path / "pwned")
    extractor = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(4))

    with pytest.raises(UserError, match=rf"refused to load {re.escape(str(cache))}.*Delete it: the statistics are "
                                        "computed again"):
        FID(IMAGES.clone(), cache, torch.device("cpu"), feature_extractor=extractor, progress=False)
    torch.save({"mean": torch.zeros(3)}, cache)  # readable, but not statistics
    with pytest.raises(UserError, match="does not hold FID statistics"):
        FID(IMAGES.clone(), cache, torch.device("cpu"), feature_extractor=extractor, progress=False)
    assert not (tmp_path / "pwned").exists()


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


def trained(tmp_path, epochs=1, **overrides) -> Path:
    """A run of `epochs` epochs by the CLI; its folder."""
    result = cli(tiny(tmp_path, epochs=epochs, **overrides))
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / "run"


def test_the_cli_resumes_a_run_whose_config_json_is_empty_from_its_checkpoint(tmp_path):
    """What a kill or a full disk during the old in-place rewrite left; the CLI reads config.json first."""
    run_dir = trained(tmp_path)
    (run_dir / CONFIG).write_text("")

    result = cli(tiny(tmp_path, epochs=2))

    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if "rewritten from" in line]
    assert len(lines) == 1 and f"{run_dir / CONFIG} is not valid JSON" in lines[0]
    assert "continuing after epoch 1" in lines[0]
    assert TrainConfig.load(run_dir / CONFIG).epochs == 2 and read_checkpoint(run_dir / CHECKPOINT)["epoch"] == 2


@pytest.mark.parametrize("damage", ["truncated", "invalid value", "not settings"])
def test_a_run_whose_config_json_is_damaged_resumes_from_its_checkpoint_and_says_so(tmp_path, capsys, damage):
    run(tiny(tmp_path))
    run_dir = tmp_path / "run"
    text = (run_dir / CONFIG).read_text()
    (run_dir / CONFIG).write_text({"truncated": text[:len(text) // 2], "not settings": "[]",
                                   "invalid value": text.replace('"lr_g": 0.0002', '"lr_g": -1')}[damage])
    assert saved_config(run_dir).lr_g == 2e-4          # what the CLI continues with: the checkpoint's settings
    assert list_runs(tmp_path, image_size=16) == [run_dir]
    assert "unreadable" not in comparison_table([run_dir])  # compare, too, reads the settings from the checkpoint
    capsys.readouterr()

    result = run(tiny(tmp_path, epochs=2))

    lines = [line for line in capsys.readouterr().out.splitlines() if "rewritten from" in line]
    assert len(lines) == 1 and str(run_dir / CONFIG) in lines[0] and result.epochs_done == 2
    assert TrainConfig.load(run_dir / CONFIG).lr_g == 2e-4


@pytest.mark.parametrize("damage", ["empty", "truncated", "not a history", "edited"])
def test_a_run_whose_history_json_is_damaged_resumes_from_its_checkpoint_and_says_so(tmp_path, capsys, damage):
    run(tiny(tmp_path))
    path = tmp_path / "run" / HISTORY
    text = path.read_text()
    edited = json.loads(text)
    edited["epochs"][0]["seconds"] = 0.5
    path.write_text({"empty": "", "truncated": text[:100], "not a history": "[1, 2]",
                     "edited": json.dumps(edited)}[damage])
    capsys.readouterr()

    result = run(tiny(tmp_path, epochs=2))

    lines = [line for line in capsys.readouterr().out.splitlines() if "rewritten from" in line]
    assert len(lines) == 1 and str(path) in lines[0]
    assert result.epochs_done == 2 and json.loads(path.read_text()) == read_checkpoint(tmp_path / "run" / CHECKPOINT)[
        "history"]


def test_a_damaged_config_json_without_a_checkpoint_is_one_line_and_a_new_run_moves_it_aside(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / CONFIG).write_text("{")
    (run_dir / HISTORY).write_text("{}")
    assert list_runs(tmp_path) == [run_dir]
    [problem] = read_runs([run_dir])[0].problems
    assert re.match(rf"{re.escape(str(run_dir / CONFIG))} is not valid JSON .*no {CHECKPOINT}", problem)
    assert "(unreadable: see above)" in comparison_table([run_dir])
    (run_dir / HISTORY).unlink()

    result = cli(tiny(tmp_path))  # nothing trained to continue: a new run, the damaged file kept aside

    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{run_dir} held a damaged config.json, but no {CHECKPOINT}: moved them to {run_dir / 'earlier-1'}/" \
        in result.stdout
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
    assert f"moved those to {run_dir / 'earlier-1'}/ (nothing deleted)" in out and "holds epochs 1-1" in out
    aside = run_dir / "earlier-1"
    assert {epoch: frame.read_bytes() for epoch, frame in list_frames(aside)} == later
    assert (aside / HISTORY).read_text() == history
    assert [e for e, _ in list_frames(run_dir)] == [1] and result.epochs_done == 1
    assert json.loads((run_dir / HISTORY).read_text()) == read_checkpoint(run_dir / CHECKPOINT)["history"]


def start_training(config: TrainConfig, log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(log, "ab") as output:
        return subprocess.Popen([sys.executable, "-m", "utils.train", *config_to_argv(config)], cwd=REPO, env=env,
                                stdout=output, stderr=subprocess.STDOUT)


def after_first_epoch(process: subprocess.Popen, run_dir: Path, log: Path) -> None:
    deadline = time.monotonic() + 300
    while not (run_dir / HISTORY).exists():  # written last: epoch 1 is saved
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]   # a hang guard
        time.sleep(0.02)


def test_a_run_folder_renamed_while_training_ends_it_with_one_line_saying_where_its_epochs_are(tmp_path):
    config, log = tiny(tmp_path, epochs=1000), tmp_path / "train.log"
    run_dir, moved = tmp_path / "run", tmp_path / "renamed"
    process = start_training(config, log)
    # renamed between two saves (renamed after an epoch's grid and before its checkpoint, the grid would be one
    # ahead, as after a kill there: a resume clears it, test_faults.py)
    with frozen_between_saves(process, run_dir, log) as saved:
        run_dir.rename(moved)

    assert process.wait(timeout=300) == 1
    text = log.read_text()
    assert "Traceback" not in text
    line = text.strip().splitlines()[-1]
    assert read_checkpoint(moved / CHECKPOINT)["epoch"] == saved
    assert line.startswith(f"error: {run_dir} was moved to {moved} while training: training stopped at epoch")
    assert f"epochs 1-{saved} are in {moved}" in line
    assert not run_dir.exists()  # never recreated under its old name
    assert [e for e, _ in list_frames(moved)] == list(range(1, saved + 1))


def test_a_run_folder_deleted_while_training_ends_it_with_one_line(tmp_path):
    config, log = tiny(tmp_path, epochs=1000), tmp_path / "train.log"
    run_dir = tmp_path / "run"
    process = start_training(config, log)
    after_first_epoch(process, run_dir, log)

    while run_dir.exists():
        shutil.rmtree(run_dir, ignore_errors=True)  # the writer may be adding a file meanwhile

    assert process.wait(timeout=300) == 1
    line = log.read_text().strip().splitlines()[-1]
    assert line.startswith(f"error: {run_dir} was deleted (or moved where this process cannot see it) while training")
    assert "Traceback" not in log.read_text() and not run_dir.exists()


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
    with pytest.raises(ConfigError, match=rf"config field 'seed' must be in \[0, {MAX_SEED}\]; got 100000000000000"):
        TrainConfig(seed=10**14)
    result = cli(tiny(tmp_path), "--seed", str(10**14))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: config field 'seed' must be in [0, {MAX_SEED}]" in result.stderr
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


def test_the_cli_refuses_a_width_that_cannot_be_allocated_in_one_line(tmp_path):
    line = one_line_error(cli(tiny(tmp_path, g_width=10**6)))
    assert line.startswith("error: config fields 'latent_dim' (16), 'g_width' (1000000)")


def tampered(state: dict, part: str) -> None:
    """Right keys, wrong tensors: what a hand-made or foreign-but-similar checkpoint holds."""
    if part == "generator shape":
        name = next(iter(state["generator"]))
        state["generator"][name] = torch.zeros(2, 2)
    elif part == "discriminator dtype":
        name = next(iter(state["discriminator"]))
        state["discriminator"][name] = state["discriminator"][name].double()
    elif part == "discriminator not a tensor":
        state["discriminator"][next(iter(state["discriminator"]))] = [1.0, 2.0]
    elif part == "optimiser moment":
        state["opt_g"]["state"][0]["exp_avg"] = torch.zeros(3)
    elif part == "fixed noise":
        state["fixed_noise"] = torch.zeros(4, 16, 1, 1)
    elif part == "rng":
        state["rng"]["cpu"] = torch.zeros(3)
    elif part == "epoch":
        state["epoch"] = "1"
    elif part == "precision":
        state["precision"] = ["bf16", "channels_last"]


@pytest.mark.parametrize("part", ["generator shape", "discriminator dtype", "discriminator not a tensor",
                                  "optimiser moment", "fixed noise", "rng", "epoch", "precision"])
def test_a_checkpoint_with_the_right_keys_and_wrong_tensors_is_one_line(tmp_path, part):
    run(tiny(tmp_path))
    path = tmp_path / "run" / CHECKPOINT
    state = torch.load(path, weights_only=True)
    tampered(state, part)
    torch.save(state, path)

    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))}.*Move it away to start a new run") as error:
        run(tiny(tmp_path, epochs=2))
    assert "\n" not in str(error.value)
    if part == "precision":
        assert "its precision is not what this code writes" in str(error.value)
    if part in ("generator shape", "discriminator dtype"):
        with pytest.raises(CheckpointError, match=re.escape(str(path))):
            load_models(tmp_path / "run")


@pytest.mark.parametrize("where", ["is", "inside", "holds", "data_dir"])
def test_out_may_not_be_inside_or_hold_the_data_folder(tmp_path, monkeypatch, where):
    faces = tmp_path / "faces"
    faces.mkdir()
    out = {"is": faces, "inside": faces / "run", "holds": tmp_path, "data_dir": tmp_path / "data"}[where]
    no_training(monkeypatch)
    config = tiny(tmp_path, data=str(faces), out=str(out))

    with pytest.raises(ConfigError, match=r"config field 'out' .*(the data folder|is data_dir)") as error:
        train(config, progress=False)
    assert "\n" not in str(error.value)
    assert not (faces / "samples").exists() and not (faces / "run").exists() and not (tmp_path / "samples").exists()
    if where == "is":
        assert one_line_error(cli(config)).startswith(f"error: config field 'out' ({faces}) is the data folder")


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

    with pytest.raises(UserError, match=rf"refused to load {re.escape(str(cache))}") as error:
        run(config, live_plot=Probe())
    assert "\n" not in str(error.value) and not (tmp_path / "pwned").exists()
    assert steps == [] and not (tmp_path / "run" / CHECKPOINT).exists()  # refused before the first step

    cache.unlink()
    result = run(config)
    assert result.history["epochs"][0]["fid"] > 0 and cache.is_file()  # computed before epoch 1, cached
