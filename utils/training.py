"""The training loop: `train(config)`, shared by notebook 03, `python -m utils.train` and the tests.

    >>> from utils.config import TrainConfig
    >>> from utils.training import train
    >>> result = train(TrainConfig(epochs=5))     # run it again: it resumes; change a value: see utils/run.py
    >>> result = train(config, generator=MyGenerator(), discriminator=MyDiscriminator())   # your own networks

`TrainingStep` is one round of the game, the same computation notebook 03 writes out by hand in 30 lines
(tests/test_notebook_code.py proves it). What `train()` adds around it, and where (numbers in the README):
- the dataset is decoded once into a uint8 tensor (utils/data.py) and, when it fits, lives on the GPU; shuffling,
  flips and scaling to [-1, 1] happen there (`DeviceData`), so no DataLoader workers decode JPEGs each epoch;
- no host syncs in a step: losses and D's scores are summed on the device and read every `log_every` steps, so
  on one GPU the whole step is recorded once as a CUDA graph and replayed (`CUDAGraphStep`);
- bf16 autocast on GPUs that have it, fp16 + GradScaler on those that don't, channels_last, fused Adam
  (utils/environment.py chooses); D's weights are frozen during G's step, so their gradients are never computed;
- the run folder (utils/run.py): one process at a time, checkpoints written in the background after every
  epoch, resume, changes between epochs applied and recorded. The weights start from `seed` and every epoch's
  randomness is derived from (seed, epoch), so a resumed run ends with exactly the weights of an uninterrupted one
  (tests/test_faults.py kills one to check).
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
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
from .environment import TRIAL_BATCH, DeviceChoice, choose_device
from .errors import ConfigError, Interrupted, UserError
from .metrics import fid_for_config, load_inception, sampling
from .models import Discriminator, Generator, count_parameters
from .run import CHECKPOINT, Run, check_optimizer_state, check_weights, read_checkpoint
from .visualize import image_grid


class TrainingDiverged(UserError, RuntimeError):
    """Raised when a loss becomes NaN or infinite; the last good checkpoint is left untouched."""


@dataclass
class TrainResult:
    generator: nn.Module        # the generator to sample from (the EMA copy when ema_decay > 0)
    discriminator: nn.Module
    history: dict
    run_dir: Path
    epochs_done: int


# --------------------------------------------------------------------------------------------- losses

def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str,
                       targets: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """D's loss; for BCE against `targets` (real, fake) when given (see `discriminator_targets`), else 1 and 0."""
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    real_targets, fake_targets = targets or (torch.ones_like(real_logits), torch.zeros_like(fake_logits))
    return (F.binary_cross_entropy_with_logits(real_logits, real_targets)
            + F.binary_cross_entropy_with_logits(fake_logits, fake_targets))


def discriminator_targets(real_logits: torch.Tensor, fake_logits: torch.Tensor, real_label: float = 1.0,
                          fake_label: float = 0.0, label_flip: float = 0.0,
                          gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """D's BCE targets (real, fake): `real_label` for each real image and `fake_label` for each fake (label
    smoothing when they are not 1 and 0), each swapped for the other with probability `label_flip` (noisy labels).

    A D trained on softer or occasionally wrong targets cannot become certain, so its gradients to G stay useful
    for longer. The coin tosses come from `gen` (the epoch's device generator: a resumed run draws the same ones),
    real images first; none are drawn when `label_flip` is 0.
    """
    # float32 whatever the logits' precision: in bf16 a target of 0.9 would be 0.8984 (BCE runs in float32 anyway)
    real_targets = torch.full_like(real_logits, real_label, dtype=torch.float32)
    fake_targets = torch.full_like(fake_logits, fake_label, dtype=torch.float32)
    if label_flip > 0:
        flip_real = torch.rand(real_logits.shape, generator=gen, device=real_logits.device) < label_flip
        flip_fake = torch.rand(fake_logits.shape, generator=gen, device=fake_logits.device) < label_flip
        real_targets = torch.where(flip_real, fake_label, real_targets)
        fake_targets = torch.where(flip_fake, real_label, fake_targets)
    return real_targets, fake_targets


def generator_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "hinge":
        return -fake_logits.mean()
    # the "non-saturating" loss of the DCGAN paper: maximise log D(G(z)) rather than minimise log(1 - D(G(z)))
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


# ------------------------------------------------------------------------------------------ the step

class TrainingStep:
    """One round of the game: D learns from a real and a fake batch, then G learns to fool D.

    Exactly the step of notebook 03, plus what keeps it fast: it never waits for the device (the losses and
    D's average verdicts are summed into `totals` on the device, and `read` fetches them every few steps), so
    on a GPU it can be replayed as a CUDA graph. `train_g`/`train_d` are the networks as trained (a DDP wrapper,
    a compiled module), `generator`/`discriminator` the plain ones; the optional parts (mixed precision's
    `autocast` and `scaler`, an `ema` of G, DiffAugment's `augment`) default to nothing, and D's BCE targets
    (`real_label`, `fake_label`, `label_flip`, see `discriminator_targets`) to 1, 0 and no flips.
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module, opt_g: torch.optim.Optimizer,
                 opt_d: torch.optim.Optimizer, loss: str = "bce", *, real_label: float = 1.0, fake_label: float = 0.0,
                 label_flip: float = 0.0, scaler: torch.amp.GradScaler | None = None,
                 autocast: Callable = nullcontext, ema: "EMA | None" = None,
                 augment: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = None,
                 train_g: nn.Module | None = None, train_d: nn.Module | None = None, frozen_d: nn.Module | None = None):
        self.generator, self.discriminator, self.opt_g, self.opt_d, self.loss = generator, discriminator, opt_g, opt_d, loss
        self.labels = (real_label, fake_label, label_flip)
        self.scaler = scaler or torch.amp.GradScaler(enabled=False)
        self.autocast, self.ema = autocast, ema
        self.augment = augment or (lambda x, gen: x)
        self.train_g = generator if train_g is None else train_g
        self.train_d = discriminator if train_d is None else train_d
        # G's step calls D itself, not its DDP wrapper: D's frozen weights get no gradients to all-reduce there
        self.frozen_d = distributed.unwrap(self.train_d) if frozen_d is None else frozen_d
        self.totals = torch.zeros(4, device=next(generator.parameters()).device)  # loss_d, loss_g, D(x), D(G(z))
        self._seen = torch.zeros_like(self.totals)  # the totals at the last `last_step()`

    def __call__(self, real: torch.Tensor, z: torch.Tensor, gen: torch.Generator | None = None) -> None:
        # 1) D learns to tell real from fake: maximise log D(x) + log(1 - D(G(z)))
        with self.autocast():
            fake = self.train_g(z)
            real_logits = self.train_d(self.augment(real, gen)).flatten()
            fake_logits = self.train_d(self.augment(fake.detach(), gen)).flatten()
            targets = discriminator_targets(real_logits, fake_logits, *self.labels, gen) \
                if self.labels != (1.0, 0.0, 0.0) and self.loss == "bce" else None
            loss_d = discriminator_loss(real_logits, fake_logits, self.loss, targets)
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler.scale(loss_d).backward()
        self.scaler.step(self.opt_d)
        # 2) G learns to fool D (D's weights frozen: only the gradient w.r.t. the fake images is needed)
        with frozen(self.discriminator), self.autocast():
            gen_logits = self.frozen_d(self.augment(fake, gen)).flatten()
            loss_g = generator_loss(gen_logits, self.loss)
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(loss_g).backward()
        self.scaler.step(self.opt_g)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.generator)
        self.totals.add_(torch.stack([loss_d.detach().float(), loss_g.detach().float(),
                                      torch.sigmoid(real_logits.detach().float()).mean(),
                                      torch.sigmoid(fake_logits.detach().float()).mean()]))

    def read(self, steps: int) -> dict:
        """The means over the last `steps` steps (one host sync; averaged over processes), then start again."""
        loss_d, loss_g, d_real, d_fake = (distributed.average(self.totals) / steps).tolist()
        self.totals.zero_()
        self._seen.zero_()
        return {"loss_d": round(loss_d, 5), "loss_g": round(loss_g, 5), "d_real": round(d_real, 5),
                "d_fake": round(d_fake, 5)}

    def last_step(self) -> dict:
        """The values of the step just taken (what the totals grew by since the last call), for a point per step
        in the live plot: free where reading the device costs nothing (the CPU)."""
        loss_d, loss_g, d_real, d_fake = (self.totals - self._seen).tolist()
        self._seen.copy_(self.totals)
        return {"loss_d": loss_d, "loss_g": loss_g, "d_real": d_real, "d_fake": d_fake}


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
    replay launches them all at once. The step must never wait for the device (no .item(); with fp16 the fused
    Adam takes GradScaler's scale and inf check as device tensors), and its inputs are copied into fixed
    buffers, because a graph always reads the addresses it was recorded with.
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


def _available_ram() -> int:
    """Bytes of RAM free for new allocations (Linux and macOS; elsewhere assume plenty)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


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


# ------------------------------------------------------------------------------------------- networks

def describe_network(model: nn.Module) -> str:
    """`ClassName (N parameters, #hash)`: the hash covers the layers and every weight's shape, not the values."""
    layout = repr(model) + "".join(f"{name}{tuple(t.shape)}" for name, t in model.state_dict().items())
    return f"{type(model).__name__} ({count_parameters(model):,} parameters, #{hashlib.sha1(layout.encode()).hexdigest()[:6]})"


def network_tag(config: TrainConfig, generator: nn.Module | None, discriminator: nn.Module | None) -> str:
    """The part of the run folder's name that tells networks other than the built-in ones apart ('' for those)."""
    parts = []
    for role, model, builtin in (("G", generator, lambda: Generator(config.image_size, config.latent_dim, config.g_width)),
                                 ("D", discriminator, lambda: Discriminator(config.image_size, config.d_width,
                                                                            config.spectral_norm))):
        if model is not None and describe_network(model) != describe_network(builtin()):
            parts.append(f"{role}={type(model).__name__}{describe_network(model).rsplit('#', 1)[1].rstrip(')')}")
    return "-".join(parts)


def check_networks(config: TrainConfig, generator: nn.Module, discriminator: nn.Module, device: torch.device) -> None:
    """Your own networks must take and give what the loop passes: z (N, latent_dim, 1, 1) -> (N, 3, S, S) -> (N,)."""
    size = config.image_size
    with sampling(generator, discriminator):
        z = torch.zeros(2, config.latent_dim, 1, 1, device=device)
        try:
            images = generator(z)
        except Exception as error:
            raise ConfigError(f"your generator fails on z of shape (2, {config.latent_dim}, 1, 1) (config field "
                              f"'latent_dim'): {type(error).__name__}: {error}") from None
        if tuple(images.shape) != (2, 3, size, size):
            raise ConfigError(f"your generator turns z of shape (2, {config.latent_dim}, 1, 1) into {tuple(images.shape)}; "
                              f"training needs (2, 3, {size}, {size}) (config field 'image_size' is {size})")
        try:
            logits = discriminator(images)
        except Exception as error:
            raise ConfigError(f"your discriminator fails on images of shape (2, 3, {size}, {size}): "
                              f"{type(error).__name__}: {error}") from None
        if logits.numel() != 2:
            raise ConfigError(f"your discriminator turns images of shape (2, 3, {size}, {size}) into "
                              f"{tuple(logits.shape)}; training needs one score per image: shape (2,) or (2, 1)")


def time_training_steps(config: TrainConfig, candidates: list[str],
                        batch: int = TRIAL_BATCH) -> Iterator[dict[str, float]]:
    """Round after round, for as long as it is asked, the images/s of one CPU training step of `config`'s built-in
    networks in each candidate ("fp32 NCHW", "bf16 channels_last", ...): what `utils.environment.cpu_trial` decides
    "auto" with on a CPU, and when to stop.

    Each candidate takes one warm-up step first. The training's random state is left as it was once the iterator is
    closed (`contextlib.closing`) or exhausted.
    """
    batch = min(batch, config.batch_size)
    steps = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for name in candidates:
            dtype, layout = name.split()
            memory = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            generator = Generator(config.image_size, config.latent_dim, config.g_width).to(memory_format=memory)
            discriminator = Discriminator(config.image_size, config.d_width, config.spectral_norm).to(memory_format=memory)
            autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bf16" else nullcontext
            step = TrainingStep(generator, discriminator, torch.optim.Adam(generator.parameters(), foreach=True),
                                torch.optim.Adam(discriminator.parameters(), foreach=True), config.loss, autocast=autocast)
            real = torch.rand(batch, 3, config.image_size, config.image_size).contiguous(memory_format=memory)
            z = torch.randn(batch, config.latent_dim, 1, 1)
            step(real, z)  # the first step allocates and picks kernels
            steps[name] = (step, real, z)
        while True:
            timing = {}
            for name, (step, real, z) in steps.items():
                started = time.perf_counter()
                step(real, z)
                timing[name] = batch / (time.perf_counter() - started)
            yield timing


# ------------------------------------------------------------------------------------------- training

def train(config: TrainConfig, progress: bool = True, live_plot=None, images: torch.Tensor | None = None,
          generator: nn.Module | None = None, discriminator: nn.Module | None = None) -> TrainResult:
    """Train (or continue) the run of `config` until `config.epochs` epochs are done; return the trained models.

    The run folder is `config.out`, or one named from the settings when that is "" (utils/run.py). `live_plot`
    is anything with `update(history, grid=None, pending=None, force=False)` (utils.visualize.LivePlot in
    notebook 03). `images` skips loading `config.data` (tests, benchmarks). `generator` and `discriminator`
    replace the built-in networks with your own (any modules with the same input and output shapes).
    """
    config.validate()  # again: fields assigned after the config was built (config.lr_g = -1) are checked too
    choice = choose_device(config, partial(time_training_steps, config))  # device, precision, layout, CUDA graphs
    device = choice.device
    is_main = distributed.is_main()
    log = print if is_main else (lambda *_: None)
    # a wrong or missing weights file, or a failed download, fails now: not after the first epoch, losing it
    inception = load_inception(config.fid_weights) if config.fid_every and is_main else None
    if generator is None or discriminator is None:
        check_network_size(config, device)
    tag = network_tag(config, generator, discriminator)
    torch.manual_seed(config.seed)  # the same config starts from the same weights
    if generator is None:
        generator = Generator(config.image_size, config.latent_dim, config.g_width)
    if discriminator is None:
        discriminator = Discriminator(config.image_size, config.d_width, config.spectral_norm)
    networks = {"generator": describe_network(generator), "discriminator": describe_network(discriminator)}
    with Run.open(config, networks, tag, main=is_main, log=log) as run:  # refuses what cannot continue, before the data
        distributed.barrier()
        try:
            return _train(config, run, generator, discriminator, networks, choice, progress and is_main, live_plot,
                          images, inception, log)
        except KeyboardInterrupt as interrupt:
            if isinstance(interrupt, Interrupted):
                raise
            raise Interrupted(f"stopped while loading the data or building the networks, before any epoch trained in "
                              f"{run.dir}. Run the same again to start") from None


def _train(config: TrainConfig, run: Run, generator: nn.Module, discriminator: nn.Module, networks: dict,
           choice: DeviceChoice, progress: bool, live_plot, images: torch.Tensor | None, inception: nn.Module | None,
           log: Callable[[str], None]) -> TrainResult:
    is_main, world = distributed.is_main(), distributed.world_size()
    if run.state is not None:  # a resumed run keeps the precision and layout its epochs trained with
        choice = choice.resumed(config, run.state.get("precision"))
    device, amp_dtype, channels_last, cuda_graphs = choice.device, choice.amp, choice.channels_last, choice.cuda_graphs
    log(f"{choice.log}\nrun folder: {run.dir}")
    for role, model, builtin in (("generator", generator, Generator), ("discriminator", discriminator, Discriminator)):
        if not isinstance(model, builtin):
            log(f"{role}: yours, {networks[role]}")

    # data
    if images is None:
        with distributed.main_first():  # the main process builds the cache, the others then reuse it
            images = load_dataset(config, progress=progress)
    data = DeviceData(images, device, config, channels_last, log)

    # networks and optimisers
    for model in (generator, discriminator):
        model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    if not (isinstance(generator, Generator) and isinstance(discriminator, Discriminator)):
        check_networks(config, generator, discriminator, device)
    ema = EMA(generator, config.ema_decay) if config.ema_decay > 0 else None
    device_options = {"fused": True, "capturable": cuda_graphs} if device.type == "cuda" else {"foreach": True}
    opt_g = torch.optim.Adam(generator.parameters(), **device_options)
    opt_d = torch.optim.Adam(discriminator.parameters(), **device_options)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    fixed_noise = torch.randn(config.num_samples, config.latent_dim, 1, 1,
                              generator=torch.Generator().manual_seed(config.seed))
    history: dict = {"steps": [], "epochs": []}
    start_epoch = 1
    if run.state is not None:  # continue: weights, optimiser moments, scaler, EMA, noise, history, RNG
        state = run.state
        _check_resumable(run.dir / CHECKPOINT, state, generator, discriminator, ema, opt_g, opt_d, fixed_noise)
        generator.load_state_dict(state["generator"])
        discriminator.load_state_dict(state["discriminator"])
        _load_optimizer(opt_g, state["opt_g"], device_options)
        _load_optimizer(opt_d, state["opt_d"], device_options)
        if scaler.is_enabled() and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        fixed_noise, history = state["fixed_noise"], state["history"]
        torch.set_rng_state(state["rng"]["cpu"])
        start_epoch = state["epoch"] + 1
        log(f"resuming {run.dir} after epoch {state['epoch']} (of {config.epochs})")
    # this run's learning rates and betas, set after loading: load_state_dict restores the saved ones
    lr_g, lr_d = config.scaled_lrs(world)
    for optimizer, lr in ((opt_g, lr_g), (opt_d, lr_d)):
        for group in optimizer.param_groups:
            group.update(lr=lr, betas=(config.beta1, config.beta2))
    if world > 1:
        log(f"distributed: {world} processes x batch {config.batch_size} = effective batch {world * config.batch_size}; "
            f"learning rates G {lr_g:.2e}, D {lr_d:.2e}" + (" (x sqrt(effective batch / 128))" if config.scale_lr else
                                                            " (not scaled: pass scale_lr=True for x sqrt(effective batch / 128))"))
    step = history["steps"][-1]["step"] if history["steps"] else 0
    if start_epoch > config.epochs:
        log(f"{run.dir} already has {start_epoch - 1} epochs; raise 'epochs' to train longer")
    elif is_main:
        run.start(config, history, start_epoch, step)

    # the step, as trained: DDP wrappers, torch.compile, autocast, a CUDA graph
    train_g = distributed.wrap(generator, device, config.sync_batchnorm)
    train_d = distributed.wrap(discriminator, device, config.sync_batchnorm)
    frozen_d = distributed.unwrap(train_d)
    if config.compile:
        train_g, train_d, frozen_d = torch.compile(train_g), torch.compile(train_d), torch.compile(frozen_d)
    # autocast's cache of bf16 weight copies must be off inside a CUDA graph (PyTorch's CUDA graphs notes)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype, cache_enabled=not cuda_graphs)) if amp_dtype \
        else nullcontext
    augment = (lambda x, gen: diff_augment(x, config.diffaugment, gen)) if config.diffaugment else None
    training_step = TrainingStep(generator, discriminator, opt_g, opt_d, config.loss, real_label=config.real_label,
                                 fake_label=config.fake_label, label_flip=config.label_flip, scaler=scaler,
                                 autocast=autocast, ema=ema, augment=augment, train_g=train_g, train_d=train_d,
                                 frozen_d=frozen_d)
    run_step = CUDAGraphStep(training_step) if cuda_graphs else training_step
    sampler = ema.module if ema is not None else generator
    fixed_noise_device = fixed_noise.to(device)
    # the real images' statistics are computed (or read from data_dir's cache) before the first epoch: a damaged
    # cache fails now, not after an epoch
    fid = fid_for_config(config, images, device, inception) if inception is not None and start_epoch <= config.epochs \
        else None
    budget_s = config.max_minutes * 60 - sum(e["seconds"] for e in history["epochs"])
    saved_epoch = start_epoch - 1

    def checkpoint(epoch: int) -> dict:
        return {"epoch": epoch, "config": config.to_dict(stored=True), "networks": networks, "history": history,
                "fixed_noise": fixed_noise, "generator": generator.state_dict(),
                "discriminator": discriminator.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "scaler": scaler.state_dict(),
                "rng": {"cpu": torch.get_rng_state()}, "precision": choice.candidate}

    if live_plot is not None and is_main and start_epoch <= config.epochs:
        live_plot.update(history, force=True)  # the picture first: each epoch's bar and line print under it
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            if config.max_minutes and budget_s <= 0:
                log(f"time budget of {config.max_minutes} minutes used up after epoch {epoch - 1}")
                break
            cpu_gen, dev_gen = epoch_generators(config.seed, epoch, device, distributed.rank())
            order = torch.randperm(len(images), generator=cpu_gen)
            flips = torch.rand(len(images), generator=cpu_gen) < 0.5
            since_read, started = 0, time.perf_counter()
            bar = tqdm(data.epoch(order, flips), total=data.steps_per_epoch, desc=f"epoch {epoch}/{config.epochs}",
                       disable=not progress, leave=False)
            for index, real in enumerate(bar, 1):
                z = torch.randn(real.shape[0], config.latent_dim, 1, 1, device=device, generator=dev_gen)
                run_step(real, z, dev_gen)
                step, since_read = step + 1, since_read + 1
                if live_plot is not None and is_main and device.type == "cpu":  # reading is free on the CPU
                    live_plot.update(history, pending={"step": step, **training_step.last_step()})
                if since_read == config.log_every or index == data.steps_per_epoch:
                    record = {"epoch": epoch, "step": step, **training_step.read(since_read),
                              "seconds": round(time.perf_counter() - started, 2)}
                    _check_finite(record)
                    history["steps"].append(record)
                    since_read = 0
                    bar.set_postfix(loss_d=f"{record['loss_d']:.3f}", loss_g=f"{record['loss_g']:.3f}",
                                    d_x=f"{record['d_real']:.2f}", d_g_z=f"{record['d_fake']:.2f}")
                    if live_plot is not None and is_main and device.type != "cpu":  # the CPU's came with its step
                        live_plot.update(history)
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
                with torch.no_grad(), autocast():
                    grid = image_grid(sampler(fixed_noise_device).float()).permute(1, 2, 0).numpy()
                if config.fid_every and (epoch % config.fid_every == 0 or epoch == config.epochs):
                    fid = fid or fid_for_config(config, images, device, inception)
                    epoch_record["fid"] = round(fid.score_generator(sampler, config.latent_dim, config.fid_samples,
                                                                    seed=config.seed), 3)
                    log(f"epoch {epoch}: FID {epoch_record['fid']:.2f} ({config.fid_samples:,} samples)")
                warning = _d_has_won(history, epoch)
                if warning:
                    epoch_record["warning"] = "D has won"
                    log(warning)
                run.save_epoch(epoch, grid, history, checkpoint(epoch))
                saved_epoch = epoch
                log(f"epoch {epoch}/{config.epochs}: loss_d {history['steps'][-1]['loss_d']:.3f}, "
                    f"loss_g {history['steps'][-1]['loss_g']:.3f}, {epoch_record['images_per_s']:,.0f} images/s "
                    f"-> {run.dir}/samples/epoch_{epoch:03d}.png")
                if epoch == start_epoch + min(1, config.epochs - start_epoch):  # past the warm-up epoch
                    note = choice.recheck_trial(config, epoch, epoch_record["images_per_s"])
                    if note:
                        log(note)
                if live_plot is not None:
                    live_plot.update(history, grid=grid, title=f"epoch {epoch}", force=True)
            distributed.barrier()
    except KeyboardInterrupt:
        saved = f"epochs 1-{saved_epoch} are saved in {run.dir / CHECKPOINT}" if saved_epoch else "no epoch was saved"
        when = f"after epoch {epoch}" if saved_epoch == epoch else f"during epoch {epoch}"  # between two epochs?
        raise Interrupted(f"training stopped {when}: {saved}. Run the same again to resume from epoch "
                          f"{saved_epoch + 1}") from None

    epochs_done = history["epochs"][-1]["epoch"] if history["epochs"] else 0
    return TrainResult(sampler, discriminator, history, run.dir, epochs_done)


def _check_resumable(path: Path, state: dict, generator: nn.Module, discriminator: nn.Module, ema: "EMA | None",
                     opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, fixed_noise: torch.Tensor) -> None:
    """Raise CheckpointError, naming the first tensor, unless every tensor of the checkpoint fits what it is loaded
    into (a checkpoint with the right keys and other shapes or dtypes would fail in load_state_dict or later)."""
    check_weights(path, "generator", state["generator"], generator.state_dict())
    check_weights(path, "discriminator", state["discriminator"], discriminator.state_dict())
    if ema is not None:
        check_weights(path, "ema", state.get("ema"), ema.state_dict())
    check_optimizer_state(path, "opt_g", state["opt_g"], opt_g)
    check_optimizer_state(path, "opt_d", state["opt_d"], opt_d)
    check_weights(path, "", {"fixed_noise": state["fixed_noise"]}, {"fixed_noise": fixed_noise})
    check_weights(path, "rng", state["rng"], {"cpu": torch.get_rng_state()})


def check_network_size(config: TrainConfig, device: torch.device) -> None:
    """Raise ConfigError if the built-in networks of `config` cannot fit in the device's free memory.

    They are built on the "meta" device, which allocates nothing, to count their parameters: a latent_dim or width
    a thousand times too large would otherwise fail in the allocator with a page of C++ text, or make the system
    swap. Training needs 16 bytes per parameter at least: the weights, their gradients and Adam's two moments.
    """
    try:  # D without spectral norm: as many parameters within a bias, and its power iterations crawl on "meta"
        with torch.device("meta"):
            parameters = (count_parameters(Generator(config.image_size, config.latent_dim, config.g_width))
                          + count_parameters(Discriminator(config.image_size, config.d_width)))
    except (RuntimeError, TypeError, OverflowError):  # sizes beyond 64 bits
        parameters = math.inf
    needs, free = 16 * parameters, _free_memory(device)
    if needs > free:
        raise ConfigError(
            f"config fields 'latent_dim' ({config.latent_dim}), 'g_width' ({config.g_width}) and 'd_width' "
            f"({config.d_width}) make networks of {parameters:,} parameters: training them needs at least "
            f"{needs / 2**30:,.1f} GiB and {device} has {free / 2**30:,.1f} GiB free. Use smaller values (the DCGAN "
            "reference: latent_dim 100-128, widths 64)")


def _free_memory(device: torch.device) -> float:
    """Bytes free for new tensors on `device`: the GPU's free memory, else the RAM available (or free) now."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:  # MemAvailable counts the page cache the kernel would give back
            return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return _available_ram()


def _load_optimizer(optimizer: torch.optim.Optimizer, saved: dict, device_options: dict) -> None:
    """Load the moments with this device's implementation flags (a run moved from a GPU to a CPU, or back):
    load_state_dict would restore the saved ones, and places Adam's step counters by them."""
    flags = {"fused": None, "foreach": None, "capturable": False, **device_options}
    optimizer.load_state_dict({**saved, "param_groups": [{**group, **flags} for group in saved["param_groups"]]})


def _check_finite(record: dict) -> None:
    """Stop the run once a loss is NaN or infinite: nothing after it can be trusted."""
    if not (math.isfinite(record["loss_d"]) and math.isfinite(record["loss_g"])):
        raise TrainingDiverged(
            f"training diverged at epoch {record['epoch']}, step {record['step']}: loss_d={record['loss_d']}, "
            f"loss_g={record['loss_g']}. The last good checkpoint (end of the previous epoch) is kept; lower lr_g/lr_d, "
            "try amp='off', or loss='hinge' with spectral_norm=True")


def _d_has_won(history: dict, epoch: int) -> str:
    """A warning when D told real from fake with certainty all epoch long: G then gets almost no gradient."""
    records = [s for s in history["steps"] if s["epoch"] == epoch]
    if not records or not all(s["d_real"] > 0.99 and s["d_fake"] < 0.01 for s in records):
        return ""
    loss_g = sum(s["loss_g"] for s in records) / len(records)
    return (f"warning: D has won outright in epoch {epoch}: D(x) = {records[-1]['d_real']:.2f} on real faces and D(G(z)) = "
            f"{records[-1]['d_fake']:.2f} on fakes all epoch long, G's loss {loss_g:.1f}. G gets almost no useful "
            "gradient, so its faces stop improving. Lower the learning rates (lr_d, lr_g; the DCGAN recipe uses 2e-4), "
            "or try recipe='improved' (spectral norm and the hinge loss keep D in check)")


def load_models(run_dir: str | Path, generator: nn.Module | None = None,
                discriminator: nn.Module | None = None) -> tuple[nn.Module, nn.Module, dict]:
    """A run folder's generator (its EMA weights when the run kept them), discriminator and history, on the CPU.

    A run trained with your own networks needs them passed in (fresh instances; their weights are loaded).
    """
    return models_from_checkpoint(read_checkpoint(Path(run_dir) / CHECKPOINT), run_dir, generator, discriminator)


def models_from_checkpoint(state: dict, run_dir: str | Path, generator: nn.Module | None = None,
                           discriminator: nn.Module | None = None) -> tuple[nn.Module, nn.Module, dict]:
    """`load_models` from a checkpoint already read (`run_dir` only names it in errors)."""
    config = TrainConfig.from_dict(state["config"])
    if generator is None:
        generator = Generator(config.image_size, config.latent_dim, config.g_width)
    if discriminator is None:
        discriminator = Discriminator(config.image_size, config.d_width, config.spectral_norm)
    for role, model in (("generator", generator), ("discriminator", discriminator)):
        trained = state.get("networks", {}).get(role, describe_network(model))
        if trained != describe_network(model):
            raise ConfigError(f"{run_dir} was trained with the {role} {trained}, not {describe_network(model)}: "
                              f"pass that {role} to load_models")
    path = Path(run_dir) / CHECKPOINT
    if state.get("ema") is not None:
        check_weights(path, "ema", state["ema"], EMA(generator, config.ema_decay).state_dict())
        generator.load_state_dict({k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")})
    else:
        check_weights(path, "generator", state["generator"], generator.state_dict())
        generator.load_state_dict(state["generator"])
    check_weights(path, "discriminator", state["discriminator"], discriminator.state_dict())
    discriminator.load_state_dict(state["discriminator"])
    return generator, discriminator, state["history"]
