"""DiffAugment (Zhao et al., 2020): with little data D memorises the real images; augmenting all D sees, real and fake,
differentiably (G's gradients flow through) keeps D honest without teaching G to draw augmented faces."""

import torch


def diff_augment(x: torch.Tensor, policy: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply the comma-separated `policy` ("color", "translation", "cutout") to a batch in [-1, 1]."""
    for name in filter(None, policy.split(",")):
        x = {"color": color, "translation": translation, "cutout": cutout}[name](x, generator)
    return x


def color(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random brightness (+-0.5), saturation (x0..2) and contrast (x0.5..1.5) per image."""
    rand = lambda: torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype, generator=generator)
    x = x + (rand() - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (rand() * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (rand() + 0.5) + mean


def translation(x: torch.Tensor, generator: torch.Generator | None = None, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to `ratio` of its size, filling the uncovered border with zeros."""
    n, _, h, w = x.shape
    max_dy, max_dx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-max_dy, max_dy + 1, (n, 1, 1), device=x.device, generator=generator)
    dx = torch.randint(-max_dx, max_dx + 1, (n, 1, 1), device=x.device, generator=generator)
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + dy).clamp(-1, h) + 1  # index into the zero-padded image
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + dx).clamp(-1, w) + 1
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)
    return padded[torch.arange(n, device=x.device).view(n, 1, 1), rows, cols].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, generator: torch.Generator | None = None, ratio: float = 0.5) -> torch.Tensor:
    """Zero a random square of `ratio` x the image size in each image; it may hang over the border, as in the paper."""
    n, _, h, w = x.shape
    size_y, size_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h + (1 - size_y % 2), (n, 1, 1), device=x.device, generator=generator) - size_y // 2
    left = torch.randint(0, w + (1 - size_x % 2), (n, 1, 1), device=x.device, generator=generator) - size_x // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + size_y) & (cols >= left) & (cols < left + size_x)
    return x * (~inside).unsqueeze(1).to(x.dtype)
