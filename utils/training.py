"""The training loop: `train(config)`, shared by notebook 03, `python -m utils.train` and the tests.

    >>> from utils.config import TrainConfig
    >>> from utils.training import train
    >>> result = train(TrainConfig(epochs=5, out="generated/my-run"))   # run it again: it resumes

What makes it fast (numbers in the README, from benchmarks/train_speed.py):
- the dataset is decoded once into a uint8 tensor (utils/data.py) and, when it fits, lives on the GPU;
  shuffling, flips and scaling to [-1, 1] happen there, so no DataLoader workers decode JPEGs each epoch;
- no per-step host syncs: losses and D's scores are summed on the device and read every `log_every` steps;
- bf16 autocast on GPUs that have it, fp16 + GradScaler on those that don't, channels_last, fused Adam;
- D's weights are frozen during G's step, so their unused gradients are never computed.

What makes it safe to interrupt (Colab disconnects, kernel restarts, SIGKILL):
- after every epoch: the sample grid, then history.json, then checkpoint.pt, each written to a temporary
  file and renamed, so a file is either the old one or the new one, never half-written;
- the checkpoint holds G, D, both optimisers, the AMP scaler, the EMA generator, the fixed noise, the history
  and the RNG states; the weights start from `seed` and every epoch's randomness is derived from (seed, epoch),
  so a resumed run ends with exactly the weights of an uninterrupted one (tests/test_faults.py kills one to check);
- on resume, what a killed epoch wrote ahead of its checkpoint (its grid, temporary files) is removed, and the
  checkpoint is loaded with weights_only=True, so a tampered file is refused instead of running code.
"""

from __future__ import annotations

import copy
import json
import math
import os
import pickle
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .augment import diff_augment
from .config import TrainConfig
from .data import load_dataset
from .errors import ConfigError, UserError
from .environment import describe, pick_amp, pick_channels_last, pick_cuda_graphs, pick_device
from .metrics import weights_path, fid_for_config
from .models import Discriminator, Generator
from .files import atomic_path
from .visualize import frame_path, list_frames, save_grid

CHECKPOINT = "checkpoint.pt"
# Fields that fix the shape of the networks or the data: a run folder cannot be resumed with other values.
ARCHITECTURE_FIELDS = ("image_size", "latent_dim", "g_width", "d_width", "spectral_norm", "num_samples", "data")


class TrainingDiverged(UserError, RuntimeError):
    """Raised when a loss becomes NaN or infinite; the last good checkpoint is left untouched."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used: not readable, or holding more than plain data."""


@dataclass
class TrainResult:
    generator: nn.Module        # the generator to sample from (the EMA copy when ema_decay > 0)
    discriminator: nn.Module
    history: dict
    run_dir: Path
    epochs_done: int


# --------------------------------------------------------------------------------------------- losses

def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def generator_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "hinge":
        return -fake_logits.mean()
    # the "non-saturating" loss of the DCGAN paper: maximise log D(G(z)) rather than minimise log(1 - D(G(z)))
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


# ----------------------------------------------------------------------------------------------- data

class DeviceData:
    """Serves shuffled, flipped batches in [-1, 1] from a uint8 image tensor.

    The tensor lives on the GPU when it fits (`data_on_device`), else in pinned host memory and each
    batch is copied over asynchronously. With several processes, each one gets its own shard of every
    epoch's permutation.
    """

    def __init__(self, images: torch.Tensor, device: torch.device, config: TrainConfig, channels_last: bool,
                 log: Callable[[str], None] = print):
        self.device, self.batch_size, self.channels_last = device, config.batch_size, channels_last
        nbytes = images.numel()
        on_device = config.data_on_device == "on"
        if config.data_on_device == "auto" and device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            on_device = nbytes < 0.4 * free
        if device.type == "cpu":
            self.images, where = images, "in host memory (memory-mapped cache)"
        elif on_device:
            self.images, where = images.to(device), f"on {device}"
        elif nbytes < 0.5 * _available_ram():
            pinned = images.pin_memory() if device.type == "cuda" else images
            self.images, where = pinned, "in pinned host memory (too large for the GPU), copied per batch"
        else:
            self.images, where = images, "streamed from the memory-mapped cache (too large for the GPU and for RAM)"
        log(f"dataset: {len(images):,} images of {tuple(images.shape[1:])}, {nbytes / 2**20:,.0f} MiB, kept {where}")
        rank, world = distributed.rank(), distributed.world_size()
        self.rank, self.world = rank, world
        self.steps_per_epoch = len(images) // world // self.batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(f"config field 'batch_size' ({self.batch_size}) is larger than the {len(images)} images "
                             f"available to each of {world} process(es): lower batch_size or use more images")

    def epoch(self, order: torch.Tensor, flips: torch.Tensor) -> Iterator[torch.Tensor]:
        """Yield this process's batches for one epoch, given the epoch's permutation and flip coin tosses."""
        per_rank = len(order) // self.world
        order = order[self.rank * per_rank:(self.rank + 1) * per_rank]
        flips = flips[self.rank * per_rank:(self.rank + 1) * per_rank]
        if self.images.device == self.device:
            order, flips = order.to(self.device), flips.to(self.device)
        for step in range(self.steps_per_epoch):
            index = order[step * self.batch_size:(step + 1) * self.batch_size]
            batch = self.images[index].to(self.device, non_blocking=True)
            flip = flips[step * self.batch_size:(step + 1) * self.batch_size].to(self.device, non_blocking=True)
            x = batch.float().div_(127.5).sub_(1)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            yield x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def _available_ram() -> int:
    """Bytes of RAM free for new allocations (Linux and macOS; elsewhere assume plenty)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


# ---------------------------------------------------------------------------------------- checkpoints

def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temporary file, then rename: the previous checkpoint survives any interruption."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    """Load with weights_only=True: a checkpoint is data, and an untrusted pickle must not run code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"refused to load {path}: it holds Python objects other than tensors and plain data, and "
                         "loading those could run arbitrary code. Use checkpoints written by this code only; move the "
                         "file away to start a new run in its folder") from error
    except (RuntimeError, EOFError, KeyError) as error:  # what torch.load raises on a truncated or foreign file
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(error).__name__}: {str(error)[:80]}): "
                         "move it away to start a new run in its folder") from error


def load_models(run_dir: str | Path) -> tuple[Generator, Discriminator, dict]:
    """A run folder's generator (its EMA weights when the run kept them), discriminator and history, on the CPU."""
    state = load_checkpoint(Path(run_dir) / CHECKPOINT)
    config = TrainConfig.from_dict(state["config"])
    generator = Generator(config.image_size, config.latent_dim, config.g_width)
    if state.get("ema") is not None:
        generator.load_state_dict({k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")})
    else:
        generator.load_state_dict(state["generator"])
    discriminator = Discriminator(config.image_size, config.d_width, config.spectral_norm)
    discriminator.load_state_dict(state["discriminator"])
    return generator, discriminator, state["history"]


def _write_json(path: Path, value: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=1) + "\n")


def _roll_back_to_checkpoint(run_dir: Path, epochs_done: int, history: dict) -> None:
    """Drop what an epoch killed before its checkpoint landed had already written (its sample grid, history.json):
    that epoch is trained again, so the folder shows exactly the epochs the checkpoint holds, one frame each."""
    for epoch, path in list_frames(run_dir):
        if epoch > epochs_done:
            path.unlink()
    if (run_dir / "history.json").exists():
        _write_json(run_dir / "history.json", history)


def _check_resumable(run_dir: Path, config: TrainConfig, saved: dict) -> None:
    for name in ARCHITECTURE_FIELDS:
        if saved.get(name) != getattr(config, name):
            raise ConfigError(f"{run_dir} holds a run trained with {name}={saved.get(name)!r}, not {getattr(config, name)!r}: "
                             f"use the same {name} to resume it, or another 'out' folder for a new run")


def prepare_run_dir(config: TrainConfig) -> Path:
    """Create the run folder and prove it is writable before any training starts."""
    run_dir = Path(config.out)
    try:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
        # temporary files of writes that a kill interrupted (see atomic_path): never complete, never needed
        for stale in [*run_dir.glob(".*.tmp.*"), *(run_dir / "samples").glob(".*.tmp.*")]:
            stale.unlink()
    except OSError as error:
        raise ConfigError(f"config field 'out': cannot write to {run_dir} ({error.strerror}): choose a writable folder "
                         "(on Kaggle, under /kaggle/working)") from error
    if (run_dir / CHECKPOINT).exists() and not config.resume:
        raise ConfigError(f"config field 'resume' is False but {run_dir} already holds a run: pass resume=True (--resume) "
                         "to continue it, or choose another 'out' folder")
    return run_dir


# ------------------------------------------------------------------------------------------- training

def epoch_generators(seed: int, epoch: int, device: torch.device,
                     rank: int = 0) -> tuple[torch.Generator, torch.Generator]:
    """(CPU, device) random generators for one epoch, derived from (seed, epoch) and the process's rank only.

    Because nothing carries over from one epoch to the next, a run resumed at epoch k draws exactly the
    same batches, noise and augmentations as an uninterrupted one. The CPU generator (the epoch's
    permutation, shared out between processes) is the same in every process; the device generator (noise,
    augmentations) differs per process, else all processes would train on the same fakes. (The offsets are
    small because the CPU generator keeps only the low 32 bits of a seed.)
    """
    cpu = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    dev = torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch + 500_000 + rank * 1_000_000)
    return cpu, dev


class EMA(nn.Module):
    """An exponential moving average of a model's weights, which samples better than the raw weights.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) over the updates n, so early on the average follows
    the model closely instead of dragging the random initial weights along for thousands of steps. Buffers
    (BatchNorm statistics) are copied. Everything stays on the device: no host sync per step.
    """

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay
        self.register_buffer("updates", torch.zeros((), device=next(model.parameters()).device))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        weight = 1 - torch.clamp((1 + self.updates) / (10 + self.updates), max=self.decay)
        # average += weight * (model - average). Not _foreach_lerp_: it takes the weight as a Python number,
        # which would read `weight` back from the device every step (and cannot be recorded in a CUDA graph).
        average = list(self.module.parameters())
        step = torch._foreach_sub(list(model.parameters()), average)
        torch._foreach_mul_(step, weight)
        torch._foreach_add_(average, step)
        torch._foreach_copy_(list(self.module.buffers()), list(model.buffers()))
        self.updates += 1


class CUDAGraphStep:
    """Runs a training step eagerly for a few warm-up calls, then records it once as a CUDA graph and replays it.

    At batch 128 the eager step is bound by launching some 300 small kernels from Python, one by one: a
    replay launches them all at once. The step must never wait for the device (no .item()), and its inputs are
    copied into fixed buffers, because a graph always reads the addresses it was recorded with.
    """

    def __init__(self, step: Callable[..., None], warmup: int = 3):
        self.step, self.warmup, self.graph = step, warmup, None

    def __call__(self, real: torch.Tensor, z: torch.Tensor, gen: torch.Generator) -> None:
        if self.graph is None and self.warmup > 0:  # eager steps on a side stream: cuDNN autotuning, allocations
            self.warmup -= 1
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self.step(real, z, gen)
            torch.cuda.current_stream().wait_stream(stream)
            return
        if self.graph is None:  # recording runs nothing: the replay below trains on this batch
            self.real, self.z, self.graph = real.clone(), z.clone(), torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.step(self.real, self.z, gen)
        else:
            self.real.copy_(real)
            self.z.copy_(z)
        self.graph.replay()


@contextmanager
def frozen(model: nn.Module):
    """Skip the weight gradients of `model` (D during G's step: G only needs gradients w.r.t. D's input)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def train(config: TrainConfig, progress: bool = True, live_plot=None, images: torch.Tensor | None = None) -> TrainResult:
    """Train (or resume) the run in `config.out` until `config.epochs` epochs are done.

    `live_plot` is anything with `update(history, latest_grid_path, force=False)` (utils.visualize.LivePlot in
    notebook 03). `images` skips loading `config.data` (tests, benchmarks). Returns the trained models.
    """
    device = distributed.process_device(pick_device(config.device))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    distributed.setup(device)
    is_main = distributed.is_main()
    log = print if is_main else (lambda *_: None)
    amp_dtype = pick_amp(device, config.amp)
    channels_last = pick_channels_last(device, config.channels_last, config.compile)
    if config.fid_every:
        weights_path(config.fid_weights)  # a missing weights file fails now, not at the first FID epoch
    run_dir = prepare_run_dir(config) if is_main else Path(config.out)
    distributed.barrier()
    log(describe(device))
    log(f"mixed precision: {amp_dtype or 'off (fp32)'}, channels_last: {'on' if channels_last else 'off'}, "
        f"torch.compile: {'on' if config.compile else 'off'}")

    # data
    if images is None:
        with distributed.main_first():  # the main process builds the cache, the others then reuse it
            images = load_dataset(config, progress=progress and is_main)
    data = DeviceData(images, device, config, channels_last, log)

    # models and optimisers, initialised from the seed: the same config starts from the same weights
    torch.manual_seed(config.seed)
    generator = Generator(config.image_size, config.latent_dim, config.g_width).to(device)
    discriminator = Discriminator(config.image_size, config.d_width, config.spectral_norm).to(device)
    if channels_last:
        generator.to(memory_format=torch.channels_last)
        discriminator.to(memory_format=torch.channels_last)
    ema = None
    if config.ema_decay > 0:
        ema = EMA(generator, config.ema_decay)
    lr_g, lr_d = config.scaled_lrs(distributed.world_size())
    cuda_graphs = pick_cuda_graphs(device, config.cuda_graphs, amp_dtype=amp_dtype, diffaugment=config.diffaugment,
                                   compile=config.compile, world_size=distributed.world_size())
    fused = {"fused": True, "capturable": cuda_graphs} if device.type == "cuda" else {"foreach": True}
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr_g, betas=(config.beta1, config.beta2), **fused)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr_d, betas=(config.beta1, config.beta2), **fused)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    fixed_noise = torch.randn(config.num_samples, config.latent_dim, 1, 1,
                              generator=torch.Generator().manual_seed(config.seed))
    history: dict = {"steps": [], "epochs": []}
    start_epoch = 1

    checkpoint_path = run_dir / CHECKPOINT
    if config.resume and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        _check_resumable(run_dir, config, state["config"])
        generator.load_state_dict(state["generator"])
        discriminator.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        fixed_noise, history = state["fixed_noise"], state["history"]
        torch.set_rng_state(state["rng"]["cpu"])
        start_epoch = state["epoch"] + 1
        log(f"resuming {run_dir} after epoch {state['epoch']} (of {config.epochs})")
    if is_main:
        config.save(run_dir / "config.json")
        _roll_back_to_checkpoint(run_dir, start_epoch - 1, history)
    if start_epoch > config.epochs:
        log(f"{run_dir} already has {start_epoch - 1} epochs; raise 'epochs' to train longer")

    world = distributed.world_size()
    if world > 1:
        log(f"distributed: {world} processes x batch {config.batch_size} = effective batch {world * config.batch_size}; "
            f"learning rates G {lr_g:.2e}, D {lr_d:.2e}" + (" (x sqrt(effective batch / 128))" if config.scale_lr else
                                                            " (not scaled: pass scale_lr=True for x sqrt(effective batch / 128))"))
    train_g, train_d = distributed.wrap(generator, device, config.sync_batchnorm), \
        distributed.wrap(discriminator, device, config.sync_batchnorm)
    # G's step calls D itself, not its DDP wrapper: D's frozen weights get no gradients to all-reduce there
    frozen_d = distributed.unwrap(train_d)
    if config.compile:
        train_g, train_d, frozen_d = torch.compile(train_g), torch.compile(train_d), torch.compile(frozen_d)
    # autocast's cache of bf16 weight copies must be off inside a CUDA graph (PyTorch's CUDA graphs notes)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype, cache_enabled=not cuda_graphs)) if amp_dtype \
        else nullcontext
    fixed_noise_device = fixed_noise.to(device)
    sampler = ema.module if ema is not None else generator

    def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return diff_augment(x, config.diffaugment, gen) if config.diffaugment else x

    totals = torch.zeros(4, device=device)  # loss_d, loss_g, D(x), D(G(z)) summed since the last read

    def train_step(real: torch.Tensor, z: torch.Tensor, gen: torch.Generator) -> None:
        """One round of the game. It never waits for the device, so on a GPU it can be replayed as a CUDA graph."""
        # 1) D learns to tell real from fake: maximise log D(x) + log(1 - D(G(z)))
        with autocast():
            fake = train_g(z)
            real_logits = train_d(augment(real, gen))
            fake_logits = train_d(augment(fake.detach(), gen))
            loss_d = discriminator_loss(real_logits, fake_logits, config.loss)
        opt_d.zero_grad(set_to_none=True)
        scaler.scale(loss_d).backward()
        scaler.step(opt_d)
        # 2) G learns to fool D (D's weights frozen: only the gradient w.r.t. the fake images is needed)
        with frozen(discriminator), autocast():
            gen_logits = frozen_d(augment(fake, gen))
            loss_g = generator_loss(gen_logits, config.loss)
        opt_g.zero_grad(set_to_none=True)
        scaler.scale(loss_g).backward()
        scaler.step(opt_g)
        scaler.update()
        if ema is not None:
            ema.update(generator)
        totals.add_(torch.stack([loss_d.detach().float(), loss_g.detach().float(),
                                 torch.sigmoid(real_logits.detach().float()).mean(),
                                 torch.sigmoid(fake_logits.detach().float()).mean()]))

    run_step = CUDAGraphStep(train_step) if cuda_graphs else train_step
    log(f"CUDA graphs: {'on' if cuda_graphs else 'off'}")

    fid = None  # built on first use: the reference statistics are computed (or loaded from data/) once
    budget_s = config.max_minutes * 60 - sum(e["seconds"] for e in history["epochs"])
    step = history["steps"][-1]["step"] if history["steps"] else 0
    for epoch in range(start_epoch, config.epochs + 1):
        if config.max_minutes and budget_s <= 0:
            log(f"time budget of {config.max_minutes} minutes used up after epoch {epoch - 1}")
            break
        cpu_gen, dev_gen = epoch_generators(config.seed, epoch, device, distributed.rank())
        order = torch.randperm(len(images), generator=cpu_gen)
        flips = torch.rand(len(images), generator=cpu_gen) < 0.5
        totals.zero_()
        since_read = 0
        started = time.perf_counter()
        bar = tqdm(data.epoch(order, flips), total=data.steps_per_epoch, desc=f"epoch {epoch}/{config.epochs}",
                   disable=not (progress and is_main), leave=False)
        for index, real in enumerate(bar, 1):
            z = torch.randn(real.shape[0], config.latent_dim, 1, 1, device=device, generator=dev_gen)
            run_step(real, z, dev_gen)
            step += 1
            since_read += 1
            if since_read == config.log_every or index == data.steps_per_epoch:
                record = _read_totals(distributed.average(totals), since_read, epoch, step,
                                      time.perf_counter() - started)
                history["steps"].append(record)
                totals.zero_()
                since_read = 0
                bar.set_postfix(loss_d=f"{record['loss_d']:.3f}", loss_g=f"{record['loss_g']:.3f}",
                                d_x=f"{record['d_real']:.2f}", d_g_z=f"{record['d_fake']:.2f}")
                if live_plot is not None and is_main:
                    live_plot.update(history, None)
                if config.max_minutes and distributed.agree(time.perf_counter() - started > budget_s):
                    break  # out of time: this epoch ends early and is saved like any other
        bar.close()
        seconds = time.perf_counter() - started
        budget_s -= seconds
        epoch_record = {"epoch": epoch, "seconds": round(seconds, 2),
                        "images_per_s": round(index * config.batch_size * world / seconds, 1)}
        if index < data.steps_per_epoch:
            epoch_record["steps"] = index  # cut short by max_minutes
        history["epochs"].append(epoch_record)
        if is_main:
            grid = frame_path(run_dir, epoch)
            with torch.no_grad(), autocast():
                save_grid(sampler(fixed_noise_device).float().cpu(), grid)
            if config.fid_every and (epoch % config.fid_every == 0 or epoch == config.epochs):
                fid = fid or fid_for_config(config, images, device)
                epoch_record["fid"] = round(fid.score_generator(sampler, config.latent_dim, config.fid_samples,
                                                                seed=config.seed), 3)
                log(f"epoch {epoch}: FID {epoch_record['fid']:.2f} ({config.fid_samples:,} samples)")
            _write_json(run_dir / "history.json", history)
            save_checkpoint(checkpoint_path, {
                "epoch": epoch, "config": config.to_dict(), "history": history, "fixed_noise": fixed_noise,
                "generator": generator.state_dict(), "discriminator": discriminator.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "scaler": scaler.state_dict(),
                "rng": {"cpu": torch.get_rng_state()},
            })
            log(f"epoch {epoch}/{config.epochs}: loss_d {history['steps'][-1]['loss_d']:.3f}, "
                f"loss_g {history['steps'][-1]['loss_g']:.3f}, {epoch_record['images_per_s']:,.0f} images/s -> {grid}")
            if live_plot is not None:
                live_plot.update(history, grid, force=True)
        distributed.barrier()

    return TrainResult(sampler, discriminator, history, run_dir, history["epochs"][-1]["epoch"] if history["epochs"] else 0)


def _read_totals(totals: torch.Tensor, count: int, epoch: int, step: int, seconds: float) -> dict:
    """The one host sync every `log_every` steps; stops the run if a loss is no longer finite."""
    loss_d, loss_g, d_real, d_fake = (totals / count).tolist()
    if not (math.isfinite(loss_d) and math.isfinite(loss_g)):
        raise TrainingDiverged(
            f"training diverged at epoch {epoch}, step {step}: loss_d={loss_d}, loss_g={loss_g}. The last good checkpoint "
            "(end of the previous epoch) is kept; lower lr_g/lr_d, try amp='off', or loss='hinge' with spectral_norm=True")
    return {"epoch": epoch, "step": step, "loss_d": round(loss_d, 5), "loss_g": round(loss_g, 5),
            "d_real": round(d_real, 5), "d_fake": round(d_fake, 5), "seconds": round(seconds, 2)}
