"""The DCGAN generator and discriminator (Radford et al., 2015) for any power-of-two image size, and the helpers that
look at networks, built-in or your own. D returns a logit: the loss applies the sigmoid, stable in mixed precision."""

import hashlib
import math
from contextlib import contextmanager

import torch
from torch import nn

from utils.config import TrainConfig
from utils.errors import ConfigError


class Generator(nn.Sequential):
    """z (N, latent_dim, 1, 1) -> image (N, 3, S, S) in [-1, 1]; 64 px: 128 -> 512 -> 256 -> 128 -> 64 -> 3 channels."""

    def __init__(self, image_size: int = 64, latent_dim: int = 128, width: int = 64):
        channels = [width * 2 ** i for i in reversed(range(int(math.log2(image_size)) - 2))]  # 64 px: 512 ... 64
        layers = [nn.ConvTranspose2d(latent_dim, channels[0], 4, 1, 0, bias=False), nn.BatchNorm2d(channels[0]),
                  nn.ReLU(True)]  # z (N, latent_dim, 1, 1) -> (N, channels[0], 4, 4)
        for c_in, c_out in zip(channels, channels[1:]):  # (N, c_in, s, s) -> (N, c_out, 2s, 2s)
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(channels[-1], 3, 4, 2, 1, bias=False), nn.Tanh()]  # -> (N, 3, S, S)
        super().__init__(*layers)
        self.latent_dim = latent_dim
        self.apply(dcgan_init)


class Discriminator(nn.Sequential):
    """image (N, 3, S, S) -> one real/fake logit per image, (N,). `spectral_norm=True` (the improved recipe) wraps
    every convolution in spectral normalisation and drops BatchNorm, which bounds how fast D's output can change."""

    def __init__(self, image_size: int = 64, width: int = 64, spectral_norm: bool = False):
        channels = [width * 2 ** i for i in range(int(math.log2(image_size)) - 2)]  # 64 px: 64 ... 512

        def conv(c_in: int, c_out: int, stride: int, padding: int) -> nn.Module:
            layer = nn.Conv2d(c_in, c_out, 4, stride, padding, bias=spectral_norm)
            return nn.utils.parametrizations.spectral_norm(layer) if spectral_norm else layer
        layers = [conv(3, channels[0], 2, 1), nn.LeakyReLU(0.2, inplace=True)]  # -> (N, channels[0], S/2, S/2), no norm
        for c_in, c_out in zip(channels, channels[1:]):  # (N, c_in, s, s) -> (N, c_out, s/2, s/2)
            norm = nn.Identity() if spectral_norm else nn.BatchNorm2d(c_out)
            layers += [conv(c_in, c_out, 2, 1), norm, nn.LeakyReLU(0.2, inplace=True)]
        layers += [conv(channels[-1], 1, 1, 0), nn.Flatten(0)]  # (N, channels[-1], 4, 4) -> (N, 1, 1, 1) -> (N,)
        super().__init__(*layers)
        self.apply(dcgan_init)


def dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights ~ N(0, 0.02), BatchNorm scale ~ N(1, 0.02), shifts and biases 0."""
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
    """(layer, output shape, parameters) for each layer of `model` on `example_input`; `model` is left unchanged."""
    rows, x = [], example_input
    with sampling(model):
        for index, layer in enumerate(model):
            x = layer(x)
            rows.append((f"{index}: {type(layer).__name__}", tuple(x.shape), count_parameters(layer)))
    return rows


def print_layer_table(model: nn.Sequential, example_input: torch.Tensor) -> None:
    """Print each layer's output shape and parameter count, then the total."""
    print(f"{'layer':<22}{'output shape':<24}{'parameters':>12}")
    for name, shape, params in layer_table(model, example_input):
        print(f"{name:<22}{str(shape):<24}{params:>12,}")
    print(f"{'total':<46}{count_parameters(model):>12,}")


@contextmanager
def sampling(*models: nn.Module):
    """Run `models` as training does (train mode: BatchNorm on the batch, like the grids and FID), under no_grad,
    restoring their mode and buffers (running statistics, spectral norm's vectors) on exit: looking changes nothing."""
    saved = [(model, model.training, {name: b.clone() for name, b in model.named_buffers()}) for model in models]
    for model in models:
        model.train()
    try:
        with torch.no_grad():
            yield
    finally:
        for model, was_training, buffers in saved:
            model.train(was_training)
            model.load_state_dict(buffers, strict=False)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> uint8 [0, 255], rounded like an image saved to disk."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def describe_network(model: nn.Module) -> str:
    """`ClassName (N parameters, #hash)`: the hash covers the layers and every weight's shape, not the values."""
    layout = repr(model) + "".join(f"{name}{tuple(t.shape)}" for name, t in model.state_dict().items())
    digest = hashlib.sha1(layout.encode()).hexdigest()[:6]
    return f"{type(model).__name__} ({count_parameters(model):,} parameters, #{digest})"


def check_networks(config: TrainConfig, generator: nn.Module, discriminator: nn.Module, device: torch.device) -> None:
    """Check that the networks, built-in or your own, fit the loop: z (N, latent_dim, 1, 1) -> (N, 3, S, S) -> (N,)."""
    z_shape, image_shape = (2, config.latent_dim, 1, 1), (2, 3, config.image_size, config.image_size)
    shapes = {}
    with sampling(generator, discriminator):
        for role, model, shape in (("generator", generator, z_shape), ("discriminator", discriminator, image_shape)):
            try:
                shapes[role] = tuple(model(torch.zeros(shape, device=device)).shape)
            except Exception as error:
                raise ConfigError(f"your {role} fails on an input of shape {shape} (config fields 'latent_dim' and "
                                  f"'image_size'): {type(error).__name__}: {error}") from None
    if shapes["generator"] != image_shape:
        raise ConfigError(f"your generator turns z of shape {z_shape} into {shapes['generator']}; training needs "
                          f"{image_shape} (config field 'image_size' is {config.image_size})")
    if math.prod(shapes["discriminator"]) != 2:
        raise ConfigError(f"your discriminator turns images of shape {image_shape} into {shapes['discriminator']}; "
                          "training needs one score per image: shape (2,) or (2, 1)")


def check_network_size(config: TrainConfig, device: torch.device) -> None:
    """Refuse built-in networks whose weights, gradients and Adam moments (16 bytes a parameter) exceed free memory."""
    try:  # on "meta", which allocates nothing; D without spectral norm, whose power iterations crawl there
        with torch.device("meta"):
            parameters = (count_parameters(Generator(config.image_size, config.latent_dim, config.g_width))
                          + count_parameters(Discriminator(config.image_size, config.d_width)))
    except (RuntimeError, TypeError, OverflowError):  # sizes beyond 64 bits
        parameters = math.inf
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:  # RAM free for new allocations: Linux's MemAvailable (page cache counted); elsewhere no limit is known
        try:
            with open("/proc/meminfo") as meminfo:
                free = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
        except (OSError, StopIteration):
            free = 1 << 62
    if 16 * parameters > free:
        raise ConfigError(f"config fields 'latent_dim' ({config.latent_dim}), 'g_width' ({config.g_width}) and "
                          f"'d_width' ({config.d_width}) make networks of {parameters:,} parameters: training them "
                          f"needs at least {16 * parameters / 2**30:,.1f} GiB and {device} has {free / 2**30:,.1f} "
                          "GiB free. Use smaller values (the DCGAN reference: latent_dim 100-128, widths 64)")
