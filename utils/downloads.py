"""Downloads: a URL's file (a .zip of images, the FID weights) and the Kaggle Anime Face Dataset; nothing prompts.
`download` is torch.hub.download_url_to_file's loop (temporary file, sha256 prefix, rename) plus what it lacks: it
ends (a silent server, a deadline, a size cap without a length) and never shows a credential."""

import contextlib
import hashlib
import http.client
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from utils.errors import UserError
from utils.files import CannotWrite, atomic_path, check_free_space, explain_write_error

KAGGLE_DATASET = "splcher/animefacedataset"   # 63,565 JPEGs under images/
KAGGLE_SLUG = KAGGLE_DATASET.split("/")[1]
KAGGLE_DOWNLOAD_BYTES = 900 * 2**20   # its ~400 MB archive and the files extracted from it, side by side
NETWORK_TIMEOUT_S = 60
DOWNLOAD_DEADLINE_S = 2 * 3600   # the real dataset (~400 MB) then needs ~60 KB/s
MAX_UNSIZED_BYTES = 2 * 2**30    # about 5 times the Anime Face Dataset's archive


class DownloadError(UserError, RuntimeError):
    """A download failed; the message names the URL and what the server or the network did."""


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
        lock.release()   # nothing to do when not held


def safe_file_name(text: str, fallback: str) -> str:
    """`text` as a short, safe file name part: 64 characters at most, so no folder name makes a name too long."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:64] or fallback


def download_url(url: str, data_dir: Path, progress: bool = True) -> Path:
    """Download a .zip of images once into data_dir/downloads/ (named by us, never by the server) and return it."""
    stem = safe_file_name(Path(urllib.parse.urlsplit(url).path).stem, "download")
    target = Path(data_dir) / "downloads" / f"{stem}-{hashlib.sha1(url.encode()).hexdigest()[:8]}.zip"
    if target.exists():
        print(f"download: reusing {target}")
    else:
        download(url, target, progress, zip_archive=True)
    return target


def download(url: str, target: Path, progress: bool = True, sha256_prefix: str = "", zip_archive: bool = False) -> None:
    """Download `url` into `target` within the limits above; the file takes its name only if its sha256 starts with
    `sha256_prefix` (and, with `zip_archive`, it is a whole .zip). Every failure is one line naming the URL."""
    if "@" in urllib.parse.urlsplit(url).netloc:   # urllib would take user:password@ for the host
        raise DownloadError(f"{url} holds a user name or password, which is never sent: pass a URL that carries its "
                            "token in the query string, or download the file yourself and give its path")
    with atomic_path(target) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=NETWORK_TIMEOUT_S) as response, open(tmp, "wb") as file:
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
                            raise DownloadError(f"downloading {url} stopped after {file.tell():,} bytes: {limit}; "
                                                "the partial file was removed: check the URL, or download the file "
                                                "yourself and give its path")
                if size is not None and file.tell() < size:
                    raise DownloadError(f"the connection dropped after {file.tell():,} of {size:,} bytes of {url}: "
                                        "the partial file was removed; run again")
        except urllib.error.HTTPError as error:
            raise DownloadError(f"downloading {url} failed: the server answered {error.code} {error.reason}: "
                                "check the URL") from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ValueError) as error:
            reason = getattr(error, "reason", error)   # urllib's URLError wraps the socket's error
            if isinstance(reason, TimeoutError):
                reason = f"nothing arrived for {NETWORK_TIMEOUT_S} s"
            raise DownloadError(f"downloading {url} failed ({reason or type(error).__name__}): check the network and "
                                "the URL, then run again") from None
        if not digest.hexdigest().startswith(sha256_prefix):
            raise DownloadError(f"{url} did not send the expected file (invalid hash value: sha256 "
                                f"{digest.hexdigest()[:8]}..., expected {sha256_prefix}...); nothing was kept")
        if zip_archive and not zipfile.is_zipfile(tmp):
            raise DownloadError(f"{url} did not send a whole .zip archive ({tmp.stat().st_size:,} bytes of "
                                f"{response.headers.get_content_type()}): data must be the URL of a .zip of images; "
                                "if the connection dropped, run again")


def find_kaggle_input() -> Path | None:
    """The dataset attached on Kaggle (used in place), or None: an `images/` folder of JPEGs up to four levels under
    $ANIME_GAN_KAGGLE_INPUT_ROOT (default /kaggle/input), one naming the dataset first."""
    root = Path(os.environ.get("ANIME_GAN_KAGGLE_INPUT_ROOT", "/kaggle/input"))
    found = [folder for depth in range(1, 5) for folder in sorted(root.glob("*/" * depth + "images"))
             if folder.is_dir() and next(folder.glob("*.jpg"), None) is not None]
    return min(found, key=lambda folder: KAGGLE_SLUG not in folder.relative_to(root).parts, default=None)


def download_kaggle(data_dir: Path) -> Path:
    """The Anime Face Dataset's folder: attached on Kaggle, downloaded before, or now with opendatasets where it imports
    and ./kaggle.json signs it in (else it would prompt), else kagglehub (no account); named only once complete."""
    attached = find_kaggle_input()
    if attached is not None:
        print(f"kaggle: using the attached dataset in {attached}")
        return attached
    target = Path(data_dir) / KAGGLE_SLUG
    if _is_filled(target):
        return target
    with data_dir_lock(Path(data_dir), wait=True):
        return target if _is_filled(target) else _download_kaggle(target)   # filled by whom we waited for


def _is_filled(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def _download_kaggle(target: Path) -> Path:
    try:   # opendatasets reads credentials only from ./kaggle.json, and prompts without one
        import opendatasets
        from opendatasets.utils.kaggle_api import read_kaggle_creds
        signed_in = Path("kaggle.json").is_file() and read_kaggle_creds()
    except ImportError:   # Python 3.13: it imports the removed `cgi` module
        signed_in = False
    tool = "opendatasets" if signed_in else "kagglehub"
    print(f"kaggle: downloading {KAGGLE_DATASET} with {tool} into {target}")
    check_free_space(target, KAGGLE_DOWNLOAD_BYTES)
    staging = target.parent / ".kaggle-download"
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if signed_in:
            opendatasets.download(f"https://www.kaggle.com/datasets/{KAGGLE_DATASET}", data_dir=str(staging))
        else:
            import kagglehub
            found = Path(kagglehub.dataset_download(KAGGLE_DATASET, output_dir=str(staging / KAGGLE_SLUG)))
            if found != staging / KAGGLE_SLUG:   # on Colab, kagglehub mounts the dataset from Colab's own cache
                return found
        os.replace(staging / KAGGLE_SLUG, target)
        return target
    except Exception as error:   # a full or read-only disk, an HTTP status, the network: one line
        explained = explain_write_error(error, target, KAGGLE_DOWNLOAD_BYTES) if isinstance(error, OSError) else error
        if isinstance(explained, CannotWrite):
            raise explained from error
        reason = f"{type(error).__name__}: {(str(error).strip() or 'no message').splitlines()[0]}"
        raise DownloadError(f"downloading {KAGGLE_DATASET} with {tool} failed ({reason}): check the network, or "
                            "attach the dataset (on Kaggle) or use data='synthetic'") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
