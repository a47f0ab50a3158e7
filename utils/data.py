"""The training images: `config.data` ("synthetic", "kaggle", a folder or .zip of images, or an http(s) URL of a .zip)
in, uint8 (N, 3, S, S) out, decoded once into data_dir/cache/. The cache's name changes whenever its content would;
later runs memory-map it, and a file that does not hold what its name promises is rebuilt, never trained on."""

import contextlib
import hashlib
import os
import sys
import urllib.parse
from functools import partial
from pathlib import Path

import numpy as np
import torch

from utils.config import TrainConfig
from utils.downloads import KAGGLE_SLUG, data_dir_lock, download_kaggle, download_url, safe_file_name
from utils.files import atomic_path, is_run_folder, run_part
from utils.image_files import DataError, decode_all, list_image_files, open_source
from utils.synthetic import synthetic_faces
from utils.urls import is_url

SYNTHETIC_DEFAULT_COUNT = 20_000
_CACHE_FORMAT = 4   # bump when decoding, the synthetic renderer or the cache key changes, so old caches are not reused


def load_dataset(config: TrainConfig, progress: bool = True) -> torch.Tensor:
    """The images of `config.data`, uint8 (N, 3, S, S), N at most config.max_images (0 = all). Later calls memory-map
    the cache copy-on-write: well under a second, and writing into the tensor never changes the file."""
    if run_part(Path(config.data_dir)) or is_run_folder(config.data_dir):   # its cache/ and .lock would go there
        raise DataError(f"config field 'data_dir' ({config.data_dir}) is or lies in a run folder: choose another one")
    source = _local_source(config)
    path, counts = _cache_file(config, source)
    problem, data_dir = _cache_problem(path, config.image_size, counts), Path(config.data_dir)
    # a cache to build waits for a process building in data_dir; one to reuse only cleans up when nobody is there
    with data_dir_lock(data_dir, wait=problem is not None) as locked:
        if locked:   # nobody else writes here now: a partial cache or download is a killed process's
            for stale in sorted([*data_dir.glob("cache/.*.tmp.npy"), *data_dir.glob("downloads/.*.tmp.zip")]):
                with contextlib.suppress(OSError):
                    stale.unlink()
                    print(f"data: removed {stale}, a partial file that a stopped download or cache build left")
            if problem is not None:   # perhaps built by the process we waited for
                problem = _cache_problem(path, config.image_size, counts)
        verb = "reusing" if problem is None else "built" if problem == "missing" else "rebuilt"
        if problem not in (None, "missing"):
            print(f"dataset cache: {path} {problem}: rebuilding it")
        if problem is not None:
            _build_cache(config, source, path, progress)
    images = torch.from_numpy(np.load(path, mmap_mode="c"))
    print(f"dataset cache: {verb} {path} ({len(images)} images of {config.image_size}x{config.image_size})")
    return images


def _local_source(config: TrainConfig) -> Path | None:
    """The folder or zip that config.data reads ("kaggle": found or downloaded now); None for synthetic and URLs."""
    if config.data == "synthetic" or is_url(config.data):
        return None
    if config.data == "kaggle":
        return download_kaggle(Path(config.data_dir))
    source = Path(config.data).expanduser()
    if not source.exists():
        raise DataError(f"data source does not exist: {source}: pass a folder or .zip of images, an http(s) URL of a "
                        ".zip, 'synthetic' or 'kaggle'")
    return source


def _cache_file(config: TrainConfig, source: Path | None) -> tuple[Path, range]:
    """(the cache's path, the image counts it may hold), named by a hash of the settings and of what is read."""
    least, most = 1, config.max_images or sys.maxsize
    if config.data == "synthetic":
        least = most = config.max_images or SYNTHETIC_DEFAULT_COUNT
        name, identity = f"synthetic-seed{config.seed}", f"synthetic|{config.seed}|{most}"
    elif source is None:   # a URL: the zip it names does not change
        name, identity = Path(urllib.parse.urlsplit(config.data).path).stem, f"url|{config.data}"
    elif not source.is_dir():
        name, identity = source.stem, f"file|{source.resolve()}|{_file_state(source)}"
    else:
        files, start = list_image_files(source), len(str(source))
        digest = hashlib.sha1("".join(f"{file[start:]}|{_file_state(file)}\n" for file in files).encode()).hexdigest()
        name = KAGGLE_SLUG if config.data == "kaggle" else source.name
        identity, most = f"folder|{source.resolve()}|{len(files)}|{digest}", min(most, len(files))
    key = f"{_CACHE_FORMAT}|{identity}|{config.image_size}|{config.max_images}"
    file_name = f"{safe_file_name(name, 'data')}-{config.image_size}px-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    return Path(config.data_dir) / "cache" / f"{file_name}.npy", range(least, most + 1)


def _file_state(path: str | Path) -> str:
    try:
        info = os.stat(path)
    except OSError as error:   # a broken or looping symbolic link: decoding skips it and counts it
        return f"unreadable {error.errno}"
    return f"{info.st_size}|{info.st_mtime_ns}"


def _cache_problem(path: Path, image_size: int, counts: range) -> str | None:
    """Why the cache `path` cannot be used ("missing" when absent), or None; mapping it fails if it is truncated."""
    if not path.exists():
        return "missing"
    if not path.is_file():
        return "is not a regular file"
    try:
        array = np.lib.format.open_memmap(path, mode="r")
    except (OSError, ValueError) as error:
        return f"is not a readable .npy file ({error})"
    wanted = (3, image_size, image_size)
    if array.dtype != np.uint8 or array.shape[1:] != wanted:
        return f"holds {array.dtype} images of shape {array.shape[1:]}, not uint8 of shape {wanted}"
    if array.shape[0] not in counts:
        expected = f"{counts.start:,}" if len(counts) == 1 else f"1 to {counts.stop - 1:,}"
        return f"holds {array.shape[0]:,} images where {expected} are expected"
    return None


def _build_cache(config: TrainConfig, source: Path | None, path: Path, progress: bool) -> None:
    """Draw or decode the images into `path`, opening it first: a full or read-only data_dir fails before decoding."""
    size, count = config.image_size, config.max_images or SYNTHETIC_DEFAULT_COUNT
    with contextlib.ExitStack() as stack:
        if config.data == "synthetic":
            make = partial(synthetic_faces, count, size, config.seed)
        else:
            source = source or download_url(config.data, Path(config.data_dir), progress)
            names, read = stack.enter_context(open_source(source, config.max_images))
            count, make = len(names), partial(decode_all, source, names, read, size, progress)
        with atomic_path(path, needs_bytes=count * 3 * size**2 + 128) as tmp, open(tmp, "wb") as file:
            np.save(file, np.asarray(make()))
