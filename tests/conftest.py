import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def machine_cache(tmp_path_factory):
    """The CPU trial's cache (utils/environment.py) lives in this session's temporary folder, not in ~/.cache:
    one measurement per network size for the whole session, shared with the subprocesses the tests start."""
    os.environ["ANIME_GAN_CACHE_DIR"] = str(tmp_path_factory.mktemp("machine-cache"))


@pytest.fixture
def one_thread():
    """Tiny models: extra threads only add overhead (and crawl on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_tiny(folder: Path, amp: str) -> Path:
    """A real trained run: 16x16, 2 epochs of 128 random images, with an EMA generator, the default 64 fixed latents;
    channels_last, not the CPU trial's choice, which depends on how busy the machine is."""
    from utils.config import TrainConfig
    from utils.training import train

    images = torch.randint(0, 256, (128, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(image_size=16, latent_dim=16, g_width=8, d_width=8, batch_size=32, epochs=2, device="cpu",
                         amp=amp, channels_last="on", log_every=2, ema_decay=0.9, out=str(folder / "run"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(config, progress=False, images=images)
    finally:
        torch.set_num_threads(threads)
    return Path(config.out)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One run shared by the tests that only read it (generate, explorer, export): fp32, for exact numbers."""
    return train_tiny(tmp_path_factory.mktemp("tiny"), amp="off")


@pytest.fixture(scope="session")
def tiny_fp16_run(tmp_path_factory):
    """The same run trained as on a T4 (fp16 autocast, GradScaler, fused Adam), here on the CPU."""
    return train_tiny(tmp_path_factory.mktemp("tiny-fp16"), amp="fp16")
