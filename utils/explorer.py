"""Sliders over a trained generator: one grid of faces, redrawn in place as you move them.

    >>> from utils.explorer import FaceExplorer
    >>> explorer = FaceExplorer(faces, pair=("grid:3", "seed42_0070.png"))   # faces: utils.generate.load_faces(...)
    >>> explorer.show()                                   # the sliders (Jupyter, Colab, Kaggle), or a static grid
    >>> grid = explorer.render(seed=3, position=0.5, strengths=(1.5, 0.0, -1.0))   # uint8 (H, W, 3)

The grid's first row holds the two picked faces and, between them, their slerp at `position` (0 = the first, 1 = the
second); the other cells are faces of the set of `seed` (seedS_0000.png, ...), 3x3 faces in all by default. Every
face is moved by the same amounts along a few **random directions** of the latent space (orthonormal, fixed by
`direction_seed`): a Gaussian latent's coordinate along a unit direction is itself N(0, 1), so strengths of -3 to 3
span what the generator saw in training. Random directions rarely map to one clean attribute (hair colour, say); they show how
smoothly the faces change, and together how much of a face a few numbers can move.

Only ipywidgets' core widgets are used (sliders, an Image, a Label), so it works in JupyterLab, Colab and Kaggle.
Where widgets cannot display (papermill, GitHub's notebook viewer, a terminal) the same output carries a static
PNG of the grid at the starting settings, which those show instead.
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
    """A grid of `count` faces (picked pair and their mix first, then the set of `seed`), moved along directions."""

    def __init__(self, faces: Faces, pair: tuple[str | int, str | int] = ("grid:0", "grid:1"), count: int = 9,
                 nrow: int = 3, directions: int = 3, direction_seed: int = 0):
        if count < 4:
            raise ValueError(f"count must be at least 4 faces (the two picked, their mix, one more); got {count}")
        self.faces, self.pair, self.count, self.nrow = faces, pair, count, nrow
        self.picked = face_latents(faces, list(pair))
        self.directions = latent_directions(faces.latent_dim, directions, direction_seed)
        self.seconds = 0.0  # how long the last render took

    def latents(self, seed: int = 0, position: float = 0.5, strengths: tuple[float, ...] = ()) -> Tensor:
        """The grid's latents: picked face, their slerp at `position`, other picked face, then the set of `seed`."""
        mix = slerp(self.picked[:1], self.picked[1:], position)
        z = torch.cat([self.picked[:1], mix, self.picked[1:], face_set_latents(seed, self.count - 3,
                                                                               self.faces.latent_dim)])
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
        """Display the sliders with the grid, starting at these settings (see `output`); outside a notebook there is
        nothing to display it in: use `render`."""
        if in_notebook():
            from IPython.display import display

            display(self.output(seed, position, strengths), raw=True)

    def output(self, seed: int = 0, position: float = 0.5, strengths: tuple[float, ...] | None = None) -> dict:
        """What `show` displays, a mime bundle: the widgets (ipywidgets' view) where a frontend can draw them and,
        in the same output, a PNG of the grid at these settings for those that cannot (papermill's saved notebook,
        GitHub's viewer); the PNG alone when ipywidgets is not installed. The widgets are kept as `self.controls`
        (the sliders by name) and `self.image`."""
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
