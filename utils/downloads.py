"""Downloads into `data_dir`: the Anime Face Dataset from Kaggle, a .zip of images at a URL, any file by URL.

    >>> from pathlib import Path
    >>> from utils.downloads import download_url
    >>> download_url("https://example.com/faces.zip", Path("data"))   # once; later calls reuse the file
    PosixPath('data/downloads/faces-1a2b3c4d.zip')

The rules every download here keeps:
- it ends, whatever the server does: connecting and the answer's headers take at most NETWORK_TIMEOUT_S, the body
  brings at least STALL_BYTES in every NETWORK_TIMEOUT_S, the whole download takes at most DOWNLOAD_DEADLINE_S
  (the real dataset, ~400 MB, then needs ~60 KB/s), and a body without a Content-Length stops at MAX_UNSIZED_BYTES;
- it is written to a temporary name and renamed only once complete (and, for a dataset, checked to be a zip), so an
  interrupted download never looks finished; the partial file is removed on every exit, SIGTERM included;
- one process at a time downloads or builds a cache in a data_dir (`data_dir_lock`), so temporary files found
  there under the lock are stale;
- nothing prompts: Kaggle credentials are found in the environment, a kaggle.json, or Colab's or Kaggle's secrets,
  and a key is never shown; a user:password@ or a token in a URL never appears in a message (`redact_url`);
- every failure (the server's answer, the network, a full disk, malformed credentials) is a `DownloadError` or
  another `UserError` that names the URL or file and says what to do.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from tqdm.auto import tqdm

from utils.errors import UserError
from utils.files import CannotWrite, atomic_path, check_free_space, explain_write_error
from utils.image_files import DataError
from utils.urls import redact_url

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; data_dir is then used without one, and nothing stale is removed
    fcntl = None

KAGGLE_DATASET = "splcher/animefacedataset"   # 63,565 JPEGs under images/
KAGGLE_SLUG = KAGGLE_DATASET.split("/")[1]
KAGGLE_URL = f"https://www.kaggle.com/datasets/{KAGGLE_DATASET}"
KAGGLE_DOWNLOAD_BYTES = 900 * 2**20   # its ~400 MB archive and the files extracted from it, side by side
# The limits every download keeps (the module's docstring says how).
NETWORK_TIMEOUT_S = 60
STALL_BYTES = 128 * 2**10
DOWNLOAD_DEADLINE_S = 2 * 3600
MAX_UNSIZED_BYTES = 2 * 2**30   # about 5 times the Anime Face Dataset's archive


class DownloadError(UserError, RuntimeError):
    """A download failed or cannot start; the message names the URL and the server's answer or the network's error."""


# ---------------------------------------------------------------------------------------------
# data_dir: one process at a time, and the names of what is downloaded there.

@contextlib.contextmanager
def data_dir_lock(data_dir: Path, wait: bool) -> Iterator[bool]:
    """Hold data_dir/.lock while the block runs (yields True): one process at a time downloads or builds a cache in
    data_dir, so the temporary files found there under the lock are stale, never a live process's. Without `wait`,
    yields False at once when another process holds it; also where nothing can be locked (Windows, a read-only or
    missing data_dir, some network file systems), and the block then runs as it always did.
    """
    if fcntl is None or (not wait and not data_dir.is_dir()):
        yield False
        return
    path = data_dir / ".lock"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:   # read-only or unwritable: whatever the block writes will fail there with its own message
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            print(f"data: waiting for {owner} to finish downloading or decoding into {data_dir}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:   # a file system without locks
            yield False
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield True
    finally:
        os.close(fd)   # drops the lock; the file stays, so every process locks the same one


def safe_file_name(text: str, fallback: str) -> str:
    """`text` as a short, safe file name part: 64 characters at most, so no folder name makes a name too long."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:64] or fallback


# ---------------------------------------------------------------------------------------------
# The Anime Face Dataset: an attached Kaggle input, or a download with opendatasets or kagglehub.

def find_kaggle_input() -> Path | None:
    """The attached Anime Face Dataset on Kaggle (read-only, used in place), or None elsewhere.

    Looks for an `images/` folder holding JPEGs up to four levels under $ANIME_GAN_KAGGLE_INPUT_ROOT
    (default /kaggle/input), preferring one whose path names the dataset.
    """
    root = Path(os.environ.get("ANIME_GAN_KAGGLE_INPUT_ROOT", "/kaggle/input"))
    if not root.is_dir():
        return None
    candidates = [folder for depth in range(1, 5) for folder in sorted(root.glob("*/" * depth + "images"))
                  if folder.is_dir() and next(folder.glob("*.jpg"), None) is not None]
    preferred = [folder for folder in candidates if KAGGLE_SLUG in folder.relative_to(root).parts]
    return (preferred or candidates or [None])[0]


def download_kaggle(data_dir: Path) -> Path:
    """The folder holding the Anime Face Dataset: attached on Kaggle, already downloaded, or downloaded now.

    With Kaggle credentials the download goes through `opendatasets`, as the series always did; without
    any, or where opendatasets cannot be imported (Python 3.13 removed the `cgi` module it imports), it
    goes through `kagglehub`, which downloads public datasets without an account. A line says which.
    Either way it lands in data_dir/.kaggle-download/ and is renamed to data_dir/animefacedataset/ only
    once complete, so an interrupted download is never mistaken for a finished one, and nothing prompts:
    opendatasets reads credentials only from ./kaggle.json and otherwise *prompts* (which hangs a
    notebook or a script), so we find them ourselves and hand them over in a private kaggle.json
    (mode 0600) that is deleted afterwards (opendatasets copies them into KAGGLE_USERNAME / KAGGLE_KEY
    for this process).
    """
    attached = find_kaggle_input()
    if attached is not None:
        print(f"kaggle: using the attached dataset in {attached}")
        return attached
    data_dir = Path(data_dir)
    target = data_dir / KAGGLE_SLUG
    if target.is_dir() and any(target.iterdir()):
        return target
    credentials = _kaggle_credentials()
    with data_dir_lock(data_dir, wait=True), cleaned_up_on_sigterm():
        if target.is_dir() and any(target.iterdir()):   # downloaded by the process we waited for
            return target
        return _download_kaggle(data_dir, target, credentials)


def _download_kaggle(data_dir: Path, target: Path, credentials: tuple[str, str, str] | None) -> Path:
    opendatasets, why_not = _import_opendatasets() if credentials else (None, "no Kaggle credentials found")
    if opendatasets is not None:
        tool = "opendatasets"
        print(f"kaggle: downloading {KAGGLE_DATASET} with opendatasets as {credentials[0]} (credentials from "
              f"{credentials[2]}) into {target}")
    else:
        tool = "kagglehub"
        account = " (no account needed)" if credentials is None else ""   # else it signs in where it finds them
        print(f"kaggle: {why_not}: downloading the public dataset {KAGGLE_DATASET} with kagglehub{account} "
              f"into {target}")
    staging = data_dir / ".kaggle-download"
    try:
        check_free_space(target, KAGGLE_DOWNLOAD_BYTES)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if opendatasets is not None:
            _write_private(staging / "kaggle.json", json.dumps({"username": credentials[0], "key": credentials[1]}))
            folder = staging.resolve()   # before the chdir, which would change what a relative data_dir means
            with _working_directory(staging):
                opendatasets.download(KAGGLE_URL, data_dir=str(folder))
        else:
            found = _kagglehub_download(staging / KAGGLE_SLUG)
            if found != staging / KAGGLE_SLUG:   # on Colab, kagglehub mounts the dataset from Colab's own cache
                return found
        os.replace(staging / KAGGLE_SLUG, target)
    except UserError:
        raise
    except Exception as error:
        raise _download_failure(error, tool, target, signed_in=credentials is not None) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _import_opendatasets():
    """(the opendatasets module, "") or (None, why it cannot be imported)."""
    try:
        import opendatasets
    except ImportError as error:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        return None, f"opendatasets cannot be imported on Python {version} ({type(error).__name__}: {error})"
    return opendatasets, ""


def _kagglehub_download(folder: Path) -> Path:
    try:
        import kagglehub
    except ImportError as error:
        raise DownloadError(f"downloading {KAGGLE_DATASET} needs kagglehub, which cannot be imported ({error}): "
                            "pip install 'kagglehub>=0.4.3', or attach the dataset or use data='synthetic'") from error
    return Path(kagglehub.dataset_download(KAGGLE_DATASET, output_dir=str(folder)))


def _download_failure(error: Exception, tool: str, target: Path, signed_in: bool) -> UserError:
    """What a download client's exception means, as one message (a full disk, an HTTP status, the network)."""
    if isinstance(error, OSError):
        explained = explain_write_error(error, target, KAGGLE_DOWNLOAD_BYTES)
        if isinstance(explained, CannotWrite):
            return explained
    hint = ("check the network and your Kaggle credentials" if signed_in else "check the network") + \
           ", or attach the dataset (on Kaggle) or use data='synthetic'"
    response = getattr(error, "response", None)   # requests' HTTPError, which both clients raise
    if getattr(response, "status_code", None):
        return DownloadError(f"downloading {KAGGLE_DATASET} with {tool} failed: {response.url} answered "
                             f"{response.status_code} {response.reason}: {hint}")
    reason = str(error).strip().splitlines()[0] if str(error).strip() else "no message"
    return DownloadError(f"downloading {KAGGLE_DATASET} with {tool} failed ({type(error).__name__}: {reason}): {hint}")


def _kaggle_credentials() -> tuple[str, str, str] | None:
    """(username, key, where they came from) from the first place that has them, or None (never prompts).

    A credentials file that exists but is not what Kaggle writes (not JSON, not an object, no username
    or key) is an error naming it, rather than silently skipped: its owner meant to use it.
    """
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return os.environ["KAGGLE_USERNAME"], os.environ["KAGGLE_KEY"], "KAGGLE_USERNAME and KAGGLE_KEY"
    files = [Path("kaggle.json"), Path.home() / ".kaggle" / "kaggle.json",
             Path.home() / ".config" / "kaggle" / "kaggle.json"]
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        files.insert(1, Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json")
    for file in files:
        if file.is_file():
            return _read_credentials(file)
    with contextlib.suppress(Exception):   # Colab only; raises if the secrets are missing or not shared
        from google.colab import userdata
        found = userdata.get("KAGGLE_USERNAME"), userdata.get("KAGGLE_KEY")
        if all(found):
            return *found, "Colab secrets"
    with contextlib.suppress(Exception):   # Kaggle notebooks only (Add-ons > Secrets)
        from kaggle_secrets import UserSecretsClient
        secrets = UserSecretsClient()
        found = secrets.get_secret("KAGGLE_USERNAME"), secrets.get_secret("KAGGLE_KEY")
        if all(found):
            return *found, "Kaggle secrets"
    return None


def _read_credentials(file: Path) -> tuple[str, str, str]:
    """(username, key, the file's name) of a kaggle.json; a DownloadError naming the file when it is not one (the key
    is never shown)."""
    shown = str(file) if file.is_absolute() else f"./{file}"
    fix = (f"download a new one (kaggle.com > Settings > API > Create New Token), or delete {shown} to download "
           "the public dataset without an account")
    try:
        values = json.loads(file.read_text())
    except OSError as error:
        raise DownloadError(f"found {shown} but cannot read it ({error.strerror}): {fix}") from None
    except ValueError as error:   # the message gives the position only, never the content
        raise DownloadError(f"found {shown} but it is not valid JSON ({error}): {fix}") from None
    if not isinstance(values, dict):
        raise DownloadError(f"found {shown} but it holds a JSON {type(values).__name__}, not an object with "
                            f'"username" and "key": {fix}')
    missing = [name for name in ("username", "key") if not isinstance(values.get(name), str) or not values[name]]
    if missing:
        raise DownloadError(f"found {shown} but it has no {' and no '.join(map(repr, missing))} (a non-empty "
                            f"string): {fix}")
    return values["username"], values["key"], shown


def _write_private(path: Path, text: str) -> None:
    """Create a file readable by its owner only (the mode is set at creation: no window for others)."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(text)


@contextlib.contextmanager
def _working_directory(path: Path):
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


# ---------------------------------------------------------------------------------------------
# A .zip at a URL, or any file: the limits above, the watchdog that keeps them, SIGTERM, the network's errors.

def download_url(url: str, data_dir: Path, progress: bool = True) -> Path:
    """Download a .zip of images once into data_dir/downloads/ and return its path (read in place).

    The file name is our own (a server's Content-Disposition could point outside data_dir), the
    download goes to a temporary name renamed only once complete and checked to be a zip (so a
    dropped connection never leaves a file that looks finished), and nothing is extracted. Every
    failure is a UserError: the HTTP status and URL, the network's error, a connection that dropped,
    stalled or went on too long, a body without a length that grows past MAX_UNSIZED_BYTES, a disk that
    filled up. The partial file is removed on every exit, SIGTERM included. A user:password@ in the URL is
    sent as HTTP basic authentication; no message shows it or a token in the query (see `redact_url`).
    """
    digest = hashlib.sha1(url.encode()).hexdigest()[:8]   # two URLs ending in faces.zip do not collide
    stem = safe_file_name(Path(urllib.parse.urlsplit(url).path).stem, "download")
    target = Path(data_dir) / "downloads" / f"{stem}-{digest}.zip"
    if target.exists():
        print(f"download: reusing {target}")
        return target
    shown = redact_url(url)
    download_file(url, target, progress, check=lambda tmp, content_type: _check_zip(tmp, shown, content_type))
    return target


def download_file(url: str, target: Path, progress: bool = True,
                  check: Callable[[Path, str], None] | None = None) -> None:
    """Download `url` into `target` within this module's limits (a header deadline, a stall rule, a total deadline,
    a cap on bodies without a length), to a temporary name renamed only once complete; `check(tmp, content_type)`
    may refuse the body (raising) before it takes the name. The partial file is removed on every exit, SIGTERM
    included; every failure is a UserError naming the URL as `redact_url` shows it."""
    shown = redact_url(url)
    with cleaned_up_on_sigterm(), atomic_path(target) as tmp:
        with _network_errors(shown):
            content_type = _fetch(url, shown, tmp, target, progress)
        if check is not None:
            check(tmp, content_type)


def _fetch(url: str, shown: str, tmp: Path, target: Path, progress: bool) -> str:
    """Stream `url` into `tmp` (checking for room for `target` first) within the limits at the top of this module;
    returns the Content-Type. `shown` is the URL as messages may print it."""
    watchdog = _Watchdog(shown)
    opener = urllib.request.build_opener(_WatchedHandler(watchdog))
    try:
        with watchdog, opener.open(_request(url), timeout=NETWORK_TIMEOUT_S) as response, open(tmp, "wb") as file:
            watchdog.body_started()
            size = _content_length(response, shown)
            check_free_space(target, size or 0)
            with tqdm(total=size, unit="B", unit_scale=True, desc=f"downloading {target.name}",
                      disable=not progress) as bar:
                while chunk := response.read1(1 << 20):   # read1: returns what arrived, so the watchdog's view is fresh
                    bar.update(file.write(chunk))
                    watchdog.received = file.tell()
                    if size is None and file.tell() > MAX_UNSIZED_BYTES:
                        raise DownloadError(
                            f"downloading {shown} stopped after {file.tell():,} bytes: the server sent no length and "
                            f"the body went on past {MAX_UNSIZED_BYTES / 2**20:,.0f} MiB, several times any face dataset "
                            "(the Anime Face Dataset is ~400 MB), so it is probably not one: the partial download was "
                            "removed; check the URL, or download the .zip yourself and pass its path as data")
            watchdog.check()   # a socket the watchdog shut down reads as the end of the body
            if size is not None and file.tell() < size:
                raise DownloadError(f"the connection dropped after {file.tell():,} of {size:,} bytes of {shown}: "
                                    "the partial download was removed; run again")
            return response.headers.get_content_type()
    except (OSError, http.client.HTTPException):
        watchdog.check()   # the error of a socket the watchdog shut down: say why it did
        raise


def _request(url: str) -> urllib.request.Request:
    """A request for `url`; a user:password@ in it becomes basic authentication (urllib would take it for the host),
    never sent on to where the server redirects."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return urllib.request.Request(url)
    userinfo, _, host = parts.netloc.rpartition("@")
    request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=host)))
    credentials = ":".join(urllib.parse.unquote(part) for part in userinfo.split(":", 1))
    request.add_unredirected_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
    return request


def _content_length(response: http.client.HTTPResponse, shown: str) -> int | None:
    """The body's length the server announced, None when it announced none; a DownloadError when it is not a number."""
    value = response.headers.get("Content-Length")
    if value is None:
        return None
    if not re.fullmatch(r"\s*[0-9]+\s*", value):
        raise DownloadError(f"downloading {shown} failed: the server announced a length that is not a number "
                            f"(Content-Length: {value[:40]!r}), so the download could not be checked: check the URL, "
                            "or download the .zip yourself and pass its path as data")
    return int(value)


class _Watchdog:
    """Ends a download that breaks the limits at the top of this module, from a thread that shuts its sockets down
    (a blocked read then returns at once). A socket timeout cannot: it bounds each read, so a server that sends a
    byte every few seconds, in its headers or its body, would hold the download forever."""

    def __init__(self, shown: str):
        self.shown = shown
        self.received = 0   # bytes of the body so far, set by the reader
        self.reason: str | None = None
        self._started = self._window_start = time.monotonic()
        self._window_bytes = 0
        self._in_body = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="download-watchdog", daemon=True)

    def __enter__(self) -> _Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        self._thread.join()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.reason is not None:
                self._shut_down(sock)

    def body_started(self) -> None:
        self._window_start, self._in_body = time.monotonic(), True

    def check(self) -> None:
        """Raise the DownloadError saying why the watchdog ended the download, if it did."""
        if self.reason is not None:
            raise DownloadError(f"downloading {self.shown} failed: {self.reason}, so it was stopped: the partial "
                                "download was removed; check the network and run again, or download the .zip yourself "
                                "and pass its path as data") from None

    def _watch(self) -> None:
        while not self._done.wait(0.05):
            now = time.monotonic()
            if now - self._started > DOWNLOAD_DEADLINE_S:
                self._stop(f"it did not finish within {_duration(DOWNLOAD_DEADLINE_S)} ({self.received:,} bytes "
                           "arrived)")
            elif not self._in_body and now - self._started > NETWORK_TIMEOUT_S:
                self._stop(f"the server did not answer within {_duration(NETWORK_TIMEOUT_S)}")
            elif self._in_body and now - self._window_start > NETWORK_TIMEOUT_S:
                if self.received - self._window_bytes < STALL_BYTES:
                    self._stop(f"it stalled: {self.received - self._window_bytes:,} bytes arrived in the last "
                               f"{_duration(NETWORK_TIMEOUT_S)} (after {self.received:,})")
                self._window_start, self._window_bytes = now, self.received

    def _stop(self, reason: str) -> None:
        with self._lock:
            self.reason = reason
            for sock in self._sockets:
                self._shut_down(sock)
        self._done.set()

    @staticmethod
    def _shut_down(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):   # socket.socket's own shutdown: an SSL socket's would tear down its state
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 120 else f"{seconds:g} s"


class _Watched:
    """An HTTP(S) connection whose socket the download's watchdog can shut down."""

    def __init__(self, *args, watchdog: _Watchdog, **kwargs):
        super().__init__(*args, **kwargs)
        self.watchdog = watchdog

    def connect(self) -> None:
        super().connect()
        self.watchdog.watch(self.sock)


class _WatchedHTTP(_Watched, http.client.HTTPConnection):
    pass


class _WatchedHTTPS(_Watched, http.client.HTTPSConnection):
    pass


class _WatchedHandler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """urllib's http and https handlers (proxies and redirects work as usual), with watched connections."""

    def __init__(self, watchdog: _Watchdog):
        urllib.request.HTTPSHandler.__init__(self)
        self.watchdog = watchdog

    def http_open(self, request: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_WatchedHTTP, watchdog=self.watchdog), request)

    def https_open(self, request: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_WatchedHTTPS, watchdog=self.watchdog), request, context=self._context)


class _Terminated(BaseException):
    """SIGTERM, raised where the main thread is, so that `finally` blocks remove partial files."""


@contextlib.contextmanager
def cleaned_up_on_sigterm() -> Iterator[None]:
    """While the block runs, SIGTERM (a platform stopping the session, `kill`, a job scheduler) unwinds like an
    exception, so the block's `finally`s remove its partial files; then the process ends by SIGTERM as the sender
    asked. Only in the main thread and where SIGTERM has its default meaning: a program that handles SIGTERM itself
    keeps it (what it leaves is removed by the next `load_dataset` in that data_dir)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise _Terminated

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        raise SystemExit(128 + signal.SIGTERM) from None   # where the signal does not end the process at once
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def _network_errors(shown: str) -> Iterator[None]:
    """urllib's and the socket's errors as a DownloadError naming the URL (as `redact_url` shows it) and the status."""
    try:
        yield
    except urllib.error.HTTPError as error:
        raise DownloadError(f"downloading {shown} failed: the server answered {error.code} {error.reason}: check "
                            "the URL (it must be a direct link to a .zip of images)") from None
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as error:
        reason = getattr(error, "reason", None) or f"{type(error).__name__}: {error}"
        raise DownloadError(f"downloading {shown} failed ({reason}): check the network and the URL, then run "
                            "again") from None


def _check_zip(path: Path, shown: str, content_type: str) -> None:
    if zipfile.is_zipfile(path):
        return
    size = path.stat().st_size
    with open(path, "rb") as file:
        start = file.read(4)
    if start == b"PK\x03\x04":   # the start of a zip whose end never arrived
        raise DownloadError(f"the download of {shown} ended after {size:,} bytes, before the end of the .zip (the "
                            "server sent no length to check against, so the connection probably dropped): the "
                            "partial download was removed; run again")
    raise DataError(f"{shown} did not return a .zip archive (it sent {size:,} bytes of {content_type}): data must "
                    "be the URL of a .zip of images")
