"""The training loop: `train(config)`, shared by notebook 03, `python -m utils.train` and the tests.

    >>> from utils.config import TrainConfig
    >>> from utils.training import train
    >>> result = train(TrainConfig(epochs=5))     # run it again: it resumes; change a value: see utils/run.py
    >>> result = train(config, generator=MyGenerator(), discriminator=MyDiscriminator())   # your own networks

Read it beside notebook 03's hand-written loop: `train` opens the run folder, `_build` makes the parts (the batches,
the networks and their optimisers, the step, the generator to sample from, the fixed noise), `_train_epochs` is the
loop and `_end_epoch` what follows each epoch (grid, FID, the diagnosis of utils/diagnose.py, save, log, live plot).
The step itself, what notebook 03 writes out by hand, is utils/step.py. What `train()` adds around it, and where
(numbers in docs/speed-and-quality.md):
- the dataset is decoded once into a uint8 tensor (utils/data.py) and, when it fits, lives on the GPU; shuffling,
  flips and scaling to [-1, 1] happen there (`DeviceData`), so no DataLoader workers decode JPEGs each epoch;
- no host syncs in a step: losses and D's scores are summed on the device and read every `log_every` steps, so
  on one GPU the whole step is recorded once as a CUDA graph and replayed (utils.step.CUDAGraphStep); a CPU,
  where a read costs nothing, records every step, so the history has the live plot's points;
- bf16 autocast on GPUs that have it, fp16 + GradScaler on those that don't, channels_last, fused Adam
  (utils/environment.py chooses, in `_choose_device`); D's weights are frozen during G's step, so their gradients
  are never computed;
- the run folder (utils/run.py): one process at a time, checkpoints written in the background after every
  epoch, resume, changes between epochs applied and recorded. The weights start from `seed` and every epoch's
  randomness is derived from (seed, epoch), so a resumed run ends with exactly the weights of an uninterrupted one
  (tests/test_faults.py kills one to check).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from utils import distributed
from utils.augment import diff_augment
from utils.config import TrainConfig
from utils.data import load_dataset
from utils.diagnose import Diagnosis
from utils.environment import DeviceChoice, choose_device, verbose
from utils.errors import ConfigError, Interrupted, UserError
from utils.metrics import FID, fid_for_config, load_inception
from utils.models import Discriminator, Generator, available_ram, check_network_size, check_networks
from utils.run import (CHECKPOINT, Run, TrainingState, checkpoint_state, frame_path, network_descriptions,
                       network_tag, restore_checkpoint)
from utils.step import EMA, CUDAGraphStep, TrainingStep, time_training_steps
from utils.urls import redact
from utils.visualize import image_grid, in_notebook


class TrainingDiverged(UserError, RuntimeError):
    """Raised when a loss becomes NaN or infinite; the last good checkpoint is left untouched."""


@dataclass
class TrainResult:
    generator: nn.Module        # the generator to sample from (the EMA copy when ema_decay > 0)
    discriminator: nn.Module
    history: dict
    run_dir: Path
    epochs_done: int


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
        elif nbytes < 0.5 * available_ram():
            pinned = images.pin_memory() if device.type == "cuda" else images
            self.images, where = pinned, "in pinned host memory (too large for the GPU), copied per batch"
        else:
            self.images, where = images, "streamed from the memory-mapped cache (too large for the GPU and for RAM)"
        log(f"dataset: {len(images):,} images of {tuple(images.shape[1:])}, {nbytes / 2**20:,.0f} MiB, kept {where}")
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.steps_per_epoch = len(images) // self.world // self.batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(f"config field 'batch_size' ({self.batch_size}) is larger than the {len(images)} images "
                              f"available to each of {self.world} process(es): lower batch_size or use more images")

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



# ------------------------------------------------------------------------------------------- training

def train(config: TrainConfig, progress: bool = True, live_plot=None, images: torch.Tensor | None = None,
          generator: nn.Module | None = None, discriminator: nn.Module | None = None) -> TrainResult:
    """Train (or continue) the run of `config` until `config.epochs` epochs are done; return the trained models.

    The run folder is `config.out`, or one named from the settings when that is "" (utils/run.py). `live_plot`
    is anything with `update(history, grid=None, title="", force=False)` (utils.visualize.LivePlot in
    notebook 03). `images` skips loading `config.data` (tests, benchmarks). `generator` and `discriminator`
    replace the built-in networks with your own (any modules with the same input and output shapes).
    """
    config.validate()  # again: fields assigned after the config was built (config.lr_g = -1) are checked too
    choice = _choose_device(config)
    device = choice.device
    progress, live_plot = (progress, live_plot) if distributed.is_main() else (False, None)
    # a wrong or missing weights file, or a failed download, fails now: not after the first epoch, losing it
    inception = load_inception(config.fid_weights) if config.fid_every and distributed.is_main() else None
    if generator is None or discriminator is None:
        check_network_size(config, device)
    tag = network_tag(config, generator, discriminator)
    torch.manual_seed(config.seed)  # the same config starts from the same weights
    if generator is None:
        generator = Generator(config.image_size, config.latent_dim, config.g_width)
    if discriminator is None:
        discriminator = Discriminator(config.image_size, config.d_width, config.spectral_norm)
    networks = network_descriptions(generator, discriminator)
    # refuses what cannot continue, before the data
    with Run.open(config, networks, tag, main=distributed.is_main(), log=_log) as run:
        distributed.barrier()
        try:
            if run.state is not None:  # a resumed run keeps the precision and layout its epochs trained with
                choice = choice.resumed(config, run.state.get("precision"))
            device_line, chosen = (choice.log if verbose() else choice.brief).split("\n", 1)
            _log(f"{device_line}\nrun folder: {run.dir}\n{chosen}")
            parts = _build(config, run, (generator, discriminator), choice, images, inception, progress)
            return _train_epochs(config, run, parts, live_plot, progress)
        except KeyboardInterrupt as interrupt:
            if isinstance(interrupt, Interrupted):  # the loop's own, which says what was saved
                raise
            raise Interrupted(f"stopped while loading the data or building the networks, before any epoch trained in "
                              f"{run.dir}. Run the same again to start") from None


def _log(message: str) -> None:
    """Print on the main process only (the others of a distributed run train silently), credentials hidden."""
    if distributed.is_main():
        print(redact(message))


@dataclass
class TrainingParts:
    """What the loop works with, built by `_build` before the first epoch."""

    state: TrainingState           # networks, optimisers, scaler, EMA, fixed noise, history: the checkpoint's parts
    batches: DeviceData            # the dataset, served in shuffled and flipped batches on the device
    training_step: TrainingStep    # one round of the game (utils/step.py); it sums the losses between reads
    run_step: Callable[..., None]  # the step as run: `training_step` itself, or its CUDA graph
    sample_from: nn.Module         # the generator whose grids and FID are shown: the EMA copy when the run keeps one
    fixed_noise: torch.Tensor      # the grid's latents (`state.fixed_noise`), on the device
    fid: FID | None                # the FID scorer (main process, fid_every > 0)
    choice: DeviceChoice           # the device, mixed precision, memory layout, CUDA graphs
    start_epoch: int               # the first epoch to train
    saved_epoch: int               # the last epoch handed to the run folder to save
    diagnosis: Diagnosis           # what each epoch's signals show (utils/diagnose.py)


def _choose_device(config: TrainConfig) -> DeviceChoice:
    """The device, mixed precision, memory layout and CUDA graphs (utils/environment.py, the one place they are
    decided), before the run folder is opened: a distributed run joins its process group here."""
    try:
        return choose_device(config, partial(time_training_steps, config))
    except KeyboardInterrupt:
        raise Interrupted("stopped while timing this CPU's training steps, before any epoch trained. Run the same "
                          "again to start") from None


def _build(config: TrainConfig, run: Run, networks: tuple[nn.Module, nn.Module], choice: DeviceChoice,
           images: torch.Tensor | None, inception: nn.Module | None, progress: bool) -> TrainingParts:
    """The parts, in the order notebook 03 makes them: the data, the networks on the device, their optimisers
    (restored when the run continues), the step, the generator to sample from and the fixed noise."""
    generator, discriminator = networks
    descriptions = network_descriptions(generator, discriminator)
    for role, model, builtin in (("generator", generator, Generator), ("discriminator", discriminator, Discriminator)):
        if not isinstance(model, builtin):
            _log(f"{role}: yours, {descriptions[role]}")
    if images is None:
        with distributed.main_first():  # the main process builds the cache, the others then reuse it
            images = load_dataset(config, progress=progress)
    batches = DeviceData(images, choice.device, config, choice.channels_last, _log)
    for model in networks:
        model.to(choice.device, memory_format=torch.channels_last if choice.channels_last else torch.preserve_format)
    if not (isinstance(generator, Generator) and isinstance(discriminator, Discriminator)):
        check_networks(config, generator, discriminator, choice.device)
    state, start_epoch = _training_state(config, run, networks, choice, descriptions)
    training_step = _training_step(config, state, choice)
    # the real images' statistics are computed (or read from data_dir's cache) before the first epoch: a damaged
    # cache fails now, not after an epoch
    fid = fid_for_config(config, images, choice.device, inception) \
        if inception is not None and start_epoch <= config.epochs else None
    # a resumed run compares its next grid with the last one saved, as an uninterrupted run would
    diagnosis = Diagnosis(config, images, frame_path(run.dir, start_epoch - 1) if start_epoch > 1 else None)
    return TrainingParts(state, batches, training_step,
                         CUDAGraphStep(training_step) if choice.cuda_graphs else training_step,
                         state.ema.module if state.ema is not None else generator,
                         state.fixed_noise.to(choice.device), fid, choice, start_epoch, start_epoch - 1, diagnosis)


def _adam_options(choice: DeviceChoice) -> dict:
    """Fused Adam on a GPU (capturable inside a CUDA graph) and in fp16 (a T4's path, also on a CPU: the GradScaler
    hands it the scale and the inf check as tensors), the multi-tensor one elsewhere."""
    fused = choice.device.type == "cuda" or choice.amp == torch.float16
    return {"fused": True, "capturable": choice.cuda_graphs} if fused else {"foreach": True}


def _training_state(config: TrainConfig, run: Run, networks: tuple[nn.Module, nn.Module], choice: DeviceChoice,
                    descriptions: dict[str, str]) -> tuple[TrainingState, int]:
    """The networks' optimisers, AMP scaler, EMA and fixed noise, restored from the run's checkpoint when it
    continues, with this call's learning rates and betas; the settings recorded. Returns them and the first epoch."""
    generator, discriminator = networks
    adam = _adam_options(choice)
    state = TrainingState(generator, discriminator, torch.optim.Adam(generator.parameters(), **adam),
                          torch.optim.Adam(discriminator.parameters(), **adam),
                          torch.amp.GradScaler(choice.device.type, enabled=choice.amp == torch.float16),
                          EMA(generator, config.ema_decay) if config.ema_decay > 0 else None,
                          torch.randn(config.num_samples, config.latent_dim, 1, 1,
                                      generator=torch.Generator().manual_seed(config.seed)),
                          {"steps": [], "epochs": []}, descriptions, choice.candidate)
    start_epoch = 1
    if run.state is not None:  # continue: weights, optimiser moments, scaler, EMA, noise, history, RNG
        start_epoch = restore_checkpoint(run.dir / CHECKPOINT, run.state, state, adam) + 1
        _log(f"resuming {run.dir} after epoch {start_epoch - 1} (of {config.epochs})")
    # this run's learning rates and betas, set after loading: load_state_dict restores the saved ones
    world = distributed.world_size()
    lr_g, lr_d = config.scaled_lrs(world)
    for optimizer, lr in ((state.opt_g, lr_g), (state.opt_d, lr_d)):
        for group in optimizer.param_groups:
            group.update(lr=lr, betas=(config.beta1, config.beta2))
    if world > 1:
        _log(f"distributed: {world} processes x batch {config.batch_size} = effective batch "
             f"{world * config.batch_size}; learning rates G {lr_g:.2e}, D {lr_d:.2e}" + (
                 " (x sqrt(effective batch / 128))" if config.scale_lr else
                 " (not scaled: pass scale_lr=True for x sqrt(effective batch / 128))"))
    history = state.history
    if start_epoch > config.epochs:
        _log(f"{run.dir} already has {start_epoch - 1} epochs; raise 'epochs' to train longer")
    elif distributed.is_main():
        run.record_settings(config, history, start_epoch, history["steps"][-1]["step"] if history["steps"] else 0)
    return state, start_epoch


def _training_step(config: TrainConfig, state: TrainingState, choice: DeviceChoice) -> TrainingStep:
    """The step, as trained: DDP wrappers, torch.compile, autocast, DiffAugment, D's targets."""
    device = choice.device
    train_g = distributed.wrap(state.generator, device, config.sync_batchnorm)
    train_d = distributed.wrap(state.discriminator, device, config.sync_batchnorm)
    frozen_d = distributed.unwrap(train_d)
    if config.compile:
        train_g, train_d, frozen_d = torch.compile(train_g), torch.compile(train_d), torch.compile(frozen_d)
    # autocast's cache of bf16 weight copies must be off inside a CUDA graph (PyTorch's CUDA graphs notes)
    autocast = (lambda: torch.autocast(device.type, dtype=choice.amp, cache_enabled=not choice.cuda_graphs)) \
        if choice.amp else nullcontext
    augment = (lambda x, gen: diff_augment(x, config.diffaugment, gen)) if config.diffaugment else None
    return TrainingStep(state.generator, state.discriminator, state.opt_g, state.opt_d, config.loss,
                        config.real_label, config.fake_label, config.label_flip, scaler=state.scaler,
                        autocast=autocast, ema=state.ema, augment=augment, train_g=train_g, train_d=train_d,
                        frozen_d=frozen_d)


def _train_epochs(config: TrainConfig, run: Run, parts: TrainingParts, live_plot, progress: bool) -> TrainResult:
    """The loop, as in notebook 03: each epoch, every batch through the step, its losses read every `log_every`
    steps (every step on the CPU), then `_end_epoch`. `live_plot` is None except on the main process."""
    history, device, batches = parts.state.history, parts.choice.device, parts.batches
    step = history["steps"][-1]["step"] if history["steps"] else 0
    log_every = 1 if device.type == "cpu" else config.log_every  # reading costs nothing on the CPU: every step
    budget_s = config.max_minutes * 60 - sum(e["seconds"] for e in history["epochs"])
    epoch = parts.start_epoch
    try:
        if live_plot is not None and parts.start_epoch <= config.epochs:
            live_plot.update(history, force=True)  # the picture first: each epoch's bar and line print under it
        for epoch in range(parts.start_epoch, config.epochs + 1):
            if config.max_minutes and budget_s <= 0:
                _log(f"time budget of {config.max_minutes} minutes used up after epoch {epoch - 1}")
                break
            cpu_gen, dev_gen = epoch_generators(config.seed, epoch, device, distributed.rank())
            order = torch.randperm(len(batches.images), generator=cpu_gen)
            flips = torch.rand(len(batches.images), generator=cpu_gen) < 0.5
            since_read, started = 0, time.perf_counter()
            bar = tqdm(batches.epoch(order, flips), total=batches.steps_per_epoch,
                       desc=f"epoch {epoch}/{config.epochs}", disable=not progress, leave=False)
            for index, real in enumerate(bar, 1):
                z = torch.randn(real.shape[0], config.latent_dim, 1, 1, device=device, generator=dev_gen)
                parts.run_step(real, z, dev_gen)
                step, since_read = step + 1, since_read + 1
                if since_read == log_every or index == batches.steps_per_epoch:
                    record = {"epoch": epoch, "step": step, **parts.training_step.read(since_read),
                              "seconds": round(time.perf_counter() - started, 2)}
                    _check_finite(record)
                    history["steps"].append(record)
                    since_read = 0
                    bar.set_postfix(loss_d=f"{record['loss_d']:.3f}", loss_g=f"{record['loss_g']:.3f}",
                                    d_x=f"{record['d_real']:.2f}", d_g_z=f"{record['d_fake']:.2f}", refresh=False)
                    if live_plot is not None:
                        live_plot.update(history)
                    if config.max_minutes and distributed.agree(time.perf_counter() - started > budget_s):
                        break  # out of time: this epoch ends early and is saved like any other
            bar.close()
            seconds = time.perf_counter() - started
            budget_s -= seconds
            _end_epoch(config, run, parts, live_plot, _epoch_record(config, epoch, index, seconds, batches))
            distributed.barrier()
    except KeyboardInterrupt:
        raise _interrupted(run, epoch, parts.saved_epoch) from None
    epochs_done = history["epochs"][-1]["epoch"] if history["epochs"] else 0
    return TrainResult(parts.sample_from, parts.state.discriminator, history, run.dir, epochs_done)


def _epoch_record(config: TrainConfig, epoch: int, steps: int, seconds: float, batches: DeviceData) -> dict:
    """The history's record of an epoch that took `steps` steps in `seconds`."""
    record = {"epoch": epoch, "seconds": round(seconds, 2),
              "images_per_s": round(steps * config.batch_size * distributed.world_size() / seconds, 1)}
    if steps < batches.steps_per_epoch:
        record["steps"] = steps  # cut short by max_minutes
    return record


def _end_epoch(config: TrainConfig, run: Run, parts: TrainingParts, live_plot, record: dict) -> None:
    """After each epoch: its record in the history; on the main process the grid of the fixed noise, the FID every
    `fid_every` epochs, the diagnosis, the save (in the background), the epoch's line, what the diagnosis saw under
    it, and the live plot."""
    history, epoch = parts.state.history, record["epoch"]
    history["epochs"].append(record)
    if not distributed.is_main():
        return
    with torch.no_grad(), parts.training_step.autocast():
        grid = image_grid(parts.sample_from(parts.fixed_noise).float()).permute(1, 2, 0).numpy()
    if parts.fid is not None and (epoch % config.fid_every == 0 or epoch == config.epochs):
        record["fid"] = round(parts.fid.score_generator(parts.sample_from, config.latent_dim, config.fid_samples,
                                                        seed=config.seed), 3)
        _log(f"epoch {epoch}: FID {record['fid']:.2f} ({config.fid_samples:,} samples)")
    seen = parts.diagnosis(history, grid)
    run.save_epoch(epoch, grid, history, checkpoint_state(config, epoch, parts.state))
    parts.saved_epoch = epoch
    _log(f"epoch {epoch}/{config.epochs}: loss_d {history['steps'][-1]['loss_d']:.3f}, "
         f"loss_g {history['steps'][-1]['loss_g']:.3f}, {record['images_per_s']:,.0f} images/s "
         f"-> {run.dir}/samples/epoch_{epoch:03d}.png")
    for line in seen:
        _log(f"  {line}")
    if epoch == parts.start_epoch + min(1, config.epochs - parts.start_epoch):  # past the warm-up epoch
        note = parts.choice.recheck_trial(config, epoch, record["images_per_s"])
        if note and verbose():   # engine detail: the new answer is cached for the next start either way
            _log(note)
    if live_plot is not None:
        live_plot.update(history, grid=grid, title=", ".join([f"epoch {epoch}", *record.get("diagnosis", {})]),
                         force=True)


def _interrupted(run: Run, epoch: int, saved_epoch: int) -> Interrupted:
    """What Ctrl-C during the loop says: where it landed, what is saved, how to resume. In a notebook the
    interrupt also stops the cells queued below, so the line says that too."""
    saved = {0: "no epoch was saved", 1: "epoch 1 is saved"}.get(saved_epoch, f"epochs 1-{saved_epoch} are saved")
    when = f"after epoch {epoch}" if saved_epoch == epoch else f"during epoch {epoch}"  # between two epochs?
    where = f" in {run.dir / CHECKPOINT}" if saved_epoch else ""
    again = "; the cells below did not run: re-run this cell" if in_notebook() else ". Run the same again"
    return Interrupted(f"training stopped {when}: {saved}{where}{again} to resume from epoch {saved_epoch + 1}")


def _check_finite(record: dict) -> None:
    """Stop the run once a loss is NaN or infinite: nothing after it can be trusted."""
    if not (math.isfinite(record["loss_d"]) and math.isfinite(record["loss_g"])):
        raise TrainingDiverged(
            f"training diverged at epoch {record['epoch']}, step {record['step']}: loss_d={record['loss_d']}, "
            f"loss_g={record['loss_g']}. The last good checkpoint (end of the previous epoch) is kept; lower lr_g/lr_d, "
            "try amp='off', or loss='hinge' with spectral_norm=True")
