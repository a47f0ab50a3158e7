"""`train(config)`: notebook 03's loop around its step (utils/step.py), the data on the GPU when it fits, a checkpoint
after every epoch; a resumed run ends exactly like an uninterrupted one, each epoch's randomness from (seed, epoch)."""

import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from utils import distributed
from utils.config import TrainConfig
from utils.data import load_dataset
from utils.diagnose import Diagnosis
from utils.environment import DeviceChoice, choose_device, pick_device
from utils.errors import ConfigError, Interrupted, UserError
from utils.metrics import FID, fid_for_config, load_inception
from utils.models import Discriminator, Generator, check_network_size, check_networks
from utils.run import (CHECKPOINT, Run, TrainingState, checkpoint_state, frame_path, network_descriptions,
                       network_tag, restore_checkpoint)
from utils.step import EMA, CUDAGraphStep, TrainingStep, time_training_steps
from utils.urls import redact
from utils.visualize import image_grid, in_notebook


@dataclass
class TrainResult:
    generator: nn.Module        # the generator to sample from (the EMA copy when ema_decay > 0)
    discriminator: nn.Module
    history: dict
    run_dir: Path
    epochs_done: int


class DeviceData:
    """Shuffled, flipped batches in [-1, 1] from a uint8 image tensor, kept on the GPU when it fits (else in host
    memory, copied per batch); with several processes, each one takes its own share of every epoch."""

    def __init__(self, images: torch.Tensor, device: torch.device, config: TrainConfig, channels_last: bool,
                 log: Callable[[str], None] = print):
        self.device, self.batch_size, self.channels_last = device, config.batch_size, channels_last
        fits = device.type == "cuda" and images.nbytes < 0.4 * torch.cuda.mem_get_info(device)[0]
        if device.type != "cpu" and (config.data_on_device == "on" or config.data_on_device == "auto" and fits):
            self.images, where = images.to(device), f"on {device}"
        else:  # indexing makes each batch a new, unpinned tensor: pinning the source would copy it all for nothing
            self.images, where = images, "in host memory (memory-mapped cache)"
        log(f"dataset: {len(images):,} images of {tuple(images.shape[1:])}, {images.nbytes / 2**20:,.0f} MiB, "
            f"kept {where}")
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.steps_per_epoch = len(images) // self.world // self.batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(f"config field 'batch_size' ({self.batch_size}) is larger than the {len(images)} images "
                              f"available to each of {self.world} process(es): lower batch_size or use more images")

    def epoch(self, order: torch.Tensor, flips: torch.Tensor) -> Iterator[torch.Tensor]:
        """This process's batches of one epoch, given the epoch's permutation and coin tosses for the flips."""
        start, used = self.rank * (len(order) // self.world), self.steps_per_epoch * self.batch_size
        order, flips = order[start:start + used], flips[start:start + used]  # this process's share, whole batches
        order, flips = order.to(self.images.device), flips.to(self.device)  # indices where the images are
        for index, flip in zip(order.split(self.batch_size), flips.split(self.batch_size)):
            x = self.images[index].to(self.device, non_blocking=True).float().div_(127.5).sub_(1)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            yield x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def epoch_generators(seed: int, epoch: int, device: torch.device,
                     rank: int = 0) -> tuple[torch.Generator, torch.Generator]:
    """(CPU, device) random generators for one epoch from (seed, epoch, rank) only: the permutation is every process's,
    the noise and augmentations each one's own. Small offsets: the CPU generator keeps only a seed's low 32 bits."""
    base = seed * 1_000_003 + epoch
    return torch.Generator().manual_seed(base), torch.Generator(device).manual_seed(base + 500_000 + rank * 1_000_000)


def train(config: TrainConfig, progress: bool = True, live_plot=None, images: torch.Tensor | None = None,
          generator: nn.Module | None = None, discriminator: nn.Module | None = None) -> TrainResult:
    """Train (or continue) `config`'s run until `config.epochs` epochs are done. `live_plot`: utils.visualize.LivePlot;
    `images` replaces loading `config.data`; `generator` and `discriminator` replace the built-in networks."""
    config.validate()  # again: fields assigned after the config was built (config.lr_g = -1) are checked too
    try:
        if generator is None or discriminator is None:   # before the CPU trial times such networks
            check_network_size(config, pick_device(config.device))
        choice = choose_device(config, partial(time_training_steps, config))  # joins a distributed run's group
        # a wrong or missing weights file, or a failed download, fails now: not after the first epoch, losing it
        inception = load_inception(config.fid_weights) if config.fid_every and distributed.is_main() else None
        tag = network_tag(config, generator, discriminator)
        torch.manual_seed(config.seed)  # the same config starts from the same weights
        if generator is None:
            generator = Generator(config.image_size, config.latent_dim, config.g_width)
        if discriminator is None:
            discriminator = Discriminator(config.image_size, config.d_width, config.spectral_norm)
        networks = network_descriptions(generator, discriminator)
        with Run.open(config, networks, tag, main=distributed.is_main(), log=_log) as run:  # refuses what cannot go on
            distributed.barrier()
            if run.state is not None:  # a resumed run keeps the precision and layout its epochs trained with
                choice = choice.resumed(config, run.state.get("precision"))
            _log(f"run folder: {run.dir}\n{choice.log}")
            if images is None:
                with distributed.main_first():  # the main process builds the cache, the others then reuse it
                    images = load_dataset(config, progress=progress)
            batches = DeviceData(images, choice.device, config, choice.channels_last, _log)
            memory = torch.channels_last if choice.channels_last else torch.preserve_format
            generator.to(choice.device, memory_format=memory)
            discriminator.to(choice.device, memory_format=memory)
            check_networks(config, generator, discriminator, choice.device)
            state, start_epoch = _training_state(config, run, generator, discriminator, choice, networks)
            # the real images' statistics, computed or read from data_dir's cache: a damaged cache fails now
            fid = fid_for_config(config, images, choice.device, inception) \
                if inception is not None and start_epoch <= config.epochs else None
            # a resumed run compares its next grid with the last one saved, as an uninterrupted run would
            diagnosis = Diagnosis(config, images, frame_path(run.dir, start_epoch - 1) if start_epoch > 1 else None)
            if start_epoch > config.epochs:
                _log(f"{run.dir} already has {start_epoch - 1} epochs; raise 'epochs' to train longer")
            elif live_plot is not None:
                live_plot.update(state.history, force=True)  # first: each epoch's bar and line print under it
            return _train_epochs(config, run, state, batches, choice, start_epoch, fid, diagnosis, live_plot, progress)
    except Interrupted:  # the loop's own, which says what was saved
        raise
    except KeyboardInterrupt:
        raise Interrupted("stopped before training began (while timing the CPU, loading the data or building the "
                          "networks). Run the same again to start") from None


def _log(message: str) -> None:
    """Print on the main process only (the others of a distributed run train silently), credentials hidden."""
    if distributed.is_main():
        print(redact(message))


def _training_state(config: TrainConfig, run: Run, generator: nn.Module, discriminator: nn.Module,
                    choice: DeviceChoice, networks: dict[str, str]) -> tuple[TrainingState, int]:
    """The optimisers, scaler, EMA and fixed noise (restored when the run continues), and the first epoch to train."""
    # fused Adam on a GPU (capturable in a CUDA graph) and in fp16, where GradScaler hands it the scale as a tensor
    fused = choice.device.type == "cuda" or choice.amp == torch.float16
    adam = {"fused": True, "capturable": choice.cuda_graphs} if fused else {"foreach": True}
    state = TrainingState(generator, discriminator, torch.optim.Adam(generator.parameters(), **adam),
                          torch.optim.Adam(discriminator.parameters(), **adam),
                          torch.amp.GradScaler(choice.device.type, enabled=choice.amp == torch.float16),
                          EMA(generator, config.ema_decay) if config.ema_decay > 0 else None,
                          torch.randn(config.num_samples, config.latent_dim, 1, 1,
                                      generator=torch.Generator().manual_seed(config.seed)),
                          {"steps": [], "epochs": []}, networks, choice.candidate)
    start_epoch = 1
    if run.state is not None:  # continue: weights, optimiser moments, scaler, EMA, noise, history, RNG
        start_epoch = restore_checkpoint(run.dir / CHECKPOINT, run.state, state, adam) + 1
        _log(f"resuming {run.dir} after epoch {start_epoch - 1} (of {config.epochs})")
    world = distributed.world_size()
    lr_g, lr_d = config.scaled_lrs(world)
    for optimizer, lr in ((state.opt_g, lr_g), (state.opt_d, lr_d)):  # after loading, which restores the saved ones
        for group in optimizer.param_groups:
            group.update(lr=lr, betas=(config.beta1, config.beta2))
    if world > 1:
        scaled = "" if config.scale_lr else "not scaled: pass scale_lr=True for "
        _log(f"distributed: {world} processes x batch {config.batch_size} = effective batch {world * config.batch_size}"
             f"; learning rates G {lr_g:.2e}, D {lr_d:.2e} ({scaled}x sqrt(effective batch / 128))")
    if start_epoch <= config.epochs and distributed.is_main():
        steps = state.history["steps"]
        run.record_settings(config, state.history, start_epoch, steps[-1]["step"] if steps else 0)
    return state, start_epoch


def _train_epochs(config: TrainConfig, run: Run, state: TrainingState, batches: DeviceData, choice: DeviceChoice,
                  start_epoch: int, fid: FID | None, diagnosis: Diagnosis, live_plot, progress: bool) -> TrainResult:
    """Notebook 03's loop, the losses read every `log_every` steps (every step on a CPU, where reading is free)."""
    history, device, epoch, saved = state.history, choice.device, start_epoch, start_epoch - 1
    sample_from = state.ema.module if state.ema is not None else state.generator  # the grids, FID and the result
    wrap = partial(distributed.wrap, device=device, sync_batchnorm=config.sync_batchnorm)  # DDP when distributed
    step = TrainingStep(wrap(state.generator), wrap(state.discriminator), state.opt_g, state.opt_d, config.loss,
                        config.real_label, config.fake_label, config.label_flip, amp=choice.amp, scaler=state.scaler,
                        ema=state.ema, diffaugment=config.diffaugment, cuda_graphs=choice.cuda_graphs)
    run_step = CUDAGraphStep(step) if choice.cuda_graphs else step
    log_every = 1 if device.type == "cpu" else config.log_every
    budget_s = config.max_minutes * 60 - sum(e["seconds"] for e in history["epochs"])
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            if config.max_minutes and budget_s <= 0:
                _log(f"time budget of {config.max_minutes} minutes used up after epoch {epoch - 1}")
                break
            cpu_gen, dev_gen = epoch_generators(config.seed, epoch, device, distributed.rank())
            order = torch.randperm(len(batches.images), generator=cpu_gen)
            flips = torch.rand(len(batches.images), generator=cpu_gen) < 0.5
            steps_before, started = history["steps"][-1]["step"] if history["steps"] else 0, time.perf_counter()
            bar = tqdm(batches.epoch(order, flips), total=batches.steps_per_epoch,
                       desc=f"epoch {epoch}/{config.epochs}", disable=not progress, leave=False)
            for index, real in enumerate(bar, 1):
                z = torch.randn(real.shape[0], config.latent_dim, 1, 1, device=device, generator=dev_gen)
                run_step(real, z, dev_gen)
                if index % log_every and index < batches.steps_per_epoch:
                    continue
                losses = step.read((index - 1) % log_every + 1)  # the means over the steps since the last read
                if not math.isfinite(losses["loss_d"] + losses["loss_g"]):
                    raise UserError(f"training diverged at epoch {epoch}, step {steps_before + index}: loss_d="
                                    f"{losses['loss_d']}, loss_g={losses['loss_g']}. The last good checkpoint is kept; "
                                    "lower lr_g/lr_d, try amp='off', or loss='hinge' with spectral_norm=True")
                history["steps"].append({"epoch": epoch, "step": steps_before + index, **losses,
                                         "seconds": round(time.perf_counter() - started, 2)})
                bar.set_postfix(losses, refresh=False)  # the names history.json uses
                if live_plot is not None:
                    live_plot.update(history)
                if config.max_minutes and distributed.agree(time.perf_counter() - started > budget_s):
                    break  # out of time: this epoch ends early and is saved like any other
            bar.close()
            seconds = time.perf_counter() - started
            budget_s -= seconds
            history["epochs"].append({"epoch": epoch, "seconds": round(seconds, 2), "images_per_s": round(
                index * config.batch_size * batches.world / seconds, 1)})
            if index < batches.steps_per_epoch:  # cut short by max_minutes
                history["epochs"][-1]["steps"] = index
            grid = _end_epoch(config, run, state, step, sample_from, fid, diagnosis) if distributed.is_main() else None
            saved = epoch
            if live_plot is not None:
                title = ", ".join([f"epoch {epoch}", *history["epochs"][-1].get("diagnosis", {})])
                live_plot.update(history, grid=grid, title=title, force=True)
            distributed.barrier()
    except KeyboardInterrupt:  # say what is saved and how to resume (in a notebook: Jupyter skipped the cells below)
        what = {0: "no epoch was saved", 1: "epoch 1 is saved"}.get(saved, f"epochs 1-{saved} are saved")
        when = f"after epoch {epoch}" if saved == epoch else f"during epoch {epoch}"
        where = f" in {run.dir / CHECKPOINT}" if saved else ""
        again = "; the cells below did not run: re-run this cell" if in_notebook() else ". Run the same again"
        raise Interrupted(f"training stopped {when}: {what}{where}{again} to resume from epoch {saved + 1}") from None
    return TrainResult(sample_from, state.discriminator, history, run.dir, saved)


def _end_epoch(config: TrainConfig, run: Run, state: TrainingState, step: TrainingStep, generator: nn.Module,
               fid: FID | None, diagnosis: Diagnosis) -> np.ndarray:
    """On the main process after each epoch: the grid, the FID when due, the epoch's line, the diagnosis, the save."""
    history, epoch = state.history, state.history["epochs"][-1]["epoch"]
    noise = state.fixed_noise.to(next(generator.parameters()).device)
    with torch.no_grad(), step.autocast():
        grid = image_grid(generator(noise).float()).permute(1, 2, 0).numpy()
    if fid is not None and (epoch % config.fid_every == 0 or epoch == config.epochs):
        score = fid.score_generator(generator, config.latent_dim, config.fid_samples, seed=config.seed)
        history["epochs"][-1]["fid"] = round(score, 3)
        _log(f"epoch {epoch}: FID {score:.2f} ({config.fid_samples:,} samples)")
    last = history["steps"][-1]
    _log(f"epoch {epoch}/{config.epochs}: loss_d {last['loss_d']:.3f}, loss_g {last['loss_g']:.3f}, "
         f"{history['epochs'][-1]['images_per_s']:,.0f} images/s -> samples/epoch_{epoch:03d}.png"
         + "".join(f"\n  {line}" for line in diagnosis(history, grid)))
    run.save_epoch(epoch, grid, history, checkpoint_state(config, epoch, state))
    return grid
