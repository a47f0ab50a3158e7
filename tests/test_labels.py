"""Label smoothing and noisy labels: D's BCE targets change when (and only when) the fields are set."""

from pathlib import Path

import pytest
import torch

from utils import step as training_step
from utils.config import TrainConfig
from utils.errors import ConfigError
from utils.models import Discriminator, Generator
from utils.run import default_run_dir
from utils.step import TrainingStep, discriminator_loss
from utils.training import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

IMAGES = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def targets(monkeypatch) -> list[torch.Tensor]:
    """The targets of every BCE computed from here on (in a step: D's real, D's fake, G's), recorded."""
    seen, bce = [], training_step.F.binary_cross_entropy_with_logits

    def recording(logits, targets, *args, **kwargs):
        seen.append(targets.detach().clone())
        return bce(logits, targets, *args, **kwargs)

    monkeypatch.setattr(training_step.F, "binary_cross_entropy_with_logits", recording)
    return seen


def one_step(**labels) -> None:
    torch.manual_seed(0)
    generator, discriminator = Generator(16, 16, 8), Discriminator(16, 8)
    step = TrainingStep(generator, discriminator, torch.optim.Adam(generator.parameters()),
                        torch.optim.Adam(discriminator.parameters()), **labels)
    step(torch.rand(256, 3, 16, 16) * 2 - 1, torch.randn(256, 16, 1, 1), torch.Generator().manual_seed(1))


@pytest.mark.parametrize("labels, real, fake", [({}, 1.0, 0.0), ({"real_label": 0.9, "fake_label": 0.1}, 0.9, 0.1)])
def test_d_targets_are_the_labels_set_and_gs_stay_one(targets, labels, real, fake):
    one_step(**labels)
    d_real, d_fake, g = targets
    assert torch.equal(d_real, torch.full((256,), real)) and torch.equal(d_fake, torch.full((256,), fake))
    assert torch.equal(g, torch.ones(256))  # G still wants D to say "real"


def test_label_flip_swaps_about_that_share_of_the_targets(targets):
    one_step(real_label=0.9, label_flip=0.2)
    real, fake, _ = targets
    flipped_real, flipped_fake = (real == 0).float().mean().item(), (fake != 0).float().mean().item()
    assert 0.12 < flipped_real < 0.28 and 0.12 < flipped_fake < 0.28  # 256 tosses each at p = 0.2
    assert torch.allclose(real[real != 0], torch.tensor(0.9)) and torch.allclose(fake[fake != 0], torch.tensor(0.9))


def test_flips_come_from_the_generator_given_none_are_drawn_when_off_and_targets_stay_fp32(targets):
    half = torch.zeros(4, dtype=torch.bfloat16)
    discriminator_loss(half, half, "bce", (0.9, 0.1, 0.0))
    assert [t.dtype for t in targets] == [torch.float32] * 2   # 0.9 in bf16 is 0.8984
    assert torch.equal(targets[0], torch.full((4,), 0.9)) and torch.equal(targets[1], torch.full((4,), 0.1))
    logits = torch.zeros(1000)
    for _ in range(2):
        discriminator_loss(logits, logits, "bce", (1.0, 0.0, 0.3), gen=torch.Generator().manual_seed(5))
    assert torch.equal(targets[2], targets[4]) and torch.equal(targets[3], targets[5])
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    discriminator_loss(logits, logits, "bce", (0.9, 0.0, 0.0), gen=gen)
    assert torch.equal(gen.get_state(), state)


def test_the_fields_are_refused_for_the_hinge_loss():   # their ranges: tests/test_config.py
    with pytest.raises(ConfigError, match="'real_label' is 0.9 but loss is 'hinge'"):
        TrainConfig(loss="hinge", real_label=0.9)
    with pytest.raises(ConfigError, match="'label_flip' is 0.05 but loss is 'hinge'"):
        TrainConfig(recipe="improved", label_flip=0.05)
    TrainConfig(recipe="improved")  # the defaults are fine with the hinge loss


def test_the_labels_name_the_run_and_cannot_change_when_it_continues(tmp_path):
    assert default_run_dir(TrainConfig(real_label=0.9, label_flip=0.05)) == \
        Path("generated/dcgan-64px-real_label=0.9-label_flip=0.05")
    config = dict(image_size=16, latent_dim=16, g_width=8, d_width=8, batch_size=32, epochs=1, device="cpu",
                  amp="off", log_every=1, num_samples=4, out=str(tmp_path / "run"), real_label=0.9)
    smoothed = train(TrainConfig(**config), progress=False, images=IMAGES)
    with pytest.raises(ConfigError, match="real_label: 0.9 -> 1.0"):
        train(TrainConfig(**config | dict(real_label=1.0, epochs=2)), progress=False, images=IMAGES)
    plain = train(TrainConfig(**config | dict(real_label=1.0, out=str(tmp_path / "plain"))), progress=False,
                  images=IMAGES)
    assert plain.history["steps"][0]["loss_d"] != smoothed.history["steps"][0]["loss_d"]
