import pytest
import torch
from torch import nn

from utils.config import TrainConfig
from utils.errors import ConfigError
from utils.models import Discriminator, Generator, check_networks, count_parameters, layer_table, print_layer_table


def convs(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("image_size", [16, 32, 64, 128])
def test_g_maps_noise_to_images_in_tanh_range_and_d_gives_one_logit_per_image_with_or_without_spectral_norm(
        image_size):
    torch.manual_seed(0)
    images = Generator(image_size=image_size, latent_dim=16, width=8)(torch.randn(3, 16, 1, 1))
    assert images.shape == (3, 3, image_size, image_size)
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0  # not a constant image
    for spectral_norm in (False, True):   # spectral norm wraps every convolution and replaces BatchNorm
        discriminator = Discriminator(image_size=image_size, width=8, spectral_norm=spectral_norm)
        logits = discriminator(images)
        assert logits.shape == (3,) and torch.isfinite(logits).all()
        assert all(nn.utils.parametrize.is_parametrized(m, "weight") == spectral_norm for m in convs(discriminator))
        assert any(isinstance(m, nn.BatchNorm2d) for m in discriminator.modules()) != spectral_norm


def test_64px_networks_have_the_reference_dcgan_widths_and_initialisation():
    torch.manual_seed(0)
    generator, discriminator = Generator(image_size=64), Discriminator(image_size=64)

    # G: 128 -> 512 -> 256 -> 128 -> 64 -> 3; D: 3 -> 64 -> 128 -> 256 -> 512 -> 1
    assert [m.out_channels for m in convs(generator)] == [512, 256, 128, 64, 3]
    assert [m.in_channels for m in convs(generator)] == [128, 512, 256, 128, 64]
    assert [m.out_channels for m in convs(discriminator)] == [64, 128, 256, 512, 1]
    assert [m.kernel_size for m in convs(generator) + convs(discriminator)] == [(4, 4)] * 10
    weights = torch.cat([m.weight.flatten() for m in convs(generator) + convs(discriminator)])
    assert abs(weights.mean().item()) < 1e-3 and weights.std().item() == pytest.approx(0.02, rel=0.02)
    norms = [m for m in [*generator.modules(), *discriminator.modules()] if isinstance(m, nn.BatchNorm2d)]
    scales = torch.cat([m.weight for m in norms])
    assert scales.mean().item() == pytest.approx(1.0, abs=0.005) and 0.01 < scales.std().item() < 0.03
    assert all(torch.count_nonzero(m.bias) == 0 for m in norms)


def test_the_layer_table_lists_every_layer_keeps_batchnorm_statistics_and_prints_the_total(capsys):
    torch.manual_seed(0)
    generator = Generator(image_size=32, latent_dim=16, width=8).train()
    before = {k: v.clone() for k, v in generator.state_dict().items()}

    rows = layer_table(generator, torch.randn(4, 16, 1, 1))

    assert len(rows) == len(generator)
    assert rows[0] == ("0: ConvTranspose2d", (4, 32, 4, 4), 16 * 32 * 16)
    assert rows[-1] == (f"{len(generator) - 1}: Tanh", (4, 3, 32, 32), 0)
    assert sum(params for _, _, params in rows) == count_parameters(generator)
    assert generator.training and same_state(before, generator.state_dict())  # running_mean/var, num_batches_tracked
    print_layer_table(generator, torch.randn(1, 16, 1, 1))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + len(generator) + 1 and lines[-1].split() == ["total", f"{count_parameters(generator):,}"]


def test_networks_that_do_not_fit_the_loop_are_named_in_one_line():
    config, cpu = TrainConfig(image_size=16, latent_dim=16), torch.device("cpu")
    generator, discriminator = Generator(16, 16, 8), Discriminator(16, 8)
    check_networks(config, generator, discriminator, cpu)   # the built-in ones fit
    with pytest.raises(ConfigError, match=r"your generator fails on an input of shape \(2, 8, 1, 1\) .*'latent_dim'"):
        check_networks(TrainConfig(image_size=16, latent_dim=8), generator, discriminator, cpu)
    two_scores = nn.Sequential(*list(discriminator)[:-1], nn.Flatten(), nn.Linear(1, 2))   # (N, 2): two scores per image
    with pytest.raises(ConfigError, match=r"turns images of shape \(2, 3, 16, 16\) into \(2, 2\); .* one score"):
        check_networks(config, generator, two_scores, cpu)
