"""Anime-style faces drawn procedurally, a whole batch at once: the offline default data. Face i depends only on
(seed, i) and is the same at every resolution: each shape is a signed distance (negative inside) in face coordinates,
turned into coverage with a one-pixel anti-aliased edge."""

import functools

import numpy as np
import torch

_HAIR = torch.tensor([
    (0.16, 0.13, 0.18), (0.36, 0.22, 0.15), (0.58, 0.36, 0.20), (0.96, 0.86, 0.52), (0.96, 0.56, 0.25),
    (0.80, 0.16, 0.20), (0.98, 0.62, 0.76), (0.56, 0.36, 0.76), (0.26, 0.40, 0.82), (0.56, 0.80, 0.96),
    (0.36, 0.70, 0.46), (0.86, 0.87, 0.92), (0.22, 0.64, 0.64), (0.76, 0.66, 0.92),
])
_SKIN = torch.tensor([(1.00, 0.91, 0.84), (1.00, 0.88, 0.78), (0.99, 0.84, 0.72), (0.95, 0.78, 0.64),
                      (0.82, 0.62, 0.47)])
_WHITE, _LASH, _LIPS, _BLUSH = (torch.tensor(rgb).view(1, 3, 1, 1) for rgb in
                                 [(1.0, 1.0, 1.0), (0.12, 0.08, 0.1), (0.55, 0.15, 0.18), (1.0, 0.45, 0.5)])
_DRAWS = 64   # uniform numbers per face; `_Canvas.uniform` hands them out in order


def synthetic_faces(count: int, image_size: int, seed: int = 0) -> torch.Tensor:
    """`count` faces, uint8 (count, 3, image_size, image_size); face i is drawn from row i of one seeded stream of
    uniform numbers, so `synthetic_faces(10, s)[:5]` equals `synthetic_faces(5, s)`."""
    uniforms = torch.from_numpy(np.random.default_rng(seed).random((count, _DRAWS), dtype=np.float32))
    images = torch.empty(count, 3, image_size, image_size, dtype=torch.uint8)
    chunk = max(1, 2**17 // image_size**2)   # 512 KB per (chunk, S, S) float plane: stays in cache
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # many small ops: OpenMP's hand-offs between threads slow them down 10-40x
    try:
        for start in range(0, count, chunk):
            canvas = _Canvas(uniforms[start:start + chunk], image_size)
            images[start:start + chunk] = _draw_face(canvas).clamp_(0, 1).mul_(255).round_()
    finally:
        torch.set_num_threads(threads)
    return images


class _Canvas:
    """A batch of images (n, 3, S, S), the face coordinates of their pixels (x (n, 1, S), y (n, S, 1); the face is
    about 1 wide, centred near 0, y down) and the batch's uniform numbers, handed out as per-face parameters."""

    def __init__(self, uniforms: torch.Tensor, size: int):
        self.columns = iter(uniforms.T.reshape(-1, len(uniforms), 1, 1))
        zoom = self.uniform(1.3, 1.5)   # the face fills the frame like the Anime Face Dataset's
        grid = (torch.arange(size, dtype=torch.float32) + 0.5) * (2 / size) - 1
        self.x = (grid.view(1, 1, size) - self.uniform(-0.06, 0.06)) / zoom
        self.y = (grid.view(1, size, 1) - self.uniform(-0.02, 0.08)) / zoom
        self.pixel = (2 / size) / zoom
        angle = self.uniform(0, 2 * torch.pi)   # a flat background, or a gradient to a second colour
        ramp = (torch.cos(angle) * grid.view(1, 1, size) + torch.sin(angle) * grid.view(1, size, 1)) * 0.5 + 0.5
        self.image = self.hue((0.1, 0.5), (0.7, 1.0)).expand(len(uniforms), 3, size, size).clone()
        second = self.hue((0.1, 0.5), (0.6, 1.0)).expand_as(self.image)
        self.image.lerp_(second, (ramp.clamp_(0, 1) * self.chance(0.6)).unsqueeze(1))

    def uniform(self, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * next(self.columns)   # (n, 1, 1)

    def chance(self, p: float) -> torch.Tensor:
        return (next(self.columns) < p).float()

    def pick(self, palette: torch.Tensor) -> torch.Tensor:
        """(n, 3, 1, 1): a palette colour, its brightness jittered by +-8%."""
        colour = palette[(next(self.columns).flatten() * len(palette)).long()].view(-1, 3, 1, 1)
        return (colour * self.uniform(0.92, 1.08).unsqueeze(1)).clamp(0, 1)

    def hue(self, saturation: tuple[float, float], value: tuple[float, float]) -> torch.Tensor:
        """(n, 3, 1, 1): a colour of any hue (HSV to RGB), saturation and value within the given ranges."""
        h, s, v = self.uniform(0, 1), self.uniform(*saturation), self.uniform(*value)
        k = (torch.tensor([5.0, 3.0, 1.0]).view(1, 3, 1) + h * 6) % 6
        return (v - v * s * torch.minimum(k, 4 - k).clamp(0, 1)).unsqueeze(-1)

    def paint(self, shape: torch.Tensor, colour: torch.Tensor, weight: torch.Tensor | float = 1.0) -> None:
        """Paint `colour` (n, 3, 1 or S, 1 or S) where `shape` < 0, times `weight` (per face: 0 skips it)."""
        coverage = (0.5 - shape / self.pixel).clamp_(0, 1) * weight
        self.image.lerp_(colour.expand_as(self.image), coverage.unsqueeze(1))

    def outline(self, shape: torch.Tensor, colour: torch.Tensor) -> None:
        self.paint(shape.abs() - self.pixel * 0.3, colour)   # a line 0.6 pixel wide along the shape's edge


def _ellipse(x: torch.Tensor, y: torch.Tensor, cx, cy, rx, ry) -> torch.Tensor:
    """Approximate signed distance to an ellipse (exact for circles)."""
    d = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
    return d.sqrt_().sub_(1) * torch.as_tensor(rx).minimum(torch.as_tensor(ry))


def _both(*shapes: torch.Tensor) -> torch.Tensor:
    """The intersection of shapes (the largest distance)."""
    return functools.reduce(torch.maximum, shapes)


def _draw_face(c: _Canvas) -> torch.Tensor:
    """Back to front: back hair (short, bob or long, twin tails sometimes), clothes, neck, the face with its pointed
    chin, eyes and mouth, then the bangs of pointed strands with their shadow and a glossy ring sometimes."""
    x, y, ax = c.x, c.y, c.x.abs()
    skin, hair = c.pick(_SKIN), c.pick(_HAIR)
    head_cy, head_r = c.uniform(-0.13, -0.09), c.uniform(0.51, 0.63)
    length = torch.where(c.chance(0.3) > 0, c.uniform(0.15, 0.35), c.uniform(0.45, 1.4))
    ends = torch.remainder(x * 6 + c.uniform(0, 1), 1).sub_(0.5).abs_() * 0.16   # jagged ends of the curtain
    head = _ellipse(x, y, 0, head_cy, head_r, head_r)
    curtain = _both(ax - head_r * c.uniform(0.98, 1.15), head_cy - y, y - head_cy - length + ends)
    c.paint(torch.minimum(head, curtain), hair * 0.78)
    tail_x = head_r + c.uniform(0.04, 0.1)
    c.paint(_ellipse(ax, y, tail_x, head_cy + c.uniform(0.3, 0.45), 0.16, 0.48), hair * 0.9, c.chance(0.2))

    chin_y = c.uniform(0.5, 0.56)
    c.paint(_ellipse(x, y, 0, chin_y + 0.75, 0.8, 0.4), c.hue((0.2, 0.8), (0.3, 0.95)))   # clothes
    c.paint(_both(ax - 0.12, 0.2 - y, y - chin_y - 0.45), skin * 0.82)   # neck
    face = _both(_ellipse(x, y, 0, 0.02, c.uniform(0.44, 0.5), 0.6), ax * 0.84 + (y - chin_y) * 0.54)
    c.paint(face, skin)
    c.outline(face, skin * 0.55)

    eye_y, rx, ry, sep = c.uniform(0.1, 0.16), c.uniform(0.1, 0.125), c.uniform(0.12, 0.16), c.uniform(0.21, 0.25)
    c.paint(_ellipse(ax, y, sep + 0.03, eye_y + ry + 0.06, 0.085, 0.035), _BLUSH, c.chance(0.5) * 0.5)
    ex, ey = torch.where(x < 0, x + sep, x - sep), y - eye_y   # the same for both eyes: highlights on one side
    gaze, iris = c.uniform(-0.02, 0.02), c.hue((0.55, 0.95), (0.65, 1.0))
    eye = _ellipse(ex, ey, 0, 0, rx, ry)
    c.paint(eye, _WHITE)
    shade = ((ey + ry) / (2 * ry)).clamp(0, 1).mul_(0.8).add_(0.4).unsqueeze(1)   # the iris darker at the top
    c.paint(_both(_ellipse(ex, ey, gaze, ry * 0.08, rx * 0.85, ry * 0.9), eye), (iris * shade).clamp_(0, 1))
    c.paint(_ellipse(ex, ey, gaze, ry * 0.1, rx * 0.36, ry * 0.42), iris * 0.2)   # pupil
    c.paint(_ellipse(ex, ey, gaze - rx * 0.32, -ry * 0.32, rx * 0.3, rx * 0.3), _WHITE)
    c.paint(_ellipse(ex, ey, gaze + rx * 0.3, ry * 0.4, rx * 0.14, rx * 0.14), _WHITE)
    c.paint(_both(_ellipse(ex, ey, 0, 0, rx * 1.1, ry * 1.04).abs_() - 0.022, ey + ry * 0.4), _LASH)
    mouth_y, mouth_w = chin_y - c.uniform(0.12, 0.16), c.uniform(0.03, 0.055)
    smile = _both(_ellipse(x, y, 0, mouth_y - mouth_w, mouth_w, mouth_w).abs_() - 0.01, mouth_y - mouth_w * 0.6 - y)
    open_mouth = _both(_ellipse(x, y, 0, mouth_y - 0.01, mouth_w, mouth_w * 0.9), mouth_y - 0.01 - y)
    c.paint(torch.where(c.chance(0.5) > 0, smile, open_mouth), _LIPS)

    bangs_y = eye_y - ry - c.uniform(0.0, 0.06)
    teeth = torch.remainder(x * c.uniform(1.8, 3.5) + c.uniform(0, 1), 1).sub_(0.5).abs_().mul_(2) ** 1.5
    front = _both(head, y - bangs_y + c.uniform(0.06, 0.2) * (1 - teeth) - c.uniform(-0.35, 0.35) * c.chance(0.4) * x)
    c.paint(_both(front - 0.05, face), skin * 0.85)   # the bangs' shadow on the forehead
    c.paint(front, hair)
    c.outline(front, hair * 0.45)
    ring = _ellipse(x, y, 0, head_cy + 0.1, head_r * 0.7, head_r * 0.6).abs_() - 0.015
    c.paint(_both(ring, front, y - head_cy + 0.1), _WHITE, c.chance(0.7) * 0.4)
    return c.image
