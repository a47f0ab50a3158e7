"""Downloads: a zip over real HTTP (127.0.0.1), the Kaggle dataset from a local fake Kaggle API, the FID weights.

The fake Kaggle API is a real HTTP server on 127.0.0.1: KAGGLE_API_ENVIRONMENT=LOCALHOST points both download
clients (kagglehub, and opendatasets through the `kaggle` package) at http://localhost, and http_proxy routes
those requests to the server's own port, so both clients run unchanged, offline. Kaggle tests that could hang on a
prompt run in a subprocess with stdin closed and a timeout.
"""

import base64
import contextlib
import http.server
import signal
import io
import json
import os
import re
import secrets
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
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
from utils.image_files import DataError
from utils.files import CannotWrite
from utils.urls import redact_url

REPO = Path(__file__).resolve().parents[1]
try:
    import opendatasets
except ImportError:   # Python 3.13: it imports the removed `cgi` module
    opendatasets = None
needs_opendatasets = pytest.mark.skipif(opendatasets is None, reason="opendatasets cannot be imported on this Python")
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


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
    """An HTTP server on 127.0.0.1 serving tmp_path/served, recording the paths it was asked for, plus a few
    misbehaving routes: /status/N answers N, /drop/N sends N bytes of a promised 100,000 and hangs up,
    /unsized/NAME sends the first half of served/NAME without a Content-Length and hangs up, /silent never answers,
    /trickle-headers and /trickle-body send one byte every 0.1 s (of the headers, or of a promised 100,000-byte
    body), /steady sends 64 KiB every 0.05 s of a promised 1 GB, /endless sends zeros without a length until the
    client hangs up, /length/VALUE announces Content-Length: VALUE. `authorizations` records each Authorization."""
    root, requests, authorizations = tmp_path / "served", [], []
    root.mkdir()
    stop = threading.Event()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def trickle(self, data: bytes, every_s: float, size: int = 1):
            for start in range(0, len(data), size):
                if stop.wait(every_s):
                    return
                self.wfile.write(data[start:start + size])

        def do_GET(self):
            requests.append(self.path)
            authorizations.append(self.headers.get("Authorization"))
            route, _, argument = self.path.split("?")[0].strip("/").partition("/")
            self.close_connection = True
            with contextlib.suppress(ConnectionError):   # the client hung up, as it should
                self.answer(route, argument)

        def answer(self, route, argument):
            if route == "trickle-headers":
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                self.trickle(b"X-Padding: " + b"a" * 10_000, 0.1)
            elif route in ("trickle-body", "steady", "endless", "length"):
                self.send_response(200)
                if route != "endless":
                    length = {"trickle-body": "100000", "steady": "1000000000"}.get(route, urllib.parse.unquote(argument))
                    self.send_header("Content-Length", length)
                self.end_headers()
                if route == "trickle-body":
                    self.trickle(b"PK\x03\x04" + bytes(100_000), 0.1)
                elif route == "steady":
                    self.trickle(bytes(10**9), 0.05, size=64 * 2**10)
                elif route == "endless":
                    while not stop.is_set():
                        self.wfile.write(bytes(2**20))
            elif route == "status":
                self.send_error(int(argument))
            elif route == "drop":
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                self.wfile.write(bytes(int(argument)))
                self.close_connection = True
            elif route == "unsized":
                body = (root / argument).read_bytes()
                self.send_response(200)
                self.end_headers()   # no Content-Length: the client reads until the connection closes
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
            elif route == "silent":
                stop.wait(30)
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


def test_a_url_that_is_not_a_zip_is_an_error_and_leaves_nothing(server, tmp_path):
    (server.root / "page.html").write_text("<html>a login page</html>")
    with pytest.raises(DataError, match=r"did not return a .zip archive \(it sent 25 bytes of text/html\)"):
        download_url(f"{server.url}/page.html", tmp_path / "data")
    assert list((tmp_path / "data" / "downloads").iterdir()) == []


@pytest.mark.parametrize("route,message", [
    ("status/404", r"downloading http://127\.0\.0\.1:\d+/status/404 failed: the server answered 404 Not Found: "
                   r"check the URL"),
    ("status/500", r"/status/500 failed: the server answered 500 Internal Server Error"),
    ("drop/1000", r"the connection dropped after 1,000 of 100,000 bytes of http://127\.0\.0\.1:\d+/drop/1000: "
                  r"the partial download was removed; run again"),
    ("unsized/faces.zip", r"the download of .*/unsized/faces\.zip ended after [\d,]+ bytes, before the end of the "
                          r"\.zip .*connection probably dropped.*partial download was removed"),
])
def test_a_failed_download_says_what_the_server_did_and_leaves_nothing(server, tmp_path, route, message):
    (server.root / "faces.zip").write_bytes(zip_of_images(40))
    with pytest.raises(DownloadError, match=message):
        load_dataset(TrainConfig(data=f"{server.url}/{route}", data_dir=str(tmp_path / "data"), image_size=16),
                     progress=False)
    assert list((tmp_path / "data" / "downloads").iterdir()) == []   # no partial file, hidden or not


def test_a_server_that_stops_answering_times_out_instead_of_hanging(server, tmp_path, monkeypatch):
    monkeypatch.setattr(downloads, "NETWORK_TIMEOUT_S", 0.5)
    # the socket's own timeout and the watchdog's end this at the same moment: either says so
    with pytest.raises(DownloadError, match=r"/silent failed (\(.*timed out\): check the network|: the server did "
                                            r"not answer within 0\.5 s, so it was stopped)"):
        download_url(f"{server.url}/silent", tmp_path / "data")


@pytest.mark.parametrize("route,reason", [
    ("trickle-headers", r"the server did not answer within 1 s"),
    ("trickle-body", r"it stalled: \d+ bytes arrived in the last 1 s \(after \d+\)"),
])
def test_a_server_that_trickles_a_byte_at_a_time_fails_in_one_line_within_the_limit(server, tmp_path, monkeypatch,
                                                                                   route, reason):
    """One byte every 0.1 s restarts a socket's timeout at every byte: only the watchdog ends this."""
    monkeypatch.setattr(downloads, "NETWORK_TIMEOUT_S", 1)
    started = time.monotonic()
    with pytest.raises(DownloadError, match=rf"^downloading {server.url}/{route} failed: {reason}, so it was "
                                            r"stopped: the partial download was removed; check the network"):
        download_url(f"{server.url}/{route}", tmp_path / "data", progress=False)
    assert time.monotonic() - started < 4   # 1 s in the headers, or 1-2 s of body windows, plus the check interval
    assert list((tmp_path / "data" / "downloads").iterdir()) == []


def test_a_download_that_never_stalls_still_ends_at_its_deadline(server, tmp_path, monkeypatch):
    monkeypatch.setattr(downloads, "NETWORK_TIMEOUT_S", 0.5)
    monkeypatch.setattr(downloads, "DOWNLOAD_DEADLINE_S", 2)   # /steady sends ~1.3 MB/s: it never stalls
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"/steady failed: it did not finish within 2 s \([\d,]+ bytes arrived\)"):
        download_url(f"{server.url}/steady", tmp_path / "data", progress=False)
    assert time.monotonic() - started < 4
    assert list((tmp_path / "data" / "downloads").iterdir()) == []


def test_a_body_without_a_length_stops_at_the_size_limit(server, tmp_path, monkeypatch):
    monkeypatch.setattr(downloads, "MAX_UNSIZED_BYTES", 4 * 2**20)
    with pytest.raises(DownloadError, match=r"/endless stopped after [\d,]+ bytes: the server sent no length and the "
                                            r"body went on past 4 MiB, several times any face dataset"):
        download_url(f"{server.url}/endless", tmp_path / "data", progress=False)
    assert list((tmp_path / "data" / "downloads").iterdir()) == []


@pytest.mark.parametrize("length", ["abc", "-5", "12, 12", "1e6"])
def test_a_content_length_that_is_not_a_number_is_one_line(server, tmp_path, length):
    with pytest.raises(DownloadError, match=rf"/length/.* failed: the server announced a length that is not a number "
                                            rf"\(Content-Length: {re.escape(repr(length))}\), so the download could "
                                            r"not be checked"):
        download_url(f"{server.url}/length/{urllib.parse.quote(length)}", tmp_path / "data", progress=False)
    assert list((tmp_path / "data" / "downloads").iterdir()) == []


def test_sigterm_during_a_download_removes_the_partial_file(server, tmp_path):
    downloads = tmp_path / "data" / "downloads"
    process = subprocess.Popen([sys.executable, "-c", f"from utils.downloads import download_url; "
                                f"download_url('{server.url}/trickle-body', {str(tmp_path / 'data')!r})"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(downloads.glob("*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)   # a few bytes into the body
        partial = list(downloads.glob("*"))
        assert partial and partial[0].name.endswith(".tmp.zip")   # the download is under way
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGTERM   # it still ends the way SIGTERM ends a process
    assert "Traceback" not in stderr
    assert list(downloads.iterdir()) == []


def test_stale_temporary_files_in_data_dir_are_removed_under_the_lock(tmp_path, capsys):
    import fcntl

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

    with open(tmp_path / "data" / ".lock", "a") as held:   # another process downloading or decoding there
        fcntl.flock(held, fcntl.LOCK_EX)
        load_dataset(config, progress=False)   # reusing its cache: does not wait, and touches nothing
        assert all(path.exists() for path in stale)
    load_dataset(config, progress=False)
    assert not any(path.exists() for path in stale) and fid_statistics.exists()
    assert ("data: removed 2 partial file(s) that a stopped download or cache build left "
            f"({stale[0]}, {stale[1]})") in capsys.readouterr().out


def test_a_cache_build_waits_for_the_process_that_holds_data_dir(tmp_path, capsys):
    import fcntl

    config = TrainConfig(data="synthetic", max_images=8, image_size=16, data_dir=str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    held = open(tmp_path / "data" / ".lock", "a+")
    fcntl.flock(held, fcntl.LOCK_EX)
    held.write("process 4242 on elsewhere\n")
    held.flush()
    threading.Timer(1.0, held.close).start()   # the other process finishes after 1 s
    started = time.monotonic()
    assert load_dataset(config, progress=False).shape == (8, 3, 16, 16)
    assert time.monotonic() - started >= 0.9
    assert (f"data: waiting for process 4242 on elsewhere to finish downloading or decoding into {tmp_path / 'data'}"
            in capsys.readouterr().out)


def test_credentials_in_a_url_are_sent_as_basic_auth_and_never_printed(server, tmp_path):
    (server.root / "faces.zip").write_bytes(zip_of_images(4))
    url = f"http://ann:s3cr%3At@127.0.0.1:{server.port}/faces.zip?token=abc123&dl=1"
    assert len(load_dataset(TrainConfig(data=url, data_dir=str(tmp_path / "data"), image_size=16),
                            progress=False)) == 4
    assert server.authorizations == ["Basic " + base64.b64encode(b"ann:s3cr:t").decode()]

    failing = f"http://ann:s3cr%3At@127.0.0.1:{server.port}/status/404?token=abc123&dl=1"
    with pytest.raises(DownloadError) as failure:
        download_url(failing, tmp_path / "data", progress=False)
    assert str(failure.value).startswith(f"downloading http://***@127.0.0.1:{server.port}/status/404?token=***&dl=1 "
                                         "failed: the server answered 404")
    shown = str(failure.value) + "".join(map(str, [failure.value.__cause__, failure.value.__context__]))
    assert "s3cr" not in shown and "abc123" not in shown


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


def test_the_command_line_prints_a_failed_download_in_one_line(server, tmp_path):
    result = subprocess.run([sys.executable, "-m", "utils.train", "--data", f"{server.url}/status/404",
                             "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--device", "cpu"],
                            cwd=REPO, capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: downloading {server.url}/status/404 failed: the server answered 404 Not Found")


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
    ('{"username": "ann", "key": ', r"is not valid JSON \(Expecting value: line 1 column 28 \(char 27\)\)"),
    ('["ann", "k3y"]', r'holds a JSON list, not an object with "username" and "key"'),
    ('{"username": "ann"}', r"has no 'key' \(a non-empty string\)"),
    ('{"user": "ann", "key": ""}', r"has no 'username' and no 'key' \(a non-empty string\)"),
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
        f"error: found {tmp_path}/home/.kaggle/kaggle.json but it is not valid JSON (Expecting value")


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

def test_a_failed_download_of_the_fid_weights_names_the_url_and_the_offline_option(tmp_path, monkeypatch, no_proxy):
    inception = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    from utils.metrics import _InceptionPool3

    with socket.socket() as unused:   # where the weights are fetched from: a port that nothing listens on
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}/weights-inception-2015-12-05-6726825d.pth"
    monkeypatch.setattr(inception, "URL_INCEPTION_V3", url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))   # no weights downloaded before
    with pytest.raises(DownloadError, match=rf"could not download the FID Inception weights: downloading "
                                            rf"{re.escape(url)} failed \(\[Errno 111\] Connection refused\): check "
                                            r"the network.*; offline, set config field 'fid_weights' to a local "
                                            r"pt_inception-2015-12-05-\*\.pth"):
        _InceptionPool3("")


def test_a_download_of_the_fid_weights_that_trickles_ends_within_the_limit(server, tmp_path, monkeypatch):
    """The weights come through the same bounded download as the faces: a byte every 0.1 s cannot hang FID."""
    inception = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    from utils.metrics import load_inception

    monkeypatch.setattr(downloads, "NETWORK_TIMEOUT_S", 1)
    monkeypatch.setattr(inception, "URL_INCEPTION_V3", f"{server.url}/trickle-body/weights-inception-2015-12-05-6726825d.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"could not download the FID Inception weights: .* it stalled"):
        load_inception("")
    assert time.monotonic() - started < 4
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
