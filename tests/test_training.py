import json
import math
from itertools import chain

import pytest
import torch
from PIL import Image

from utils.config import TrainConfig
from utils.environment import pick_cuda_graphs
from utils.models import Discriminator, Generator
from utils.run import CHECKPOINT, frame_path, list_frames, load_models, read_checkpoint
from utils.step import EMA, CUDAGraphStep, TrainingStep, discriminator_loss, generator_loss
from utils.training import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

IMAGES = torch.randint(0, 256, (128, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
IMPROVED = dict(recipe="improved", ema_decay=0.9, diffaugment="color,translation,cutout")


def tiny(tmp_path, name="run", **overrides) -> TrainConfig:
    """128 images of 16x16, batch 32: 4 steps per epoch; fp32 channels_last, not the CPU trial's choice, which a busy
    machine can change between two runs compared here (utils/environment.py)."""
    values = dict(image_size=16, latent_dim=16, g_width=8, d_width=8, batch_size=32, epochs=2, device="cpu",
                  amp="off", channels_last="on", log_every=2, num_samples=16, out=str(tmp_path / name))
    return TrainConfig(**values | overrides)


def run(config: TrainConfig, images=IMAGES):
    return train(config, progress=False, images=images)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def without_timings(history: dict) -> dict:
    return {part: [{k: v for k, v in record.items() if k not in ("seconds", "images_per_s")} for record in records]
            for part, records in history.items() if part in ("steps", "epochs")}


def test_the_losses_on_known_logits_and_which_side_they_reward():
    softplus = lambda x: math.log1p(math.exp(x))  # -log(sigmoid(-x))
    real, fake = torch.tensor([0.0, 2.0]), torch.tensor([0.0, -2.0])
    # BCE: D's -log D(x) - log(1 - D(G(z))) and G's non-saturating -log D(G(z)), each a mean over its batch
    assert discriminator_loss(real, fake, "bce").item() == pytest.approx(softplus(0) + softplus(-2))
    assert generator_loss(fake, "bce").item() == pytest.approx((softplus(0) + softplus(2)) / 2)
    # hinge: D's mean(relu(1 - real)) + mean(relu(1 + fake)), G's -mean(fake)
    real, fake = torch.tensor([0.5, 2.0, -1.0]), torch.tensor([-0.5, -3.0, 1.0])
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(2 * 2.5 / 3)
    assert generator_loss(fake, "hinge").item() == pytest.approx(2.5 / 3)
    high, low = torch.full((4,), 5.0), torch.full((4,), -5.0)
    for kind in ("bce", "hinge"):  # D is rewarded for high scores of reals, G for high scores of fakes
        assert discriminator_loss(high, low, kind) < discriminator_loss(low, high, kind)
        assert generator_loss(high, kind) < generator_loss(low, kind)


def test_a_run_writes_grids_history_config_and_checkpoint_and_refuses_what_cannot_train(tmp_path):
    config = tiny(tmp_path, epochs=3)

    result = run(config)

    run_dir = tmp_path / "run"
    assert result.run_dir == run_dir and result.epochs_done == 3
    assert list_frames(run_dir) == [(e, frame_path(run_dir, e)) for e in (1, 2, 3)]
    with Image.open(frame_path(run_dir, 3)) as grid:  # 16 samples, 8 per row, 2-pixel gaps
        assert grid.size == (8 * 16 + 9 * 2, 2 * 16 + 3 * 2)
    history = json.loads((run_dir / "history.json").read_text())
    assert history == result.history and [e["epoch"] for e in history["epochs"]] == [1, 2, 3]
    # a record per step on the CPU, where reading the losses costs nothing (log_every spares a GPU the waits)
    assert [(s["epoch"], s["step"]) for s in history["steps"]] == [(e, s) for e in (1, 2, 3) for s in range(4 * e - 3, 4 * e + 1)]
    assert all(math.isfinite(s["loss_d"]) and math.isfinite(s["loss_g"]) and 0 <= s["d_real"] <= 1 for s in history["steps"])
    assert TrainConfig.load(run_dir / "config.json") == config
    state = read_checkpoint(run_dir / CHECKPOINT)
    assert state["epoch"] == 3 and state["config"] == config.to_dict() and state["history"] == history
    assert same(state["generator"], result.generator.state_dict()) and state["fixed_noise"].shape == (16, 16, 1, 1)
    assert [p.name for p in run_dir.glob(".*")] == [".lock"] and not list((run_dir / "samples").glob(".*"))  # no temporaries
    checkpoint = (run_dir / CHECKPOINT).read_bytes()
    with pytest.raises(ValueError, match=r"config field 'resume' is False but .* already holds a run"):
        run(tiny(tmp_path, epochs=4, resume=False))
    with pytest.raises(ValueError, match="config field 'batch_size' .* larger than the 16 images"):
        run(tiny(tmp_path, "small"), images=IMAGES[:16])
    assert (run_dir / CHECKPOINT).read_bytes() == checkpoint


@pytest.mark.parametrize("recipe", [{}, IMPROVED], ids=["dcgan", "improved"])
def test_a_resumed_run_ends_exactly_like_an_uninterrupted_one_and_another_seed_does_not(tmp_path, capsys, recipe):
    run(tiny(tmp_path, "resumed", epochs=1, **recipe))
    first_frame = frame_path(tmp_path / "resumed", 1)
    written = first_frame.stat().st_mtime_ns

    resumed, straight = (run(tiny(tmp_path, name, epochs=3, **recipe)) for name in ("resumed", "straight"))

    assert "resuming" in capsys.readouterr().out
    assert first_frame.stat().st_mtime_ns == written  # epoch 1 was not trained (nor drawn) again
    assert [s["step"] for s in resumed.history["steps"]] == list(range(1, 12 + 1))   # one a step on the CPU
    assert without_timings(resumed.history) == without_timings(straight.history)
    assert resumed.history["changes"] == [{"epoch": 2, "step": 4, "field": "epochs", "from": 1, "to": 3}]
    saved = [read_checkpoint(tmp_path / name / CHECKPOINT) for name in ("resumed", "straight")]
    for part in ("generator", "discriminator", "ema"):
        assert (saved[0][part] is None) == (saved[1][part] is None) == (part == "ema" and not recipe)
        assert saved[0][part] is None or same(saved[0][part], saved[1][part])
    for part in ("opt_g", "opt_d"):
        assert all(same(saved[0][part]["state"][i], saved[1][part]["state"][i]) for i in saved[1][part]["state"])
    assert saved[0]["opt_g"]["state"][0]["step"] == 12
    for epoch in (1, 2, 3):
        assert frame_path(tmp_path / "resumed", epoch).read_bytes() == frame_path(tmp_path / "straight", epoch).read_bytes()
    other = run(tiny(tmp_path, "other", epochs=3, seed=7, **recipe))
    assert not same(other.generator.state_dict(), straight.generator.state_dict())


def test_improved_recipe_trains_with_ema_hinge_spectral_norm_and_diffaugment(tmp_path):
    config = tiny(tmp_path, **IMPROVED)
    assert (config.loss, config.spectral_norm, config.beta1) == ("hinge", True, 0.0)
    assert config.lr_d > config.lr_g > TrainConfig().lr_g  # two time-scales, both faster than DCGAN's

    result = run(config)

    state = read_checkpoint(tmp_path / "run" / CHECKPOINT)
    assert state["ema"]["updates"].item() == 8  # one update per step
    ema_weights = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    assert ema_weights.keys() == state["generator"].keys() and not same(ema_weights, state["generator"])  # an average
    assert same(result.generator.state_dict(), ema_weights)  # samples come from the EMA
    assert any("parametrizations.weight.original" in k for k in state["discriminator"])
    assert not any("running_mean" in k for k in state["discriminator"])  # no BatchNorm in D
    first = result.history["steps"][0]  # hinge with D's logits near 0: loss_d ~ 2 and loss_g ~ 0 (BCE: 1.39 and 0.69)
    assert first["loss_d"] > 1.5 and abs(first["loss_g"]) < 0.4
    generator, _, history = load_models(tmp_path / "run")
    assert same(generator.state_dict(), ema_weights) and history == result.history


def test_ema_moves_each_weight_towards_the_model_by_the_ramped_up_decay():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.5)

    def moved(share: float) -> None:  # move the model's weights by 1, update: the EMA goes `share` of the way
        before = {k: v.clone() for k, v in ema.module.state_dict().items()}
        for p in model.parameters():
            p.data.add_(1.0)
        model(torch.randn(4, 3))  # moves BatchNorm's running statistics
        ema.update(model)
        for name, p in model.named_parameters():
            torch.testing.assert_close(ema.module.state_dict()[name], (1 - share) * before[name] + share * p.detach())
        for name, b in model.named_buffers():  # statistics are copied, not averaged
            assert torch.equal(ema.module.state_dict()[name], b)

    moved(0.9)  # the first update: decay min(0.5, 1/10) = 0.1
    for _ in range(20):
        ema.update(model)
    assert ema.updates.item() == 21
    moved(0.5)  # the ramp (22/31) has passed 0.5


@cuda_only
@pytest.mark.parametrize("recipe,amp", [("dcgan", "off"), ("improved", "off"), ("dcgan", "fp16"), ("improved", "fp16")])
def test_cuda_graphs_train_each_recipe_like_the_eager_step(tmp_path, recipe, amp):
    """fp16 too (the T4's path): GradScaler's scale and inf check reach the fused Adam as device tensors. The improved
    recipe's EMA update is recorded too, which fails if it waits for the device."""
    images = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    settings = dict(recipe=recipe, image_size=32, batch_size=64, device="cuda", amp=amp)
    on, off = (run(tiny(tmp_path, graphs, cuda_graphs=graphs, **settings), images).history["steps"]
               for graphs in ("on", "off"))
    assert len(on) == len(off) == 8
    for a, b in zip(on, off):  # same batches and noise; cuDNN may pick other kernels, so close, not equal
        assert a["loss_d"] == pytest.approx(b["loss_d"], rel=0.05, abs=0.05)
        assert a["loss_g"] == pytest.approx(b["loss_g"], rel=0.05, abs=0.05)


@pytest.mark.parametrize("device,graphed", [("cpu", False), pytest.param("cuda", False, marks=cuda_only),
                                            pytest.param("cuda", True, marks=cuda_only)],
                         ids=["cpu eager", "cuda eager", "CUDA graph"])
def test_an_overflowing_fp16_step_is_skipped_and_halves_the_scale(device, graphed):
    """The T4's step (fp16 autocast, GradScaler, fused Adam), also on the CPU, where the same code runs."""
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    torch.manual_seed(0)
    generator, discriminator = Generator(16, 16, 8).to(device), Discriminator(16, 8).to(device)
    adam = lambda model: torch.optim.Adam(model.parameters(), 2e-4, (0.5, 0.999), fused=True, capturable=graphed)
    scaler = torch.amp.GradScaler(device)
    step = TrainingStep(generator, discriminator, adam(generator), adam(discriminator), amp=torch.float16,
                        scaler=scaler, cuda_graphs=graphed)
    run_step = CUDAGraphStep(step) if graphed else step
    real, z = torch.rand(32, 3, 16, 16, device=device) * 2 - 1, torch.randn(32, 16, 1, 1, device=device)
    for _ in range(6):  # ordinary steps; graphed: 3 eager warm-ups, then recorded and replayed
        run_step(real, z, None)
    assert not graphed or run_step.graph is not None
    params = list(chain(generator.parameters(), discriminator.parameters()))
    sync()
    scaler._scale.fill_(2.0 ** 60)  # the scale the next step multiplies its losses by: fp16 gradients overflow
    before = [p.detach().clone() for p in params]

    run_step(real, z, None)
    sync()

    assert scaler._scale.item() == 2.0 ** 59  # backed off by half
    assert all(torch.equal(a, p.detach()) for a, p in zip(before, params))  # the step was skipped
    scaler._scale.fill_(1024.0)
    run_step(real, z, None)  # and training goes on
    sync()
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, params))


def test_128px_training_writes_128px_grids(tmp_path):
    images = torch.randint(0, 256, (32, 3, 128, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    result = run(tiny(tmp_path, image_size=128, g_width=4, d_width=4, batch_size=16, epochs=1, num_samples=4), images)
    assert result.generator(torch.randn(2, 16, 1, 1)).shape == (2, 3, 128, 128)
    with Image.open(frame_path(result.run_dir, 1)) as grid:  # 4 samples in one row of 128px tiles, 2px padding
        assert grid.size == (4 * 130 + 2, 130 + 2)


def test_the_time_budget_stops_training_and_saves_the_cut_short_epoch(tmp_path):
    result = run(tiny(tmp_path, epochs=50, max_minutes=1e-9))
    assert [e["epoch"] for e in result.history["epochs"]] == [1] and result.epochs_done == 1
    assert result.history["epochs"][0]["steps"] < 4   # cut short within the first epoch
    assert read_checkpoint(result.run_dir / CHECKPOINT)["epoch"] == 1


def test_cuda_graphs_are_refused_where_they_cannot_work():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    auto, on, off = (TrainConfig(cuda_graphs=setting) for setting in ("auto", "on", "off"))
    assert pick_cuda_graphs(cuda, auto, torch.bfloat16) and not pick_cuda_graphs(cpu, auto, torch.bfloat16)
    assert not pick_cuda_graphs(cuda, off, torch.bfloat16)
    # fp16 is recorded when asked for; "auto" waits for a GPU measurement
    assert pick_cuda_graphs(cuda, on, torch.float16) and not pick_cuda_graphs(cuda, auto, torch.float16)
    for blocker, world_size in ((dict(diffaugment="color"), 1), (dict(label_flip=0.1), 1), ({}, 2)):
        assert not pick_cuda_graphs(cuda, TrainConfig(**blocker), torch.bfloat16, world_size)
        with pytest.raises(ValueError, match="cuda_graphs"):
            pick_cuda_graphs(cuda, TrainConfig(cuda_graphs="on", **blocker), torch.bfloat16, world_size)
    with pytest.raises(ValueError, match="cuda_graphs"):
        pick_cuda_graphs(cpu, on, torch.bfloat16)
