import os

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
