"""utils/data.py downloads: a zip over real HTTP (127.0.0.1), the Kaggle dataset without a network.

Kaggle tests that could hang on a prompt run in a subprocess with stdin closed and a timeout.
"""

import http.server
import json
import os
import secrets
import stat
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from types import SimpleNamespace

import opendatasets
import opendatasets.utils.network
import pytest
import torch
from PIL import Image

from utils.config import TrainConfig
from utils.data import KAGGLE_URL, cache_path, download_kaggle, download_url, find_kaggle_input, load_dataset

REPO = Path(__file__).resolve().parents[1]
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def write_png(path: Path, colour) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 24), colour).save(path)
    return path


@pytest.fixture
def server(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 serving tmp_path/served, recording the paths it was asked for."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    root, requests = tmp_path / "served", []
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True).start()
    yield SimpleNamespace(root=root, url=f"http://127.0.0.1:{httpd.server_port}", requests=requests)
    httpd.shutdown()
    httpd.server_close()


def test_a_zip_url_is_downloaded_once_through_opendatasets(server, tmp_path, monkeypatch):
    with zipfile.ZipFile(server.root / "faces.zip", "w") as archive:
        for i, colour in enumerate(COLOURS):
            archive.write(write_png(tmp_path / "png" / f"{i}.png", colour), f"faces/{i}.png")
    fetches = []
    fetch = opendatasets.utils.network.download_url
    monkeypatch.setattr(opendatasets.utils.network, "download_url",
                        lambda *args, **kwargs: (fetches.append(args), fetch(*args, **kwargs))[1])
    config = TrainConfig(data=f"{server.url}/faces.zip", data_dir=str(tmp_path / "data"), image_size=16)

    images = load_dataset(config, progress=False)
    assert images.shape == (4, 3, 16, 16)
    assert images.float().mean(dim=(2, 3)).tolist() == [list(map(float, c)) for c in COLOURS]
    assert server.requests == ["/faces.zip"] and len(fetches) == 1
    downloads = list((tmp_path / "data" / "downloads").iterdir())
    assert len(downloads) == 1 and downloads[0].suffix == ".zip"   # kept as a zip, nothing extracted

    assert torch.equal(load_dataset(config, progress=False), images)   # from the cache
    cache_path(config).unlink()
    assert torch.equal(load_dataset(config, progress=False), images)   # decoded again from the downloaded zip
    assert server.requests == ["/faces.zip"] and len(fetches) == 1


def test_a_url_that_is_not_a_zip_is_an_error_and_leaves_nothing(server, tmp_path):
    (server.root / "page.html").write_text("<html>a login page</html>")
    with pytest.raises(ValueError, match="did not return a .zip archive"):
        download_url(f"{server.url}/page.html", tmp_path / "data")
    assert list((tmp_path / "data" / "downloads").iterdir()) == []


# ------------------------------------------------------------------------------------------ Kaggle

def run_isolated(tmp_path: Path, code: str, **env: str) -> subprocess.CompletedProcess:
    """Run Python code with no credentials anywhere: empty HOME and cwd, clean env, stdin closed."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "PYTHONPATH": str(REPO),
                   "ANIME_GAN_KAGGLE_INPUT_ROOT": str(tmp_path / "no-kaggle-input"), **env}
    return subprocess.run([sys.executable, "-c", code], cwd=work, env=environment, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)


DOWNLOAD = "from utils.data import download_kaggle; download_kaggle('data')"


def test_missing_kaggle_credentials_fail_fast_instead_of_prompting(tmp_path):
    result = run_isolated(tmp_path, DOWNLOAD)
    assert result.returncode != 0
    assert "RuntimeError: Kaggle credentials not found: set KAGGLE_USERNAME and KAGGLE_KEY" in result.stderr
    assert "data='synthetic'" in result.stderr
    assert "username" not in result.stdout.lower()   # opendatasets' prompt never ran


def test_the_kaggle_key_is_never_printed_when_the_download_fails(tmp_path):
    key = secrets.token_hex(16)
    # KAGGLE_API_ENVIRONMENT=LOCALHOST points the Kaggle client at http://localhost: the call fails, offline
    result = run_isolated(tmp_path, DOWNLOAD, KAGGLE_USERNAME="someone", KAGGLE_KEY=key,
                          KAGGLE_API_ENVIRONMENT="LOCALHOST")
    assert result.returncode != 0
    assert f"RuntimeError: downloading {KAGGLE_URL} failed" in result.stderr
    assert key not in result.stdout + result.stderr
    data_dir = tmp_path / "work" / "data"
    assert list(data_dir.iterdir()) == []   # the private kaggle.json and the partial download are gone
    assert not (tmp_path / "work" / "kaggle.json").exists()


def test_kaggle_credentials_reach_opendatasets_in_a_private_file_that_is_removed(tmp_path, monkeypatch):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ANIME_GAN_KAGGLE_INPUT_ROOT", str(tmp_path / "no-kaggle-input"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / ".kaggle").mkdir(parents=True)
    (tmp_path / "home" / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": "ann", "key": "k3y"}))
    monkeypatch.chdir(tmp_path)
    seen = {}

    def fake_download(url, data_dir):   # what opendatasets does on success: ./kaggle.json -> data_dir/<slug>/
        credentials = Path("kaggle.json")
        seen.update(url=url, mode=stat.S_IMODE(credentials.stat().st_mode),
                    values=json.loads(credentials.read_text()))
        write_png(Path(data_dir) / "animefacedataset" / "images" / "1.jpg", (9, 9, 9))

    monkeypatch.setattr(opendatasets, "download", fake_download)
    folder = download_kaggle(tmp_path / "data")

    assert seen == dict(url="https://www.kaggle.com/datasets/splcher/animefacedataset", mode=0o600,
                        values={"username": "ann", "key": "k3y"})
    assert folder == tmp_path / "data" / "animefacedataset" and (folder / "images" / "1.jpg").is_file()
    assert Path.cwd() == tmp_path
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["animefacedataset"]   # no kaggle.json left
    monkeypatch.setattr(opendatasets, "download", lambda *args: pytest.fail("downloaded twice"))
    assert download_kaggle(tmp_path / "data") == folder


def test_find_kaggle_input_finds_the_attached_dataset(tmp_path, monkeypatch):
    root = tmp_path / "input"
    monkeypatch.setenv("ANIME_GAN_KAGGLE_INPUT_ROOT", str(root))
    assert find_kaggle_input() is None   # no /kaggle/input: not on Kaggle
    (root / "weights" / "images").mkdir(parents=True)   # an images/ folder without JPEGs does not count
    assert find_kaggle_input() is None
    write_png(root / "other-faces" / "images" / "x.jpg", (0, 0, 0))
    assert find_kaggle_input() == root / "other-faces" / "images"
    write_png(root / "datasets" / "splcher" / "animefacedataset" / "images" / "1.jpg", (0, 0, 0))
    assert find_kaggle_input() == root / "datasets" / "splcher" / "animefacedataset" / "images"


def test_kaggle_data_is_read_in_place_from_the_attached_input(tmp_path, monkeypatch):
    root = tmp_path / "input"
    for i, colour in enumerate(COLOURS[:3]):
        write_png(root / "animefacedataset" / "images" / f"{i}.jpg", colour)
    monkeypatch.setenv("ANIME_GAN_KAGGLE_INPUT_ROOT", str(root))
    monkeypatch.setattr(opendatasets, "download", lambda *args: pytest.fail("tried to download"))
    before = sorted((p, p.stat().st_mtime_ns) for p in root.rglob("*"))

    images = load_dataset(TrainConfig(data="kaggle", data_dir=str(tmp_path / "data"), image_size=16),
                          progress=False)
    assert images.shape == (3, 3, 16, 16)
    assert sorted((p, p.stat().st_mtime_ns) for p in root.rglob("*")) == before   # nothing written there
