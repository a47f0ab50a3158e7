"""Distributed data-parallel training on the CPU: 2 processes with gloo, started by torchrun as a subprocess. Every
run is tiny (16x16, widths 8, 256 images, batch 16, 2 epochs). Run under torchrun, this file is its own worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import chain
from pathlib import Path

import pytest
import torch

from utils import distributed
from utils.config import TrainConfig
from utils.distributed import launch
from utils.errors import ConfigError, UserError
from utils.run import CHECKPOINT, list_frames, read_checkpoint
from utils.training import DeviceData, epoch_generators, train

REPO = Path(__file__).resolve().parents[1]
IMAGES, BATCH = 256, 16
TINY = dict(data="synthetic", max_images=IMAGES, image_size=16, g_width=8, d_width=8, batch_size=BATCH, epochs=2,
            device="cpu", amp="off", num_samples=16, log_every=4)
WORKER_IMAGES = torch.randint(0, 256, (IMAGES, 3, 16, 16), dtype=torch.uint8,
                              generator=torch.Generator().manual_seed(0))


def tiny_config(tmp_path: Path, **overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, "data_dir": str(tmp_path / "data"), "out": str(tmp_path / "run"), **overrides})


def frame_epochs(run_dir: str | Path) -> list[int]:
    return [epoch for epoch, _ in list_frames(run_dir)]


def read_history(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "history.json").read_text())


def test_two_processes_train_one_run_with_identical_weights_that_resumes_in_one_process(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__]
    done = subprocess.run([*command, str(tmp_path)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)   # `_worker` below, in each process
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    printed_once = ["effective batch 32;", "learning rates G 2.00e-04, D 2.00e-04", "epoch 1/2: loss_d", "epoch 2/2:"]
    assert all(output.count(line) == 1 for line in printed_once), output   # by process 0 only
    run_dir = tmp_path / "run"
    assert frame_epochs(run_dir) == [1, 2]          # one frame per epoch, not one per process
    # each process trains on its half of the epoch: 256 / (2 x 16) = 8 steps per epoch, not 16
    assert read_history(run_dir)["steps"][-1]["step"] == 2 * IMAGES // (2 * BATCH)
    state = read_checkpoint(run_dir / CHECKPOINT)
    assert state["epoch"] == 2 and not any(key.startswith("module.") for key in chain(state["generator"],
                                                                                       state["discriminator"]))
    rank0, rank1 = (torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1))
    # DDP averaged the gradients of G and D: both processes end with the same weights...
    assert len(rank0["parameters"]) == len(rank1["parameters"]) > 0
    assert all(torch.equal(a, b) for a, b in zip(rank0["parameters"], rank1["parameters"]))
    # ... although each trained on its own batches: D's BatchNorm running statistics (each process keeps its own) differ
    assert any(not torch.equal(a, b) for a, b in zip(rank0["d_batchnorm_stats"], rank1["d_batchnorm_stats"]))
    collectives = [(r["average_of_ranks"], r["agree_rank1_only"], r["agree_nobody"]) for r in (rank0, rank1)]
    assert collectives == [(0.5, True, False)] * 2

    result = train(TrainConfig(**{**TINY, "out": str(run_dir), "epochs": 3}), progress=False, images=WORKER_IMAGES)

    assert result.epochs_done == 3 and frame_epochs(run_dir) == [1, 2, 3]   # one process takes over
    history = read_history(run_dir)
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3]
    assert history["steps"][-1]["step"] == 16 + IMAGES // BATCH  # alone, a process sees the whole epoch


def test_launch_refuses_what_cannot_start_resumes_a_one_process_run_and_says_when_training_failed(tmp_path, capsys):
    with pytest.raises(ConfigError, match="config field 'sync_batchnorm' needs CUDA GPUs"):
        launch(tiny_config(tmp_path, sync_batchnorm=True), nprocs=2)
    with pytest.raises(ConfigError, match="pass nprocs=N"):
        launch(tiny_config(tmp_path))
    assert not (tmp_path / "run").exists()   # refused before any process started
    train(tiny_config(tmp_path, epochs=1), progress=False)
    capsys.readouterr()

    launch(tiny_config(tmp_path, epochs=2), nprocs=2)

    output = capsys.readouterr().out
    assert "torch.distributed.run --standalone --nproc_per_node=2 -m utils.train" in output and "--device cpu" in output
    assert output.count("resuming") == 1 and output.count("effective batch 32;") == 1
    assert frame_epochs(tmp_path / "run") == [1, 2]
    history = read_history(tmp_path / "run")
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    assert history["steps"][-1]["step"] == IMAGES // BATCH + IMAGES // (2 * BATCH)
    with pytest.raises(UserError, match="torchrun exited with code 1; the first error is in the output above"):
        launch(tiny_config(tmp_path, resume=False, data="https://example.invalid/faces.zip?token=SECRET"), nprocs=2)
    output = capsys.readouterr().out
    assert "already holds a run" in output and "token=***" in output   # the cause, from process 0, is shown
    assert "SECRET" not in output


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_processes_get_distinct_shards_that_cover_the_epoch(world, monkeypatch):
    count, batch = 128, 8
    # image i: channel 0 holds i; channel 1 is 0 on the left half and 255 on the right, so a flip shows
    images = torch.zeros(count, 3, 16, 16, dtype=torch.uint8)
    images[:, 0] = torch.arange(count, dtype=torch.uint8).view(-1, 1, 1)
    images[:, 1, :, 8:] = 255
    order = torch.randperm(count, generator=torch.Generator().manual_seed(1))
    flips = torch.rand(count, generator=torch.Generator().manual_seed(2)) < 0.5
    position = {int(index): p for p, index in enumerate(order)}
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    shards = []   # (image index, flipped) of every image each process trains on
    for rank in range(world):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        data = DeviceData(images, torch.device("cpu"), TrainConfig(batch_size=batch, image_size=16),
                          channels_last=False, log=lambda *_: None)
        pixels = torch.cat([((served + 1) * 127.5).round().long() for served in data.epoch(order, flips)])
        shards.append(list(zip(pixels[:, 0, 0, 0].tolist(), (pixels[:, 1, 0, 0] == 255).tolist())))

    assert len({len(shard) for shard in shards}) == 1             # same number of steps everywhere
    everything = [index for shard in shards for index, _ in shard]
    assert len(everything) == len(set(everything))                # no image twice, within or across processes
    assert count - len(everything) < world * batch                # at most a partial batch per process left out
    if count % (world * batch) == 0:
        assert sorted(everything) == list(range(count))           # the whole epoch
    for index, flipped in chain(*shards):
        assert flipped == bool(flips[position[index]])            # the flip travels with its image


def test_each_process_draws_its_own_noise_from_the_same_permutation():
    (cpu0, dev0), (cpu1, dev1) = (epoch_generators(42, 3, torch.device("cpu"), rank=rank) for rank in (0, 1))
    _, dev_alone = epoch_generators(42, 3, torch.device("cpu"))
    assert torch.equal(torch.randperm(100, generator=cpu0), torch.randperm(100, generator=cpu1))
    noise0, noise1 = torch.randn(8, generator=dev0), torch.randn(8, generator=dev1)
    assert not torch.allclose(noise0, noise1)
    assert torch.equal(noise0, torch.randn(8, generator=dev_alone))  # process 0 draws what a single process does


def _worker(out: Path) -> None:
    """One process of the two-process test: train, then save what the test compares."""
    result = train(TrainConfig(**{**TINY, "out": str(out / "run")}), progress=False, images=WORKER_IMAGES)
    rank = distributed.rank()
    torch.save({
        "parameters": [p.detach() for p in chain(result.generator.parameters(), result.discriminator.parameters())],
        "d_batchnorm_stats": [b for name, b in result.discriminator.named_buffers() if "running" in name],
        "average_of_ranks": distributed.average(torch.tensor([float(rank)])).item(),
        "agree_rank1_only": distributed.agree(rank == 1),
        "agree_nobody": distributed.agree(False),
    }, out / f"rank{rank}.pt")


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
