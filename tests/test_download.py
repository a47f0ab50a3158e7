"""Downloads: a zip over real HTTP (127.0.0.1), the data_dir lock held by a real second process, the Kaggle dataset
from a local fake Kaggle API, the FID weights.

The fake Kaggle API is a real HTTP server on 127.0.0.1: KAGGLE_API_ENVIRONMENT=LOCALHOST points both download
clients (kagglehub, and opendatasets through the `kaggle` package) at http://localhost, and http_proxy routes
those requests to the server's own port, so both clients run unchanged, offline. Kaggle tests that could hang on a
prompt run in a subprocess with stdin closed and a timeout.
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
import stat
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
from utils.data import cache_path, load_dataset
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


def serve(handler_class) -> SimpleNamespace:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
    threading.Thread(target=httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True).start()
    return SimpleNamespace(httpd=httpd, url=f"http://127.0.0.1:{httpd.server_port}", port=httpd.server_port)


@pytest.fixture
def no_proxy(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server(tmp_path, no_proxy):
    """An HTTP server on 127.0.0.1 serving tmp_path/served, recording the paths and Authorization headers it got,
    plus misbehaving routes: /status/N answers N; /drop/N sends N bytes of a promised 100,000 and hangs up;
    /unsized/NAME sends half of served/NAME without a Content-Length and hangs up; /silent never answers; /stall
    sends 1,000 bytes of a promised 100,000 and then nothing; /trickle sends a byte every 0.05 s of a promised
    100,000 (never silent, so only the deadline ends it); /endless sends zeros without a length until the client
    hangs up."""
    root, requests, authorizations = tmp_path / "served", [], []
    root.mkdir()
    stop = threading.Event()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            authorizations.append(self.headers.get("Authorization"))
            route, _, argument = self.path.split("?")[0].strip("/").partition("/")
            self.close_connection = True
            with contextlib.suppress(ConnectionError):   # the client hung up, as it should
                self.answer(route, argument)

        def answer(self, route, argument):
            if route == "status":
                self.send_error(int(argument))
            elif route == "silent":
                stop.wait(30)
            elif route == "unsized":
                self.send_response(200)
                self.end_headers()   # no Content-Length: the client reads until the connection closes
                body = (root / argument).read_bytes()
                self.wfile.write(body[: len(body) // 2])
            elif route in ("drop", "stall", "trickle", "endless"):
                self.send_response(200)
                if route != "endless":
                    self.send_header("Content-Length", "100000")
                self.end_headers()
                if route in ("drop", "stall"):
                    self.wfile.write(bytes(int(argument or 1000)))
                    self.wfile.flush()
                    if route == "stall":
                        stop.wait(30)
                while route == "trickle" and not stop.wait(0.05):
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                while route == "endless" and not stop.is_set():
                    self.wfile.write(bytes(2**20))
            else:
                super().do_GET()

        def log_message(self, *args):
            pass

    running = serve(Handler)
    yield SimpleNamespace(root=root, url=running.url, port=running.port, requests=requests,
                          authorizations=authorizations)
    stop.set()
    running.httpd.shutdown()
    running.httpd.server_close()


def test_a_zip_url_is_downloaded_once_and_read_in_place(server, tmp_path):
    (server.root / "faces.zip").write_bytes(zip_of_images(4))
    config = TrainConfig(data=f"{server.url}/faces.zip", data_dir=str(tmp_path / "data"), image_size=16)

    images = load_dataset(config, progress=False)
    assert images.shape == (4, 3, 16, 16)
    assert images.float().mean(dim=(2, 3)).tolist() == [list(map(float, c)) for c in COLOURS]
    assert server.requests == ["/faces.zip"]
    downloads = list((tmp_path / "data" / "downloads").iterdir())
    assert len(downloads) == 1 and downloads[0].suffix == ".zip"   # kept as a zip, nothing extracted

    assert torch.equal(load_dataset(config, progress=False), images)   # from the cache
    cache_path(config).unlink()
    assert torch.equal(load_dataset(config, progress=False), images)   # decoded again from the downloaded zip
    assert server.requests == ["/faces.zip"]


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
    """Every way a server can fail a download ends it, whatever the server does: a silent one by the socket's
    timeout, one that is never silent by the deadline, an endless body without a length by the size cap."""
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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_download_stopped_by_a_signal_removes_its_partial_file(server, tmp_path, signum):
    """Ctrl-C (SIGINT) and SIGTERM (a platform stopping the session, `kill`) in the middle of a real download."""
    downloads = tmp_path / "data" / "downloads"
    process = subprocess.Popen([sys.executable, "-c", f"from utils.downloads import download_url; "
                                f"download_url('{server.url}/trickle', {str(tmp_path / 'data')!r})"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300   # a hang guard only
        while not list(downloads.glob("*")) and time.monotonic() < deadline:
            time.sleep(0.05)   # until the body arrives: the partial file is opened after the headers
        assert [path.name.endswith(".tmp.zip") for path in downloads.glob("*")] == [True]
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode in (128 + signum, -signum)
    assert list(downloads.iterdir()) == []


def test_credentials_in_a_url_are_sent_as_basic_auth_and_never_printed_or_stored(server, tmp_path):
    (server.root / "faces.zip").write_bytes(zip_of_images(4))
    url = f"http://ann:pa55%3Aword@127.0.0.1:{server.port}/faces.zip?token=t0ken&dl=1"
    assert len(load_dataset(TrainConfig(data=url, data_dir=str(tmp_path / "data"), image_size=16),
                            progress=False)) == 4
    assert server.authorizations == ["Basic " + base64.b64encode(b"ann:pa55:word").decode()]

    for failing, shown in [(f"/status/404?token=t0ken&dl=1", f"downloading http://***@127.0.0.1:{server.port}/"
                                                             "status/404?token=***&dl=1 failed: the server answered 404"),
                           ("/fa ces.zip?token=t0ken", "failed (not a valid URL)")]:   # http.client quotes it raw
        with pytest.raises(DownloadError) as failure:
            download_url(f"http://ann:pa55word@127.0.0.1:{server.port}{failing}", tmp_path / "data", progress=False)
        told = "".join(traceback.format_exception(failure.value.with_traceback(None)))   # what a notebook shows
        assert shown in str(failure.value) and not any(secret in told for secret in SECRETS)
    stored = b"".join(path.read_bytes() for path in (tmp_path / "data").rglob("*") if path.is_file())
    assert not any(secret.encode() in stored for secret in SECRETS)


def test_the_command_line_prints_a_failed_download_in_one_line_without_the_token(server, tmp_path):
    result = subprocess.run([sys.executable, "-m", "utils.train", "--data", f"{server.url}/status/404?token=t0ken",
                             "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--device", "cpu",
                             "--amp", "off", "--channels-last", "off"],   # no CPU trial
                            cwd=REPO, capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "t0ken" not in result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: downloading {server.url}/status/404?token=*** failed: the server answered 404 Not Found: check the URL")


@pytest.mark.parametrize("url,shown", [
    ("https://host/faces.zip", "https://host/faces.zip"),
    ("https://ghp_secret@github.com/x/faces.zip", "https://***@github.com/x/faces.zip"),
    ("https://ann:pw@host:8080/f.zip", "https://***@host:8080/f.zip"),
    ("https://host/f.zip?X-Amz-Signature=ab&X-Amz-Credential=cd&X-Amz-Date=2026",
     "https://host/f.zip?X-Amz-Signature=***&X-Amz-Credential=***&X-Amz-Date=2026"),
    ("https://host/f.zip?access_token=ab&dl=1&api_key=cd&flag", "https://host/f.zip?access_token=***&dl=1&api_key=***&flag"),
    ("data/faces", "data/faces"),
    ("synthetic", "synthetic"),
    ("http://[::1/broken?key=1", "http://[::1/broken?key=***"),
])
def test_redact_url_hides_passwords_and_tokens_only(url, shown):
    assert redact_url(url) == shown


def test_an_unreachable_host_names_the_url_and_the_network_error(tmp_path, no_proxy):
    with socket.socket() as unused:   # a port that nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(DownloadError, match=rf"downloading http://127.0.0.1:{port}/faces.zip failed "
                                            r"\(\[Errno 111\] Connection refused\): check the network"):
        download_url(f"http://127.0.0.1:{port}/faces.zip", tmp_path / "data")


@pytest.mark.parametrize("sized", [True, False])
def test_a_download_onto_a_full_disk_names_the_file_and_the_space(server, tmp_path, sized):
    (server.root / "big.zip").write_bytes(zip_of_images(2, noise_bytes=3 * 2**20))   # 3 MiB of noise: no compression
    url = f"{server.url}/big.zip" if sized else f"{server.url}/unsized/big.zip"
    with small_disk(tmp_path / "disk", size="1m") as disk:
        with pytest.raises(CannotWrite, match=r"no space left to write .*/downloads/big-\w+\.zip: it needs "
                                              r"(about 3\.0 MiB|more than the 1\.0 MiB written)"):
            download_url(url, disk)
        assert list((disk / "downloads").iterdir()) == []   # the partial download is gone


# ------------------------------------------------------------------------------------------ data_dir's lock

@contextlib.contextmanager
def held_by_another_process(data_dir: Path):
    """data_dir's lock held by a real second process until the block ends."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; from utils.downloads import "
                               "data_dir_lock\nwith data_dir_lock(Path(sys.argv[1]), wait=True): print('held', "
                               "flush=True); sys.stdin.read()", str(data_dir)],
                              cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_stale_temporary_files_in_data_dir_are_removed_under_the_lock(tmp_path, capsys):
    config = TrainConfig(data="synthetic", max_images=8, image_size=16, data_dir=str(tmp_path / "data"))
    load_dataset(config, progress=False)
    stale = [tmp_path / "data" / "cache" / ".synthetic-seed0-16px-0123.4242.tmp.npy",
             tmp_path / "data" / "downloads" / ".faces-1a2b3c4d.4242.tmp.zip"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    fid_statistics = tmp_path / "data" / "cache" / ".fid-ref-0123.4243.tmp.pt"   # written without the lock: kept
    fid_statistics.write_bytes(b"being written")
    capsys.readouterr()

    with held_by_another_process(tmp_path / "data"):   # another process downloading or decoding there
        load_dataset(config, progress=False)   # reusing its cache: does not wait, and touches nothing
        assert all(path.exists() for path in stale)
    load_dataset(config, progress=False)
    assert not any(path.exists() for path in stale) and fid_statistics.exists()
    assert ("data: removed 2 partial file(s) that a stopped download or cache build left "
            f"({stale[0]}, {stale[1]})") in capsys.readouterr().out
    assert (tmp_path / "data" / ".lock").read_text() == ""   # names no process, no command line


def test_a_cache_build_waits_for_the_process_that_holds_data_dir(tmp_path):
    config = TrainConfig(data="synthetic", max_images=8, image_size=16, data_dir=str(tmp_path / "data"))
    code = ("import sys; from utils.config import TrainConfig; from utils.data import load_dataset; "
            "print(tuple(load_dataset(TrainConfig(data='synthetic', max_images=8, image_size=16, "
            f"data_dir={config.data_dir!r}), progress=False).shape))")
    with held_by_another_process(tmp_path / "data"):
        waiting = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert waiting.stdout.readline() == f"data: waiting for another process to finish downloading or decoding " \
                                            f"into {tmp_path / 'data'}\n"
        assert waiting.poll() is None and not cache_path(config).exists()   # it waits, building nothing
    assert waiting.communicate(timeout=120)[0].endswith("(8, 3, 16, 16)\n") and waiting.returncode == 0


# ------------------------------------------------------------------------------------------ Kaggle

@pytest.fixture
def kaggle_api(tmp_path):
    """A fake Kaggle API on 127.0.0.1 serving the dataset as a zip of 3 images, recording each request's
    (endpoint, Authorization header). `answer` can be set to an HTTP status to fail the download with."""
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
                self.send_error(seen.answer if endpoint == "DownloadDataset" else 404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    running = serve(Handler)
    seen.env = {"KAGGLE_API_ENVIRONMENT": "LOCALHOST", "http_proxy": running.url, "no_proxy": ""}
    yield seen
    running.httpd.shutdown()
    running.httpd.server_close()


def run_isolated(tmp_path: Path, code: str, **env: str) -> subprocess.CompletedProcess:
    """Run Python code with no credentials anywhere: empty HOME and cwd, clean env, stdin closed."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
                   "PYTHONPATH": os.pathsep.join([str(REPO), env.pop("PYTHONPATH", "")]),
                   "ANIME_GAN_KAGGLE_INPUT_ROOT": str(tmp_path / "no-kaggle-input"), **env}
    return subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", "-c", code], cwd=work, env=environment,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)


LOAD = ("from utils.config import TrainConfig; from utils.data import load_dataset; "
        "print('shape', tuple(load_dataset(TrainConfig(data='kaggle', image_size=16), progress=False).shape))")


def downloaded(tmp_path: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp_path / "work" / "data")) for p in (tmp_path / "work" / "data").rglob("*")
                  if not p.is_relative_to(tmp_path / "work" / "data" / "cache"))


def test_without_credentials_kagglehub_downloads_the_public_dataset_without_prompting(tmp_path, kaggle_api):
    result = run_isolated(tmp_path, LOAD, **kaggle_api.env)

    assert result.returncode == 0, result.stderr
    assert ("kaggle: no Kaggle credentials found: downloading the public dataset splcher/animefacedataset with "
            "kagglehub (no account needed) into data/animefacedataset") in result.stdout
    assert "shape (3, 3, 16, 16)" in result.stdout
    assert [endpoint for endpoint, _ in kaggle_api.requests] == ["GetDataset", "DownloadDataset"]
    assert all(authorization is None for _, authorization in kaggle_api.requests)   # anonymous
    images = ["animefacedataset/images/0.png", "animefacedataset/images/1.png", "animefacedataset/images/2.png"]
    assert [p for p in downloaded(tmp_path) if p.endswith(".png")] == images
    assert not (tmp_path / "work" / "data" / ".kaggle-download").exists()


@needs_opendatasets
def test_with_credentials_opendatasets_downloads_signed_in_and_the_key_is_never_printed(tmp_path, kaggle_api):
    key = secrets.token_hex(16)
    result = run_isolated(tmp_path, LOAD, KAGGLE_USERNAME="someone", KAGGLE_KEY=key, **kaggle_api.env)

    assert result.returncode == 0, result.stderr
    assert ("kaggle: downloading splcher/animefacedataset with opendatasets as someone (credentials from "
            "KAGGLE_USERNAME and KAGGLE_KEY) into data/animefacedataset") in result.stdout
    assert "shape (3, 3, 16, 16)" in result.stdout
    basic = "Basic " + base64.b64encode(f"someone:{key}".encode()).decode()
    assert kaggle_api.requests == [("DownloadDataset", basic)]   # signed in, through the kaggle package
    assert key not in result.stdout + result.stderr
    assert "animefacedataset/images/2.png" in downloaded(tmp_path)
    assert not list(tmp_path.rglob("kaggle.json"))   # the private copy is gone


def test_where_opendatasets_cannot_be_imported_kagglehub_downloads_instead(tmp_path, kaggle_api):
    # Python 3.13 has no `cgi` module, which opendatasets imports: make it missing on this Python too
    shadow = tmp_path / "no-cgi"
    shadow.mkdir()
    (shadow / "cgi.py").write_text("raise ModuleNotFoundError(\"No module named 'cgi'\", name='cgi')\n")
    result = run_isolated(tmp_path, LOAD, KAGGLE_USERNAME="someone", KAGGLE_KEY="k3y", PYTHONPATH=str(shadow),
                          **kaggle_api.env)

    assert result.returncode == 0, result.stderr
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert (f"kaggle: opendatasets cannot be imported on Python {version} (ModuleNotFoundError: No module named "
            "'cgi'): downloading the public dataset splcher/animefacedataset with kagglehub into "
            "data/animefacedataset") in result.stdout
    assert "shape (3, 3, 16, 16)" in result.stdout
    assert [endpoint for endpoint, _ in kaggle_api.requests] == ["GetDataset", "DownloadDataset"]


@needs_opendatasets
def test_a_failed_kaggle_download_names_the_status_leaves_nothing_and_never_prints_the_key(tmp_path, kaggle_api):
    kaggle_api.answer = 500
    key = secrets.token_hex(16)
    result = run_isolated(tmp_path, "from utils.errors import run_cli; from utils.downloads import download_kaggle; "
                                    "run_cli(lambda: download_kaggle('data'))",
                          KAGGLE_USERNAME="someone", KAGGLE_KEY=key, **kaggle_api.env)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: downloading splcher/animefacedataset with opendatasets failed: http://localhost/api/v1/"
        "datasets.DatasetApiService/DownloadDataset answered 500 ")
    assert "check the network and your Kaggle credentials" in result.stderr
    assert key not in result.stdout + result.stderr
    assert [p.name for p in (tmp_path / "work" / "data").iterdir()] == [".lock"]   # no kaggle.json, no partial download


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    """This process with no Kaggle credentials and no attached input: an empty HOME and working directory."""
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ANIME_GAN_KAGGLE_INPUT_ROOT", str(tmp_path / "no-kaggle-input"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")


@pytest.mark.parametrize("content,problem", [
    ('{"username": "ann", "key": ', r"cannot be read as JSON \(Expecting value: line 1 column 28 \(char 27\)\)"),
    ('{"username": "ann"}', r'is not a JSON object with a "username" and a "key"'),
])
def test_a_malformed_kaggle_json_is_named_instead_of_ignored(tmp_path, no_credentials, kaggle_api, content, problem):
    Path("kaggle.json").write_text(content)
    with pytest.raises(DownloadError, match=rf"^found ./kaggle.json but it {problem}: download a new one \(kaggle.com "
                                            r"> Settings > API > Create New Token\), or delete ./kaggle.json"):
        download_kaggle(tmp_path / "data")
    assert kaggle_api.requests == []


def test_a_malformed_kaggle_json_in_home_fails_the_command_line_in_one_line(tmp_path):
    (tmp_path / "home" / ".kaggle").mkdir(parents=True)
    (tmp_path / "home" / ".kaggle" / "kaggle.json").write_text("username=ann key=k3y")
    result = run_isolated(tmp_path, "from utils.train import main; main(['--data', 'kaggle', '--device', 'cpu'])")

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: found {tmp_path}/home/.kaggle/kaggle.json but it cannot be read as JSON (Expecting value")


@needs_opendatasets
def test_kaggle_credentials_reach_opendatasets_in_a_private_file_that_is_removed(tmp_path, no_credentials, monkeypatch):
    (tmp_path / "home" / ".kaggle").mkdir(parents=True)
    (tmp_path / "home" / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": "ann", "key": "k3y"}))
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
    assert Path.cwd() == tmp_path / "work"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".lock", "animefacedataset"]   # no kaggle.json
    monkeypatch.setattr(opendatasets, "download", lambda *args: pytest.fail("downloaded twice"))
    assert download_kaggle(tmp_path / "data") == folder


def test_a_kaggle_download_onto_a_small_disk_fails_before_it_starts(tmp_path, no_credentials, kaggle_api, monkeypatch):
    for name, value in kaggle_api.env.items():
        monkeypatch.setenv(name, value)
    with small_disk(tmp_path / "disk", size="1m") as disk:
        with pytest.raises(CannotWrite, match=r"no space left to write .*disk/animefacedataset: it needs about 900\.0 "
                                              r"MiB and the disk has 1\.0 MiB free"):
            download_kaggle(disk)
        assert kaggle_api.requests == []   # nothing was downloaded


def test_a_disk_that_fills_during_the_kaggle_download_names_the_folder(tmp_path, no_credentials, kaggle_api,
                                                                       monkeypatch):
    for name, value in kaggle_api.env.items():
        monkeypatch.setenv(name, value)
    kaggle_api.archive = zip_of_images(3, folder="images", noise_bytes=3 * 2**20)
    monkeypatch.setattr(downloads, "KAGGLE_DOWNLOAD_BYTES", 0)   # pass the check up front, so the disk really fills
    with small_disk(tmp_path / "disk", size="1m") as disk:
        with pytest.raises(CannotWrite, match=r"no space left to write .*disk/animefacedataset: .*Free some space"):
            download_kaggle(disk)
        assert [p.name for p in disk.iterdir()] == [".lock"]   # the partial download is gone


def test_a_read_only_data_dir_fails_the_kaggle_download_before_it_starts(tmp_path, no_credentials, kaggle_api,
                                                                         monkeypatch):
    for name, value in kaggle_api.env.items():
        monkeypatch.setenv(name, value)
    with small_disk(tmp_path / "disk", size="2g", read_only=True) as disk:   # room enough: only writing fails
        with pytest.raises(CannotWrite, match=r"cannot write .*disk/animefacedataset \(Read-only file system\): make "
                                              "the folder writable"):
            download_kaggle(disk)
    assert kaggle_api.requests == []


# ------------------------------------------------------------------------------------------ attached on Kaggle

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
    monkeypatch.setattr(downloads, "_kaggle_credentials", lambda: pytest.fail("tried to download"))
    before = sorted((p, p.stat().st_mtime_ns) for p in root.rglob("*"))

    images = load_dataset(TrainConfig(data="kaggle", data_dir=str(tmp_path / "data"), image_size=16),
                          progress=False)
    assert images.shape == (3, 3, 16, 16)
    assert sorted((p, p.stat().st_mtime_ns) for p in root.rglob("*")) == before   # nothing written there


def test_the_kaggle_cache_is_keyed_on_the_files_read(tmp_path, monkeypatch):
    """A cache built from a partial dataset is not reused once the folder is complete."""
    images = tmp_path / "input" / "animefacedataset" / "images"
    for i in range(2):
        write_png(images / f"{i}.jpg", COLOURS[i])
    monkeypatch.setenv("ANIME_GAN_KAGGLE_INPUT_ROOT", str(tmp_path / "input"))
    config = TrainConfig(data="kaggle", data_dir=str(tmp_path / "data"), image_size=16)
    assert len(load_dataset(config, progress=False)) == 2
    partial = cache_path(config)

    write_png(images / "2.jpg", COLOURS[2])
    assert len(load_dataset(config, progress=False)) == 3
    assert cache_path(config) != partial


# ------------------------------------------------------------------------------------------ the FID weights

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
    url = f"http://learner:pa55word@127.0.0.1:{server.port}/faces.zip?token=s3cret.key"
    tiny = dict(data=url, data_dir=str(tmp_path / "data"), image_size=16, latent_dim=8, g_width=8, d_width=8,
                batch_size=8, device="cpu", amp="off", num_samples=4, log_every=1, out=str(tmp_path / "run"))
    train(TrainConfig(**tiny, epochs=1))
    train(TrainConfig(**tiny, epochs=2))       # the same URL is the same data: the run continues, nothing refused

    stored = (tmp_path / "run" / "config.json").read_bytes() + (tmp_path / "run" / CHECKPOINT).read_bytes()
    assert b"pa55word" not in stored and b"s3cret" not in stored and b"faces.zip?token=***" in stored
    assert json.loads((tmp_path / "run" / "history.json").read_text())["epochs"][-1]["epoch"] == 2
    assert "s3cret" not in str(default_run_dir(TrainConfig(**tiny | {"out": ""})))

    # the CLI continues from config.json, which lacks the secret: it asks for the URL again, in one line
    result = subprocess.run([sys.executable, "-m", "utils.train", "--out", str(tmp_path / "run"), "--epochs", "3"],
                            cwd=REPO, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "stored without its password or token" in result.stderr and "give it again with --data URL" in result.stderr
    assert "pa55word" not in result.stderr + result.stdout
