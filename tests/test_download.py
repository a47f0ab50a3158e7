"""Downloads over real HTTP on 127.0.0.1: a zip, the FID weights, and the Kaggle dataset from a fake Kaggle API;
data_dir's lock held by a real second process.

KAGGLE_API_ENVIRONMENT=LOCALHOST points both Kaggle clients (kagglehub, and opendatasets through the `kaggle`
package) at http://localhost, and http_proxy routes their requests to the fake API's port, so both run unchanged,
offline. Whatever could hang on a prompt runs in a subprocess with stdin closed and a timeout.
"""

import base64
import contextlib
import http.server
import io
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import utils.downloads as downloads
from small_disk import small_disk
from utils.config import TrainConfig
from utils.data import load_dataset
from utils.downloads import DownloadError, download_kaggle, download_url, find_kaggle_input
from utils.files import CannotWrite
from utils.urls import redact_url

REPO = Path(__file__).resolve().parents[1]
try:
    import opendatasets
except ImportError:   # Python 3.13: it imports the removed `cgi` module
    opendatasets = None
needs_opendatasets = pytest.mark.skipif(opendatasets is None, reason="opendatasets cannot be imported on this Python")
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
SECRETS = ("pa55word", "t0ken")   # in the URLs below: never in a message, a file or the output


def write_png(path: Path, colour) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 24), colour).save(path)
    return path


def zip_of_images(count: int, folder: str = "faces", noise_bytes: int = 0) -> bytes:
    """A zip of `count` 24x24 PNGs under folder/; `noise_bytes` of random data in one more member make it large."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(count):
            png = io.BytesIO()
            Image.new("RGB", (24, 24), COLOURS[i % len(COLOURS)]).save(png, "PNG")
            archive.writestr(f"{folder}/{i}.png", png.getvalue())
        if noise_bytes:
            archive.writestr(f"{folder}/noise.bin", os.urandom(noise_bytes))
    return buffer.getvalue()


@contextlib.contextmanager
def serving(handler_class):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
    threading.Thread(target=httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}", httpd.server_port
    finally:
        httpd.shutdown()
        httpd.server_close()


def cache_files(data_dir: Path) -> list[Path]:
    return sorted((Path(data_dir) / "cache").glob("*.npy"))


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A server of tmp_path/served, recording each request's path, with routes that fail: /status/N answers N;
    /drop/N sends N of a promised 100,000 bytes and hangs up; /unsized/NAME sends half of NAME without a length;
    /silent never answers; /stall sends 1,000 of 100,000 bytes, then nothing; /trickle a byte every 0.05 s (never
    silent: only the deadline ends it); /endless zeros without a length, for ever."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    root, requests, stop = tmp_path / "served", [], threading.Event()
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            route, _, argument = self.path.split("?")[0].strip("/").partition("/")
            self.close_connection = True
            with contextlib.suppress(ConnectionError):   # the client hung up, as it should
                self.answer(route, argument)

        def answer(self, route, argument):
            if route == "status":
                return self.send_error(int(argument))
            if route == "silent":
                return stop.wait(30)
            if route not in ("unsized", "drop", "stall", "trickle", "endless"):
                return super().do_GET()
            self.send_response(200)
            if route in ("drop", "stall", "trickle"):
                self.send_header("Content-Length", "100000")
            self.end_headers()   # without a Content-Length the client reads until the connection closes
            if route == "unsized":
                body = (root / argument).read_bytes()
                self.wfile.write(body[: len(body) // 2])
            if route in ("drop", "stall"):
                self.wfile.write(bytes(int(argument or 1000)))
                self.wfile.flush()
                stop.wait(30 if route == "stall" else 0)
            while route == "trickle" and not stop.wait(0.05):
                self.wfile.write(b"\0")
                self.wfile.flush()
            while route == "endless" and not stop.is_set():
                self.wfile.write(bytes(2**20))

        def log_message(self, *args):
            pass

    with serving(Handler) as (url, port):
        yield SimpleNamespace(root=root, url=url, port=port, requests=requests)
        stop.set()


@pytest.mark.parametrize("route,message", [
    ("page.html", r"^http://127\.0\.0\.1:\d+/page\.html did not send a whole \.zip archive \(25 bytes of text/html\): "
                  r"data must be the URL of a \.zip of images"),
    ("status/404", r"^downloading http://127\.0\.0\.1:\d+/status/404 failed: the server answered 404 Not Found: "
                   r"check the URL$"),
    ("drop/1000", r"^the connection dropped after 1,000 of 100,000 bytes of http://127\.0\.0\.1:\d+/drop/1000: "
                  r"the partial file was removed; run again$"),
    ("unsized/faces.zip", r"/unsized/faces\.zip did not send a whole \.zip archive \([\d,]+ bytes of "
                          r"text/plain\).*if the connection dropped, run again$"),
    ("silent", r"^downloading http://127\.0\.0\.1:\d+/silent failed \(nothing arrived for 0\.5 s\): check the "
               r"network and the URL, then run again$"),
    ("stall", r"/stall failed \(nothing arrived for 0\.5 s\)"),
    ("trickle", r"^downloading http://127\.0\.0\.1:\d+/trickle stopped after [\d,]+ bytes: it did not finish within "
                r"1 s; the partial file was removed"),
    ("endless", r"/endless stopped after [\d,]+ bytes: it went on past 4 MiB without a length; the partial file was "
                r"removed"),
])
def test_a_failed_download_ends_in_one_line_and_leaves_nothing(server, tmp_path, monkeypatch, route, message):
    """Whatever the server does, the download ends: a silent one by the socket's timeout, one that is never silent
    by the deadline, an endless body without a length by the size cap."""
    # each limit small only where it is the one under test, so that a busy machine cannot trip another
    monkeypatch.setattr(downloads, "NETWORK_TIMEOUT_S", 0.5 if route in ("silent", "stall") else 60)
    monkeypatch.setattr(downloads, "DOWNLOAD_DEADLINE_S", 1 if route == "trickle" else 3600)
    monkeypatch.setattr(downloads, "MAX_UNSIZED_BYTES", 4 * 2**20)
    (server.root / "faces.zip").write_bytes(zip_of_images(40))
    (server.root / "page.html").write_text("<html>a login page</html>")
    with pytest.raises(DownloadError, match=message) as failure:
        load_dataset(TrainConfig(data=f"{server.url}/{route}", data_dir=str(tmp_path / "data"), image_size=16),
                     progress=False)
    assert "\n" not in str(failure.value)
    assert list((tmp_path / "data" / "downloads").iterdir()) == []   # no partial file, hidden or not


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL])
def test_a_download_stopped_by_a_signal_leaves_no_partial_file_once_data_dir_is_used_again(server, tmp_path, capsys,
                                                                                         signum):
    """Ctrl-C removes the partial file at once; a kill (a platform ending the session) cannot, so the next process
    that uses data_dir does."""
    data_dir, folder = tmp_path / "data", tmp_path / "data" / "downloads"
    process = subprocess.Popen([sys.executable, "-c", "from utils.config import TrainConfig; from utils.data import "
                                f"load_dataset; load_dataset(TrainConfig(data='{server.url}/trickle', "
                                f"data_dir={str(data_dir)!r}))"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300   # a hang guard only
        while not list(folder.glob("*")) and time.monotonic() < deadline:
            time.sleep(0.05)   # until the body arrives: the partial file is opened after the headers
        [partial] = folder.iterdir()
        assert partial.name.endswith(".tmp.zip")
        process.send_signal(signum)
        process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode in (128 + signum, -signum)
    assert partial.exists() == (signum == signal.SIGKILL)
    load_dataset(TrainConfig(data="synthetic", max_images=8, image_size=16, data_dir=str(data_dir)), progress=False)
    assert list(folder.iterdir()) == []
    assert (f"data: removed {partial}" in capsys.readouterr().out) == (signum == signal.SIGKILL)


def test_a_zip_url_is_downloaded_once_read_in_place_and_its_credentials_never_printed_or_stored(server, tmp_path):
    (server.root / "faces.zip").write_bytes(zip_of_images(4))
    config = TrainConfig(data=f"{server.url}/faces.zip?token=t0ken&dl=1", data_dir=str(tmp_path / "data"),
                         image_size=16)
    images = load_dataset(config, progress=False)
    assert images.float().mean(dim=(2, 3)).tolist() == [list(map(float, c)) for c in COLOURS]
    assert [path.suffix for path in (tmp_path / "data" / "downloads").iterdir()] == [".zip"]   # nothing extracted
    assert torch.equal(load_dataset(config, progress=False), images)   # from the cache
    cache_files(tmp_path / "data")[0].unlink()
    assert torch.equal(load_dataset(config, progress=False), images)   # decoded again from the downloaded zip
    assert len(server.requests) == 1

    for failing, shown in [(f"{server.url}/status/404?token=t0ken&dl=1",
                            f"downloading {server.url}/status/404?token=***&dl=*** failed: the server answered 404"),
                           (f"{server.url}/fa ces.zip?token=t0ken", "failed (URL can't contain control characters"),
                           (f"http://ann:pa55word@127.0.0.1:{server.port}/faces.zip?token=t0ken",
                            f"http://***@127.0.0.1:{server.port}/faces.zip?token=*** holds a user name or password, "
                            "which is never sent")]:
        with pytest.raises(DownloadError) as failure:
            download_url(failing, tmp_path / "data", progress=False)
        told = "".join(traceback.format_exception(failure.value.with_traceback(None)))   # what a notebook shows
        assert shown in str(failure.value) and not any(secret in told for secret in SECRETS)
    assert len(server.requests) == 2   # the URL with a password was refused before any request
    stored = b"".join(path.read_bytes() for path in (tmp_path / "data").rglob("*") if path.is_file())
    assert not any(secret.encode() in stored for secret in SECRETS)


@pytest.mark.parametrize("url,shown", [
    ("https://host/faces.zip", "https://host/faces.zip"),
    ("https://ghp_secret@github.com/x/faces.zip", "https://***@github.com/x/faces.zip"),
    ("https://ann:pw@host:8080/f.zip", "https://***@host:8080/f.zip"),
    ("https://host/f.zip?X-Amz-Signature=ab&X-Amz-Credential=cd&X-Amz-Date=2026",
     "https://host/f.zip?X-Amz-Signature=***&X-Amz-Credential=***&X-Amz-Date=***"),
    ("https://host/f.zip?access_token=ab&dl=1&api_key=cd&flag",
     "https://host/f.zip?access_token=***&dl=***&api_key=***&flag"),
    ("data/faces", "data/faces"),
    ("http://[::1/broken?key=1", "http://[::1/broken?key=***"),
])
def test_redact_url_hides_passwords_and_every_query_value_but_not_the_path(url, shown):
    assert redact_url(url) == shown


@pytest.mark.parametrize("sized", [True, False])
def test_a_download_onto_a_full_disk_names_the_file_and_the_space(server, tmp_path, sized):
    (server.root / "big.zip").write_bytes(zip_of_images(2, noise_bytes=3 * 2**20))   # 3 MiB of noise: no compression
    with small_disk(tmp_path / "disk", size="1m") as disk:
        with pytest.raises(CannotWrite, match=r"no space left to write .*/downloads/big-\w+\.zip: it needs "
                                              r"(about 3\.0 MiB|more than the 1\.0 MiB written)"):
            download_url(f"{server.url}/big.zip" if sized else f"{server.url}/unsized/big.zip", disk)
        assert list((disk / "downloads").iterdir()) == []   # the partial download is gone


# ------------------------------------------------------------------------------------------ data_dir's lock

@contextlib.contextmanager
def held_by_another_process(data_dir: Path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; from utils.downloads "
                               "import data_dir_lock\nwith data_dir_lock(Path(sys.argv[1]), wait=True): "
                               "print('held', flush=True); sys.stdin.read()", str(data_dir)],
                              cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_a_stale_partial_cache_is_removed_only_under_the_lock(tmp_path, capsys):
    config = TrainConfig(data="synthetic", max_images=8, image_size=16, data_dir=str(tmp_path / "data"))
    load_dataset(config, progress=False)
    stale = tmp_path / "data" / "cache" / ".synthetic-seed0-16px-0123.4242.tmp.npy"   # a killed cache build's
    stale.write_bytes(b"partial")
    fid_statistics = tmp_path / "data" / "cache" / ".fid-ref-0123.4243.tmp.pt"   # written without the lock: kept
    fid_statistics.write_bytes(b"being written")

    with held_by_another_process(tmp_path / "data"):   # another process downloading or decoding there
        load_dataset(config, progress=False)   # reusing its cache: does not wait, and touches nothing
        assert stale.exists()
    load_dataset(config, progress=False)
    assert not stale.exists() and fid_statistics.exists()
    said = capsys.readouterr().out
    assert f"data: removed {stale}, a partial file that a stopped download or cache build left" in said
    assert (tmp_path / "data" / ".lock").read_text() == ""   # names no process, no command line


def test_a_cache_build_waits_for_the_process_that_holds_data_dir(tmp_path):
    code = ("from utils.config import TrainConfig; from utils.data import load_dataset; print(tuple(load_dataset("
            f"TrainConfig(data='synthetic', max_images=8, image_size=16, data_dir={str(tmp_path)!r}), "
            "progress=False).shape))")
    with held_by_another_process(tmp_path):
        waiting = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert waiting.stdout.readline() == f"data: waiting for another process to finish downloading or decoding " \
                                            f"into {tmp_path}\n"
        assert waiting.poll() is None and cache_files(tmp_path) == []   # it waits, building nothing
    assert waiting.communicate(timeout=120)[0].endswith("(8, 3, 16, 16)\n") and waiting.returncode == 0


# ------------------------------------------------------------------------------------------ Kaggle

@pytest.fixture
def kaggle_api(tmp_path, monkeypatch):
    """A fake Kaggle API serving the dataset as a zip of 3 images, recording each request's (endpoint,
    Authorization header); `answer` set to an HTTP status fails the download. The clients are pointed at it, and
    this process has no credentials and no attached input (an empty HOME and working directory)."""
    seen = SimpleNamespace(requests=[], answer=200, archive=zip_of_images(3, folder="images"))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            endpoint = self.path.rsplit("/", 1)[-1]
            seen.requests.append((endpoint, self.headers.get("Authorization")))
            if endpoint == "GetDataset":
                body, kind = json.dumps({"currentVersionNumber": 3}).encode(), "application/json"
            elif endpoint == "DownloadDataset" and seen.answer == 200:
                body, kind = seen.archive, "application/zip"
            else:
                return self.send_error(seen.answer if endpoint == "DownloadDataset" else 404)
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with serving(Handler) as (url, _):
        for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "KAGGLE_API_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        pointed = dict(KAGGLE_API_ENVIRONMENT="LOCALHOST", http_proxy=url, no_proxy="", HOME=str(tmp_path / "home"),
                       ANIME_GAN_KAGGLE_INPUT_ROOT=str(tmp_path / "no-input"))
        for name, value in pointed.items():
            monkeypatch.setenv(name, value)
        (tmp_path / "home").mkdir()
        (tmp_path / "work").mkdir()
        monkeypatch.chdir(tmp_path / "work")
        yield seen


def run_isolated(code: str, **env: str) -> subprocess.CompletedProcess:
    """Python code run as the kaggle_api fixture set this process up (no credentials anywhere), stdin closed."""
    names = ("PATH", "HOME", "ANIME_GAN_KAGGLE_INPUT_ROOT", "KAGGLE_API_ENVIRONMENT", "http_proxy", "no_proxy")
    environment = {name: os.environ[name] for name in names} | env
    environment["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", "-c", code], env=environment,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)


LOAD = ("from utils.config import TrainConfig; from utils.data import load_dataset; "
        "print('shape', tuple(load_dataset(TrainConfig(data='kaggle', image_size=16), progress=False).shape))")


KAGGLE_JSON = '{{"username": "someone", "key": "{key}"}}'


@pytest.mark.parametrize("kaggle_json,cgi,tool", [
    pytest.param(None, True, "kagglehub", id="kagglehub"),
    pytest.param(KAGGLE_JSON, True, "opendatasets", id="opendatasets", marks=needs_opendatasets),
    pytest.param(KAGGLE_JSON, False, "kagglehub", id="no opendatasets"),   # as on Python 3.13
    pytest.param(KAGGLE_JSON[:-2], True, "kagglehub", id="malformed kaggle.json"),   # opendatasets would prompt
])
def test_the_kaggle_dataset_downloads_without_prompting_and_never_prints_the_key(tmp_path, kaggle_api, kaggle_json, cgi,
                                                                                 tool):
    key, env = secrets.token_hex(16), {}
    if kaggle_json:   # where opendatasets reads its credentials
        (tmp_path / "work" / "kaggle.json").write_text(kaggle_json.format(key=key))
    if not cgi:   # as on Python 3.13, where opendatasets cannot be imported
        (tmp_path / "cgi.py").write_text("raise ModuleNotFoundError(\"No module named 'cgi'\", name='cgi')\n")
        env["PYTHONPATH"] = str(tmp_path)
    result = run_isolated(LOAD, **env)

    assert result.returncode == 0, result.stderr
    assert f"kaggle: downloading splcher/animefacedataset with {tool} into data/animefacedataset" in result.stdout
    assert "shape (3, 3, 16, 16)" in result.stdout and key not in result.stdout + result.stderr
    endpoints = [endpoint for endpoint, _ in kaggle_api.requests]   # kagglehub asks for the version first
    assert endpoints == (["GetDataset", "DownloadDataset"] if tool == "kagglehub" else ["DownloadDataset"])
    signed = "Basic " + base64.b64encode(f"someone:{key}".encode()).decode()
    assert {authorization for _, authorization in kaggle_api.requests} == {signed if tool == "opendatasets" else None}
    data = tmp_path / "work" / "data"
    assert sorted(p.name for p in (data / "animefacedataset" / "images").iterdir()) == ["0.png", "1.png", "2.png"]
    assert sorted(p.name for p in data.iterdir()) == [".lock", "animefacedataset", "cache"]   # no kaggle.json
    assert download_kaggle(data) == data / "animefacedataset" and len(kaggle_api.requests) == len(endpoints)   # once


@pytest.mark.parametrize("tool", [pytest.param("opendatasets", marks=needs_opendatasets), "kagglehub"])
def test_a_failed_kaggle_download_names_the_status_leaves_nothing_and_never_prints_the_key(tmp_path, kaggle_api, tool):
    kaggle_api.answer = 500
    key = secrets.token_hex(16)
    if tool == "opendatasets":
        (tmp_path / "work" / "kaggle.json").write_text(KAGGLE_JSON.format(key=key))
    result = run_isolated("from utils.errors import run_cli; from utils.downloads import download_kaggle; "
                          "run_cli(lambda: download_kaggle('data'))")

    assert result.returncode == 1 and "Traceback" not in result.stderr and key not in result.stdout + result.stderr
    assert re.match(rf"error: downloading splcher/animefacedataset with {tool} failed \(\w*HTTPError: 500 .*for url: "
                    r"http://localhost/api/v1/datasets\.DatasetApiService/DownloadDataset\)",
                    result.stderr.strip().splitlines()[-1])
    assert [p.name for p in (tmp_path / "work" / "data").iterdir()] == [".lock"]   # no partial download


@pytest.mark.parametrize("case,message", [
    ("small", r"no space left to write .*disk/animefacedataset: it needs about 900\.0 MiB and the disk has 1\.0 MiB "
              "free"),
    ("read-only", r"cannot write .*disk/animefacedataset \(Read-only file system\): choose another name or a "
                  r"writable folder"),
    ("filled", r"no space left to write .*disk/animefacedataset: .*Free some space"),
])
def test_a_kaggle_download_onto_a_small_or_read_only_disk_fails_in_one_line_leaving_nothing(tmp_path, kaggle_api,
                                                                                            monkeypatch, case, message):
    if case == "filled":   # the check up front passes, so the disk really fills during the download
        kaggle_api.archive = zip_of_images(3, folder="images", noise_bytes=3 * 2**20)
        monkeypatch.setattr(downloads, "KAGGLE_DOWNLOAD_BYTES", 0)
    read_only = case == "read-only"   # with room enough: only writing fails
    with small_disk(tmp_path / "disk", size="2g" if read_only else "1m", read_only=read_only) as disk:
        with pytest.raises(CannotWrite, match=message):
            download_kaggle(disk)
        assert [p.name for p in disk.iterdir()] == ([] if read_only else [".lock"])   # no partial download
    assert (kaggle_api.requests == []) == (case != "filled")   # a disk too small is seen before downloading


def test_the_attached_kaggle_dataset_is_found_read_in_place_and_cached_by_the_files_read(tmp_path, monkeypatch):
    root = tmp_path / "input"
    monkeypatch.setenv("ANIME_GAN_KAGGLE_INPUT_ROOT", str(root))
    monkeypatch.setattr(downloads, "_download_kaggle", lambda target: pytest.fail("tried to download"))
    assert find_kaggle_input() is None   # no /kaggle/input: not on Kaggle
    (root / "weights" / "images").mkdir(parents=True)   # an images/ folder without JPEGs does not count
    assert find_kaggle_input() is None
    write_png(root / "other-faces" / "images" / "x.jpg", (0, 0, 0))
    assert find_kaggle_input() == root / "other-faces" / "images"
    images = root / "datasets" / "splcher" / "animefacedataset" / "images"
    for i in range(2):
        write_png(images / f"{i}.jpg", COLOURS[i])
    assert find_kaggle_input() == images   # the one named like the dataset first

    before = sorted((p, p.stat().st_mtime_ns) for p in root.rglob("*"))
    config = TrainConfig(data="kaggle", data_dir=str(tmp_path / "data"), image_size=16)
    assert load_dataset(config, progress=False).shape == (2, 3, 16, 16)
    assert sorted((p, p.stat().st_mtime_ns) for p in root.rglob("*")) == before   # nothing written there
    write_png(images / "2.jpg", COLOURS[2])   # a cache of a partial dataset is not reused once it is complete
    assert len(load_dataset(config, progress=False)) == 3 and len(cache_files(tmp_path / "data")) == 2


# ------------------------------------------------------------------------------------------ what else uses it

@pytest.mark.parametrize("route,reason", [("unreachable", r"\(\[Errno 111\] Connection refused\): check the network"),
                                          ("silent", r"\(nothing arrived for 0\.5 s\)")])
def test_a_failed_download_of_the_fid_weights_names_the_url_and_the_offline_option(server, tmp_path, monkeypatch,
                                                                                   route, reason):
    """The weights come through the same bounded download as the faces: a silent server cannot hang FID."""
    inception = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    from utils.metrics import load_inception

    with socket.socket() as unused:   # a port that nothing listens on
        unused.bind(("127.0.0.1", 0))
        host = server.url if route == "silent" else f"http://127.0.0.1:{unused.getsockname()[1]}"
    url = f"{host}/{route}/weights-inception-2015-12-05-6726825d.pth"
    monkeypatch.setattr(inception, "URL_INCEPTION_V3", url)
    monkeypatch.setattr(downloads, "NETWORK_TIMEOUT_S", 0.5)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))   # no weights downloaded before
    with pytest.raises(DownloadError, match=rf"^could not download the FID Inception weights: downloading "
                                            rf"{re.escape(url)} failed {reason}.*; offline, set config field "
                                            r"'fid_weights' to a local pt_inception-2015-12-05-\*\.pth file$"):
        load_inception("")
    assert list((tmp_path / "torch" / "hub" / "checkpoints").iterdir()) == []


def test_a_password_or_token_in_the_data_url_is_never_stored_and_the_run_continues(server, tmp_path):
    from utils.run import CHECKPOINT, default_run_dir
    from utils.training import train

    (server.root / "faces.zip").write_bytes(zip_of_images(16))
    url = f"{server.url}/faces.zip?token=s3cret.key"
    tiny = dict(data=url, data_dir=str(tmp_path / "data"), image_size=16, latent_dim=8, g_width=8, d_width=8,
                batch_size=8, device="cpu", amp="off", num_samples=4, log_every=1, out=str(tmp_path / "run"))
    train(TrainConfig(**tiny, epochs=1))
    train(TrainConfig(**tiny, epochs=2))       # the same URL is the same data: the run continues, nothing refused

    stored = (tmp_path / "run" / "config.json").read_bytes() + (tmp_path / "run" / CHECKPOINT).read_bytes()
    assert b"s3cret" not in stored and b"faces.zip?token=***" in stored
    assert json.loads((tmp_path / "run" / "history.json").read_text())["epochs"][-1]["epoch"] == 2
    assert "s3cret" not in str(default_run_dir(TrainConfig(**tiny | {"out": ""})))

    # the CLI continues from config.json, which lacks the secret: it asks for the URL again, in one line
    result = subprocess.run([sys.executable, "-m", "utils.train", "--out", str(tmp_path / "run"), "--epochs", "3"],
                            cwd=REPO, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "stored without its password or token" in result.stderr and "give it again with --data URL" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
