"""Where we run and how fast: device, mixed precision and memory layout, chosen per device.

The "auto" choices come from measurements (benchmarks/train_speed.py, results in the README):

- CUDA with bf16 (compute capability >= 8: A100, L4, H100): bf16 autocast + channels_last.
- CUDA without bf16 (T4, V100): fp16 autocast with a GradScaler + channels_last.
- CPU: no autocast unless the CPU has native bf16 (AVX512-BF16 / AMX); on an AVX2 CPU bf16 autocast made a
  DCGAN step ~30x slower. channels_last is on (65 vs 54 images/s at 64x64 on a 2-core AVX2 CPU).
- Apple MPS: fp32 (autocast on MPS is not faster for these small convolutions).

    >>> from utils.environment import describe
    >>> print(describe(pick_device("auto")))
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import torch
from utils.errors import ConfigError


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
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def pick_channels_last(device: torch.device, setting: str = "auto", compile: bool = False) -> bool:
    """channels_last (NHWC) lets cuDNN use tensor-core kernels without layout transposes; oneDNN on the CPU likes it too.

    Under torch.compile "auto" leaves the layout to the compiler: with channels_last, inductor's convolution
    backward at D's 4x4 layer failed a stride assertion on torch 2.11 (measured on an H100).
    """
    if setting != "auto":
        return setting == "on"
    return device.type in ("cuda", "cpu") and not compile


def pick_cuda_graphs(device: torch.device, setting: str, *, diffaugment: str, compile: bool, world_size: int) -> bool:
    """Whether to replay each training step as one CUDA graph (utils.training.CUDAGraphStep).

    At batch 128 the eager step is bound by launching ~300 small kernels from Python; a graph launches them
    at once. "auto" uses graphs on one CUDA GPU when nothing in the step needs the host or a generator the
    graph cannot own: not with DiffAugment (its random draws), torch.compile or several processes. fp16 is
    fine: GradScaler hands the fused Adam its scale and inf check as device tensors, so nothing waits.
    """
    blockers = [reason for reason, present in [
        ("DiffAugment", bool(diffaugment)), ("torch.compile", compile), ("several processes", world_size > 1)] if present]
    if setting == "on" and (device.type != "cuda" or blockers):
        raise ConfigError(f"config field 'cuda_graphs' is 'on' but it needs one CUDA GPU without "
                          f"{', '.join(blockers) or 'a CPU or MPS device'}: use cuda_graphs='auto' or 'off'")
    return setting != "off" and device.type == "cuda" and not blockers


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
