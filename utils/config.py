"""Every knob of a training run: `TrainConfig`, its checks (one ConfigError line naming the field), its command line."""

import argparse
import dataclasses
import json
import math
import re
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

from utils.errors import ConfigError
from utils.files import atomic_path, read_json
from utils.urls import is_url, parses, redact_url

MAX_SEED = 2**32 - 1   # each epoch's generators are seeded from (seed, epoch) within 64 bits (utils/training.py)
DEVICE_NAME = re.compile(r"auto|cuda(:\d+)?|mps|cpu")   # what `device` may be, in the config and every command

# What recipe="improved" sets in fields left at their defaults (SNGAN/BigGAN's; benchmarks/results/quality-cpu-*.log)
IMPROVED_RECIPE = dict(ema_decay=0.999, spectral_norm=True, loss="hinge", lr_d=1e-3, lr_g=5e-4, beta1=0.0, beta2=0.99)


def _declare(default: Any, help: str, kind: str, names_run: bool = False, how: bool = False) -> Any:
    return field(default=default, metadata={"kind": kind, "names_run": names_run, "how": how, "help": help})


# What a field is for a run: `fixed` (a trained run refuses another value, which names a new run), `tunable` between
# epochs (`names_run`: another value names a new run), `how` (tunable: how fast, where, how often), `call` (this call).
fixed = partial(_declare, kind="fixed", names_run=True)
tunable = partial(_declare, kind="tunable")
how = partial(_declare, kind="tunable", how=True)
call = partial(_declare, kind="call")


@dataclass
class TrainConfig:
    # data
    data: str = fixed("synthetic", '"synthetic" (drawn offline), "kaggle" (downloaded), a folder, a .zip or its URL')
    data_dir: str = how("data", "downloads and decoded caches live here")
    image_size: int = fixed(64, "images are square, a power of two >= 16")
    max_images: int = fixed(0, "use at most this many images (0 = all; synthetic: 0 means 20,000)")
    # model (DCGAN reference: latent 100-128, widths 64)
    latent_dim: int = fixed(128, "length of the noise vector z")
    g_width: int = fixed(64, "channels of G's last hidden block (doubles towards the input)")
    d_width: int = fixed(64, "channels of D's first block (doubles towards the output)")
    # optimisation (DCGAN reference: Adam 2e-4, betas (0.5, 0.999), batch 128, 25 epochs)
    epochs: int = tunable(25, "train until this many epochs in all (a continued run trains the rest)")
    batch_size: int = tunable(128, "images per step (per process when distributed)", names_run=True)
    lr_g: float = tunable(2e-4, "G's learning rate (Adam)", names_run=True)
    lr_d: float = tunable(2e-4, "D's learning rate (Adam)", names_run=True)
    beta1: float = tunable(0.5, "Adam's first-moment decay (DCGAN: 0.5 instead of Adam's 0.9)", names_run=True)
    beta2: float = tunable(0.999, "Adam's second-moment decay", names_run=True)
    scale_lr: bool = tunable(False, "larger batches: both learning rates x sqrt(batch_size / 128)", names_run=True)
    # recipe (notebook 05): "dcgan" keeps the fields below as given, "improved" applies IMPROVED_RECIPE
    recipe: str = call("dcgan", '"dcgan" or "improved" (sets those of IMPROVED_RECIPE left at their defaults)')
    spectral_norm: bool = fixed(False, "spectral normalisation in D (replaces its BatchNorm)")
    loss: str = fixed("bce", '"bce" (original DCGAN) or "hinge"')
    ema_decay: float = fixed(0.0, "0 = off; else the EMA decay of G's weights used for sampling")
    diffaugment: str = fixed("", 'comma-separated subset of "color,translation,cutout"; "" = off')
    # D's targets (loss="bce" only): label smoothing and noisy labels, tricks of popular anime-GAN projects
    real_label: float = fixed(1.0, "bce only: D's target for real images; below 1 is label smoothing (e.g. 0.9)")
    fake_label: float = fixed(0.0, "bce only: D's target for fakes; above 0 smooths it (e.g. 0.1); below real_label")
    label_flip: float = fixed(0.0, "bce only: chance that each of D's targets is swapped (noisy labels, e.g. 0.05)")
    # speed (chosen per device by measurement when "auto"; see utils/environment.py)
    device: str = how("auto", '"auto", "cuda", "cuda:1", "mps" or "cpu"')
    amp: str = how("auto", '"auto", "bf16", "fp16" or "off"')
    channels_last: str = how("auto", '"auto", "on" or "off"')
    cuda_graphs: str = how("auto", '"auto", "on" or "off": replay each step as one CUDA graph (utils/environment.py)')
    data_on_device: str = how("auto", '"auto" (if it fits), "on" or "off" (host memory, copied per batch)')
    sync_batchnorm: bool = how(False, "multi-GPU only: share BatchNorm statistics across GPUs")
    log_every: int = how(50, "a GPU's losses are read (a wait) every N steps; a CPU's every step")
    # run
    num_samples: int = fixed(64, "fixed latents drawn after every epoch (an 8x8 grid)")
    seed: int = fixed(42, "the first weights, the fixed latents and each epoch's randomness come from it")
    out: str = call("", 'run folder; "" = generated/<recipe>-<size>px[-field=value...] from the settings')
    resume: bool = call(True, "continue the run in its folder if it has a checkpoint (see utils/run.py)")
    max_minutes: float = how(0.0, "stop (and save) once training has taken this many minutes in all; 0 = no limit")
    # quality (notebook 05)
    fid_every: int = how(0, "compute FID every K epochs (0 = never)")
    fid_samples: int = how(10_000, "generated images per FID evaluation")
    fid_real: int = how(0, "real images for the reference statistics (0 = the whole set)")
    fid_weights: str = how("", 'path to pt_inception-2015-12-05 weights for offline use ("" = download)')

    def __post_init__(self) -> None:
        if self.recipe == "improved":
            for name, value in IMPROVED_RECIPE.items():
                if getattr(self, name) == _DEFAULTS[name]:
                    setattr(self, name, value)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first field of another type or out of range (`train()` checks again)."""
        for f in fields(self):
            value, expected = getattr(self, f.name), type(f.default)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):   # 1 means 1.0
                setattr(self, f.name, float(value))
            elif type(value) is not expected:
                raise ConfigError(f"config field '{f.name}' must be of type {expected.__name__}; got {value!r}")
        self._check(self.image_size >= 16 and self.image_size.bit_count() == 1, "image_size", "a power of two >= 16")
        self._check(self.data != "", "data", "a non-empty string: 'synthetic', 'kaggle', a folder, a .zip or a URL")
        if is_url(self.data) and not parses(self.data):   # not shown: what follows a space may be a token's end
            raise ConfigError("config field 'data' must be a valid URL (like https://host/faces.zip) without spaces "
                              "(write them as %20); got one not shown here, as it may hold a token")
        self._check(self.data_dir != "", "data_dir", "a folder path (downloads and caches go there)")
        for name, smallest in _AT_LEAST.items():
            self._check(getattr(self, name) >= smallest, name, f">= {smallest}")
        for name, words in _WORDS.items():
            self._check(getattr(self, name) in words, name, ", ".join(map(repr, words[:-1])) + f" or {words[-1]!r}")
        for name in ("lr_g", "lr_d", "real_label"):
            self._check(0 < getattr(self, name) <= 1, name, "in (0, 1]")
        for name in ("beta1", "beta2", "ema_decay"):
            self._check(0 <= getattr(self, name) < 1, name, "in [0, 1)")
        self._check(0 <= self.fake_label < self.real_label, "fake_label", f"in [0, real_label={self.real_label!r})")
        self._check(0 <= self.label_flip < 0.5, "label_flip", "in [0, 0.5) (0 = off; at 0.5 the labels say nothing)")
        for name in ("real_label", "fake_label", "label_flip"):
            if self.loss == "hinge" and getattr(self, name) != _DEFAULTS[name]:
                raise ConfigError(f"config field '{name}' is {getattr(self, name)!r} but loss is 'hinge', which has no "
                                  f"targets to smooth or flip: leave {name} at {_DEFAULTS[name]!r}, or use loss='bce'")
        unknown = set(filter(None, self.diffaugment.split(","))) - {"color", "translation", "cutout"}
        self._check(not unknown, "diffaugment", "a comma-separated subset of 'color,translation,cutout'")
        self._check(bool(DEVICE_NAME.fullmatch(self.device)), "device", "auto, cpu, mps, cuda[:N]")
        self._check(0 <= self.seed <= MAX_SEED, "seed", f"in [0, {MAX_SEED}]")
        self._check(1 <= self.num_samples <= 1024, "num_samples", "in [1, 1024]")

    def _check(self, ok: bool, field: str, allowed: str) -> None:
        if not ok:
            raise ConfigError(f"config field '{field}' must be {allowed}; got {getattr(self, field)!r}")

    def scaled_lrs(self, world_size: int = 1) -> tuple[float, float]:
        """(lr_g, lr_d), with `scale_lr` x sqrt(batch_size x processes / 128): Adam's square-root rule, not SGD's."""
        factor = math.sqrt(self.batch_size * world_size / 128) if self.scale_lr else 1.0
        return self.lr_g * factor, self.lr_d * factor

    def to_dict(self, *, stored: bool = False) -> dict[str, Any]:
        """The fields as a dict; `stored` (config.json, the checkpoint): a URL's password or token hidden."""
        return dataclasses.asdict(self) | ({"data": redact_url(self.data)} if stored else {})

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(stored=True), indent=2) + "\n")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a dict such as config.json, ignoring keys this version does not know."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        """Read a config.json; one that is not JSON of valid settings raises ConfigError naming the file."""
        try:
            values = read_json(path)
            if not isinstance(values, dict):
                raise ValueError("does not hold settings (a JSON object of config fields)")
            return cls.from_dict(values)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None
        except ValueError as error:
            raise ConfigError(f"{path} {error}") from None


_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}
# Counts and their smallest value (0 = all images, no limit, never, the whole set), and fields that take one word
_AT_LEAST = dict(max_images=0, latent_dim=1, g_width=1, d_width=1, epochs=1, batch_size=1, log_every=1,
                 max_minutes=0, fid_every=0, fid_samples=2, fid_real=0)
_WORDS = dict(recipe=("dcgan", "improved"), loss=("bce", "hinge"), amp=("auto", "bf16", "fp16", "off"),
              **dict.fromkeys(("channels_last", "cuda_graphs", "data_on_device"), ("auto", "on", "off")))

_KINDS = {f.name: f.metadata for f in fields(TrainConfig)}
FIXED_FIELDS = tuple(name for name, kind in _KINDS.items() if kind.get("kind") == "fixed")
TUNABLE_FIELDS = tuple(name for name, kind in _KINDS.items() if kind.get("kind") == "tunable")
NAMED_FIELDS = FIXED_FIELDS + tuple(name for name in TUNABLE_FIELDS if _KINDS[name]["names_run"])   # in this order
HOW_FIELDS = tuple(name for name in TUNABLE_FIELDS if _KINDS[name]["how"])   # not in compare's table of differences


def build_parser() -> argparse.ArgumentParser:
    """One option per TrainConfig field; an option not given is left out (a continued run keeps the run's value)."""
    parser = argparse.ArgumentParser("python -m utils.train", argument_default=argparse.SUPPRESS,
                                     description="The notebooks' training code: one option per TrainConfig field.")
    for f in fields(TrainConfig):
        arg = dict(action=argparse.BooleanOptionalAction) if isinstance(f.default, bool) else dict(type=type(f.default))
        parser.add_argument(_option(f.name), help=f"{f.metadata['help']} (default: {f.default})", **arg)
    return parser


def config_to_argv(config: TrainConfig) -> list[str]:
    """The options that rebuild `config` on this command line (used to launch torchrun from a notebook)."""
    argv = []
    for name, value in dataclasses.asdict(config).items():
        argv += [_option(name if value else "no_" + name)] if isinstance(value, bool) else [_option(name), str(value)]
    return argv


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")
