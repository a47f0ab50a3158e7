"""One training step of the GAN as notebook 03 writes it out (tests/test_notebook_code.py proves the two equal), the
EMA of G's weights, the step replayed as a CUDA graph, and `time_training_steps`: the one place that times training."""

from __future__ import annotations

import copy
import time
from contextlib import nullcontext
from functools import partial
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from utils import distributed
from utils.augment import diff_augment
from utils.config import TrainConfig
from utils.models import Discriminator, Generator

TRIAL_BATCH = 32   # the batch the CPU trial times (at most the run's): small, so the trial takes seconds


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str,
                       labels: tuple[float, float, float] = (1.0, 0.0, 0.0),
                       gen: torch.Generator | None = None) -> torch.Tensor:
    """D's loss: hinge, or BCE against the targets `labels` = (real_label, fake_label, label_flip) make: smoothed when
    not 1 and 0, each swapped with probability label_flip (tossed with `gen`). An unsure D guides G for longer."""
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    real_label, fake_label, label_flip = labels
    # float32 whatever the logits' precision: in bf16 a target of 0.9 would be 0.8984
    real_targets = torch.full_like(real_logits, real_label, dtype=torch.float32)
    fake_targets = torch.full_like(fake_logits, fake_label, dtype=torch.float32)
    if label_flip > 0:  # real images' coins first
        flip = lambda logits: torch.rand(logits.shape, generator=gen, device=logits.device) < label_flip
        real_targets = torch.where(flip(real_logits), fake_label, real_targets)
        fake_targets = torch.where(flip(fake_logits), real_label, fake_targets)
    return (F.binary_cross_entropy_with_logits(real_logits, real_targets)      # -log D(x) with 1 and 0
            + F.binary_cross_entropy_with_logits(fake_logits, fake_targets))  # -log(1 - D(G(z)))


def generator_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "hinge":
        return -fake_logits.mean()
    # the "non-saturating" loss of the DCGAN paper: maximise log D(G(z)) rather than minimise log(1 - D(G(z)))
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


class TrainingStep:
    """One round of the game: D learns from a real and a fake batch, then G learns to fool D. It never waits for the
    device (the losses are summed in `totals`, `read` every few steps), so it can be replayed as a CUDA graph."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module, opt_g: torch.optim.Optimizer,
                 opt_d: torch.optim.Optimizer, loss: str = "bce", real_label: float = 1.0, fake_label: float = 0.0,
                 label_flip: float = 0.0, *, amp: torch.dtype | None = None, cuda_graphs: bool = False,
                 scaler: torch.amp.GradScaler | None = None, ema: EMA | None = None, diffaugment: str = ""):
        self.generator, self.discriminator, self.opt_g, self.opt_d = generator, discriminator, opt_g, opt_d
        self.loss, self.labels, self.diffaugment = loss, (real_label, fake_label, label_flip), diffaugment
        device = next(generator.parameters()).device
        self.scaler, self.ema = scaler or torch.amp.GradScaler(device.type, enabled=amp == torch.float16), ema
        # autocast's cache of low-precision weight copies must be off inside a CUDA graph (PyTorch's CUDA graphs notes)
        self.autocast = partial(torch.autocast, device.type, dtype=amp, cache_enabled=not cuda_graphs) \
            if amp else nullcontext
        self.totals = torch.zeros(4, device=device)  # loss_d, loss_g, D(x), D(G(z))

    def __call__(self, real: torch.Tensor, z: torch.Tensor, gen: torch.Generator | None = None) -> None:
        augment = partial(diff_augment, policy=self.diffaugment, generator=gen)  # real and fake alike (DiffAugment)
        # 1) D learns to tell real from fake: maximise log D(x) + log(1 - D(G(z)))
        with self.autocast():
            fake = self.generator(z)
            real_logits = self.discriminator(augment(real)).flatten()
            fake_logits = self.discriminator(augment(fake.detach())).flatten()  # detach: D's loss does not reach into G
            loss_d = discriminator_loss(real_logits, fake_logits, self.loss, self.labels, gen)
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler.scale(loss_d).backward()
        self.scaler.step(self.opt_d)
        # 2) G learns to fool D, frozen meanwhile: G needs the gradient w.r.t. the images, not D's weights'
        self.discriminator.requires_grad_(False)
        try:  # D without its DDP wrapper: its frozen weights have no gradients to all-reduce
            with self.autocast():
                loss_g = generator_loss(distributed.unwrap(self.discriminator)(augment(fake)).flatten(), self.loss)
        finally:
            self.discriminator.requires_grad_(True)
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
        means = (distributed.average(self.totals) / steps).tolist()
        self.totals.zero_()
        return {name: round(mean, 5) for name, mean in zip(("loss_d", "loss_g", "d_real", "d_fake"), means)}


class EMA(nn.Module):
    """An exponential moving average of a model's weights, which samples better than the raw weights. The decay ramps
    up as min(decay, (1 + n) / (10 + n)), so the random initial weights fade fast; buffers are copied."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay
        self.register_buffer("updates", torch.zeros((), device=next(model.parameters()).device))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        # average += weight * (model - average), the weight a tensor: nothing waits for the device (CUDA graphs)
        weight = 1 - torch.clamp((1 + self.updates) / (10 + self.updates), max=self.decay)
        average = list(self.module.parameters())
        step = torch._foreach_sub(list(model.parameters()), average)
        torch._foreach_mul_(step, weight)
        torch._foreach_add_(average, step)
        torch._foreach_copy_(list(self.module.buffers()), list(model.buffers()))
        self.updates += 1


class CUDAGraphStep:
    """Runs a step eagerly for a few warm-up calls, then records it once as a CUDA graph and replays it: one launch
    instead of ~300 small kernels. Inputs are copied into fixed buffers: a graph reads the addresses it recorded."""

    def __init__(self, step: Callable[..., None]):
        self.step, self.warmup, self.graph = step, 3, None

    def __call__(self, real: torch.Tensor, z: torch.Tensor, gen: torch.Generator) -> None:
        if self.warmup > 0:  # eager steps on a side stream: cuDNN autotuning, allocations
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


def time_training_steps(config: TrainConfig, candidates: list[str], batch: int = TRIAL_BATCH,
                        device: torch.device = torch.device("cpu")) -> Iterator[dict[str, float]]:
    """Round after round, the images/s of one training step of `config`'s built-in networks on `device` in each
    candidate ("fp32 NCHW", "bf16 channels_last", ...), waiting for the device. Closing it restores the random state."""
    batch, steps = min(batch, config.batch_size), {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        for name in candidates:
            dtype, layout = name.split()
            amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)
            memory = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            G = Generator(config.image_size, config.latent_dim, config.g_width).to(device, memory_format=memory)
            D = Discriminator(config.image_size, config.d_width, config.spectral_norm).to(device, memory_format=memory)
            step = TrainingStep(G, D, torch.optim.Adam(G.parameters(), foreach=True),
                                torch.optim.Adam(D.parameters(), foreach=True), config.loss, amp=amp)
            real = torch.rand(batch, 3, config.image_size, config.image_size, device=device) * 2 - 1
            steps[name] = partial(step, real.contiguous(memory_format=memory),
                                  torch.randn(batch, config.latent_dim, 1, 1, device=device))
            steps[name]()  # a warm-up: the first step allocates and picks kernels
        while True:
            timing = {}
            for name, run_step in steps.items():
                started = time.perf_counter()
                run_step()
                run_step.func.totals.tolist()   # waits for the device (not `read`: no other process takes part)
                timing[name] = batch / (time.perf_counter() - started)
            yield timing
