"""Fréchet Inception Distance (FID): how far generated images are from the real ones; lower is better. torch-fidelity's
port of the TensorFlow FID Inception, so scores compare with papers' measured on as many images. In use:
`fid_for_config(config, real_images, device).score_generator(generator, config.latent_dim, config.fid_samples)`."""

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from utils.config import TrainConfig
from utils.downloads import DownloadError, download
from utils.errors import ConfigError, UserError
from utils.files import atomic_path, load_data
from utils.models import sampling, to_uint8

PUBLISHED_SHA256 = "6726825d"   # the published weights' sha256 prefix (in their file name, torch hub's convention)
BATCH = 200   # images per pass through the network: memory stays bounded for any number
_OFFLINE = "set config field 'fid_weights' to a local pt_inception-2015-12-05-*.pth file"


class FID:
    """Reusable scorer: the statistics of the real images (all, or `num_real` of them, the same every time) computed
    or read from `cache_file` once, then many scores, with `feature_extractor` (`load_inception`'s network)."""

    def __init__(self, real_images: Tensor, cache_file: Path | None, device: torch.device,
                 feature_extractor: nn.Module, num_real: int = 0, progress: bool = True):
        self.device, self.progress = torch.device(device), progress
        # float64 statistics; MPS has no float64, so they stay on the CPU there
        self.statistics_device = torch.device("cpu") if self.device.type == "mps" else self.device
        self.feature_extractor = feature_extractor.eval().to(self.device)
        if cache_file is not None and cache_file.is_file():   # loaded as data only, and checked
            remedy = "Delete it: the statistics are computed again"
            reference = load_data(cache_file, "FID statistics cache", UserError, remedy)
            mean, cov = (reference.get(key) if isinstance(reference, dict) else None for key in ("mean", "cov"))
            if not (isinstance(mean, Tensor) and isinstance(cov, Tensor) and mean.dtype == cov.dtype == torch.float64
                    and mean.dim() == 1 and cov.shape == (len(mean), len(mean)) and cov.isfinite().all()):
                raise UserError(f"{cache_file} does not hold FID statistics (a float64 mean and its finite square "
                                f"covariance). {remedy}")
            self.real_mean, self.real_cov = mean.to(self.statistics_device), cov.to(self.statistics_device)
        else:   # sorted: a memory-mapped set is read front to back
            chosen = torch.randperm(len(real_images), generator=torch.Generator().manual_seed(0))[:num_real or None]
            chosen = chosen.sort().values
            self.real_mean, self.real_cov = self._statistics(lambda start, stop: real_images[chosen[start:stop]],
                                                             len(chosen), "FID: real images")
            if cache_file is not None:
                with atomic_path(cache_file) as tmp:
                    torch.save({"mean": self.real_mean.cpu(), "cov": self.real_cov.cpu()}, tmp)
        self.real_cov_sqrt = _sqrtm_psd(self.real_cov)   # the costly half of every distance, done once

    def score_generator(self, generator: nn.Module, latent_dim: int, num_samples: int, seed: int = 0) -> float:
        """FID of `num_samples` images from `generator`, sampled as the grids are, from the same latents for a `seed`
        on every device; the generator's mode and BatchNorm statistics are put back."""
        latents, device = torch.Generator().manual_seed(seed), next(generator.parameters()).device

        def draw(start: int, stop: int) -> Tensor:
            return to_uint8(generator(torch.randn(stop - start, latent_dim, 1, 1, generator=latents).to(device)))

        with sampling(generator):
            mean, cov = self._statistics(draw, num_samples, "FID: generated images")
        return frechet_distance(self.real_mean, self.real_cov, mean, cov, sigma1_sqrt=self.real_cov_sqrt)

    def _statistics(self, draw: Callable[[int, int], Tensor], count: int, description: str) -> tuple[Tensor, Tensor]:
        """Mean and covariance (float64) of the features of `count` uint8 images, `draw(start, stop)` at a time."""
        feature_sum, outer_sum = 0, 0
        with torch.no_grad():
            for start in tqdm(range(0, count, BATCH), desc=description, disable=not self.progress):
                images = draw(start, min(start + BATCH, count)).to(self.device)
                features = self.feature_extractor(images).to(self.statistics_device, torch.float64)
                feature_sum, outer_sum = feature_sum + features.sum(dim=0), outer_sum + features.T @ features
        mean = feature_sum / count
        return mean, (outer_sum - count * torch.outer(mean, mean)) / (count - 1)


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor,
                     sigma1_sqrt: Tensor | None = None) -> float:
    """|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)) in float64, the last trace from the
    eigenvalues of the symmetric S sigma2 S, S = sigma1^(1/2) (`sigma1_sqrt`): stable where `sqrtm` returns noise."""
    mu1, sigma1, mu2, sigma2 = (torch.as_tensor(x, dtype=torch.float64) for x in (mu1, sigma1, mu2, sigma2))
    sqrt1 = _sqrtm_psd(sigma1) if sigma1_sqrt is None else sigma1_sqrt
    product_eigenvalues = torch.linalg.eigvalsh(sqrt1 @ sigma2 @ sqrt1).clamp(min=0)
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * product_eigenvalues.sqrt().sum())


def _sqrtm_psd(matrix: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix; rounding's tiny negative eigenvalues count as 0."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def reference_cache_file(data_dir: str | Path, dataset_cache_name: str, num_real: int, weights_id: str) -> Path:
    """Where the real statistics of one dataset, subset size and feature extractor are cached."""
    return Path(data_dir) / "cache" / f"fid-ref-{dataset_cache_name}-real{num_real or 'all'}-{weights_id}.pt"


def dataset_id(real_images: Tensor) -> str:
    """Shape plus a hash of up to ~256 evenly spaced images: cheap, even for a memory-mapped set."""
    sample = real_images[::max(1, len(real_images) // 256)].cpu().contiguous().numpy().tobytes()
    count, _, height, width = real_images.shape
    return f"{count}x{height}x{width}-{hashlib.sha256(sample).hexdigest()[:10]}"


def weights_id(weights: str) -> str:
    """Name Inception weights as the official file is named: by the first 8 hex digits of their sha256."""
    path = _weights_path(weights)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8] if path else PUBLISHED_SHA256
    return f"pt_inception-{digest}"


def fid_for_config(config: TrainConfig, real_images: Tensor, device: torch.device,
                   inception: nn.Module | None = None) -> FID:
    """The FID of a TrainConfig (`fid_weights`, `fid_real`), cached in data_dir/cache; `inception`: if built already."""
    cache_file = reference_cache_file(config.data_dir, dataset_id(real_images), config.fid_real,
                                      weights_id(config.fid_weights))
    inception = inception if inception is not None else load_inception(config.fid_weights)
    return FID(real_images, cache_file, device, inception, num_real=config.fid_real)


def load_inception(weights: str) -> nn.Module:
    """torch-fidelity's FID Inception (uint8 images -> 2048 pool3 features) with `weights`, a file or "" for the
    published one, downloaded once; a wrong file or a failed download raises one line, never running the file."""
    from torch_fidelity import feature_extractor_inceptionv3 as inception

    path, url = _weights_path(weights), inception.URL_INCEPTION_V3
    if path is None:   # the published weights, in torch hub's cache (kept there only if their sha256 is theirs)
        path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        try:
            if not path.is_file():
                download(url, path, sha256_prefix=PUBLISHED_SHA256)
        except DownloadError as error:
            raise DownloadError(f"could not download the FID Inception weights: {error}; offline, {_OFFLINE}") from None
    error, remedy = ((ConfigError, "Set config field 'fid_weights' to a pt_inception-2015-12-05-*.pth file (the FID "
                                   "Inception's weights), or to '' to download them") if weights
                     else (DownloadError, f"Delete it to download it again; offline, {_OFFLINE}"))
    state = load_data(path, "weights file", error, remedy)
    if not isinstance(state, dict) or not all(isinstance(value, Tensor) for value in state.values()):
        raise error(f"{path} does not hold network weights (a dict of tensors). {remedy}")
    try:   # torch-fidelity loads the file again, unsafely: it proved to hold tensors only
        network = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                        feature_extractor_weights_path=str(path))
    except RuntimeError as failure:   # load_state_dict: missing, unexpected or differently shaped tensors
        detail = " ".join(str(failure).split("\n", 1)[-1].split())[:160]
        raise error(f"{path} is not the FID Inception's weights ({detail}). {remedy}") from None
    network.register_forward_hook(lambda module, images, features: features[0])   # pool3 alone, not in a 1-tuple
    return network


def _weights_path(weights: str) -> Path | None:
    """The weights file, or None for the download; a missing file fails here, naming the config field."""
    if weights and not Path(weights).expanduser().is_file():
        raise ConfigError(f"config field 'fid_weights' points to {weights!r}, which is not a file: give the "
                          "path of a pt_inception-2015-12-05-*.pth file, or '' to download the weights")
    return Path(weights).expanduser() if weights else None

