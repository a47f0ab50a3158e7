import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from utils import metrics
from utils.config import TrainConfig
from utils.errors import ConfigError, UserError
from utils.metrics import (FID, dataset_id, fid_for_config, frechet_distance, load_inception, reference_cache_file,
                           weights_id)

# The real Inception is slow on a CPU: only the test that needs it uses it, on a few tiny images.
_SHARED_WEIGHTS = Path(__file__).parents[2] / "shared/fid/pt_inception-2015-12-05-fid-features-only.pth"
REAL_WEIGHTS = os.environ.get("ANIME_GAN_FID_WEIGHTS") or (str(_SHARED_WEIGHTS) if _SHARED_WEIGHTS.is_file() else "")


class StandInFeatures(nn.Module):
    """A fixed random conv + ReLU + global average: 32 features that react to noise, instantly."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 32, 3)
        self.images_seen = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        assert images.dtype == torch.uint8
        self.images_seen += len(images)
        return torch.relu(self.conv(images.float() / 127.5 - 1)).mean(dim=(2, 3))


def smooth_images(count: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """uint8 (count, 3, size, size) images made of blurry blobs, a little like pictures."""
    coarse = torch.rand(count, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    images = nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    return (images * 255).round().to(torch.uint8)


def stand_in_fid(real: torch.Tensor, cache_file: Path | None = None, **kwargs) -> FID:
    kwargs.setdefault("feature_extractor", StandInFeatures())
    return FID(real, cache_file, torch.device("cpu"), progress=False, **kwargs)


def score(fid: FID, images: torch.Tensor) -> float:
    """The FID of a set of images: their statistics, taken as a second reference, against the first's."""
    fake = FID(images, None, torch.device("cpu"), fid.feature_extractor, progress=False)
    return frechet_distance(fid.real_mean, fid.real_cov, fake.real_mean, fake.real_cov)


def tiny_generator() -> nn.Sequential:
    """z (N, 8, 1, 1) -> (N, 3, 16, 16) in [-1, 1], with BatchNorm like the DCGAN generator."""
    torch.manual_seed(0)
    return nn.Sequential(nn.ConvTranspose2d(8, 16, 4), nn.BatchNorm2d(16), nn.ReLU(), nn.ConvTranspose2d(16, 3, 4, 4),
                         nn.Tanh())


def random_gaussian(dim: int, rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    factor = torch.randn(dim, rank, generator=generator, dtype=torch.float64)
    return torch.randn(dim, generator=generator, dtype=torch.float64), factor @ factor.T / rank


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pytorch-fid passes scipy's deprecated `disp`
@pytest.mark.parametrize("rank", [80, 20])  # full-rank and singular covariances (fewer images than features)
def test_frechet_distance_is_closed_form_in_one_dimension_and_matches_pytorch_fid(rank):
    distance = frechet_distance(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([3.0]), torch.tensor([[9.0]]))
    assert distance == pytest.approx((1 - 3) ** 2 + (2 - 3) ** 2, rel=1e-12)   # (m1 - m2)^2 + (s1 - s2)^2
    pytorch_fid = pytest.importorskip("pytorch_fid.fid_score")
    (mu1, sigma1), (mu2, sigma2) = random_gaussian(64, rank, seed=1), random_gaussian(64, rank, seed=2)
    expected = pytorch_fid.calculate_frechet_distance(mu1.numpy(), sigma1.numpy(), mu2.numpy(), sigma2.numpy())
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-6)
    # singular directions keep square roots of rounding noise, ~sqrt(float64 eps) relative
    assert frechet_distance(mu1, sigma1, mu1, sigma1) == pytest.approx(0, abs=1e-6 * sigma1.trace().item())


def test_identical_images_score_zero_and_noise_increases_fid():
    real = smooth_images(200)
    fid = stand_in_fid(real)
    noise = torch.randn(real.shape, generator=torch.Generator().manual_seed(1))
    noisy = [(real + sigma * noise).round().clamp(0, 255).to(torch.uint8) for sigma in (0, 8, 24, 64)]
    scores = [score(fid, images) for images in noisy]
    assert scores[1] > 0
    assert abs(scores[0]) < 1e-4 * scores[1]  # same images as the reference: the distance vanishes
    assert scores == sorted(scores) and len(set(scores)) == len(scores), scores


def test_reference_statistics_are_cached_and_reused(tmp_path, monkeypatch):
    real, fake = smooth_images(120), smooth_images(60, seed=7)
    cache_file = tmp_path / "cache" / "fid-ref-test.pt"
    first = stand_in_fid(real, cache_file, feature_extractor=(first_extractor := StandInFeatures()))
    assert cache_file.is_file() and first_extractor.images_seen == len(real)

    second = stand_in_fid(real, cache_file, feature_extractor=(second_extractor := StandInFeatures()))
    assert second_extractor.images_seen == 0  # the real images were not run through the network again
    assert score(second, fake) == score(first, fake)
    assert second_extractor.images_seen == len(fake)

    monkeypatch.chdir(tmp_path / "cache")
    stand_in_fid(real, cache_file=None)   # no cache file: nothing is written
    assert list((tmp_path / "cache").iterdir()) == [cache_file]
    torch.save({"mean": torch.zeros(32, dtype=torch.float64), "cov": torch.full((32, 32), math.nan, dtype=torch.float64)},
               cache_file)   # the right shapes, numbers no score can come from
    with pytest.raises(UserError, match="does not hold FID statistics"):
        stand_in_fid(real, cache_file)


def test_num_real_uses_the_same_random_subset_every_time():
    real, fake = smooth_images(300), smooth_images(60, seed=7)
    extractor = StandInFeatures()
    subset_scores = [score(stand_in_fid(real, num_real=40, feature_extractor=extractor), fake) for _ in range(2)]
    assert extractor.images_seen == 2 * (40 + len(fake))
    assert subset_scores[0] == subset_scores[1]
    assert subset_scores[0] != score(stand_in_fid(real), fake)  # a different reference than all 300
    assert score(stand_in_fid(real[:40]), fake) != subset_scores[0]  # random, not the first 40


def test_score_generator_is_deterministic_and_leaves_the_generator_unchanged(monkeypatch):
    monkeypatch.setattr(metrics, "BATCH", 32)
    fid = stand_in_fid(smooth_images(100))
    generator = tiny_generator().eval()
    before = {name: value.clone() for name, value in generator.state_dict().items()}

    first = fid.score_generator(generator, latent_dim=8, num_samples=70)
    assert fid.score_generator(generator, latent_dim=8, num_samples=70) == first
    assert fid.score_generator(generator, latent_dim=8, num_samples=70, seed=1) != first
    assert fid.feature_extractor.images_seen == 100 + 3 * 70  # every sample scored, the last batch partial
    assert not generator.training
    for name, value in generator.state_dict().items():  # BatchNorm running statistics included
        assert torch.equal(value, before[name]), name

    generator.train()
    fid.score_generator(generator, latent_dim=8, num_samples=10)
    assert generator.training


def test_the_cache_file_is_named_by_the_dataset_content_and_shape_the_subset_and_the_weights(tmp_path):
    images, changed = smooth_images(40), smooth_images(40)
    changed[0, 0, 0, 0] ^= 1
    assert dataset_id(images) == dataset_id(images.clone())
    datasets = {dataset_id(images), dataset_id(changed), dataset_id(images[:39]), dataset_id(smooth_images(40, 32))}
    (tmp_path / "weights.pth").write_bytes(b"abc")
    weights = (weights_id(""), weights_id(str(tmp_path / "weights.pth")))
    assert weights == ("pt_inception-6726825d", "pt_inception-ba7816bf")  # sha256("abc") = ba7816bf...
    names = {reference_cache_file(tmp_path, dataset, real, weight) for dataset in datasets for real in (0, 500)
             for weight in weights}
    assert len(names) == 4 * 2 * 2 and {name.parent for name in names} == {tmp_path / "cache"}


def test_a_missing_weights_file_names_the_config_field(tmp_path):
    config = TrainConfig(data_dir=str(tmp_path), fid_weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="config field 'fid_weights' points to .*missing.pth', which is not a file"):
        fid_for_config(config, smooth_images(4), torch.device("cpu"))


@pytest.mark.skipif(not REAL_WEIGHTS or not Path(REAL_WEIGHTS).is_file(),
                    reason="set ANIME_GAN_FID_WEIGHTS to a pt_inception-2015-12-05-*.pth file to test it")
def test_real_inception_offline_gives_a_finite_score(tmp_path):
    """torch-fidelity's network, built from the local file it is given (no download), pool3 features only: the
    shared file's classifier is NaN on purpose, and FID never reads it."""
    inception = load_inception(REAL_WEIGHTS)
    built, stored = inception.state_dict(), torch.load(REAL_WEIGHTS, weights_only=True)
    assert built.keys() == stored.keys()
    assert all(torch.equal(built[name], tensor) for name, tensor in stored.items() if not name.startswith("fc."))
    config = TrainConfig(data_dir=str(tmp_path), fid_weights=REAL_WEIGHTS)
    real = smooth_images(8, size=32)
    fid = fid_for_config(config, real, torch.device("cpu"), inception)
    (cache_file,) = (tmp_path / "cache").iterdir()
    assert weights_id(REAL_WEIGHTS) in cache_file.name
    assert fid.real_mean.shape == (2048,) and torch.isfinite(fid.real_cov).all()  # pool3 features, all finite
    fid_score = score(fid, smooth_images(8, size=32, seed=3))
    assert torch.isfinite(torch.tensor(fid_score)) and fid_score > 0


def test_an_fp16_run_logs_the_fid_of_the_generator_it_saves(tmp_path, monkeypatch, one_thread):
    """A run trained as on a T4 (fp16 autocast, GradScaler), here on the CPU: FID is scored after each epoch, and
    the last one is the score of the generator its checkpoint holds."""
    from utils import training
    from utils.run import load_models

    monkeypatch.setattr(training, "load_inception", lambda weights: StandInFeatures())
    real = smooth_images(128)
    config = TrainConfig(image_size=16, latent_dim=16, g_width=8, d_width=8, batch_size=32, epochs=2, device="cpu",
                         amp="fp16", ema_decay=0.9, fid_every=1, fid_samples=64, data_dir=str(tmp_path / "data"),
                         out=str(tmp_path / "run"))
    history = training.train(config, progress=False, images=real).history

    generator, _, _ = load_models(config.out)
    saved = stand_in_fid(real).score_generator(generator, config.latent_dim, config.fid_samples, seed=config.seed)
    assert [round(epoch["fid"], 3) for epoch in history["epochs"]][-1] == round(saved, 3) > 0
    assert history["epochs"][0]["fid"] != history["epochs"][1]["fid"]   # scored again after each epoch
