"""utils.generate on a real tiny run: faces to files, faces by name, morphs, the explorer, and what they refuse."""

import base64
import io
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from utils.config import TrainConfig
from utils.errors import UserError
from utils.generate import (FaceExplorer, face_latent, face_set_latents, frozen_statistics, generate, grid_face_history,
                            load_faces, main, morph)
from utils.models import Generator, sampling, to_uint8
from utils.run import CHECKPOINT, frame_path, read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

REPO = Path(__file__).resolve().parents[1]
TILE = 18  # 16-pixel faces with 2-pixel gaps


@pytest.fixture
def run_dir(request) -> Path:
    """tests/conftest.py: 16x16, latent 16, 2 epochs, an EMA generator, 64 fixed latents; fp32 (tiny_run) unless a
    test asks for the run trained as on a T4 (tiny_fp16_run)."""
    return request.getfixturevalue(getattr(request, "param", "tiny_run"))


@pytest.fixture(scope="module")
def faces(tiny_run):
    return load_faces(tiny_run, "cpu")


def png(source: Path | bytes | str) -> np.ndarray:
    """The RGB pixels of a PNG file or of PNG bytes (base64 text too: a mime bundle's image/png)."""
    if not isinstance(source, Path):
        source = io.BytesIO(base64.b64decode(source) if isinstance(source, str) else source)
    with Image.open(source) as image:
        return np.asarray(image.convert("RGB"))


def tile(grid: np.ndarray, index: int, nrow: int = 8, scale: int = 1) -> np.ndarray:
    """Face `index` of a grid of 16-pixel faces with 2-pixel gaps, enlarged `scale` times."""
    row, col = divmod(index, nrow)
    return grid[::scale, ::scale][2 + row * TILE:2 + row * TILE + 16, 2 + col * TILE:2 + col * TILE + 16]


def image(faces, face) -> np.ndarray:
    return faces.decode(face_latent(faces, face))[0].permute(1, 2, 0).numpy()


def test_faces_are_named_the_same_files_each_time_and_do_not_depend_on_how_many_are_drawn(faces, tmp_path):
    many = generate(faces, 100, tmp_path / "many")
    assert [p.name for p in many[:2]] == ["seed42_0000.png", "seed42_0001.png"] and many[-1].name == "seed42_0099.png"
    few = generate(faces.run_dir, 2, tmp_path / "few", grid=tmp_path / "grid.png")  # a path: loaded on the way
    assert [p.read_bytes() for p in few] == [p.read_bytes() for p in many[:2]] and png(few[0]).shape == (16, 16, 3)
    assert generate(faces, 2, tmp_path / "few") == few  # the same folder again: its own faces are fine
    assert png(tmp_path / "grid.png").shape == (8 * TILE + 2, 8 * TILE + 2, 3)  # the set's first 64 even for --n 2
    assert np.array_equal(tile(png(tmp_path / "grid.png"), 63), png(many[63]))
    assert np.array_equal(image(faces, "seed42_0080.png"), png(many[80]))  # alone as in a batch of 64
    assert not np.array_equal(png(generate(faces, 1, tmp_path / "other", seed=7)[0]), png(many[0]))


@pytest.mark.parametrize("run_dir", ["tiny_run", "tiny_fp16_run"], indirect=True)
def test_the_run_seeds_first_faces_are_the_sample_grid_of_the_ema_generator(run_dir):
    faces = load_faces(run_dir, "cpu")
    state = read_checkpoint(run_dir / CHECKPOINT)
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    weights = faces.generator.state_dict()
    assert all(torch.equal(weights[k], ema[k]) for k in ema if "running" not in k and "num_batches" not in k)
    assert not all(torch.equal(ema[k], state["generator"][k]) for k in ema if k.endswith("weight"))  # EMA != raw G
    assert torch.equal(face_set_latents(42, 64, 16), state["fixed_noise"])
    grid = png(frame_path(run_dir, 2)).astype(int)
    for index in (0, 9, 63):
        assert np.abs(tile(grid, index) - image(faces, index)).max() <= 1  # the grid rounds (x+1)/2*255 its own way
    assert torch.equal(face_latent(faces, "grid:9"), state["fixed_noise"][9])


def test_frozen_statistics_decode_the_reference_batch_as_training_does_and_leave_the_generator_alone():
    torch.manual_seed(0)
    fresh = Generator(16, 16, 8)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    z = torch.randn(32, 16, 1, 1, generator=torch.Generator().manual_seed(3))
    with sampling(fresh):
        expected = to_uint8(fresh(z))
    frozen = frozen_statistics(fresh, z)
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items()) and not frozen.training
    assert (to_uint8(frozen(z)).int() - expected.int()).abs().max() <= 1
    assert torch.equal(to_uint8(frozen(z[5:6])), to_uint8(frozen(z))[5:6])  # each face alone equals it in the batch


def test_faces_by_name_the_names_refused_and_a_grid_faces_history_cut_from_each_epochs_grid(faces):
    assert torch.equal(face_latent(faces, "some/folder/seed3_0070.png"), face_set_latents(3, 71, 16)[70])
    for bad, words in (("grid:64", "faces 0 to 63"), ("face.png", "seed42_0007.png"), (-1, "faces 0 to 63"),
                       ("seed42_100000.png", "not one this project writes")):
        with pytest.raises(UserError, match=words):
            face_latent(faces, bad)
    history = grid_face_history(faces, "grid:9")
    assert [epoch for epoch, _ in history] == [1, 2] and all(face.shape == (16, 16, 3) for _, face in history)
    assert np.abs(history[-1][1].astype(int) - image(faces, 9)).max() <= 1  # the last grid is this generator's
    assert not np.array_equal(history[0][1], history[1][1])                 # the face changed as training went on
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(grid_face_history(faces, "seed42_0009.png"), history))
    for outside in ("seed42_0064.png", "seed7_0009.png"):   # faces that no grid holds
        with pytest.raises(UserError, match="not a face of the run's grid"):
            grid_face_history(faces, outside)


def test_a_morph_loops_through_the_faces_at_a_readable_size(faces, tmp_path):
    frames = iio.imread(morph(faces, ["seed42_0070.png", "grid:12", 3], tmp_path / "m.gif", steps=4), index=None)
    assert frames.shape == (12, 256, 256, 3)  # 3 faces x 4 steps, each 16 px face enlarged 16x
    assert np.array_equal(frames[0][::16, ::16], image(faces, "seed42_0070.png"))  # each pixel a 16x16 block
    assert np.array_equal(frames[4][::16, ::16], image(faces, 12)) and not np.array_equal(frames[1], frames[0])
    with pytest.raises(UserError, match=r"morph \(--morph\) must be 2 to 4,096 faces of 256 px .*; got 1"):
        morph(faces, ["grid:1"], tmp_path / "one.gif")


def test_the_command_line_writes_faces_in_a_real_process_and_a_morph(run_dir, tmp_path, capsys):
    result = subprocess.run([sys.executable, "-m", "utils.generate", str(run_dir), "--n", "5", "--out",
                             str(tmp_path / "faces"), "--seed", "3", "--size", "32", "--grid", str(tmp_path / "g.png")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "faces").iterdir()) == [f"seed3_000{i}.png" for i in range(5)]
    assert np.array_equal(png(tmp_path / "faces" / "seed3_0004.png")[::2, ::2],  # enlarged with sharp pixels
                          png(generate(run_dir, 5, tmp_path / "here", seed=3)[4]))
    assert png(tmp_path / "g.png").shape == (8 * TILE + 2, 8 * TILE + 2, 3)  # --n 5 --grid: the documented 8x8
    main([str(run_dir), "--morph", "seed3_0004.png", "grid:12", "--steps", "3", "--out", str(tmp_path / "m.gif")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "m.gif")
    assert iio.imread(tmp_path / "m.gif", index=None).shape[:3] == (6, 256, 256)


@pytest.mark.parametrize("case", ["not a run", "no epoch", "other files", "n 0", "smaller"])
def test_main_refuses_with_one_line_and_writes_nothing(run_dir, tmp_path, case, capsys):
    (tmp_path / "fresh").mkdir()
    TrainConfig().save(tmp_path / "fresh" / "config.json")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    out = str(tmp_path / "o")
    args, words = {"not a run": ([str(tmp_path), "--out", out], "is not a run folder with a finished epoch"),
                   "no epoch": ([str(tmp_path / "fresh"), "--out", out], "is not a run folder with a finished epoch"),
                   "other files": ([str(run_dir), "--out", str(tmp_path / "busy")], "holds other files (notes.txt)"),
                   "n 0": ([str(run_dir), "--n", "0", "--out", out], "must be 1 to 100,000 faces"),
                   "smaller": ([str(run_dir), "--size", "8", "--out", out],   # the run's faces are 16 px
                               "size (--size) must be 16 to 2,048 pixels (faces are enlarged with sharp pixels")}[case]
    with pytest.raises(SystemExit) as exit:
        main(args)
    error = capsys.readouterr().err
    assert exit.value.code == 1 and error.startswith("error: ") and words in error
    assert len(error.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists() and sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]


def test_the_explorer_grid_holds_the_pair_their_mix_and_the_seeds_faces_and_its_sliders_redraw_it(faces):
    def cell(grid: np.ndarray, index: int) -> np.ndarray:   # enlarged 10x to at least 512 pixels
        return tile(grid, index, nrow=3, scale=10)

    explorer = FaceExplorer(faces, pair=("grid:3", "seed42_0070.png"))
    directions = explorer.directions.flatten(1)
    torch.testing.assert_close(directions @ directions.T, torch.eye(3))  # orthonormal
    start, end = explorer.render(position=0.0), explorer.render(position=1.0)
    assert start.shape[1] == 10 * (3 * TILE + 2)
    alone = faces.decode(explorer.picked).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(cell(start, 0), alone[0]) and np.array_equal(cell(start, 2), alone[1])
    assert np.array_equal(cell(start, 1), alone[0]) and np.array_equal(cell(end, 1), alone[1])
    other_seed = explorer.render(seed=5, position=1.0)
    assert np.array_equal(cell(other_seed, 1), cell(end, 1))      # the first row stays
    assert not np.array_equal(cell(other_seed, 4), cell(end, 4))  # the set changes
    moved = explorer.render(position=1.0, strengths=(2.0, 0.0, 0.0))
    assert all(not np.array_equal(cell(moved, i), cell(end, i)) for i in range(9))
    output = explorer.output(seed=3, position=0.25, strengths=(1.0, 0.0, -1.0))
    assert "application/vnd.jupyter.widget-view+json" in output
    assert np.array_equal(png(output["image/png"]), explorer.render(3, 0.25, (1.0, 0.0, -1.0)))  # papermill, GitHub
    explorer.controls[3].value = -1.5   # direction 2: the image redrawn in place, as the same settings draw it
    assert np.array_equal(png(explorer.image.value), explorer.render(3, 0.25, (1.0, -1.5, -1.0)))
    explorer.controls[0].value = 7   # the seed
    assert np.array_equal(png(explorer.image.value), explorer.render(7, 0.25, (1.0, -1.5, -1.0)))
