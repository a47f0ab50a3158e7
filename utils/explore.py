"""Looking inside a trained generator: latent walks, nearest real neighbours, the discriminator's favourites. All
sample as training does (`utils.models.sampling`) from latents drawn on the CPU: the same images on every device."""

import numpy as np
import torch
from torch import Tensor, nn

from utils.errors import UserError
from utils.models import sampling, to_uint8
from utils.visualize import enlarged, image_grid


def latents(count: int, latent_dim: int, seed: int) -> Tensor:
    """`count` latents z ~ N(0, I), shape (count, latent_dim, 1, 1), drawn on the CPU: the same on every device."""
    return torch.randn(count, latent_dim, 1, 1, generator=torch.Generator().manual_seed(seed))


def decode(generator: nn.Module, z: Tensor, batch_size: int = 256) -> Tensor:
    """Latents -> uint8 images (N, 3, S, S) on the CPU, rounded like images saved to disk, `batch_size` a pass."""
    device = next(generator.parameters()).device
    with torch.no_grad():
        return torch.cat([to_uint8(generator(chunk.to(device))).cpu() for chunk in z.split(batch_size)])


def sample_images(generator: nn.Module, num_samples: int, seed: int = 0) -> Tensor:
    """`num_samples` generated images of the latents of `seed`, as uint8 (N, 3, S, S) on the CPU."""
    with sampling(generator):
        return decode(generator, latents(num_samples, generator.latent_dim, seed))


def slerp(z0: Tensor, z1: Tensor, t: float) -> Tensor:
    """Spherical interpolation between two batches of latents (N, ...): t=0 gives z0, t=1 gives z1. The direction
    moves along the great circle, the norm linearly: every point is a typical latent, where a line would wash out."""
    a, b = z0.flatten(1), z1.flatten(1)
    norm_a, norm_b = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    u, v = a / norm_a, b / norm_b
    omega = torch.acos((u * v).sum(dim=1, keepdim=True).clamp(-1, 1))  # the angle between the two directions
    sin_omega = torch.sin(omega)
    straight = sin_omega < 1e-6  # (almost) the same direction: the arc is a point, avoid dividing by ~0
    safe_sin = torch.where(straight, torch.ones_like(sin_omega), sin_omega)
    w0 = torch.where(straight, 1 - t, torch.sin((1 - t) * omega) / safe_sin)
    w1 = torch.where(straight, t, torch.sin(t * omega) / safe_sin)
    return ((w0 * u + w1 * v) * ((1 - t) * norm_a + t * norm_b)).view_as(z0)


def interpolation_frames(generator: nn.Module, num_keyframes: int = 5, steps: int = 16,
                         seed: int = 0) -> list[np.ndarray]:
    """Frames (uint8 (H, W, 3), 512+ px wide) of 8 walks in 2 rows, each slerping `steps` frames a leg through
    `num_keyframes` random latents and back; in one batch, so BatchNorm's statistics make nothing flicker."""
    if num_keyframes < 2 or steps < 1:
        raise UserError(f"num_keyframes must be >= 2 and steps >= 1 for a walk; got {num_keyframes} and {steps}")
    keyframes = latents(num_keyframes * 8, generator.latent_dim, seed).view(num_keyframes, 8, -1, 1, 1)
    path = torch.stack([slerp(keyframes[k], keyframes[(k + 1) % num_keyframes], step / steps)
                        for k in range(num_keyframes) for step in range(steps)])  # (frames, paths, latent_dim, 1, 1)
    with sampling(generator):
        images = decode(generator, path.flatten(0, 1), batch_size=len(path) * 8).unflatten(0, path.shape[:2])
    frames = [enlarged(image_grid(frame, nrow=4).permute(1, 2, 0).numpy()) for frame in images]
    return frames + [frames[0].copy()]


def nearest_neighbours(fakes_uint8: Tensor, reals_uint8: Tensor, k: int = 1,
                       batch_size: int = 4096) -> tuple[Tensor, Tensor]:
    """The `k` real images closest to each fake (does G copy its training set?): indices and distances (M, k),
    closest first, in root-mean-square 0..255 levels; the reals are read `batch_size` at a time."""
    if {fakes_uint8.dtype, reals_uint8.dtype} != {torch.uint8} or fakes_uint8.shape[1:] != reals_uint8.shape[1:]:
        raise UserError(f"fakes_uint8 and reals_uint8 must be uint8 images (N, 3, H, W) of the same size; got "
                        f"{fakes_uint8.dtype} {tuple(fakes_uint8.shape)} and {reals_uint8.dtype} "
                        f"{tuple(reals_uint8.shape)}: generate at the dataset's image_size")
    if not 1 <= k <= len(reals_uint8):
        raise UserError(f"k must be in [1, {len(reals_uint8)}] (the number of real images); got {k}")
    fakes = fakes_uint8.cpu().flatten(1)
    queries = fakes.float() - 127.5   # centred on 0: smaller squares, less float32 rounding in |a|^2 + |b|^2
    squared = []
    for start in range(0, len(reals_uint8), batch_size):
        chunk = reals_uint8[start:start + batch_size].cpu().flatten(1).float() - 127.5
        squared.append(queries.square().sum(1, keepdim=True) + chunk.square().sum(1) - 2 * queries @ chunk.T)
    candidates = torch.cat(squared, dim=1).topk(k, dim=1, largest=False).indices   # |a - b|^2 for all pairs
    # the expansion above loses precision for near-identical images: measure the k winners exactly
    neighbours = reals_uint8[candidates.flatten()].cpu().view(*candidates.shape, -1).double()
    distances, order = (neighbours - fakes[:, None].double()).square().mean(dim=2).sqrt().sort(dim=1)
    return candidates.gather(1, order), distances.float()


def rank_by_discriminator(generator: nn.Module, discriminator: nn.Module, num_samples: int = 512,
                          seed: int = 0) -> tuple[Tensor, Tensor]:
    """(uint8 images, D's logits) of `num_samples` samples, most "real" first: the last show what G still gets wrong."""
    images = sample_images(generator, num_samples, seed)
    device = next(discriminator.parameters()).device
    with sampling(discriminator):
        scores = torch.cat([discriminator(chunk.to(device).float().div(127.5).sub(1)).float().cpu()
                            for chunk in images.split(256)])
    scores, order = scores.sort(descending=True)
    return images[order], scores
