"""The guarantees every command shares, each failure caused for real: where a command may write (utils/files.py
`output_file`, `output_folder`), credentials hidden in every text that leaves (utils/urls.py `redact`), inputs
bounded where they enter (utils/generate.py), and files read back checked before use (`read_json`)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.config import TrainConfig
from utils.choose import choose_run
from utils.environment import cached_trial, trial_cache_file, _trial_key
from utils.errors import UserError
from utils.export import export_generator
from utils.compare import compare_runs
from utils.data import load_dataset
from utils.files import CHECKPOINT, CONFIG, HISTORY, CannotWrite, OutputRefused, list_frames, made_here
from utils.generate import generate, load_faces, morph
from utils.gif import make_gif
from utils.run import Run, read_checkpoint, read_history_file
from utils.urls import redact
from utils.visualize import write_png

from test_run import REPO, one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def run_dir(tiny_run, tmp_path) -> Path:
    """A copy of tests/conftest.py's trained run: a test that overwrote it would spoil no other."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def command(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


def refused_in_one_line(result: subprocess.CompletedProcess, words: str, code: int = 1) -> None:
    """`one_line_error`, naming `words`; a refusal of ours (not the parser's, 2) prints nothing else."""
    line = one_line_error(result, code)
    assert words in line and (code == 2 or result.stderr.strip() == line), result.stderr


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


WRITES_INTO_THE_RUN = {   # (module, arguments): RUN is the run folder, OUT a fresh folder beside it
    "grid over checkpoint": ("utils.generate", "RUN", "--n", 2, "--out", "OUT/f", "--grid", "RUN/checkpoint.pt"),
    "morph over checkpoint": ("utils.generate", "RUN", "--morph", "grid:0", "grid:1", "--out", "RUN/checkpoint.pt"),
    "export over checkpoint": ("utils.export", "RUN", "--out", "RUN/checkpoint.pt"),
    "grid over a grid": ("utils.generate", "RUN", "--n", 2, "--out", "OUT/f", "--grid", "RUN/samples/epoch_001.png"),
    "faces into the run": ("utils.generate", "RUN", "--out", "RUN"),
    "faces into samples": ("utils.generate", "RUN", "--out", "RUN/samples"),
    "export over history": ("utils.export", "RUN", "--out", "RUN/samples/../history.json"),
    "grid through a link": ("utils.generate", "RUN", "--out", "OUT/f", "--grid", "OUT/link.png"),
}


@pytest.mark.parametrize("case", WRITES_INTO_THE_RUN)
def test_no_command_writes_over_a_runs_own_files_or_into_samples(run_dir, tmp_path, case):
    (tmp_path / "link.png").symlink_to(run_dir / CHECKPOINT)
    module, *args = WRITES_INTO_THE_RUN[case]
    before = files_of(run_dir)
    result = command(module, *[str(a).replace("RUN", str(run_dir)).replace("OUT", str(tmp_path)) for a in args])
    refused_in_one_line(result, "is ")
    assert "run" in result.stderr and files_of(run_dir) == before and not (tmp_path / "f").exists()


def test_a_file_the_project_did_not_make_is_never_replaced_and_its_own_are(run_dir, tmp_path):
    mine = tmp_path / "holiday.png"
    mine.write_bytes(b"not a grid")
    refused_in_one_line(command("utils.generate", run_dir, "--n", 1, "--out", tmp_path / "f", "--grid", mine),
                        "already exists and was not written by this project")
    refused_in_one_line(command("utils.export", run_dir, "--out", mine), "already exists")
    assert mine.read_bytes() == b"not a grid" and not (tmp_path / "f").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "seed42_0000.png").write_bytes(b"my own face")   # a face's name, not a face of ours
    refused_in_one_line(command("utils.generate", run_dir, "--n", 1, "--out", tmp_path / "kept"),
                        "holds other files (seed42_0000.png)")
    refused_in_one_line(command("utils.generate", run_dir, "--n", 2, "--out", tmp_path / "f",
                                "--grid", tmp_path / "f" / "seed42_0000.png"), "is inside out (--out)")
    assert (tmp_path / "kept" / "seed42_0000.png").read_bytes() == b"my own face" and not (tmp_path / "f").exists()
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / ".seed42_0001.4242.tmp.png").write_bytes(b"half a face")   # what a kill mid-write leaves
    faces = load_faces(run_dir, "cpu")
    for _ in range(2):   # a second call writes over what the first wrote: faces, grid, GIFs, the export
        assert [p.name for p in generate(faces, 2, tmp_path / "faces", grid=tmp_path / "grid.png")] == \
            ["seed42_0000.png", "seed42_0001.png"]
        morph(faces, ["grid:0", "grid:1"], tmp_path / "m.gif", steps=2, size=16)
        make_gif(run_dir)
        make_gif(run_dir, out=tmp_path / "t.gif")
        export_generator(faces, tmp_path / "g.pt")
    assert all(made_here(tmp_path / name) for name in ("grid.png", "m.gif", "t.gif", "g.pt", "faces/seed42_0001.png"))
    with pytest.raises(OutputRefused, match="already exists"):
        make_gif(run_dir, out=mine)


def test_paths_are_guarded_as_written_a_quoted_tilde_and_an_overlong_name_included(run_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(run_dir, tmp_path / "~")   # a folder named ~: open("~/samples/t.gif") writes there
    with pytest.raises(OutputRefused, match="where the run keeps its grid"):
        make_gif(run_dir, out="~/samples/t.gif")
    with pytest.raises(UserError, match="choose a folder of its own"):
        Run.open(TrainConfig(out="~/samples"), {})
    (run_dir / "history.png").write_bytes(b"my own plot")   # one of a run's remade pictures, but not made here
    refused_in_one_line(command("utils.generate", run_dir, "--n", 1, "--out", tmp_path / "f", "--grid",
                                run_dir / "history.png"), "was not written by this project")
    refused_in_one_line(command("utils.gif", run_dir, "--out", tmp_path / ("a" * 300 + ".gif")), "longer than the 255")
    assert (run_dir / "history.png").read_bytes() == b"my own plot"
    assert not list((tmp_path / "~" / "samples").glob("t*"))


def test_train_refuses_a_run_folder_inside_another_runs_samples_or_files(run_dir):
    for out in (run_dir / "samples", run_dir / "samples" / "x", run_dir / CHECKPOINT):
        with pytest.raises(UserError, match="choose a folder of its own"):
            Run.open(TrainConfig(out=str(out)), {})
    assert not (run_dir / "samples" / "x").exists()
    for data_dir in (run_dir, run_dir / "samples"):   # its cache/ and .lock would go into the run
        with pytest.raises(UserError, match="'data_dir' .* is or lies in a run folder"):
            load_dataset(TrainConfig(data_dir=str(data_dir), image_size=16, max_images=64), progress=False)
    (run_dir.parent / "locked" / ".lock").mkdir(parents=True)
    with pytest.raises(UserError, match=r"cannot lock .*locked/\.lock \(Is a directory\)"):
        Run.open(TrainConfig(out=str(run_dir.parent / "locked")), {})
    assert not (run_dir / "cache").exists() and not (run_dir / "samples" / "cache").exists()


def test_moving_an_earlier_run_aside_never_moves_into_a_folder_already_there(tmp_path):
    run_dir = tmp_path / "run"
    write_png(np.zeros((4, 4, 3), np.uint8), run_dir / "samples" / "epoch_001.png")   # a run without its checkpoint
    (run_dir / HISTORY).write_text('{"steps": [], "epochs": []}')
    for number in (1, 3):
        (run_dir / f"earlier-{number}").mkdir()
        (run_dir / f"earlier-{number}" / HISTORY).write_text(f"kept {number}")
    (run_dir / "earlier-\u00b2").mkdir()   # "²".isdigit(), yet int("²") fails
    (run_dir / ("earlier-" + "9" * 247)).mkdir()   # one more would be a name longer than a file system holds
    said = []
    with Run.open(TrainConfig(out=str(run_dir), seed=7), {}, log=said.append):
        pass
    assert f"moved them to {run_dir / 'earlier-4'}/ (nothing deleted)" in said[0]
    assert [(run_dir / f"earlier-{n}" / HISTORY).read_text() for n in (1, 3)] == ["kept 1", "kept 3"]
    assert [e for e, _ in list_frames(run_dir / "earlier-4")] == [1] and (run_dir / "earlier-4" / HISTORY).exists()


SECRET_URLS = ["https://ann:pw-SECRET@host/faces.zip", "https://host/faces.zip?token=SECRET&dl=1",
               "https://host/faces.zip#access_token=SECRET", "https://host/a%20b.zip?X-Amz-Signature=SECRET",
               "https://host/faces.zip?api_key=SECRET#sig=SECRET", "HTTPS://host/faces.zip?to%6Ben=SECRET",
               "https://host/f.zip?auth[token]=SECRET&jwt=SECRET", "https://host/f.zip?token=SEC'SECRET"]


@pytest.mark.parametrize("url", SECRET_URLS)
def test_no_credential_is_stored_in_the_run_or_shown_in_an_error(url, tmp_path):
    config = TrainConfig(data=url)
    config.save(tmp_path / CONFIG)
    assert "SECRET" not in (tmp_path / CONFIG).read_text() and "SECRET" not in json.dumps(config.to_dict(stored=True))
    # http.client quotes the URL's path from the first space on, without the scheme the URL pattern looks for
    quoted = f"URL can't contain control characters. {url.split('host', 1)[1]!r} (found at least ' ')"
    assert "SECRET" not in str(UserError(f"downloading {url} failed ({quoted})"))
    assert "SECRET" not in redact(quoted) and redact("lr_g=0.0002, data=faces/") == "lr_g=0.0002, data=faces/"


def test_every_value_of_a_stored_urls_query_is_hidden_as_a_server_may_read_any_as_a_token():
    stored = TrainConfig(data="https://host/f.zip?dl=1&x=SECRET#y=SECRET").to_dict(stored=True)["data"]
    assert stored == "https://host/f.zip?dl=***&x=***#y=***"


@pytest.mark.parametrize("url", ["https://ann:pw-SECRET@127.0.0.1:9/my faces.zip?token=SECRET",
                                 "http://ann:pw SECRET@127.0.0.1:9/x.zip",   # after a space: the token's end
                                 "http://127.0.0.1:9/x.zip?token=SECRET SECRET", "HTTP://ann:SECRET@127.0.0.1:9/x.zip",
                                 "ftp://ann:SECRET@127.0.0.1:9/x.zip"])   # no http(s): read as a path, shown redacted
def test_a_url_with_a_space_or_a_password_fails_in_one_line_without_the_token(url, tmp_path):
    result = command("utils.train", "--data", url, "--data-dir", tmp_path / "data", "--out", tmp_path / "run",
                     "--image-size", 16, "--epochs", 1, "--device", "cpu", "--amp", "off", "--channels-last", "off")
    assert result.returncode in (1, 2) and "SECRET" not in result.stdout + result.stderr, result.stderr
    assert "Traceback" not in result.stderr and b"SECRET" not in b"".join(files_of(tmp_path).values())


def test_choose_runs_lines_show_no_token(tiny_run, tmp_path):
    root = tmp_path / "generated"
    shutil.copytree(tiny_run, root / "run")
    said = []
    choose_run("", TrainConfig(data="https://host/f.zip#key=SECRET"), root=root, log=said.append)
    assert any("-data=" in line for line in said), said   # the main run's name, made from the URL, is printed
    assert not any("SECRET" in line for line in said)


@pytest.mark.parametrize("args,words", [
    (("--size", 1_000_000), "size (--size) must be 1 to 2,048 pixels"),
    (("--n", 100_000_000_000), "n (--n) must be 1 to 100,000 faces"),
    (("--seed", 2**40), "seed (--seed) must be 0 to"),
    (("--morph", "seed42_999999999999.png", "grid:0"), "not one this project writes"),
    (("--morph", "grid:0", "grid:1", "--steps", 100_000_000), "steps (--steps) must be 1 to 2,048 frames"),
    (("--morph", "grid:0", "grid:1", "--size", 10**6), "size (--size) must be 1 to 2,048 pixels"),
    (("--morph", *["grid:0"] * 4097), "morph (--morph) must be 2 to 4,096 faces of 256 px"),
    (("--device", "bogus"), "device must be auto, cpu, mps or cuda[:N]; got 'bogus'"),
    (("--morph", "grid:\u00b2", "grid:1"), "is neither a generated face's file name"),
    (("--morph", f"seed{'1' * 5000}_0001.png", "grid:1"), "is neither a generated face's file name"),
    (("--n", "1e11"), "invalid int value: '1e11'"),   # by the parser: exit status 2 after its usage line
])
def test_generate_refuses_sizes_counts_and_names_past_their_range_in_one_line(run_dir, tmp_path, args, words):
    out = tmp_path / ("m.gif" if "--morph" in args else "faces")
    refused_in_one_line(command("utils.generate", run_dir, "--out", out, *args), words, code=2 if "1e11" in args else 1)
    assert not out.exists()


NESTED = "[" * 100_000 + "]" * 100_000   # valid JSON, nested past what Python's parser can recurse


@pytest.mark.parametrize("entry", [{"images_per_s": {"fp64 NCHW": 9.0}}, {"images_per_s": {}}, {},
                                   {"images_per_s": {"fp32 NCHW": 0, "fp32 channels_last": 100}}, "fifo", "[]",
                                   pytest.param(NESTED, id="nested")])
def test_a_poisoned_cpu_trial_cache_is_measured_again_with_one_line(entry, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ANIME_GAN_CACHE_DIR", str(tmp_path))
    config = TrainConfig(image_size=16)
    if entry == "fifo":
        os.mkfifo(trial_cache_file())   # opened without O_NONBLOCK, reading it would wait for ever
    else:
        trial_cache_file().write_text(entry if isinstance(entry, str) else json.dumps({_trial_key(config): entry}))
    assert cached_trial(config) is None
    said = capsys.readouterr().out
    assert said.count("\n") == 1 and "measuring again" in said


@pytest.mark.parametrize("history", ['{"epochs": [1, 2]}', "[]", "\xff", "fifo", pytest.param(NESTED, id="nested")])
def test_a_damaged_history_is_read_as_none_saying_why_without_a_wait(history, tmp_path):
    if history == "fifo":
        os.mkfifo(tmp_path / HISTORY)
    else:
        (tmp_path / HISTORY).write_text(history, encoding="latin-1")
    records, problem = read_history_file(tmp_path)
    assert records is None and problem.startswith(str(tmp_path / HISTORY)), problem


def test_a_file_read_back_that_is_not_a_regular_file_is_refused_at_once(tmp_path):
    for name in (CONFIG, CHECKPOINT):
        os.mkfifo(tmp_path / name)   # read, it would wait for a writer for ever
    with pytest.raises(UserError, match="is not a regular file"):
        TrainConfig.load(tmp_path / CONFIG)   # through read_json, as every JSON file read back
    with pytest.raises(UserError, match="is not a regular file, so not a readable checkpoint"):
        read_checkpoint(tmp_path / CHECKPOINT)


def test_a_folder_in_the_way_of_a_file_to_write_is_refused_in_one_line(tmp_path):
    config = TrainConfig(image_size=16, max_images=64, data_dir=str(tmp_path))
    load_dataset(config, progress=False)
    cache = next((tmp_path / "cache").glob("*.npy"))
    cache.unlink()
    cache.mkdir()   # where the cache is rebuilt: os.replace cannot put a file there
    with pytest.raises(CannotWrite, match=r"cannot write .+\.npy \(Is a directory\): choose another name"):
        load_dataset(config, progress=False)


def test_networks_too_big_for_the_memory_are_refused_before_the_cpu_trial_times_them(tmp_path):
    env = {name: value for name, value in os.environ.items() if name != "ANIME_GAN_AMP"}   # amp auto: a CPU trial
    result = subprocess.run([sys.executable, "-m", "utils.train", "--g-width", "100000", "--image-size", "16",
                             "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run")], cwd=REPO,
                            capture_output=True, text=True, timeout=300,
                            env=env | {"PYTHONPATH": str(REPO), "ANIME_GAN_CACHE_DIR": str(tmp_path / "cache")})
    refused_in_one_line(result, "make networks of")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_a_checkpoint_whose_settings_would_fill_the_memory_or_whose_networks_are_not_a_record_is_refused(run_dir):
    state = read_checkpoint(run_dir / CHECKPOINT)
    for damaged in ({"config": state["config"] | {"g_width": 10**9}}, {"networks": "junk"}):
        torch.save(state | damaged, run_dir / CHECKPOINT)   # before generate builds a 16 TB network from it
        refused_in_one_line(command("utils.generate", run_dir, "--n", 1, "--out", run_dir.parent / "f"),
                            "is not a checkpoint of this project" if "networks" in damaged else "make networks of")


def test_notebook_calls_with_values_of_another_type_or_one_folder_are_one_line(run_dir, tmp_path):
    faces = load_faces(run_dir, "cpu")
    for wrong in (dict(n=2.5), dict(n=1, seed=1.5)):
        with pytest.raises(UserError, match=r"must be .+; got 1?\.?\d"):
            generate(faces, out=tmp_path / "f", **wrong)
    assert compare_runs(run_dir) is not None   # one folder, not a list of its letters
