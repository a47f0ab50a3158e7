"""Several GPUs (or CPU processes) with PyTorch's own engine: torch.distributed + DistributedDataParallel.

From a shell, the same training code runs under torchrun:

    torchrun --nproc_per_node 2 -m utils.train --data kaggle --out generated/ddp-run

From a notebook cell (Kaggle's 2 x T4), `launch` starts one process per visible GPU and streams their output:

    >>> from utils.distributed import launch
    >>> launch(config)            # config: a TrainConfig

Semantics: each process sees its own shard of every epoch's permutation; `batch_size` is per process, so the
effective batch is batch_size x processes (printed at start, with the learning-rate rule, see TrainConfig.scale_lr).
BatchNorm: by default each process normalises with its own batch's statistics, which is exactly what one GPU
does with a batch of `batch_size`; `sync_batchnorm=True` shares them across processes (SyncBatchNorm) at the cost of
a sync per BatchNorm layer. Only process 0 writes samples, checkpoints, history and GIFs; checkpoints hold the plain
(unwrapped) models, so a run started on 2 GPUs resumes on 1 and the other way round.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn


def setup() -> None:
    """Join the process group when started by torchrun (WORLD_SIZE > 1): nccl on GPUs, gloo on CPUs."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def agree(flag: bool) -> bool:
    """Process 0's decision, shared with every process (e.g. "stop now"), so all of them take the same step."""
    if not dist.is_initialized():
        return flag
    decision = [flag]
    dist.broadcast_object_list(decision, src=0)
    return bool(decision[0])


@contextmanager
def main_first() -> Iterator[None]:
    """Run the block in process 0 first, then in the others (e.g. building the dataset cache once)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def wrap(model: nn.Module, device: torch.device, sync_batchnorm: bool) -> nn.Module:
    """DistributedDataParallel around `model` when running distributed, else `model` itself."""
    if not dist.is_initialized():
        return model
    if sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def launch(config, nprocs: int | None = None) -> None:
    """Run `python -m utils.train` on `nprocs` processes (default: one per visible GPU) and stream its output.

    A notebook cannot host several processes of its own training loop, so this starts torchrun as a
    subprocess with the config's fields as options; the run folder is the same as a single-process run's.
    """
    from .train import config_to_argv  # late import: utils.train imports this module

    nprocs = nprocs or max(torch.cuda.device_count(), 1)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nprocs}",
               "-m", "utils.train", *config_to_argv(config)]
    print(" ".join(command), flush=True)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
    if process.returncode != 0:
        raise RuntimeError(f"distributed training failed (exit code {process.returncode}); see the output above")
