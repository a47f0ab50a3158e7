"""Several GPUs (or CPU processes) with DistributedDataParallel: `torchrun --nproc_per_node 2 -m utils.train ...`
from a shell, `launch(config)` from a notebook. Each process trains on its own shard of every epoch; gradients are
averaged; only process 0 writes, and checkpoints hold the unwrapped models: a run resumes on any number of processes."""

import codecs
import copy
import inspect
import itertools
import os
import shlex
import subprocess
import sys
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from utils.config import TrainConfig, config_to_argv
from utils.errors import ConfigError, UserError
from utils.urls import redact

# No buffer broadcast at each forward: D runs twice before one backward, and a broadcast at the second forward would
# overwrite BatchNorm statistics saved for that backward. Each process keeps its own running statistics.
_NO_BUFFER_SYNC_IN_FORWARD = (
    {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
    else {"broadcast_buffers": False})


def launched() -> bool:
    """True in a process started by torchrun with more than one process (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> None:
    """Join torchrun's process group (nccl for GPUs, gloo for CPUs); others may wait an hour while process 0 works."""
    if launched() and not dist.is_initialized() and device.type == "cuda":
        dist.init_process_group("nccl", timeout=timedelta(hours=1), device_id=device)
    elif launched() and not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(hours=1))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group together: a process that exits while another still talks to it can abort it."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@contextmanager
def main_first() -> Iterator[None]:
    """Run the block in process 0 first, then in the others (e.g. building the dataset cache once)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def average(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of `tensor` over all processes: every process logs, and stops on, the same numbers."""
    if not dist.is_initialized():
        return tensor
    total = tensor.clone()
    dist.all_reduce(total)  # a sum: gloo has no AVG
    return total / world_size()


def agree(flag: bool) -> bool:
    """True in every process if `flag` is True in any: for decisions all must take together (stop early)."""
    if not dist.is_initialized():
        return flag
    # nccl moves tensors of this process's GPU (the current one), gloo CPU tensors
    votes = torch.tensor([float(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(votes, op=dist.ReduceOp.MAX)
    return bool(votes.item())


def check_sync_batchnorm(sync_batchnorm: bool, device: torch.device) -> None:
    """SyncBatchNorm only runs on CUDA: say so before any process starts, not deep inside DDP."""
    if sync_batchnorm and device.type != "cuda":
        raise ConfigError(f"config field 'sync_batchnorm' needs CUDA GPUs (PyTorch's SyncBatchNorm does not run on "
                          f"{device.type}): set sync_batchnorm=False (--no-sync-batchnorm)")


def wrap(model: nn.Module, device: torch.device, sync_batchnorm: bool) -> nn.Module:
    """DistributedDataParallel around `model` (broadcasting process 0's weights) when distributed, else `model`. With
    `sync_batchnorm` it wraps a SyncBatchNorm twin sharing `model`'s tensors, so process 0 alone can sample `model`."""
    if not dist.is_initialized():
        return model
    check_sync_batchnorm(sync_batchnorm, device)
    if sync_batchnorm:
        shared = {id(tensor): tensor for tensor in itertools.chain(model.parameters(), model.buffers())}
        model = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model, memo=shared))
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, **_NO_BUFFER_SYNC_IN_FORWARD)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside `wrap`'s DDP wrapper: calling it computes the same but all-reduces no gradients."""
    return model.module if isinstance(model, DDP) else model


def launch(config: TrainConfig, nprocs: int | None = None) -> None:
    """Run `python -m utils.train` under torchrun on `nprocs` processes (default: one per visible GPU), streaming
    its output; in the current folder, so relative `out` and `data_dir` name what `train(config)` would."""
    gpus = torch.cuda.device_count() if config.device == "auto" or config.device.startswith("cuda") else 0
    check_sync_batchnorm(config.sync_batchnorm, torch.device("cuda" if gpus else "cpu"))
    if nprocs is None and not gpus:
        raise ConfigError(f"launch: config field 'device' is '{config.device}' and no CUDA GPU is used, so there is "
                          "no GPU count to default to: pass nprocs=N to start N CPU processes")
    nprocs = gpus if nprocs is None else nprocs
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nprocs}",
               "-m", "utils.train", *config_to_argv(config)]
    # the children import this very `utils` package, whatever the notebook's working folder
    path = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))
    print(redact(shlex.join(command)), flush=True)   # a token in `data` stays out of the notebook
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env={**os.environ, "PYTHONPATH": path}) as process:
        # raw chunks, not lines: tqdm's carriage returns then redraw one progress line in the notebook
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while chunk := process.stdout.read1():
            print(decoder.decode(chunk), end="", flush=True)
    if process.returncode != 0:
        raise UserError(f"distributed training failed: torchrun exited with code {process.returncode}; "
                        "the first error is in the output above")
