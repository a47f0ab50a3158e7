"""The DCGAN generator and discriminator (Radford et al., 2015), for any power-of-two image size.

At 64x64 with the default widths they are exactly the reference networks:

    G: z (N, 128, 1, 1) -> 512x4x4 -> 256x8x8 -> 128x16x16 -> 64x32x32 -> 3x64x64 (Tanh)
    D: image (N, 3, 64, 64) -> 64x32x32 -> 128x16x16 -> 256x8x8 -> 512x4x4 -> 1 logit

    >>> from utils.models import Generator, Discriminator
    >>> generator, discriminator = Generator(image_size=64), Discriminator(image_size=64)
    >>> print_layer_table(generator, torch.randn(1, 128, 1, 1))

D returns a raw score (a logit), not a probability: the loss applies the sigmoid itself
(`binary_cross_entropy_with_logits`), which is numerically stable and safe under mixed precision.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _num_doublings(image_size: int) -> int:
    """How many stride-2 layers turn 4x4 into image_size x image_size (3 for 64)."""
    return int(math.log2(image_size)) - 2


class Generator(nn.Sequential):
    """z (N, latent_dim, 1, 1) -> image (N, 3, image_size, image_size) in [-1, 1]."""

    def __init__(self, image_size: int = 64, latent_dim: int = 128, width: int = 64):
        n = _num_doublings(image_size)
        channels = [width * 2 ** i for i in reversed(range(n))]  # 64px: [512, 256, 128, 64]
        layers: list[nn.Module] = [
            # (N, latent_dim, 1, 1) -> (N, channels[0], 4, 4)
            nn.ConvTranspose2d(latent_dim, channels[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(True),
        ]
        for c_in, c_out in zip(channels, channels[1:]):
            layers += [
                # (N, c_in, s, s) -> (N, c_out, 2s, 2s)
                nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(True),
            ]
        layers += [
            # (N, width, image_size/2, image_size/2) -> (N, 3, image_size, image_size)
            nn.ConvTranspose2d(channels[-1], 3, 4, 2, 1, bias=False),
            nn.Tanh(),
        ]
        super().__init__(*layers)
        self.latent_dim = latent_dim
        self.apply(dcgan_init)


class Discriminator(nn.Sequential):
    """image (N, 3, image_size, image_size) -> one real/fake logit per image, shape (N,).

    `spectral_norm=True` (the improved recipe) wraps every convolution in spectral
    normalisation and drops BatchNorm, which bounds how fast D's output can change.
    """

    def __init__(self, image_size: int = 64, width: int = 64, spectral_norm: bool = False):
        n = _num_doublings(image_size)
        channels = [width * 2 ** i for i in range(n)]  # 64px: [64, 128, 256, 512]
        conv = _spectral_conv if spectral_norm else nn.Conv2d
        layers: list[nn.Module] = [
            # (N, 3, image_size, image_size) -> (N, width, image_size/2, image_size/2); no norm on the input layer
            conv(3, channels[0], 4, 2, 1, bias=spectral_norm),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for c_in, c_out in zip(channels, channels[1:]):
            layers += [
                # (N, c_in, s, s) -> (N, c_out, s/2, s/2)
                conv(c_in, c_out, 4, 2, 1, bias=spectral_norm),
                nn.Identity() if spectral_norm else nn.BatchNorm2d(c_out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers += [
            # (N, channels[-1], 4, 4) -> (N, 1, 1, 1) -> (N,)
            conv(channels[-1], 1, 4, 1, 0, bias=spectral_norm),
            nn.Flatten(0),
        ]
        super().__init__(*layers)
        self.apply(dcgan_init)


def _spectral_conv(*args, **kwargs) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(nn.Conv2d(*args, **kwargs))


def dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights ~ N(0, 0.02), BatchNorm scale ~ N(1, 0.02), shift 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_table(model: nn.Sequential, example_input: torch.Tensor) -> list[tuple[str, tuple[int, ...], int]]:
    """(layer, output shape, parameters) for each layer of `model` on `example_input`."""
    rows = []
    x = example_input
    was_training = model.training
    model.eval()  # leave BatchNorm's running statistics untouched
    with torch.no_grad():
        for index, layer in enumerate(model):
            x = layer(x)
            rows.append((f"{index}: {type(layer).__name__}", tuple(x.shape), count_parameters(layer)))
    model.train(was_training)
    return rows


def print_layer_table(model: nn.Sequential, example_input: torch.Tensor) -> None:
    """Print each layer's output shape and parameter count, then the total."""
    print(f"{'layer':<22}{'output shape':<24}{'parameters':>12}")
    for name, shape, params in layer_table(model, example_input):
        print(f"{name:<22}{str(shape):<24}{params:>12,}")
    print(f"{'total':<46}{count_parameters(model):>12,}")
