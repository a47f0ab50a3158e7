"""Where we run and how fast: `choose_device` decides once per run the device, mixed precision, memory layout and CUDA
graphs (on a CPU by a cached trial of real training steps); `size_preset` sizes the notebooks' runs for this machine."""

import json
import math
import os
import platform
import sys
from contextlib import closing, suppress
from dataclasses import dataclass, replace
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator

import torch

from utils import distributed
from utils.config import DEVICE_NAME, TrainConfig
from utils.errors import ConfigError
from utils.files import atomic_path, read_json
from utils.step import TRIAL_BATCH, time_training_steps

AMP_VARIABLE = "ANIME_GAN_AMP"
Measure = Callable[[list[str]], Iterator[dict[str, float]]]   # round after round {candidate: images/s}: utils.step


def pick_device(name: str = "auto") -> torch.device:
    """The device this process drives: `name` or for "auto" cuda, then mps, then cpu; under torchrun cuda:LOCAL_RANK."""
    if not DEVICE_NAME.fullmatch(name):
        raise ConfigError(f"device must be auto, cpu, mps or cuda[:N]; got {name!r}")
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    name = next(kind for kind, present in available.items() if present) if name == "auto" else name
    device = torch.device(name)
    if not available.get(device.type, True):
        raise ConfigError(f"config field 'device' is '{name}' but this machine has no {device.type} device: use "
                          "device='auto' or 'cpu' (on Colab, a GPU: Runtime > Change runtime type)")
    if device.type != "cuda":
        return device
    index = int(os.environ["LOCAL_RANK"]) if distributed.launched() else device.index or 0
    if index >= torch.cuda.device_count():
        raise ConfigError(f"config field 'device' is '{name}', but this process would drive cuda:{index} and only "
                          f"{torch.cuda.device_count()} GPU(s) are visible: use device='auto' or 'cuda' (under "
                          "torchrun, at most one process per GPU: --nproc_per_node)")
    return torch.device("cuda", index)


def _cpuinfo() -> str:
    with suppress(OSError):
        return Path("/proc/cpuinfo").read_text()
    return ""


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); autocast is only worth it then."""
    flags = _cpuinfo()   # none on macOS, where Apple's M2 and later have bf16 instructions
    return "avx512_bf16" in flags or "amx_bf16" in flags or (sys.platform == "darwin" and platform.machine() == "arm64")


def amp_setting(config: TrainConfig) -> tuple[str, str]:
    """(the `amp` setting to use, where it comes from): `config.amp`, unless it is "auto" and ANIME_GAN_AMP is set."""
    forced = os.environ.get(AMP_VARIABLE, "")
    if config.amp != "auto" or forced in ("", "auto"):
        return config.amp, "config field 'amp'"
    if forced not in ("bf16", "fp16", "off"):
        raise ConfigError(f"environment variable {AMP_VARIABLE} must be 'auto', 'bf16', 'fp16' or 'off'; got {forced!r}"
                          f" (unset it to let each run choose)")
    return forced, f"environment variable {AMP_VARIABLE}"


def pick_cuda_graphs(device: torch.device, config: TrainConfig, amp_dtype: torch.dtype | None,
                     world_size: int = 1) -> bool:
    """Replay each step as one CUDA graph (one launch for ~300 small kernels) on one CUDA GPU without random draws
    outside the graph; "auto" keeps fp16 eager (not yet measured)."""
    blockers = [reason for reason, present in [
        ("DiffAugment", bool(config.diffaugment)), ("label_flip", config.label_flip > 0),
        ("several processes", world_size > 1)] if present]
    if config.cuda_graphs == "on" and (device.type != "cuda" or blockers):
        raise ConfigError(f"config field 'cuda_graphs' is 'on' but it needs one CUDA GPU without "
                          f"{', '.join(blockers) or 'a CPU or MPS device'}: use cuda_graphs='auto' or 'off'")
    wanted = config.cuda_graphs == "on" or (config.cuda_graphs == "auto" and amp_dtype != torch.float16)
    return device.type == "cuda" and not blockers and wanted


@dataclass(frozen=True)
class DeviceChoice:
    """What `choose_device` decided for a run, and `log`: the lines that say so at the top of its training log."""
    device: torch.device
    amp: torch.dtype | None         # the autocast dtype; None = fp32
    channels_last: bool
    cuda_graphs: bool
    amp_from: str = ""              # the environment variable that set `amp`; "" when the config did
    trial: dict | None = None       # the CPU trial's images/s that "auto" came from; None where nothing was measured
    new_run_pick: str = ""          # the trial's pick for new runs, where a resumed run keeps what it trained with

    @property
    def candidate(self) -> str:
        """The precision and layout as the CPU trial and the checkpoint name them: "fp32 channels_last", ..."""
        precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp, "fp32")
        return f"{precision} {'channels_last' if self.channels_last else 'NCHW'}"

    @property
    def log(self) -> str:
        """The device, what was chosen and why; the CPU trial's figures only when ANIME_GAN_VERBOSE is set."""
        on = {True: "on", False: "off"}
        precision = f"{self.amp or 'off (fp32)'}" + (f", from {self.amp_from}" if self.amp_from else "")
        lines = [describe_device(self.device), f"mixed precision: {precision}, channels_last: {on[self.channels_last]}"
                 f", CUDA graphs: {on[self.cuda_graphs]}"]
        if self.device.type == "cpu" and self.amp == torch.float16:
            lines.append("fp16 on a CPU runs a T4's path (fp16 autocast, GradScaler, fused Adam) to check it here; "
                         "a CPU has no fast fp16, so this trains several times slower than fp32: amp='auto' to train")
        if self.trial is not None and os.environ.get("ANIME_GAN_VERBOSE", "") not in ("", "0"):
            speeds = ", ".join(f"{name} {value:,.0f}" for name, value in self.trial.items())
            lines.append(f"CPU trial (images/s of training steps): {speeds} -> {self.new_run_pick or self.candidate}")
        if self.new_run_pick:
            lines.append(f"this run continues as {self.candidate}, as its earlier epochs trained (the CPU trial picks "
                         f"{self.new_run_pick} for new runs)")
        return "\n".join(lines)

    def resumed(self, config: TrainConfig, trained_as: str | None) -> "DeviceChoice":
        """This choice for a run whose epochs trained as `trained_as`: a newer trial must not change how it ends."""
        if trained_as == self.candidate or trained_as not in (self.trial or {}):
            return self
        dtype, layout = trained_as.split()
        amp = self.amp if amp_setting(config)[0] != "auto" else torch.bfloat16 if dtype == "bf16" else None
        channels_last = self.channels_last if config.channels_last != "auto" else layout == "channels_last"
        return replace(self, amp=amp, channels_last=channels_last, new_run_pick=self.candidate)


def choose_device(config: TrainConfig, measure: Measure) -> DeviceChoice:
    """Decide once the device, precision, layout and CUDA graphs for `config` (joining torchrun's process group)."""
    device = pick_device(config.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True   # fixed shapes: cuDNN times its kernels once and keeps the fastest
    distributed.setup(device)
    amp, source = amp_setting(config)
    if amp == "bf16" and device.type == "cpu" and not cpu_has_bf16():   # refused before anything is measured
        raise ConfigError(f"{source} is 'bf16' but this CPU has no native bf16 (far slower): use 'auto' or 'off'")
    if amp == "fp16" and device.type == "mps":
        raise ConfigError(f"{source} is 'fp16', which runs on a CUDA GPU or a CPU, not on mps: use 'auto' or 'off'")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)   # None: fp32, also MPS's "auto"
    if amp == "auto" and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    # channels_last (NHWC) spares cuDNN and oneDNN layout transposes
    channels_last = config.channels_last == "on" or (config.channels_last == "auto" and device.type != "mps")
    trial = None   # a CPU times what is "auto" in fp32 and bf16; fp16 on a CPU (the T4's path) keeps the T4's layout
    if device.type == "cpu" and amp != "fp16" and "auto" in (amp, config.channels_last):
        with distributed.main_first():
            trial = cpu_trial(config, measure)
        dtype, layout = trial_pick(trial, amp, config.channels_last).split()
        amp_dtype, channels_last = (torch.bfloat16 if dtype == "bf16" else None), layout == "channels_last"
    cuda_graphs = pick_cuda_graphs(device, config, amp_dtype, distributed.world_size())
    return DeviceChoice(device, amp_dtype, channels_last, cuda_graphs,
                        "" if source.startswith("config") else AMP_VARIABLE, trial)


def cpu_trial(config: TrainConfig, measure: Measure) -> dict[str, float]:
    """Each candidate's images/s for `config`'s networks here, cached so that every process and start choose alike."""
    if (cached := cached_trial(config)) is not None:
        return cached
    candidates = _candidates()
    with closing(measure(candidates)) as timings:   # closing: the timer restores the random state it forked
        rounds = list(islice(timings, 5))   # in turn: a burst of other work slows one round of each, not all
    best = {name: round(max(timing[name] for timing in rounds), 1) for name in candidates}
    known = {}
    with suppress(OSError, ValueError):   # none yet, or damaged (cached_trial said so): started afresh
        known = read_json(trial_cache_file())
    entry = {_trial_key(config): {"images_per_s": best}}
    with suppress(OSError), atomic_path(trial_cache_file()) as tmp:   # a read-only home: measured again next time
        tmp.write_text(json.dumps((known if isinstance(known, dict) else {}) | entry, indent=1) + "\n")
    return best


def trial_pick(images_per_s: dict[str, float], amp: str, channels_last: str) -> str:
    """The candidate "auto" picks: fp32 channels_last (fastest on both AVX2 CPUs measured) unless another is over 10%
    faster (timings on a shared machine vary by nearly that); an explicit `amp` or `channels_last` narrows the pool."""
    dtype = {"auto": "", "bf16": "bf16"}.get(amp, "fp32")
    layout = {"auto": "", "on": "channels_last"}.get(channels_last, "NCHW")
    pool = {name: speed for name, speed in images_per_s.items() if name.startswith(dtype) and name.endswith(layout)}
    default = f"{dtype or 'fp32'} {layout or 'channels_last'}"
    fastest = max(pool, key=pool.get)
    return fastest if pool[fastest] > 1.10 * pool.get(default, 0.0) else default


def _candidates() -> list[str]:
    return ["fp32 NCHW", "fp32 channels_last"] + (["bf16 NCHW", "bf16 channels_last"] if cpu_has_bf16() else [])


def cached_trial(config: TrainConfig) -> dict[str, float] | None:
    """An earlier trial's answer for `config`'s networks here, or None; a damaged cache counts as none, saying so."""
    path = trial_cache_file()
    try:
        entry = (read_json(path) if path.exists() else {}).get(_trial_key(config))
        if entry is None:
            return None
        speeds = {name: float(value) for name, value in entry["images_per_s"].items()}
        if sorted(speeds) != sorted(_candidates()) or not all(0 < value < math.inf for value in speeds.values()):
            raise ValueError(f"its speeds {entry['images_per_s']} are not images/s of {', '.join(_candidates())}")
        return speeds
    except (OSError, ValueError, AttributeError, KeyError, TypeError) as error:
        print(f"note: {path} does not hold a CPU trial this project wrote ({str(error)[:120]}): measuring again")
        return None


def trial_cache_file() -> Path:
    """$ANIME_GAN_CACHE_DIR/cpu-trials.json, else ~/.cache/anime-face-gan/ (delete it to measure again)."""
    root = os.environ.get("ANIME_GAN_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"),
                                                         "anime-face-gan")
    return Path(root) / "cpu-trials.json"


def _trial_key(config: TrainConfig) -> str:
    return (f"{describe_device(torch.device('cpu'))} {config.image_size}px z{config.latent_dim} G{config.g_width} "
            f"D{config.d_width}{' SN' if config.spectral_norm else ''}")


# What `size` sets in the notebooks where the learner leaves None: "gpu" the 64x64 DCGAN recipe, "cpu" a small run
SIZES = {
    "gpu": dict(image_size=64, max_images=0, g_width=64, d_width=64, epochs=25, batch_size=128,
                fid_samples=10_000, fid_real=0),
    "cpu": dict(image_size=32, max_images=None, g_width=32, d_width=32, epochs=20, batch_size=TRIAL_BATCH,
                fid_samples=500, fid_real=500),   # Inception: ~6 images/s on a 2-core AVX2 CPU
}
CPU_MINUTES = 2.25   # of training: with the rest of `make demo`, under 5 min on a CPU several times slower than ours
CPU_MIN_STEPS = 900   # at least: at 32x32, 375 steps drew blobs, 750 faces with hair


def cpu_epoch_speed(config: TrainConfig) -> float:
    """Images/s of whole epochs of `config` here: 0.75 x the CPU trial's (74% in `make demo`, with grids and saves)."""
    trial = cpu_trial(config, partial(time_training_steps, config))
    return 0.75 * trial[trial_pick(trial, amp_setting(config)[0], config.channels_last)]


def size_preset(size: str = "auto", device: str | torch.device = "auto", **given) -> dict:
    """SIZES' values for `size` ("auto": "gpu" on a CUDA GPU, else "cpu"), each value in `given` not None winning."""
    if size not in ("auto", "cpu", "gpu"):
        raise ConfigError(f"parameter 'size' must be 'auto', 'cpu' or 'gpu'; got {size!r}")
    gpu = (device if isinstance(device, torch.device) else pick_device(device)).type == "cuda"
    chosen = size if size != "auto" else "gpu" if gpu else "cpu"
    yours = {name: value for name, value in given.items() if value is not None}
    values, how = {**SIZES[chosen], **yours}, ""
    if values["max_images"] is None:   # from the cached trial (01 to 06 agree): CPU_MINUTES, CPU_MIN_STEPS at least
        speed = cpu_epoch_speed(TrainConfig(**{**values, "max_images": 0}))
        budget = max(CPU_MINUTES * 60 * speed, CPU_MIN_STEPS * values["batch_size"])   # images to train
        images = min(max(math.ceil(budget / values["epochs"] / 1000) * 1000, 1_000), 20_000)   # all synthetic faces
        values["max_images"] = images
        values["epochs"] = yours.get("epochs", min(values["epochs"], math.ceil(budget / images)))
        minutes = images * values["epochs"] / speed / 60
        how = f" (about {minutes:.0f} min at the {speed:,.0f} images/s an epoch runs here"
        how += f"; slow or busy CPU: faces need {CPU_MIN_STEPS:,} steps)" if budget > CPU_MINUTES * 60 * speed else ")"
    why = f'size "{size}"' + (f" -> {chosen} ({'a CUDA GPU' if gpu else 'no CUDA GPU'})" if size == "auto" else "")
    count = f"{values['max_images']:,} images" if values["max_images"] else "all images"
    real = f"{values['fid_real']:,}" if values["fid_real"] else "all"
    print(f"{why}: {values['image_size']}x{values['image_size']}, widths {values['g_width']}/{values['d_width']}, "
          f"{count}{how}, {values['epochs']} epochs of batch {values['batch_size']}, FID {values['fid_samples']:,} "
          f"samples vs {real} real{'; yours: ' + ', '.join(yours) if yours else ''}. "
          + ('size = "cpu" trains a small run in minutes' if chosen == "gpu" else
             'size = "gpu" is the 64x64 recipe (hours on a CPU)'))
    return values


def describe_device(device: torch.device) -> str:
    """One line: torch version and the device, e.g. for the top of a training log."""
    what = device.type
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        what = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}"
    elif device.type == "cpu":
        models = [line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name")]
        what = (f"{models[0] if models else platform.processor() or platform.machine()}, "
                f"{torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"
                f"{', bf16' if cpu_has_bf16() else ''}")
    return f"torch {torch.__version__} on {device} ({what})"
