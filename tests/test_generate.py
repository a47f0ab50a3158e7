"""utils.generate on a real tiny run: faces to files, faces by name, morphs, and what it refuses."""

import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from utils.config import TrainConfig
from utils.files import OutputRefused
from utils.generate import (FaceError, NotARun, face_latent, face_set_latents, frozen_statistics, generate,
                            grid_face_history,
                            load_faces, main, morph, morph_frames)
from utils.models import sampling, to_uint8
from utils.run import CHECKPOINT, frame_path, read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_dir(request) -> Path:
    """tests/conftest.py: 16x16, 2 epochs, an EMA generator, 64 fixed latents; fp32 (tiny_run) unless a test asks
    for the run trained as on a T4 (tiny_fp16_run)."""
    return request.getfixturevalue(getattr(request, "param", "tiny_run"))


def png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_generate_writes_named_faces_and_the_same_files_on_a_second_call(run_dir, tmp_path):
    first = generate(run_dir, 70, tmp_path / "a", grid=tmp_path / "grid.png")
    assert [p.name for p in first[:2]] == ["seed42_0000.png", "seed42_0001.png"] and first[-1].name == "seed42_0069.png"
    assert png(first[0]).shape == (16, 16, 3)
    assert png(tmp_path / "grid.png").shape == (8 * 18 + 2, 8 * 18 + 2, 3)  # 8x8 faces of 16 px, 2 px gaps
    again = generate(run_dir, 70, tmp_path / "a")  # the same folder: its own faces are fine
    other = generate(run_dir, 70, tmp_path / "b")
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, other)) and again == first
    # another seed is another set
    assert not np.array_equal(png(generate(run_dir, 1, tmp_path / "c", seed=7)[0]), png(first[0]))


def test_a_face_does_not_depend_on_how_many_are_drawn_nor_on_the_batch(run_dir, tmp_path):
    faces = load_faces(run_dir, "cpu")
    many = generate(faces, 100, tmp_path / "many")
    faces.batch_size = 7
    few = generate(faces, 9, tmp_path / "few")
    assert [p.read_bytes() for p in few] == [p.read_bytes() for p in many[:9]]
    alone = faces.decode(face_latent(faces, "seed42_0080.png"))[0].permute(1, 2, 0).numpy()
    assert np.array_equal(alone, png(many[80]))


@pytest.mark.parametrize("run_dir", ["tiny_run", "tiny_fp16_run"], indirect=True)
def test_the_run_seeds_first_faces_are_the_sample_grid_of_the_ema_generator(run_dir, tmp_path):
    faces = load_faces(run_dir, "cpu")
    state = read_checkpoint(run_dir / CHECKPOINT)
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    weights = faces.generator.state_dict()
    assert all(torch.equal(weights[k], ema[k]) for k in ema if "running" not in k and "num_batches" not in k)
    assert not all(torch.equal(ema[k], state["generator"][k]) for k in ema if k.endswith("weight"))  # EMA != raw G
    assert torch.equal(face_set_latents(42, 64, 16), state["fixed_noise"])
    grid = png(frame_path(run_dir, 2)).astype(int)
    decoded = faces.decode(state["fixed_noise"]).permute(0, 2, 3, 1).numpy().astype(int)
    for index in (0, 9, 63):  # tile (row, col) of an 8x8 grid with 2 px gaps
        row, col = divmod(index, 8)
        tile = grid[2 + row * 18:2 + row * 18 + 16, 2 + col * 18:2 + col * 18 + 16]
        assert np.abs(tile - decoded[index]).max() <= 1  # the grid rounds (x+1)/2*255 its own way
    assert torch.equal(face_latent(faces, "grid:9"), state["fixed_noise"][9]) and \
        torch.equal(face_latent(faces, 9), state["fixed_noise"][9])


def test_frozen_statistics_decode_the_reference_batch_as_training_does_and_leave_the_generator_alone(run_dir):
    faces = load_faces(run_dir, "cpu")
    generator = faces.generator  # eval mode; any BatchNorm generator works
    from utils.models import Generator
    torch.manual_seed(0)
    fresh = Generator(16, 16, 8)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    z = torch.randn(32, 16, 1, 1, generator=torch.Generator().manual_seed(3))
    with sampling(fresh):
        expected = to_uint8(fresh(z))
    frozen = frozen_statistics(fresh, z)
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())
    assert (to_uint8(frozen(z)).int() - expected.int()).abs().max() <= 1
    # each face alone equals the face in the batch
    assert torch.equal(to_uint8(frozen(z[5:6])), to_uint8(frozen(z))[5:6])
    assert not generator.training


def test_face_latent_by_file_name_and_refused_names(run_dir):
    faces = load_faces(run_dir, "cpu")
    assert torch.equal(face_latent(faces, "some/folder/seed3_0070.png"), face_set_latents(3, 71, 16)[70])
    for bad, words in (("grid:64", "faces 0 to 63"), ("face.png", "seed42_0007.png"), (-1, "faces 0 to 63")):
        with pytest.raises(FaceError, match=words):
            face_latent(faces, bad)


def test_morph_loops_through_the_faces_at_a_readable_size(run_dir, tmp_path):
    faces = load_faces(run_dir, "cpu")
    out = morph(faces, ["seed42_0070.png", "grid:12", 3], tmp_path / "morph.gif", steps=4)
    frames = iio.imread(out, index=None)
    assert frames.shape[0] == 12 and frames.shape[1] >= 256 and frames.shape[2] >= 256
    first = faces.decode(face_latent(faces, "seed42_0070.png"))[0].permute(1, 2, 0).numpy()
    direct = list(morph_frames(faces, ["seed42_0070.png", "grid:12", 3], steps=4))
    assert np.array_equal(direct[0][::16, ::16], first)  # the loop starts at the first face, each pixel 16x16
    assert np.array_equal(direct[4][::16, ::16], faces.decode(face_latent(faces, 12))[0].permute(1, 2, 0).numpy())
    assert not np.array_equal(direct[1], direct[0])
    with pytest.raises(FaceError, match="at least two faces"):
        morph_frames(faces, ["grid:1"])


def test_refusals_in_the_function(run_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputRefused, match="holds other files \\(notes.txt\\)"):
        generate(run_dir, 3, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing written
    with pytest.raises(FaceError, match="must be 1 to 100,000 faces; got 0"):
        generate(run_dir, 0, tmp_path / "x")
    with pytest.raises(NotARun, match="is not a run folder"):
        load_faces(tmp_path)
    (tmp_path / "fresh").mkdir()
    TrainConfig().save(tmp_path / "fresh" / "config.json")
    with pytest.raises(NotARun, match="no finished epoch"):
        load_faces(tmp_path / "fresh")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "utils.generate", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_cli_writes_faces_in_a_real_process(run_dir, tmp_path):
    result = cli(str(run_dir), "--n", "5", "--out", str(tmp_path / "faces"), "--seed", "3", "--size", "32")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "faces").iterdir()) == [f"seed3_000{i}.png" for i in range(5)]
    assert png(tmp_path / "faces" / "seed3_0004.png").shape == (32, 32, 3)
    assert np.array_equal(png(tmp_path / "faces" / "seed3_0004.png")[::2, ::2],
                          png(generate(run_dir, 5, tmp_path / "here", seed=3)[4]))


def test_cli_refuses_in_a_real_process_with_one_line_and_no_traceback(tmp_path):
    TrainConfig().save(tmp_path / "config.json")
    result = cli(str(tmp_path), "--out", str(tmp_path / "o"))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("error: ") and "no finished epoch" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_main_writes_a_morph(run_dir, tmp_path, capsys):
    main([str(run_dir), "--morph", "seed3_0004.png", "grid:12", "--steps", "3", "--out", str(tmp_path / "m.gif")])
    assert "morph of 2 faces, 6 frames" in capsys.readouterr().out
    assert iio.imread(tmp_path / "m.gif", index=None).shape[:3] == (6, 256, 256)


@pytest.mark.parametrize("case", ["not a run", "no epoch", "other files", "n 0"])
def test_main_refuses_with_one_line(run_dir, tmp_path, case, capsys):
    (tmp_path / "fresh").mkdir()
    TrainConfig().save(tmp_path / "fresh" / "config.json")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    args, words = {"not a run": ([str(tmp_path), "--out", str(tmp_path / "o")], "is not a run folder"),
                   "no epoch": ([str(tmp_path / "fresh"), "--out", str(tmp_path / "o")], "no finished epoch"),
                   "other files": ([str(run_dir), "--out", str(tmp_path / "busy")], "holds other files"),
                   "n 0": ([str(run_dir), "--n", "0", "--out", str(tmp_path / "o")], "must be 1 to 100,000 faces")}[case]
    with pytest.raises(SystemExit) as exit:
        main(args)
    error = capsys.readouterr().err
    assert exit.value.code == 1 and error.startswith("error: ") and words in error
    assert len(error.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists() and sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]


def test_a_grid_face_across_the_epochs_is_cut_from_each_epochs_grid(run_dir):
    faces = load_faces(run_dir, "cpu")
    history = grid_face_history(faces, "grid:9")
    assert [epoch for epoch, _ in history] == [1, 2]
    assert all(image.shape == (16, 16, 3) for _, image in history)
    last = faces.decode(face_latent(faces, 9))[0].permute(1, 2, 0).numpy().astype(int)
    assert np.abs(history[-1][1].astype(int) - last).max() <= 1      # the last grid is this generator's
    assert not np.array_equal(history[0][1], history[1][1])          # the face changed as training went on
    with pytest.raises(FaceError, match="faces 0 to 63"):
        grid_face_history(faces, 64)
