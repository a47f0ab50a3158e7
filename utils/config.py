"""Every knob of a training run, in one dataclass with defaults and validation.

The notebooks build a `TrainConfig` from their `parameters` cell; `python -m utils.train`
builds the same object from its command line (one option per field, see `--help`).
A bad value raises a ValueError that names the field and the allowed range, so the
notebook and the CLI fail the same way, before any work starts. `train()` validates its config
again, so a value assigned after construction (`config.lr_g = -1`) is checked too.

    >>> config = TrainConfig(image_size=32, epochs=5)
    >>> config.batch_size
    128
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from utils.errors import ConfigError
from utils.files import atomic_path
from utils.urls import redact_url

# The largest seed: every epoch's random generators are seeded from (seed, epoch) (utils/training.py), within 64 bits.
MAX_SEED = 2**32 - 1

# The improved recipe of notebook 05: what `recipe="improved"` switches on (a field set to anything
# but its default keeps the value given). Measured: benchmarks/results/quality-cpu-*.log.
IMPROVED_RECIPE = dict(
    ema_decay=0.999,            # sample from an exponential moving average of G's weights
    spectral_norm=True,         # Lipschitz-constrain D instead of BatchNorm
    loss="hinge",               # hinge loss instead of the original BCE
    lr_d=1e-3,                  # two-timescale update rule: D learns faster than G, and both faster than DCGAN's
    lr_g=5e-4,                  # 2e-4, which SN, the hinge loss and the EMA keep stable
    beta1=0.0,                  # Adam without first-moment momentum, as in SNGAN, SAGAN and BigGAN
    beta2=0.99,
)


@dataclass
class TrainConfig:
    # data
    data: str = "synthetic"     # "synthetic" (drawn offline), "kaggle" (downloaded), a folder, a .zip or an http(s) URL of a zip
    data_dir: str = "data"      # downloads and decoded caches live here
    image_size: int = 64        # images are square, a power of two >= 16
    max_images: int = 0         # use at most this many images (0 = all; synthetic: 0 means 20,000)
    # model (DCGAN reference: latent 100-128, widths 64)
    latent_dim: int = 128       # length of the noise vector z
    g_width: int = 64           # channels of G's last hidden block (doubles towards the input)
    d_width: int = 64           # channels of D's first block (doubles towards the output)
    # optimisation (DCGAN reference: Adam 2e-4, betas (0.5, 0.999), batch 128, 25 epochs)
    epochs: int = 25
    batch_size: int = 128
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    scale_lr: bool = False      # larger batches: multiply both learning rates by sqrt(batch_size / 128)
    # recipe (notebook 05): "dcgan" keeps the fields below as given, "improved" applies IMPROVED_RECIPE
    recipe: str = "dcgan"
    loss: str = "bce"           # "bce" (original DCGAN) or "hinge"
    ema_decay: float = 0.0      # 0 = off; else the EMA decay of G's weights used for sampling
    diffaugment: str = ""       # comma-separated subset of "color,translation,cutout"; "" = off
    spectral_norm: bool = False  # spectral normalisation in D (replaces its BatchNorm)
    # D's targets (loss="bce" only): label smoothing and noisy labels, tricks of popular anime-GAN projects
    real_label: float = 1.0     # bce only: D's target for real images; below 1 is label smoothing (e.g. 0.9)
    fake_label: float = 0.0     # bce only: D's target for fakes; above 0 smooths it too (e.g. 0.1); below real_label
    label_flip: float = 0.0     # bce only: chance that each of D's targets is swapped (noisy labels, e.g. 0.05)
    # speed (chosen per device by measurement when "auto"; see utils/environment.py)
    device: str = "auto"        # "auto", "cuda", "cuda:1", "mps" or "cpu"
    amp: str = "auto"           # "auto", "bf16", "fp16" or "off"
    channels_last: str = "auto"  # "auto", "on" or "off"
    compile: bool = False       # torch.compile the models (slow first epoch, faster after)
    cuda_graphs: str = "auto"   # "auto", "on" or "off": replay each step as one CUDA graph (see utils/environment.py)
    data_on_device: str = "auto"  # "auto" (if it fits), "on" or "off" (pinned host memory)
    sync_batchnorm: bool = False  # multi-GPU only: share BatchNorm statistics across GPUs
    log_every: int = 50         # read losses back to the host every N steps (each read waits for the GPU)
    # run
    seed: int = 42
    out: str = ""               # run folder; "" = generated/<recipe>-<size>px[-field=value...], named from the settings
    num_samples: int = 64       # fixed latents drawn after every epoch (an 8x8 grid)
    resume: bool = True         # continue the run in its folder if it has a checkpoint (see utils/run.py)
    max_minutes: float = 0.0    # stop (and save) once training has taken this many minutes in all; 0 = no limit
    # quality (notebook 05)
    fid_every: int = 0          # compute FID every K epochs (0 = never)
    fid_samples: int = 10_000   # generated images per FID evaluation
    fid_real: int = 0           # real images for the reference statistics (0 = the whole set)
    fid_weights: str = ""       # path to pt_inception-2015-12-05 weights for offline use ("" = download)

    def __post_init__(self) -> None:
        self._check_types()
        if self.recipe == "improved":
            for name, value in IMPROVED_RECIPE.items():
                if getattr(self, name) == _DEFAULTS[name]:
                    setattr(self, name, value)
        self.validate()

    def _check_types(self) -> None:
        """Raise ConfigError naming the first field of another type; an int given for a float field becomes a float."""
        for f in fields(self):
            value, expected = getattr(self, f.name), type(f.default)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, f.name, float(value))
            elif type(value) is not expected:
                raise ConfigError(f"config field '{f.name}' must be of type {expected.__name__}; got {value!r}")

    def validate(self) -> None:
        """Raise ValueError naming the first field whose value is of another type or out of range."""
        self._check_types()
        self._check(self.data != "", "data", "a non-empty string: 'synthetic', 'kaggle', a folder, a .zip or a URL")
        self._check(self.data_dir != "", "data_dir", "a folder path (downloads and caches go there)")
        self._check(self.image_size >= 16 and _is_power_of_two(self.image_size), "image_size",
               "a power of two >= 16 (16, 32, 64, 128, ...)")
        self._check(self.max_images >= 0, "max_images", ">= 0 (0 = all images)")
        self._check(self.latent_dim >= 1, "latent_dim", ">= 1")
        self._check(self.g_width >= 1, "g_width", ">= 1")
        self._check(self.d_width >= 1, "d_width", ">= 1")
        self._check(self.epochs >= 1, "epochs", ">= 1")
        self._check(self.batch_size >= 1, "batch_size", ">= 1")
        for name in ("lr_g", "lr_d"):
            self._check(0 < getattr(self, name) <= 1, name, "in (0, 1]")
        for name in ("beta1", "beta2"):
            self._check(0 <= getattr(self, name) < 1, name, "in [0, 1)")
        self._check(self.recipe in ("dcgan", "improved"), "recipe", "'dcgan' or 'improved'")
        self._check(self.loss in ("bce", "hinge"), "loss", "'bce' or 'hinge'")
        self._check(0 <= self.ema_decay < 1, "ema_decay", "in [0, 1) (0 = off)")
        self._check(0 < self.real_label <= 1, "real_label", "in (0, 1] (1 = no smoothing)")
        self._check(0 <= self.fake_label < self.real_label, "fake_label",
                    f"in [0, real_label) (0 = no smoothing; real_label is {self.real_label!r})")
        self._check(0 <= self.label_flip < 0.5, "label_flip", "in [0, 0.5) (0 = off; at 0.5 the labels say nothing)")
        for name in ("real_label", "fake_label", "label_flip"):
            if self.loss == "hinge" and getattr(self, name) != _DEFAULTS[name]:
                raise ConfigError(f"config field '{name}' is {getattr(self, name)!r} but loss is 'hinge', which has no "
                                  f"targets to smooth or flip: leave {name} at {_DEFAULTS[name]!r}, or use loss='bce'")
        unknown = set(filter(None, self.diffaugment.split(","))) - {"color", "translation", "cutout"}
        self._check(not unknown, "diffaugment", "a comma-separated subset of 'color,translation,cutout'")
        self._check(re.fullmatch(r"auto|cuda(:\d+)?|mps|cpu", self.device) is not None, "device",
               "'auto', 'cuda', 'cuda:N', 'mps' or 'cpu'")
        self._check(self.amp in ("auto", "bf16", "fp16", "off"), "amp", "'auto', 'bf16', 'fp16' or 'off'")
        self._check(self.channels_last in ("auto", "on", "off"), "channels_last", "'auto', 'on' or 'off'")
        self._check(self.cuda_graphs in ("auto", "on", "off"), "cuda_graphs", "'auto', 'on' or 'off'")
        self._check(self.data_on_device in ("auto", "on", "off"), "data_on_device", "'auto', 'on' or 'off'")
        self._check(self.log_every >= 1, "log_every", ">= 1")
        self._check(0 <= self.seed <= MAX_SEED, "seed", f"in [0, {MAX_SEED}]")
        self._check(1 <= self.num_samples <= 1024, "num_samples", "in [1, 1024]")
        self._check(self.max_minutes >= 0, "max_minutes", ">= 0 (0 = no limit)")
        self._check(self.fid_every >= 0, "fid_every", ">= 0 (0 = never)")
        self._check(self.fid_samples >= 2, "fid_samples", ">= 2")
        self._check(self.fid_real >= 0, "fid_real", ">= 0 (0 = the whole set)")

    def _check(self, ok: bool, field: str, allowed: str) -> None:
        if not ok:
            raise ConfigError(f"config field '{field}' must be {allowed}; got {getattr(self, field)!r}")

    def scaled_lrs(self, world_size: int = 1) -> tuple[float, float]:
        """(lr_g, lr_d) after the large-batch rule: x sqrt(effective batch / 128) when `scale_lr`.

        The effective batch is batch_size x the number of processes. Adam's updates barely grow with the batch,
        so the square-root rule (not the linear rule of SGD) keeps a larger batch close to the reference recipe.
        """
        factor = math.sqrt(self.batch_size * world_size / 128) if self.scale_lr else 1.0
        return self.lr_g * factor, self.lr_d * factor

    def to_dict(self, *, stored: bool = False) -> dict[str, Any]:
        """The fields as a dict; `stored` for what files keep (config.json, the checkpoint): a URL given as `data`
        without its password or token (utils.urls.redact_url), so a shared run folder shares no secret."""
        values = dataclasses.asdict(self)
        if stored:
            values["data"] = redact_url(self.data)
        return values

    def save(self, path: str | Path) -> None:
        """Write config.json atomically: a kill or a full disk leaves the old file, never an empty one."""
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(stored=True), indent=2) + "\n")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a dict such as config.json, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        """Read a config.json; one that is not JSON of valid settings raises ConfigError naming the file."""
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except ValueError as error:  # JSONDecodeError (empty, truncated, edited) and UnicodeDecodeError
            raise ConfigError(f"{path} is not valid JSON ({error})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path} does not hold settings (a JSON object of config fields)")
        try:
            return cls.from_dict(values)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None


_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


