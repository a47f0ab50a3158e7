"""utils.explorer on a real tiny run: the grid it draws, the sliders redrawing it, the static fallback."""

import base64
import io
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from utils.explorer import FaceExplorer, latent_directions
from utils.generate import load_faces

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TILE = 18  # 16-pixel faces with 2-pixel gaps


@pytest.fixture(scope="module")
def faces(tiny_run):
    return load_faces(tiny_run, "cpu")  # tests/conftest.py: 16x16, latent 16, 2 epochs


def cell(grid: np.ndarray, index: int, scale: int, nrow: int = 3) -> np.ndarray:
    row, col = divmod(index, nrow)
    small = grid[::scale, ::scale]
    return small[2 + row * TILE:2 + row * TILE + 16, 2 + col * TILE:2 + col * TILE + 16]


def decoded_png(data: bytes | str) -> np.ndarray:
    raw = base64.b64decode(data) if isinstance(data, str) else data
    with Image.open(io.BytesIO(raw)) as image:
        return np.asarray(image.convert("RGB"))


def test_latent_directions_are_orthonormal_and_follow_their_seed():
    d = latent_directions(32, 3, seed=1).flatten(1)
    torch.testing.assert_close(d @ d.T, torch.eye(3))
    assert not torch.equal(d, latent_directions(32, 3, seed=2).flatten(1))


def test_the_grid_holds_the_pair_their_mix_and_the_seeds_faces(faces):
    explorer = FaceExplorer(faces, pair=("grid:3", "seed42_0070.png"))
    start, end = explorer.render(position=0.0), explorer.render(position=1.0)
    scale = start.shape[1] // (3 * TILE + 2)
    assert start.shape[1] >= 512 and scale == 10
    alone = faces.decode(explorer.picked).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(cell(start, 0, scale), alone[0]) and np.array_equal(cell(start, 2, scale), alone[1])
    assert np.array_equal(cell(start, 1, scale), alone[0]) and np.array_equal(cell(end, 1, scale), alone[1])
    other_seed = explorer.render(seed=5, position=1.0)
    assert np.array_equal(cell(other_seed, 1, scale), cell(end, 1, scale))      # the first row stays
    assert not np.array_equal(cell(other_seed, 4, scale), cell(end, 4, scale))  # the set changes
    moved = explorer.render(position=1.0, strengths=(2.0, 0.0, 0.0))
    assert all(not np.array_equal(cell(moved, i, scale), cell(end, i, scale)) for i in range(9))
    assert np.array_equal(explorer.render(seed=5, position=1.0), other_seed)   # the same settings, the same grid


def test_the_sliders_redraw_the_image_in_place(faces):
    explorer = FaceExplorer(faces)
    output = explorer.output(seed=2)
    assert "application/vnd.jupyter.widget-view+json" in output
    first = explorer.image.value
    explorer.controls["direction 2"].value = -1.5
    assert explorer.image.value != first
    assert np.array_equal(decoded_png(explorer.image.value), explorer.render(2, 0.5, (0.0, -1.5, 0.0)))
    explorer.controls["seed"].value = 7
    assert np.array_equal(decoded_png(explorer.image.value), explorer.render(7, 0.5, (0.0, -1.5, 0.0)))


def test_where_widgets_cannot_show_the_output_carries_a_static_grid_of_the_same_settings(faces, monkeypatch):
    explorer = FaceExplorer(faces, pair=(1, 2))
    output = explorer.output(seed=3, position=0.25, strengths=(1.0, 0.0, -1.0))
    expected = explorer.render(3, 0.25, (1.0, 0.0, -1.0))
    assert np.array_equal(decoded_png(output["image/png"]), expected)   # what papermill and GitHub's viewer show
    monkeypatch.setitem(sys.modules, "ipywidgets", None)                 # no ipywidgets: the PNG alone
    static = explorer.output(seed=3, position=0.25, strengths=(1.0, 0.0, -1.0))
    assert set(static) == {"image/png", "text/plain"} and np.array_equal(decoded_png(static["image/png"]), expected)
