"""Downloads: a file at a URL (a .zip of images given as `data`, the FID weights) and the Kaggle Anime Face Dataset.

`download` is torch.hub.download_url_to_file's loop (temporary file, sha256 prefix, rename) with the limits torch
hub lacks: it ends (a silent server, a deadline, a size cap without a length), leaves no partial file (SIGTERM
included) and never shows a credential. Nothing prompts.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from utils.errors import UserError
from utils.files import CannotWrite, atomic_path, check_free_space, explain_write_error, read_json
from utils.urls import redact_url

KAGGLE_DATASET = "splcher/animefacedataset"   # 63,565 JPEGs under images/
KAGGLE_SLUG = KAGGLE_DATASET.split("/")[1]
KAGGLE_DOWNLOAD_BYTES = 900 * 2**20   # its ~400 MB archive and the files extracted from it, side by side
NETWORK_TIMEOUT_S = 60
DOWNLOAD_DEADLINE_S = 2 * 3600   # the real dataset (~400 MB) then needs ~60 KB/s
MAX_UNSIZED_BYTES = 2 * 2**30    # about 5 times the Anime Face Dataset's archive


class DownloadError(UserError, RuntimeError):
    """A download failed; the message names the URL (redacted) and what the server or the network did."""


@contextlib.contextmanager
def data_dir_lock(data_dir: Path, wait: bool) -> Iterator[bool]:
    """Hold data_dir/.lock while the block runs, yielding True: one process at a time downloads or builds a cache
    there. Held by another: waits (`wait`) or yields False at once; not lockable (read-only): yields False."""
    lock = FileLock(data_dir / ".lock", thread_local=False)   # creates data_dir too
    try:
        lock.acquire(blocking=False)
    except Timeout:
        if wait:
            print(f"data: waiting for another process to finish downloading or decoding into {data_dir}")
            lock.acquire()
    except OSError:   # read-only: what the block writes fails there with its own message
        pass
    try:
        yield lock.is_locked
    finally:
        if lock.is_locked:
            lock.release()


@contextlib.contextmanager
def cleaned_up_on_sigterm() -> Iterator[None]:
    """While the block runs, SIGTERM exits like `sys.exit(143)`, so the block's `finally`s remove its partial files
    (in the main thread, where SIGTERM has its default meaning)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    else:
        yield


def safe_file_name(text: str, fallback: str) -> str:
    """`text` as a short, safe file name part: 64 characters at most, so no folder name makes a name too long."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:64] or fallback


def download_url(url: str, data_dir: Path, progress: bool = True) -> Path:
    """Download a .zip of images once into data_dir/downloads/ (named by us, never by the server) and return it."""
    stem = safe_file_name(Path(urllib.parse.urlsplit(url).path).stem, "download")
    target = Path(data_dir) / "downloads" / f"{stem}-{hashlib.sha1(url.encode()).hexdigest()[:8]}.zip"
    if target.exists():
        print(f"download: reusing {target}")
        return target

    def is_zip(tmp: Path, content_type: str) -> None:
        if not zipfile.is_zipfile(tmp):
            raise DownloadError(f"{redact_url(url)} did not send a whole .zip archive ({tmp.stat().st_size:,} bytes "
                                f"of {content_type}): data must be the URL of a .zip of images; if the connection "
                                "dropped, run again")
    download(url, target, progress, check=is_zip)
    return target


def download(url: str, target: Path, progress: bool = True, sha256_prefix: str = "",
             check: Callable[[Path, str], None] | None = None) -> None:
    """Download `url` into `target` within the limits above; the file takes its name only if its sha256 starts with
    `sha256_prefix` and `check(tmp, content_type)` does not raise. Every failure is one line naming the URL."""
    shown = redact_url(url)
    with cleaned_up_on_sigterm(), atomic_path(target) as tmp:
        try:
            with urllib.request.urlopen(_request(url), timeout=NETWORK_TIMEOUT_S) as response, \
                    open(tmp, "wb") as file:
                size, digest, deadline = response.length, hashlib.sha256(), time.monotonic() + DOWNLOAD_DEADLINE_S
                check_free_space(target, size or 0)
                with tqdm(total=size, unit="B", unit_scale=True, desc=target.name, disable=not progress) as bar:
                    while chunk := response.read1(1 << 20):   # what arrived: the deadline is checked often
                        bar.update(file.write(chunk))
                        digest.update(chunk)
                        endless = size is None and file.tell() > MAX_UNSIZED_BYTES
                        if endless or time.monotonic() > deadline:
                            limit = (f"it went on past {MAX_UNSIZED_BYTES / 2**20:,.0f} MiB without a length"
                                     if endless else f"it did not finish within {DOWNLOAD_DEADLINE_S:,} s")
                            raise DownloadError(f"downloading {shown} stopped after {file.tell():,} bytes: {limit}; "
                                                "the partial file was removed: check the URL, or download the file "
                                                "yourself and give its path")
                if size is not None and file.tell() < size:
                    raise DownloadError(f"the connection dropped after {file.tell():,} of {size:,} bytes of {shown}: "
                                        "the partial file was removed; run again")
                content_type = response.headers.get_content_type()
        except urllib.error.HTTPError as error:
            raise DownloadError(f"downloading {shown} failed: the server answered {error.code} {error.reason}: "
                                "check the URL") from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ValueError) as error:
            raise DownloadError(f"downloading {shown} failed ({_reason(error)}): check the network and the URL, "
                                "then run again") from None
        if not digest.hexdigest().startswith(sha256_prefix):
            raise DownloadError(f"{shown} did not send the expected file (invalid hash value: sha256 "
                                f"{digest.hexdigest()[:8]}..., expected {sha256_prefix}...); nothing was kept")
        if check is not None:
            check(tmp, content_type)


def _reason(error: Exception) -> str:
    """What went wrong, without the URL: http.client's messages can quote it raw (a token included)."""
    reason = getattr(error, "reason", error)   # urllib's URLError wraps the socket's error
    if isinstance(reason, TimeoutError):
        return f"nothing arrived for {NETWORK_TIMEOUT_S} s"
    if isinstance(reason, (ValueError, http.client.InvalidURL)):
        return "not a valid URL"
    return str(reason) if isinstance(reason, OSError) else type(error).__name__


def _request(url: str) -> urllib.request.Request:
    """A request for `url` whose user:password@ becomes basic authentication (urllib would take it for the host),
    never sent on to where the server redirects."""
    parts = urllib.parse.urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=host)))
    if at:
        credentials = ":".join(urllib.parse.unquote(part) for part in userinfo.split(":", 1)).encode()
        request.add_unredirected_header("Authorization", "Basic " + base64.b64encode(credentials).decode())
    return request


def find_kaggle_input() -> Path | None:
    """The attached Anime Face Dataset on Kaggle (read-only, used in place), or None: an `images/` folder holding
    JPEGs up to four levels under $ANIME_GAN_KAGGLE_INPUT_ROOT (default /kaggle/input), one naming the dataset first."""
    root = Path(os.environ.get("ANIME_GAN_KAGGLE_INPUT_ROOT", "/kaggle/input"))
    found = [folder for depth in range(1, 5) for folder in sorted(root.glob("*/" * depth + "images"))
             if folder.is_dir() and next(folder.glob("*.jpg"), None) is not None]
    return min(found, key=lambda folder: KAGGLE_SLUG not in folder.relative_to(root).parts, default=None)


def download_kaggle(data_dir: Path) -> Path:
    """The folder holding the Anime Face Dataset: attached on Kaggle, already downloaded, or downloaded now, signed
    in through `opendatasets` where credentials exist and it imports (handed a private kaggle.json, so it never
    prompts), else through `kagglehub` (public, no account needed). It takes its name only once complete."""
    attached = find_kaggle_input()
    if attached is not None:
        print(f"kaggle: using the attached dataset in {attached}")
        return attached
    target = Path(data_dir) / KAGGLE_SLUG
    if _is_filled(target):
        return target
    credentials = _kaggle_credentials()
    with data_dir_lock(Path(data_dir), wait=True), cleaned_up_on_sigterm():
        return target if _is_filled(target) else _download_kaggle(target, credentials)   # filled by whom we waited for


def _is_filled(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def _download_kaggle(target: Path, credentials: tuple[str, str, str] | None) -> Path:
    opendatasets, why_not = None, "no Kaggle credentials found"
    if credentials:
        try:
            import opendatasets
        except ImportError as error:   # Python 3.13: it imports the removed `cgi` module
            why_not = (f"opendatasets cannot be imported on Python {sys.version_info.major}.{sys.version_info.minor} "
                       f"({type(error).__name__}: {error})")
    if opendatasets:
        print(f"kaggle: downloading {KAGGLE_DATASET} with opendatasets as {credentials[0]} (credentials from "
              f"{credentials[2]}) into {target}")
    else:   # with credentials found, kagglehub signs in with them itself
        print(f"kaggle: {why_not}: downloading the public dataset {KAGGLE_DATASET} with kagglehub"
              f"{' (no account needed)' if credentials is None else ''} into {target}")
    staging = target.parent / ".kaggle-download"
    try:
        check_free_space(target, KAGGLE_DOWNLOAD_BYTES)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if opendatasets:   # it reads ./kaggle.json, so that is where the credentials go, readable by us only
            private = os.open(staging / "kaggle.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(private, "w") as file:
                json.dump({"username": credentials[0], "key": credentials[1]}, file)
            cwd = os.getcwd()
            os.chdir(staging)
            try:
                opendatasets.download(f"https://www.kaggle.com/datasets/{KAGGLE_DATASET}", data_dir=".")
            finally:
                os.chdir(cwd)
        else:
            import kagglehub
            found = Path(kagglehub.dataset_download(KAGGLE_DATASET, output_dir=str(staging / KAGGLE_SLUG)))
            if found != staging / KAGGLE_SLUG:   # on Colab, kagglehub mounts the dataset from Colab's own cache
                return found
        os.replace(staging / KAGGLE_SLUG, target)
        return target
    except UserError:
        raise
    except Exception as error:
        raise _kaggle_failure(error, "opendatasets" if opendatasets else "kagglehub", target, credentials) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _kaggle_failure(error: Exception, tool: str, target: Path, credentials: tuple | None) -> UserError:
    """A download client's exception as one line: a full disk, an HTTP status, the network."""
    explained = explain_write_error(error, target, KAGGLE_DOWNLOAD_BYTES) if isinstance(error, OSError) else None
    if isinstance(explained, CannotWrite):
        return explained
    hint = ("check the network" + (" and your Kaggle credentials" if credentials else "") +
            ", or attach the dataset (on Kaggle) or use data='synthetic'")
    response = getattr(error, "response", None)   # requests' HTTPError, which both clients raise
    if getattr(response, "status_code", None):
        return DownloadError(f"downloading {KAGGLE_DATASET} with {tool} failed: {redact_url(response.url)} answered "
                             f"{response.status_code} {response.reason}: {hint}")
    reason = (str(error).strip() or "no message").splitlines()[0]
    return DownloadError(f"downloading {KAGGLE_DATASET} with {tool} failed ({type(error).__name__}: {reason}): {hint}")


def _kaggle_credentials() -> tuple[str, str, str] | None:
    """(username, key, where they came from) from the first place that has them, or None; never prompts."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return os.environ["KAGGLE_USERNAME"], os.environ["KAGGLE_KEY"], "KAGGLE_USERNAME and KAGGLE_KEY"
    folders = [Path("."), os.environ.get("KAGGLE_CONFIG_DIR"), Path.home() / ".kaggle", Path.home() / ".config/kaggle"]
    for file in (Path(folder) / "kaggle.json" for folder in folders if folder):
        if file.is_file():
            return _read_credentials(file)
    with contextlib.suppress(Exception):   # Colab only; raises if the secrets are missing or not shared
        from google.colab import userdata
        found = userdata.get("KAGGLE_USERNAME"), userdata.get("KAGGLE_KEY")
        return (*found, "Colab secrets") if all(found) else None
    return None


def _read_credentials(file: Path) -> tuple[str, str, str]:
    """(username, key, the file's name) of a kaggle.json; one that is not is an error naming it, never the key."""
    shown = str(file) if file.is_absolute() else f"./{file}"
    try:
        values = read_json(file)
        valid = isinstance(values, dict) and all(isinstance(values.get(key), str) and values[key]
                                                 for key in ("username", "key"))
        problem = "" if valid else 'is not a JSON object with a "username" and a "key"'
    except ValueError as error:   # says why; JSON's message gives the position only, never the content
        problem = str(error)
    except OSError as error:
        problem = f"cannot be read ({error.strerror})"
    if problem:
        raise DownloadError(f"found {shown} but it {problem}: download a new one (kaggle.com > Settings > API > Create "
                            f"New Token), or delete {shown} to download the public dataset without an account")
    return values["username"], values["key"], shown
