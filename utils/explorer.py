"""Sliders over a trained generator: one grid of faces, redrawn in place as you move them.

    >>> explorer = FaceExplorer(faces, pair=("grid:3", "seed42_0070.png"))   # faces: utils.generate.load_faces(...)
    >>> explorer.show()

The first row holds the two picked faces and their slerp at `position`, the other cells the faces of `seed`. Every
face moves by the same amounts along a few random orthonormal latent directions; a latent's coordinate along one is
N(0, 1), so strengths of -3 to 3 span what the generator saw in training.
"""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from utils.explore import slerp
from utils.generate import Faces, face_latents, face_set_latents
from utils.visualize import enlarged, image_grid, in_notebook


def latent_directions(latent_dim: int, count: int, seed: int = 0) -> Tensor:
    """`count` orthonormal random directions of the latent space, (count, latent_dim, 1, 1)."""
    gaussian = torch.randn(latent_dim, count, generator=torch.Generator().manual_seed(seed))
    return torch.linalg.qr(gaussian).Q.T.reshape(count, latent_dim, 1, 1).contiguous()


class FaceExplorer:
    """A 3x3 grid of faces (the picked pair and their mix first, then the faces of `seed`), moved along 3 directions."""

    count, nrow = 9, 3

    def __init__(self, faces: Faces, pair: tuple[str | int, str | int] = ("grid:0", "grid:1")):
        self.faces, self.pair = faces, pair
        self.picked = face_latents(faces, list(pair))
        self.directions = latent_directions(faces.latent_dim, 3)
        self.seconds = 0.0  # how long the last render took

    def latents(self, seed: int = 0, position: float = 0.5, strengths: tuple[float, ...] = ()) -> Tensor:
        """The grid's latents: picked face, their slerp at `position`, other picked face, then the set of `seed`."""
        mix = slerp(self.picked[:1], self.picked[1:], position)
        others = face_set_latents(seed, self.count - 3, self.faces.latent_dim)
        z = torch.cat([self.picked[:1], mix, self.picked[1:], others])
        for strength, direction in zip(strengths, self.directions):
            z = z + strength * direction
        return z

    def render(self, seed: int = 0, position: float = 0.5, strengths: tuple[float, ...] = ()) -> np.ndarray:
        """The grid as a uint8 (H, W, 3) image, enlarged (nearest neighbour) to at least 512 pixels wide."""
        started = time.perf_counter()
        grid = image_grid(self.faces.decode(self.latents(seed, position, strengths)), self.nrow)
        image = enlarged(grid.permute(1, 2, 0).numpy())
        self.seconds = time.perf_counter() - started
        return image

    def show(self, seed: int = 0, position: float = 0.5, strengths: tuple[float, ...] | None = None) -> None:
        """Display the sliders with the grid (see `output`); outside a notebook use `render`."""
        if in_notebook():
            from IPython.display import display

            display(self.output(seed, position, strengths), raw=True)

    def output(self, seed: int = 0, position: float = 0.5, strengths: tuple[float, ...] | None = None) -> dict:
        """What `show` displays: ipywidgets' sliders (`self.controls`) and image (`self.image`) and, in the same
        mime bundle, a PNG of the grid for viewers that cannot draw widgets (papermill, GitHub); the PNG alone
        without ipywidgets."""
        strengths = tuple(strengths or (0.0,) * len(self.directions))
        static = {"image/png": base64.b64encode(_png(self.render(seed, position, strengths))).decode(),
                  "text/plain": f"faces of {self.faces.run_dir}: seed {seed}, {self.pair[0]} -> {self.pair[1]} at "
                                f"{position:g}, strengths {strengths}"}
        try:
            import ipywidgets as widgets
        except ImportError:
            return static
        style, layout = {"description_width": "initial"}, widgets.Layout(width="420px")
        self.controls = {
            "seed": widgets.IntSlider(seed, 0, 999, description="seed of the other faces", style=style, layout=layout),
            "position": widgets.FloatSlider(position, min=0, max=1, step=0.05, style=style, layout=layout,
                                            description=f"{self.pair[0]} -> {self.pair[1]}"),
            **{f"direction {k + 1}": widgets.FloatSlider(value, min=-3, max=3, step=0.1, style=style, layout=layout,
                                                         description=f"random direction {k + 1}")
               for k, value in enumerate(strengths)}}
        self.image = widgets.Image(value=base64.b64decode(static["image/png"]), format="png")
        timing = widgets.Label(f"drawn in {self.seconds * 1000:.0f} ms")

        def redraw(_=None) -> None:
            values = [slider.value for slider in self.controls.values()]
            self.image.value = _png(self.render(values[0], values[1], tuple(values[2:])))
            timing.value = f"redrawn in {self.seconds * 1000:.0f} ms"

        for slider in self.controls.values():
            slider.observe(redraw, names="value")
        bundle = widgets.VBox([*self.controls.values(), timing, self.image])._repr_mimebundle_()
        return {**(bundle[0] if isinstance(bundle, tuple) else bundle), **static}


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)  # the default level takes 10x longer
    return buffer.getvalue()
