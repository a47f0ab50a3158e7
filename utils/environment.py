"""Where we run and how fast: device, mixed precision and memory layout, chosen per device.

The "auto" choices come from measurements (benchmarks/train_speed.py, results in the README):

- CUDA with bf16 (compute capability >= 8: A100, L4, H100): bf16 autocast + channels_last (measured on an H100).
- CUDA without bf16 (T4, V100): fp16 autocast with a GradScaler + channels_last.
- CPU: decided by a timed trial, because CPUs disagree. On an AVX2 CPU without bf16 instructions bf16 autocast
  made a DCGAN step ~30x slower, and even on an Intel Xeon with AVX512-BF16 (no AMX) it was ~30% slower than fp32;
  channels_last was faster on two AVX2 CPUs. So `cpu_trial` times a few real training steps of this config's
  networks in each candidate (fp32 with and without channels_last; bf16 too where the CPU has bf16 instructions),
  taking turns, for a few seconds, once, keeps fp32 with channels_last unless another candidate is more than 10%
  faster (short timings on a shared machine vary by about that much), and caches the result for this machine,
  torch version, thread count and network size (see `trial_cache_file`).
- Apple MPS: fp32 (autocast on MPS is not faster for these small convolutions).

    >>> from utils.environment import describe
    >>> print(describe(pick_device("auto")))
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from utils.config import TrainConfig
from utils.errors import ConfigError
from utils.files import atomic_path

# What "auto" keeps on a CPU unless the trial finds another candidate faster by MARGIN: fp32 with channels_last was
# the fastest on both AVX2 CPUs measured (65 vs 54 images/s; 44-52 vs 38 on the second, benchmarks/results/), and a
# few seconds of timing on a shared machine vary by more than 10% from one try to the next.
CPU_DEFAULT, MARGIN = "fp32 channels_last", 1.10


def pick_device(name: str = "auto") -> torch.device:
    """The requested device, or the best available one for "auto" (cuda, then mps, then cpu)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:  # "cuda": this process's GPU (one per process under torchrun)
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config field 'device' is 'cuda' but no CUDA GPU is visible: use device='auto' or 'cpu' "
                         "(on Colab: Runtime > Change runtime type > GPU)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("config field 'device' is 'mps' but Apple MPS is not available: use device='auto' or 'cpu'")
    return device


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); autocast is only worth it then."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine() == "arm64" and sys.platform == "darwin"  # Apple M2+ has bf16 instructions
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_amp(device: torch.device, amp: str = "auto") -> torch.dtype | None:
    """The autocast dtype for `device` (None = full fp32). fp16 needs a GradScaler; bf16 does not."""
    if amp == "off":
        return None
    if amp == "bf16":
        if device.type == "cpu" and not cpu_has_bf16():
            raise ConfigError("config field 'amp' is 'bf16' but this CPU has no native bf16 (it would run ~30x slower): "
                             "use amp='auto' or 'off'")
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError(f"config field 'amp' is 'fp16', which needs a CUDA GPU (device is {device}): use 'auto' or 'off'")
        return torch.float16
    # auto
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    return None  # the CPU's "auto" is decided by cpu_trial (choose_amp_and_layout); MPS: fp32


def pick_channels_last(device: torch.device, setting: str = "auto", compile: bool = False) -> bool:
    """channels_last (NHWC) lets cuDNN use tensor-core kernels without layout transposes; oneDNN on the CPU likes it too.

    Under torch.compile "auto" leaves the layout to the compiler: with channels_last, inductor's convolution
    backward at D's 4x4 layer failed a stride assertion on torch 2.11 (measured on an H100).
    """
    if setting != "auto":
        return setting == "on"
    return device.type in ("cuda", "cpu") and not compile


def choose_amp_and_layout(device: torch.device, config: TrainConfig, measure=None) -> tuple[torch.dtype | None, bool, str]:
    """(autocast dtype, channels_last, how they were chosen) for training `config` on `device`.

    Settings given explicitly are taken as they are; "auto" on a CPU comes from `cpu_trial`, timed with
    `measure` (utils.training.time_training_steps), elsewhere from the rules above. The third item is a line for
    the log ("" when nothing was measured).
    """
    if device.type != "cpu" or config.compile or "auto" not in (config.amp, config.channels_last):
        return pick_amp(device, config.amp), pick_channels_last(device, config.channels_last, config.compile), ""
    explicit = None if config.amp == "auto" else pick_amp(device, config.amp)  # a refused value fails before measuring
    trial = cpu_trial(config, measure)
    amp = trial.amp if config.amp == "auto" else explicit
    channels_last = trial.channels_last if config.channels_last == "auto" else config.channels_last == "on"
    return amp, channels_last, trial.summary


@dataclass
class CPUTrial:
    amp: torch.dtype | None
    channels_last: bool
    summary: str
    images_per_s: float = 0.0   # the chosen candidate's figure


TRIAL_BATCH = 32   # the batch size the trial times (at most the run's): utils.training.time_training_steps


def cpu_trial(config: TrainConfig, measure) -> CPUTrial:
    """fp32 with channels_last, unless another of fp32 / bf16 (where the CPU has bf16 instructions) x NCHW /
    channels_last is more than 10% faster for `config`'s networks.

    `measure(candidates) -> {name: images/s}` times a few real training steps of each candidate ("fp32 NCHW",
    "bf16 channels_last", ...). Measured once per machine, torch version, thread count and network size, and
    cached (`trial_cache_file`): the next runs read the answer, so every process on a machine makes the same
    choice (a resumed run trains exactly like an uninterrupted one).
    """
    cached = cached_trial(config)
    if cached is not None:
        return cached
    candidates = ["fp32 NCHW", "fp32 channels_last"] + (["bf16 NCHW", "bf16 channels_last"] if cpu_has_bf16() else [])
    results = {name: round(value, 1) for name, value in measure(candidates).items()}
    _save_trial(trial_cache_file(), _trial_key(config), results)
    return _decide(results, cached=False)


def cached_trial(config: TrainConfig) -> CPUTrial | None:
    """The answer of an earlier trial for `config`'s networks on this machine, or None (nothing measured here)."""
    try:
        results = json.loads(trial_cache_file().read_text()).get(_trial_key(config))
    except (OSError, ValueError, AttributeError):
        return None
    return _decide(results, cached=True) if results else None


def _decide(results: dict[str, float], cached: bool) -> CPUTrial:
    fastest = max(results, key=results.get)
    best = fastest if results[fastest] > MARGIN * results[CPU_DEFAULT] else CPU_DEFAULT
    dtype, layout = best.split()
    measured = ", ".join(f"{name} {value:,.0f}" for name, value in results.items())
    return CPUTrial(torch.bfloat16 if dtype == "bf16" else None, layout == "channels_last",
                    f"CPU trial ({'cached' if cached else 'just measured'}; images/s of training steps): "
                    f"{measured} -> {best}", results[best])


def speed_gap_note(config: TrainConfig, epoch: int, epoch_images_per_s: float, tolerance: float = 0.25) -> str:
    """Why an epoch's images/s and the CPU trial's figure differ by more than `tolerance` ("" when they agree).

    The trial times `TRIAL_BATCH` random images per step with nothing else running in the process; an epoch also
    shuffles, flips and scales its batches, reads the losses, draws the live plot and saves a grid and a checkpoint.
    Other work on the machine slows whichever of the two it overlaps, which the load average shows.
    """
    trial = cached_trial(config)
    if trial is None or not trial.images_per_s or abs(epoch_images_per_s / trial.images_per_s - 1) <= tolerance:
        return ""
    gap = epoch_images_per_s / trial.images_per_s - 1
    if gap > 0:   # the epochs beat the trial: it was timed earlier, under other conditions, and its answer kept
        return (f"note: epoch {epoch} trained at {epoch_images_per_s:,.0f} images/s, {gap:.0%} above the CPU trial's "
                f"{trial.images_per_s:,.0f}, which was measured earlier and cached (perhaps while other work shared "
                f"this CPU): delete {trial_cache_file()} to measure it again")
    reasons = []
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
        if load > torch.get_num_threads() + 0.5:
            reasons.append(f"other work shares this CPU (load average {load:.1f} on {cores} cores)")
    except OSError:
        pass
    batch = min(TRIAL_BATCH, config.batch_size)
    if batch != config.batch_size:
        reasons.append(f"the trial times batches of {batch}, the epochs batches of {config.batch_size}")
    reasons.append("an epoch also shuffles and scales its batches, logs, draws the live plot and saves")
    return (f"note: epoch {epoch} trained at {epoch_images_per_s:,.0f} images/s, {-gap:.0%} below the CPU trial's "
            f"{trial.images_per_s:,.0f}: " + "; ".join(reasons))


def trial_cache_file() -> Path:
    """$ANIME_GAN_CACHE_DIR/cpu-trials.json, else ~/.cache/anime-face-gan/ (delete it to measure again)."""
    root = os.environ.get("ANIME_GAN_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"),
                                                         "anime-face-gan")
    return Path(root) / "cpu-trials.json"


def _trial_key(config: TrainConfig) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        models = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu = models[0].split(":", 1)[1].strip() if models else cpu
    except OSError:
        pass
    flags = hashlib.sha1(str(torch.backends.cpu.get_cpu_capability()).encode() + str(cpu_has_bf16()).encode()).hexdigest()[:6]
    return (f"{cpu}|{flags}|torch {torch.__version__}|{torch.get_num_threads()} threads|{config.image_size}px "
            f"z{config.latent_dim} G{config.g_width} D{config.d_width}{' SN' if config.spectral_norm else ''}")


def _save_trial(cache: Path, key: str, results: dict) -> None:
    try:
        known = json.loads(cache.read_text()) if cache.is_file() else {}
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}
    try:
        with atomic_path(cache) as tmp:
            tmp.write_text(json.dumps(known | {key: results}, indent=1) + "\n")
    except OSError:  # a read-only home: the trial is simply repeated next time
        pass


def pick_cuda_graphs(device: torch.device, setting: str, *, amp_dtype: torch.dtype | None, diffaugment: str,
                     compile: bool, world_size: int, label_flip: float = 0.0) -> bool:
    """Whether to replay each training step as one CUDA graph (utils.training.CUDAGraphStep).

    At batch 128 the eager step is bound by launching ~300 small kernels from Python; a graph launches them
    at once. It needs one CUDA GPU and nothing in the step that needs the host or a generator the graph cannot
    own: not DiffAugment or noisy labels (their random draws), torch.compile or several processes. fp16 can be
    recorded (GradScaler hands the fused Adam its scale and inf check as device tensors, so nothing waits), but that
    path has not run on a GPU yet (benchmarks/gpu_check.sh measures it): "on" records it, "auto" keeps fp16 steps
    eager until then.
    """
    blockers = [reason for reason, present in [
        ("DiffAugment", bool(diffaugment)), ("label_flip", label_flip > 0), ("torch.compile", compile),
        ("several processes", world_size > 1)] if present]
    if setting == "on" and (device.type != "cuda" or blockers):
        raise ConfigError(f"config field 'cuda_graphs' is 'on' but it needs one CUDA GPU without "
                          f"{', '.join(blockers) or 'a CPU or MPS device'}: use cuda_graphs='auto' or 'off'")
    unmeasured = amp_dtype == torch.float16
    return device.type == "cuda" and not blockers and (setting == "on" or (setting == "auto" and not unmeasured))


def describe(device: torch.device) -> str:
    """One line: torch version and the device, e.g. for the top of a training log."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        what = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}"
    elif device.type == "cpu":
        what = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, " \
               f"{torch.backends.cpu.get_cpu_capability()}{', bf16' if cpu_has_bf16() else ''}"
    else:
        what = device.type
    return f"torch {torch.__version__} on {device} ({what})"


def in_colab() -> bool:
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def in_kaggle() -> bool:
    return "KAGGLE_KERNEL_RUN_TYPE" in os.environ
