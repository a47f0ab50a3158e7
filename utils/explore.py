"""Looking inside a trained generator: latent walks, nearest real neighbours, the discriminator's favourites.

Everything samples as training does (BatchNorm's batch statistics, see `utils.models.sampling`) from latents drawn
on the CPU from a seed, so the same call gives the same images on every device and leaves the models unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from utils.models import sampling, to_uint8
from utils.visualize import enlarged, image_grid


def latents(count: int, latent_dim: int, seed: int) -> Tensor:
    """`count` latents z ~ N(0, I), shape (count, latent_dim, 1, 1), drawn on the CPU: the same on every device."""
    return torch.randn(count, latent_dim, 1, 1, generator=torch.Generator().manual_seed(seed))


def sample_images(generator: nn.Module, num_samples: int, seed: int = 0, batch_size: int = 256) -> Tensor:
    """`num_samples` generated images as uint8 (N, 3, S, S) on the CPU, rounded like images saved to disk."""
    z = latents(num_samples, generator.latent_dim, seed)
    device = next(generator.parameters()).device
    with sampling(generator):
        return torch.cat([to_uint8(generator(chunk.to(device))).cpu() for chunk in z.split(batch_size)])


def slerp(z0: Tensor, z1: Tensor, t: float) -> Tensor:
    """Spherical interpolation between two batches of latents (N, ...): t=0 gives z0, t=1 gives z1.

    Gaussian latents lie near a sphere of radius sqrt(d), the only shell the generator saw in training; a straight
    line cuts inside it (to 71% of the norm between orthogonal latents), where faces wash out. Here the direction
    moves along the great circle at constant speed and the norm linearly, so every point is a typical latent.
    """
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


def interpolation_frames(generator: nn.Module, num_keyframes: int = 5, steps: int = 16, num_paths: int = 8,
                         nrow: int = 4, seed: int = 0) -> list[np.ndarray]:
    """Frames of `num_paths` latent walks side by side, uint8 (H, W, 3) grids enlarged to at least 512 pixels wide.

    Each walk visits `num_keyframes` random latents and slerps back to the first, `steps` frames per leg, so the
    last of the num_keyframes * steps + 1 frames equals the first and the loop closes. Smooth change means the
    generator learned a continuous face space, not a lookup table. All frames are one batch (they share BatchNorm's
    batch statistics, so nothing flickers).
    """
    if num_keyframes < 2:
        raise ValueError(f"num_keyframes must be >= 2 (a walk needs two latents to move between); got {num_keyframes}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1 frame per leg; got {steps}")
    keyframes = latents(num_keyframes * num_paths, generator.latent_dim, seed).view(num_keyframes, num_paths, -1, 1, 1)
    path = torch.stack([slerp(keyframes[k], keyframes[(k + 1) % num_keyframes], step / steps)
                        for k in range(num_keyframes) for step in range(steps)])  # (frames, paths, latent_dim, 1, 1)
    device = next(generator.parameters()).device
    with sampling(generator):
        images = generator(path.flatten(0, 1).to(device)).float().cpu()
    images = images.view(len(path), num_paths, *images.shape[1:])
    frames = [enlarged(image_grid(frame, nrow).permute(1, 2, 0).numpy()) for frame in images]
    return frames + [frames[0].copy()]


def nearest_neighbours(fakes_uint8: Tensor, reals_uint8: Tensor, k: int = 1,
                       batch_size: int = 4096) -> tuple[Tensor, Tensor]:
    """The `k` real images closest to each fake in pixel space: (indices (M, k), distances (M, k)), closest first.

    The memorisation check: a GAN that copies its training set makes near-duplicates of real faces. Distances are
    root-mean-square differences in 0..255 levels, the same at every image size. The reals are compared
    `batch_size` at a time, so a memory-mapped dataset never has to fit in memory as floats.
    """
    for images, name in ((fakes_uint8, "fakes_uint8"), (reals_uint8, "reals_uint8")):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"{name} must be a uint8 tensor (N, 3, H, W); got {images.dtype} {tuple(images.shape)}")
    if fakes_uint8.shape[1:] != reals_uint8.shape[1:]:
        raise ValueError(f"fakes_uint8 {tuple(fakes_uint8.shape[1:])} and reals_uint8 {tuple(reals_uint8.shape[1:])} "
                         "must have the same image shape: generate at the dataset's image_size")
    if not 1 <= k <= len(reals_uint8):
        raise ValueError(f"k must be in [1, {len(reals_uint8)}] (the number of real images); got {k}")

    def centred(images: Tensor) -> Tensor:  # centred on 0: smaller squares, less float32 rounding in |a|^2 + |b|^2
        return images.to(fakes_uint8.device).flatten(1).float().sub_(127.5)

    queries = centred(fakes_uint8)
    query_norms = queries.square().sum(dim=1, keepdim=True)
    best_d2 = torch.empty(len(queries), 0, device=queries.device)
    best_index = torch.empty(len(queries), 0, dtype=torch.long, device=queries.device)
    for start in range(0, len(reals_uint8), batch_size):
        chunk = centred(reals_uint8[start:start + batch_size])
        d2 = query_norms + chunk.square().sum(dim=1) - 2 * queries @ chunk.T  # |a - b|^2 for all pairs at once
        d2 = torch.cat([best_d2, d2], dim=1)
        best_d2, position = d2.topk(min(k, d2.shape[1]), dim=1, largest=False)
        candidates = torch.arange(start, start + len(chunk), device=queries.device).expand(len(queries), -1)
        best_index = torch.cat([best_index, candidates], dim=1).gather(1, position)

    # the expansion above loses precision for near-identical images: measure the k winners exactly
    best_index = best_index.cpu()
    neighbours = reals_uint8[best_index.flatten()].cpu().view(*best_index.shape, -1).to(torch.float64)
    distances = (neighbours - fakes_uint8.cpu().flatten(1)[:, None].to(torch.float64)).square().mean(dim=2).sqrt()
    distances, order = distances.sort(dim=1)
    return best_index.gather(1, order), distances.float()


def rank_by_discriminator(generator: nn.Module, discriminator: nn.Module, num_samples: int = 512, seed: int = 0,
                          batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Generate `num_samples` images and sort them by D's logit, most "real" first: (uint8 images, scores).

    D scores exactly the returned pixels, scaled to [-1, 1] like the training images; its lowest-scored samples
    show what G still gets wrong.
    """
    images = sample_images(generator, num_samples, seed, batch_size)
    device = next(discriminator.parameters()).device
    with sampling(discriminator):
        scores = torch.cat([discriminator(chunk.to(device).float().div(127.5).sub(1)).float().cpu()
                            for chunk in images.split(batch_size)])
    scores, order = scores.sort(descending=True)
    return images[order], scores
