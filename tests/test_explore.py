import math
import re
import shutil
from pathlib import Path

import nbformat
import numpy as np
import papermill
import pytest
import torch
from PIL import Image

from utils.errors import UserError
from utils.explore import interpolation_frames, nearest_neighbours, rank_by_discriminator, sample_images, slerp
from utils.models import Discriminator, Generator

REPO = Path(__file__).resolve().parents[1]
LATENT = 8


def tiny_generator() -> Generator:
    torch.manual_seed(0)
    return Generator(image_size=16, latent_dim=LATENT, width=4)


def gaussian(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def state(model: torch.nn.Module) -> dict:
    return {name: value.clone() for name, value in model.state_dict().items()}


def assert_unchanged(model: torch.nn.Module, before: dict, was_training: bool) -> None:
    assert model.training == was_training
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed"


def test_slerp_moves_the_norm_linearly_the_angle_at_constant_speed_and_keeps_a_typical_norm():
    z0, z1 = gaussian(5, 128, 1, 1, seed=1), gaussian(5, 128, 1, 1, seed=2)
    torch.testing.assert_close(slerp(z0, z1, 0.0), z0)
    torch.testing.assert_close(slerp(z0, z1, 1.0), z1)
    assert slerp(z0, z1, 0.3).shape == z0.shape
    z0, z1 = gaussian(4, 64, seed=3), 2 * gaussian(4, 64, seed=4)  # different norms
    angle = torch.acos(torch.nn.functional.cosine_similarity(z0, z1))
    for t in (0.25, 0.5, 0.9):
        z = slerp(z0, z1, t)
        torch.testing.assert_close(z.norm(dim=1), (1 - t) * z0.norm(dim=1) + t * z1.norm(dim=1))
        torch.testing.assert_close(torch.acos(torch.nn.functional.cosine_similarity(z0, z)), t * angle)
    torch.testing.assert_close(slerp(z0, 3 * z0, 0.5), 2 * z0)  # parallel latents: finite, a straight line
    z0, z1 = gaussian(256, 128, seed=5), gaussian(256, 128, seed=6)   # halfway: a typical norm, not a line's
    typical = math.sqrt(128)
    assert slerp(z0, z1, 0.5).norm(dim=1).mean() == pytest.approx(typical, rel=0.05)
    assert ((z0 + z1) / 2).norm(dim=1).mean() == pytest.approx(typical / math.sqrt(2), rel=0.05)


def test_interpolation_frames_loop_sharply_enlarged_reproducibly_and_leave_the_generator_unchanged():
    generator = tiny_generator().eval()
    before = state(generator)
    frames = interpolation_frames(generator, num_keyframes=3, steps=4)
    grid = (7 * (2 * (16 + 2) + 2), 7 * (4 * (16 + 2) + 2), 3)  # 8 walks in 2 rows of 4, 2-pixel gaps, 74 px: x7
    assert len(frames) == 3 * 4 + 1 and all(frame.shape == grid and frame.dtype == np.uint8 for frame in frames)
    # enlarged to at least 512 pixels wide by nearest neighbour: every pixel of the grid is a solid 7 x 7 block
    assert all(np.array_equal(big, big[::7, ::7].repeat(7, axis=0).repeat(7, axis=1)) for big in frames)
    assert np.array_equal(frames[0], frames[-1])      # the loop closes
    assert not np.array_equal(frames[0], frames[1]) and not np.array_equal(frames[0], frames[4])   # and moves
    again = interpolation_frames(generator, num_keyframes=3, steps=4)
    assert all(np.array_equal(a, b) for a, b in zip(frames, again))
    assert not np.array_equal(frames[0], interpolation_frames(generator, 3, 4, seed=2)[0])
    assert_unchanged(generator, before, was_training=False)
    with pytest.raises(UserError, match="num_keyframes must be >= 2"):
        interpolation_frames(generator, num_keyframes=1)


def random_images(count: int, size: int = 8) -> torch.Tensor:
    return torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_nearest_neighbours_find_planted_copies_exactly_sorted_and_measured_in_rms_pixel_levels():
    reals = random_images(500)
    planted = torch.tensor([3, 499, 250, 64, 3])
    indices, distances = nearest_neighbours(reals[planted], reals, batch_size=64)  # 8 chunks, the last one short
    assert torch.equal(indices[:, 0], planted) and torch.equal(distances[:, 0], torch.zeros(len(planted)))
    fake = reals[[7]].clone()
    fake[0, 0, 0, 0] = (int(fake[0, 0, 0, 0]) + 96) % 256   # one of 3 * 8 * 8 values off by 96 (or 160)
    indices, distances = nearest_neighbours(fake, reals, k=3, batch_size=100)
    off = abs(int(fake[0, 0, 0, 0]) - int(reals[7, 0, 0, 0]))
    assert indices[0, 0] == 7 and distances[0, 0].item() == pytest.approx(off / math.sqrt(3 * 8 * 8))
    assert torch.all(distances[0, 1:] > distances[0, 0]) and distances[0, 1] <= distances[0, 2]
    exact = (reals.flatten(1).double() - fake.flatten(1).double()).square().mean(dim=1).sqrt()   # brute force
    assert torch.equal(indices[0], exact.argsort()[:3])
    for fakes, k in ((random_images(2, size=16), 1), (random_images(2).float(), 1), (random_images(2), 501)):
        with pytest.raises(UserError, match="same size|k must be in"):
            nearest_neighbours(fakes, reals, k=k)


@pytest.mark.parametrize("spectral_norm", [False, True], ids=["batchnorm", "spectral-norm"])
def test_rank_by_discriminator_sorts_best_first_deterministically(spectral_norm):
    generator = tiny_generator()
    torch.manual_seed(1)
    discriminator = Discriminator(image_size=16, width=4, spectral_norm=spectral_norm)
    before_g, before_d = state(generator), state(discriminator)

    images, scores = rank_by_discriminator(generator, discriminator, num_samples=40, seed=3)
    assert images.shape == (40, 3, 16, 16) and images.dtype == torch.uint8
    assert torch.all(scores[:-1] >= scores[1:]) and scores[0] > scores[-1]
    again_images, again_scores = rank_by_discriminator(generator, discriminator, num_samples=40, seed=3)
    assert torch.equal(images, again_images) and torch.equal(scores, again_scores)
    # the images are a permutation of the seed's samples, and each score is D's verdict on its own image
    assert sorted(map(bytes, images.flatten(1).numpy())) == \
           sorted(map(bytes, sample_images(generator, 40, seed=3).flatten(1).numpy()))
    with torch.no_grad():  # one batch in train mode, as ranked: BatchNorm's batch statistics ignore the order
        rescored = discriminator.train()(images.float() / 127.5 - 1)
    torch.testing.assert_close(rescored, scores, rtol=1e-4, atol=1e-4)
    discriminator.load_state_dict(before_d)  # rescoring above ran a power iteration
    assert_unchanged(generator, before_g, was_training=True)
    assert_unchanged(discriminator, before_d, was_training=True)


def test_notebook_05_runs_with_smoke_test_and_writes_the_walk(tmp_path, monkeypatch):
    """The notebook in a copy of the repository layout: both recipes trained tiny, every cell executed."""
    (tmp_path / "notebooks").mkdir()
    shutil.copy(REPO / "notebooks" / "05_evaluate.ipynb", tmp_path / "notebooks")
    (tmp_path / "utils").symlink_to(REPO / "utils", target_is_directory=True)
    monkeypatch.setenv("SMOKE_TEST", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend: figures become outputs
    monkeypatch.delenv("ANIME_GAN_FID_WEIGHTS", raising=False)  # FID on a CPU takes minutes: its cells must skip

    executed = tmp_path / "executed.ipynb"
    papermill.execute_notebook(str(tmp_path / "notebooks" / "05_evaluate.ipynb"), str(executed),
                               cwd=str(tmp_path / "notebooks"), kernel_name="python3", progress_bar=False)

    outputs = [out for cell in nbformat.read(executed, as_version=4).cells if cell.cell_type == "code"
               for out in cell.outputs]
    text = "\n".join(out.get("text", "") for out in outputs)
    folders = dict(re.findall(r"^(dcgan|improved) run folder: (\S+)$", text, re.M))  # what the notebook says it uses
    assert set(folders) == {"dcgan", "improved"} and folders["dcgan"] != folders["improved"]
    walk = tmp_path / folders["improved"] / "interpolation.gif"
    with Image.open(walk) as gif:
        assert gif.n_frames == 3 * 4 + 1   # the smoke configuration: 3 keyframes, 4 steps between them
    for run in folders.values():
        assert (tmp_path / run / "checkpoint.pt").is_file()
    tables = [out["data"]["text/markdown"] for out in outputs if "text/markdown" in out.get("data", {})]
    header, *rows = tables[-1].splitlines()  # the side-by-side table: each run labelled by what it changed
    assert "what differs" in header and "seed" not in tables[-1]
    assert any("common settings" in row for row in rows) and any("recipe=improved" in row for row in rows)
    assert "FID skipped: no Inception weights offline (set fid_weights)" in text
    assert sum("image/png" in out.get("data", {}) for out in outputs) >= 5  # 2 histories, pairs, best, worst
    assert not (REPO / "notebooks" / "generated").exists()
