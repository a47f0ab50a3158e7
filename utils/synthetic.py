"""Anime-style faces drawn procedurally, a whole batch at once: the offline default data.

    >>> faces = synthetic_faces(64, image_size=64, seed=0)    # uint8 (64, 3, 64, 64)

Image i depends only on (seed, i), and the same face is drawn at every resolution.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

_HAIR_COLOURS = torch.tensor([
    (0.16, 0.13, 0.18), (0.36, 0.22, 0.15), (0.58, 0.36, 0.20), (0.96, 0.86, 0.52), (0.96, 0.56, 0.25),
    (0.80, 0.16, 0.20), (0.98, 0.62, 0.76), (0.56, 0.36, 0.76), (0.26, 0.40, 0.82), (0.56, 0.80, 0.96),
    (0.36, 0.70, 0.46), (0.86, 0.87, 0.92), (0.22, 0.64, 0.64), (0.76, 0.66, 0.92),
])
_SKIN_COLOURS = torch.tensor([
    (1.00, 0.91, 0.84), (1.00, 0.88, 0.78), (0.99, 0.84, 0.72), (0.95, 0.78, 0.64), (0.82, 0.62, 0.47),
])
_NUM_DRAWS = 96   # uniform numbers per image; the renderer takes them in order


def synthetic_faces(count: int, image_size: int, seed: int = 0) -> torch.Tensor:
    """`count` faces, uint8 (count, 3, image_size, image_size); face i is drawn from row i of one seeded stream of
    uniform numbers, so `synthetic_faces(10, s)[:5]` equals `synthetic_faces(5, s)`."""
    uniforms = torch.from_numpy(np.random.default_rng(seed).random((count, _NUM_DRAWS), dtype=np.float32))
    faces = _face_parameters(uniforms)
    chunk = max(1, 2 ** 17 // image_size ** 2)   # 512 KB per (chunk, S, S) float plane: stays in cache
    images = torch.empty(count, 3, image_size, image_size, dtype=torch.uint8)
    # one thread: rendering is many small ops, and OpenMP's hand-offs between threads slow those down 10-40x
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for start in range(0, count, chunk):
            batch = {name: value[start:start + chunk] for name, value in faces.items()}
            images[start:start + chunk] = _draw_faces(SimpleNamespace(**batch), image_size).mul_(255).round_()
    finally:
        torch.set_num_threads(threads)
    return images


class _Draws:
    """Hands out the columns of a (n, _NUM_DRAWS) matrix of uniform numbers as per-image parameters."""

    def __init__(self, uniforms: torch.Tensor):
        self.uniforms, self.used = uniforms, 0

    def uniform(self, low: float, high: float) -> torch.Tensor:
        """(n, 1, 1), uniform in [low, high)."""
        column = self.uniforms[:, self.used].view(-1, 1, 1)
        self.used += 1
        return low + (high - low) * column

    def chance(self, p: float) -> torch.Tensor:
        """(n, 1, 1, 1): 1.0 with probability p, else 0.0 (to switch a layer's coverage on or off)."""
        return (self.uniform(0, 1) < p).float().unsqueeze(1)

    def pick(self, palette: torch.Tensor) -> torch.Tensor:
        """(n, 3, 1, 1): a palette colour, brightness jittered by +-8%."""
        index = (self.uniform(0, 1).flatten() * len(palette)).long().clamp_(max=len(palette) - 1)
        return (palette[index] * self.uniform(0.92, 1.08).view(-1, 1)).clamp(0, 1).view(-1, 3, 1, 1)

    def hsv(self, s: tuple[float, float], v: tuple[float, float]) -> torch.Tensor:
        """(n, 3, 1, 1): a colour of any hue, with saturation and value in the given ranges."""
        h, s, v = self.uniform(0, 1), self.uniform(*s), self.uniform(*v)
        k = (torch.tensor([5.0, 3.0, 1.0]).view(1, 3, 1) + h * 6) % 6
        return (v - v * s * torch.minimum(k, 4 - k).clamp(0, 1)).unsqueeze(-1)


def _face_parameters(uniforms: torch.Tensor) -> dict[str, torch.Tensor]:
    """What each face looks like: one (n, 1, 1) tensor per knob, colours (n, 3, 1, 1).

    Lengths are in face coordinates: the face is about 1 wide and centred near 0, y points down.
    """
    r = _Draws(uniforms)
    face_w, chin_y, head_r = r.uniform(0.44, 0.5), r.uniform(0.5, 0.56), r.uniform(0.07, 0.13)
    head_r = face_w + head_r   # the hair cap is a little wider than the face
    eye_y, eye_ry = r.uniform(0.1, 0.16), r.uniform(0.12, 0.16)
    short, bob = r.uniform(0, 1) < 0.3, r.uniform(0, 1) < 0.4
    return dict(
        # framing: how far the image zooms in on the face, and a small shift
        zoom=r.uniform(1.3, 1.5), shift_x=r.uniform(-0.06, 0.06), shift_y=r.uniform(-0.02, 0.08),
        skin=r.pick(_SKIN_COLOURS), hair=r.pick(_HAIR_COLOURS), iris=r.hsv((0.55, 0.95), (0.65, 1.0)),
        clothes=r.hsv((0.2, 0.8), (0.3, 0.95)), ribbon=r.hsv((0.5, 0.9), (0.7, 1.0)),
        # background: a flat colour, or a gradient to a second colour along a random direction
        background=r.hsv((0.1, 0.5), (0.7, 1.0)), background_b=r.hsv((0.1, 0.5), (0.6, 1.0)),
        gradient=r.chance(0.6), gradient_angle=r.uniform(0, 2 * torch.pi),
        # face: an ellipse cut into a pointed chin, big eyes, a small mouth of three kinds, blush sometimes
        face_w=face_w, chin_y=chin_y, chin_angle=r.uniform(0.9, 1.1),
        eye_y=eye_y, eye_ry=eye_ry, eye_rx=r.uniform(0.1, 0.125), eye_sep=r.uniform(0.21, 0.25),
        gaze=r.uniform(-0.02, 0.02), blush=r.chance(0.5) * 0.5,
        mouth_y=chin_y - r.uniform(0.12, 0.16), mouth_w=r.uniform(0.03, 0.055), mouth_kind=r.uniform(0, 1),
        # back hair: a cap around the head, a curtain (short, bob or long) with jagged ends, twin tails sometimes
        head_r=head_r, head_cy=r.uniform(-0.13, -0.09), back_w=head_r * r.uniform(0.98, 1.15),
        length=torch.where(short, r.uniform(0.15, 0.35),
                           torch.where(bob, r.uniform(0.45, 0.7), r.uniform(1.0, 1.4))),
        ends_phase=r.uniform(0, 1),
        twin_tails=r.chance(0.2), tail_x=head_r + r.uniform(0.04, 0.1), tail_y=r.uniform(0.2, 0.35),
        tail_rx=r.uniform(0.13, 0.18), tail_ry=r.uniform(0.4, 0.55),
        # front hair: bangs of pointed strands (swept or parted sometimes), side locks and an ahoge sometimes
        bangs_y=eye_y - eye_ry - r.uniform(0.0, 0.06), bangs_depth=r.uniform(0.06, 0.2),
        strands=r.uniform(1.8, 3.5), strands_phase=r.uniform(0, 1), strands_sharp=r.uniform(1.0, 2.0),
        bangs_slope=r.uniform(-0.35, 0.35) * (r.uniform(0, 1) < 0.4),
        parting=r.uniform(0.1, 0.25) * (r.uniform(0, 1) < 0.3),
        locks=r.chance(0.6), lock_end=r.uniform(0.35, 0.8), lock_w=r.uniform(0.05, 0.09),
        ahoge=r.chance(0.3), ahoge_x=r.uniform(-0.15, 0.15), ahoge_r=r.uniform(0.1, 0.15),
        ahoge_bend=torch.where(r.uniform(0, 1) < 0.5, -0.045, 0.045),
        shine=r.chance(0.7) * 0.4,   # the glossy ring across the top of the hair
    )


def _rgb(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1)


def _ellipse(x: torch.Tensor, y: torch.Tensor, cx, cy, rx, ry) -> torch.Tensor:
    """Approximate signed distance to an ellipse (negative inside; exact for circles)."""
    d = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
    return d.sqrt_().sub_(1).mul_(torch.minimum(torch.as_tensor(rx), torch.as_tensor(ry)))


class _Painter:
    """Canvases (n, 3, H, W) and the face coordinates of their pixels: x (n, 1, W), y (n, H, 1).

    A shape is a signed distance d (negative inside) covering a pixel by clamp(0.5 - d / pixel): a one-pixel ramp
    that anti-aliases every edge at any resolution. `window` paints small features on a crop of the same canvas.
    """

    def __init__(self, canvas: torch.Tensor, x: torch.Tensor, y: torch.Tensor, pixel: torch.Tensor):
        self.canvas, self.x, self.y, self.pixel = canvas, x, y, pixel
        self.rows = self.cols = slice(None)

    def window(self, left, right, top, bottom) -> "_Painter":
        """A painter on the pixels of [left, right] x [top, bottom] (face coordinates, any image)."""
        margin = float(self.pixel.max()) * 2
        cols = _span(self.x, left - margin, right + margin)
        rows = _span(self.y, top - margin, bottom + margin)
        window = _Painter(self.canvas[:, :, rows, cols], self.x[:, :, cols], self.y[:, rows, :], self.pixel)
        window.rows, window.cols = rows, cols
        return window

    def crop(self, d: torch.Tensor) -> torch.Tensor:
        """The part of a full-image shape (n, H, W) that lies in this window."""
        return d[:, self.rows, self.cols]

    def cover(self, d: torch.Tensor) -> torch.Tensor:
        """Coverage (n, 1, H, W) of the shape d < 0."""
        return (d / -self.pixel).add_(0.5).clamp_(0, 1).unsqueeze(1)

    def outline(self, d: torch.Tensor, width: float = 0.6) -> torch.Tensor:
        """Coverage of a line `width` pixels wide along the edge of the shape d."""
        return self.cover(torch.abs(d) - self.pixel * (width / 2))

    def paint(self, coverage: torch.Tensor, colour: torch.Tensor) -> None:
        self.canvas.lerp_(colour.expand(len(self.canvas), 3, *colour.shape[2:]), coverage)


def _span(coords: torch.Tensor, low, high) -> slice:
    """The slice of pixels whose coordinate lies in [low, high] in at least one image of the batch."""
    inside = ((coords >= low) & (coords <= high)).flatten(1).any(0).nonzero().flatten()
    return slice(int(inside[0]), int(inside[-1]) + 1) if len(inside) else slice(0, 0)


def _draw_faces(f: SimpleNamespace, size: int) -> torch.Tensor:
    """Render a batch of faces described by `_face_parameters`, float (n, 3, size, size) in [0, 1], back to front.

    The image (-1 to 1) is zoomed in ~1.4x on the face, so the face fills the frame like the Anime Face Dataset's.
    """
    grid = (torch.arange(size, dtype=torch.float32) + 0.5) * (2 / size) - 1
    x, y = (grid.view(1, 1, size) - f.shift_x) / f.zoom, (grid.view(1, size, 1) - f.shift_y) / f.zoom
    ramp = torch.cos(f.gradient_angle) * grid.view(1, 1, size) + torch.sin(f.gradient_angle) * grid.view(1, size, 1)
    canvas = f.background.expand(len(f.zoom), 3, size, size).clone()
    canvas.lerp_(f.background_b.expand_as(canvas), ramp.mul_(0.5).add_(0.5).clamp_(0, 1).unsqueeze(1) * f.gradient)
    p = _Painter(canvas, x, y, pixel=(2 / size) / f.zoom)
    head = _draw_back_hair(p, f)
    # Shoulders, neck, and the face with its pointed chin and an outline.
    skin, ax = f.skin, torch.abs(x)
    w = p.window(-1, 1, f.chin_y + 0.35, 1)
    w.paint(w.cover(_ellipse(w.x, w.y, 0, f.chin_y + 0.75, 0.8, 0.4)), f.clothes)
    p.paint(p.cover(torch.maximum(ax - 0.12, torch.maximum(0.2 - y, y - (f.chin_y + 0.45)))), skin * 0.82)
    chin = ax * torch.sin(f.chin_angle) + (y - f.chin_y) * torch.cos(f.chin_angle)
    face = torch.maximum(_ellipse(x, y, 0, 0.02, f.face_w, 0.6), chin)
    p.paint(p.cover(face), skin)
    p.paint(p.outline(face), skin * 0.55)
    _draw_eyes(p, f)
    _draw_mouth(p.window(-0.1, 0.1, f.chin_y - 0.25, f.chin_y), f)
    _draw_front_hair(p, f, head, face)
    return canvas.clamp_(0, 1)


def _draw_back_hair(p: _Painter, f: SimpleNamespace) -> torch.Tensor:
    """The hair behind the face: the cap, a curtain down to the hair length with jagged ends, and (sometimes) twin
    tails tied with ribbons. Returns the head's shape, which the front hair is cut from."""
    x, y, ax, hair = p.x, p.y, torch.abs(p.x), f.hair
    head = _ellipse(x, y, 0, f.head_cy, f.head_r, f.head_r)
    ends = torch.abs(torch.remainder(x * 6 + f.ends_phase, 1) * 2 - 1) * 0.08
    curtain = torch.maximum(ax - f.back_w, torch.maximum(f.head_cy - y, y - (f.head_cy + f.length) + ends))
    p.paint(p.cover(torch.minimum(head, curtain)), hair * 0.78)
    tails = _ellipse(ax, y, f.tail_x, f.head_cy + f.tail_y + 0.1, f.tail_rx, f.tail_ry)
    p.paint(p.cover(tails) * f.twin_tails, hair * 0.9)
    w = p.window(-1, 1, f.head_cy - 0.13, f.head_cy + 0.03)
    w.paint(w.cover(_ellipse(torch.abs(w.x), w.y, f.tail_x - 0.07, f.head_cy - 0.05, 0.06, 0.08)) * f.twin_tails,
            f.ribbon)
    return head


def _draw_front_hair(p: _Painter, f: SimpleNamespace, head: torch.Tensor, face: torch.Tensor) -> None:
    """The hair in front of the face: the ahoge, side locks, the bangs with their shadow, the "angel ring"."""
    x, y, ax, hair = p.x, p.y, torch.abs(p.x), f.hair
    # Ahoge: a crescent-shaped strand sticking out of the top of the head (its root hides under the cap).
    top = f.head_cy - f.head_r
    w = p.window(f.ahoge_x - f.ahoge_r, f.ahoge_x + f.ahoge_r, top + 0.05 - f.ahoge_r, top + 0.1)
    ahoge = torch.maximum(_ellipse(w.x, w.y, f.ahoge_x, top + 0.05, f.ahoge_r, f.ahoge_r),
                          -_ellipse(w.x, w.y, f.ahoge_x + f.ahoge_bend, top + 0.07, f.ahoge_r, f.ahoge_r))
    w.paint(w.cover(ahoge) * f.ahoge, hair)
    # Side locks framing the cheeks, tapering to a point.
    lock_top = f.eye_y - 0.3
    along = ((y - lock_top) / (f.lock_end - lock_top)).clamp(0, 1)
    locks = torch.maximum(torch.abs(ax - (f.face_w - 0.01 - 0.05 * along)) - f.lock_w * (1 - along) ** 0.7,
                          torch.maximum(y - f.lock_end, lock_top - y))
    p.paint(p.cover(locks) * f.locks, hair * 0.92)
    # Front hair: the cap above the bangs' edge of pointed strands, its shadow on the forehead, an outline.
    teeth = torch.abs(torch.remainder(x * f.strands + f.strands_phase, 1) * 2 - 1) ** f.strands_sharp
    parting = f.parting * (1 - ax / 0.3).clamp(0, 1)
    front = torch.maximum(head, y - (f.bangs_y - f.bangs_depth * (1 - teeth) + f.bangs_slope * x - parting))
    p.paint(p.cover(torch.maximum(front - 0.05, face)), f.skin * 0.85)
    p.paint(p.cover(front), hair)
    p.paint(p.outline(front), hair * 0.45)
    # The glossy "angel ring" highlight across the top of the hair.
    w = p.window(-f.head_r, f.head_r, top, f.head_cy - 0.1)
    ring = _ellipse(w.x, w.y, 0, f.head_cy + 0.1, f.head_r * 0.7, f.head_r * 0.6).abs_() - 0.015
    ring = torch.maximum(ring, torch.maximum(w.crop(front), w.y - f.head_cy + 0.1))
    w.paint(w.cover(ring) * f.shine, _rgb(1, 1, 1))


def _draw_eyes(p: _Painter, f: SimpleNamespace) -> None:
    """Blush (sometimes) and two big eyes: white, iris darker at the top, pupil, two highlights, upper lash."""
    sep, rx, ry, gaze = f.eye_sep, f.eye_rx, f.eye_ry, f.gaze
    w = p.window(-sep - 0.15, sep + 0.15, f.eye_y + ry, f.eye_y + ry + 0.12)
    blush = _ellipse(torch.abs(w.x), w.y, sep + 0.03, f.eye_y + ry + 0.06, 0.085, 0.035)
    w.paint(w.cover(blush) * f.blush, _rgb(1.0, 0.45, 0.5))
    p = p.window(-sep - rx * 1.2, sep + rx * 1.2, f.eye_y - ry * 1.2, f.eye_y + ry * 1.2)
    # Eye-local coordinates, the same for both eyes, so the highlights sit on the same side in both.
    ex, ey = torch.where(p.x < 0, p.x + sep, p.x - sep), p.y - f.eye_y
    eye = _ellipse(ex, ey, 0, 0, rx, ry)
    p.paint(p.cover(eye), _rgb(1, 1, 1))
    shade = (0.4 + 0.8 * ((ey + ry) / (2 * ry)).clamp(0, 1)).unsqueeze(1)
    p.paint(p.cover(torch.maximum(_ellipse(ex, ey, gaze, ry * 0.08, rx * 0.85, ry * 0.9), eye)),
            (f.iris * shade).clamp(0, 1))
    p.paint(p.cover(_ellipse(ex, ey, gaze, ry * 0.1, rx * 0.36, ry * 0.42)), f.iris * 0.2)
    p.paint(p.cover(_ellipse(ex, ey, gaze - rx * 0.32, -ry * 0.32, rx * 0.3, rx * 0.3)), _rgb(1, 1, 1))
    p.paint(p.cover(_ellipse(ex, ey, gaze + rx * 0.3, ry * 0.4, rx * 0.14, rx * 0.14)), _rgb(1, 1, 1))
    lash = torch.maximum(_ellipse(ex, ey, 0, 0, rx * 1.1, ry * 1.04).abs_() - 0.022, ey + ry * 0.4)
    p.paint(p.cover(lash), _rgb(0.12, 0.08, 0.1))


def _draw_mouth(p: _Painter, f: SimpleNamespace) -> None:
    """A small smile, an open mouth or a cat mouth."""
    x, y, my, w = p.x, p.y, f.mouth_y, f.mouth_w
    smile = torch.maximum(_ellipse(x, y, 0, my - w, w, w).abs_() - 0.01, my - w * 0.6 - y)
    open_mouth = torch.maximum(_ellipse(x, y, 0, my - 0.01, w, w * 0.9), my - 0.01 - y)
    cat = torch.maximum(_ellipse(torch.abs(x), y, w * 0.5, my - w * 0.5, w * 0.5, w * 0.5).abs_() - 0.01,
                        my - w * 0.5 - y)
    mouth = torch.where(f.mouth_kind < 0.45, smile, torch.where(f.mouth_kind < 0.8, open_mouth, cat))
    p.paint(p.cover(mouth), _rgb(0.55, 0.15, 0.18))


