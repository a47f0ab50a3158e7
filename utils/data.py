"""The training images: `config.data` in, uint8 (N, 3, S, S) out, decoded once and cached in `data_dir/cache/`.

`config.data` is "synthetic" (faces drawn here, offline), "kaggle" (the Anime Face Dataset), a folder or .zip of
images, or an http(s) URL of a .zip. Downloads are `utils.downloads`'s job, decoding `utils.image_files`'s; this
module owns the cache: decoded once into a .npy whose name changes whenever its content would, memory-mapped on
every later run, and rebuilt, never trained on, when the file does not hold what its name promises.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import stat
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from utils.config import TrainConfig
from utils.downloads import (KAGGLE_SLUG, cleaned_up_on_sigterm, data_dir_lock, download_kaggle, download_url,
                             safe_file_name)
from utils.files import atomic_path
from utils.image_files import decode_all, existing_source, list_image_files, open_source
from utils.synthetic import synthetic_faces
from utils.urls import is_url

SYNTHETIC_DEFAULT_COUNT = 20_000
_CACHE_FORMAT = 4   # bump when decoding, the synthetic renderer or the cache key changes, so old caches are not reused


def load_dataset(config: TrainConfig, progress: bool = True) -> torch.Tensor:
    """The images named by `config.data`, uint8 (N, 3, S, S) with S = config.image_size.

    N is at most config.max_images (0 = all; for "synthetic" SYNTHETIC_DEFAULT_COUNT). Later calls memory-map the
    cache copy-on-write: well under a second, and writing into the tensor never changes the file.
    """
    source = _local_source(config)
    path, counts = _cache_file(config, source)
    problem = _cache_problem(path, config.image_size, counts) if path.exists() else "missing"
    # a cache to build waits for a process building in data_dir; one to reuse only cleans up when nobody is there
    with data_dir_lock(Path(config.data_dir), wait=problem is not None) as locked:
        if locked:
            _remove_stale_temporaries(Path(config.data_dir))
            if problem is not None and path.exists():   # built by the process we waited for
                problem = _cache_problem(path, config.image_size, counts)
        if problem is None:
            verb = "reusing"
        else:
            if problem != "missing":
                print(f"dataset cache: {path} {problem}: rebuilding it")
            with cleaned_up_on_sigterm():
                _build_cache(config, source, path, progress)
            verb = "built" if problem == "missing" else "rebuilt"
    images = torch.from_numpy(np.load(path, mmap_mode="c"))
    print(f"dataset cache: {verb} {path} ({len(images)} images of {config.image_size}x{config.image_size})")
    return images


def cache_path(config: TrainConfig) -> Path:
    """Where `load_dataset` keeps the decoded images for this config: the name hashes what is read (a folder's
    file names, sizes and times; a zip's size and time; the URL; the synthetic seed and count), image_size and
    max_images."""
    return _cache_file(config, _local_source(config))[0]


def _local_source(config: TrainConfig) -> Path | None:
    """The folder or zip that config.data reads ("kaggle": found or downloaded now); None for synthetic and URLs."""
    if config.data == "synthetic" or is_url(config.data):
        return None
    if config.data == "kaggle":
        return download_kaggle(Path(config.data_dir))
    return existing_source(Path(config.data).expanduser())


def _cache_file(config: TrainConfig, source: Path | None) -> tuple[Path, range]:
    """(the cache's path, the image counts a valid cache of this config can hold)."""
    name, identity, counts = _source_identity(config, source)
    key = f"{_CACHE_FORMAT}|{identity}|{config.image_size}|{config.max_images}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    file_name = f"{safe_file_name(name, 'data')}-{config.image_size}px-{digest}.npy"
    return Path(config.data_dir) / "cache" / file_name, counts


def _source_identity(config: TrainConfig, source: Path | None) -> tuple[str, str, range]:
    """(a readable name, a string that changes whenever the images would, the possible image counts)."""
    data = config.data
    if data == "synthetic":
        count = config.max_images or SYNTHETIC_DEFAULT_COUNT
        return f"synthetic-seed{config.seed}", f"synthetic|{config.seed}|{count}", range(count, count + 1)
    most = config.max_images or sys.maxsize
    if source is None:   # a URL: the zip it names does not change
        return Path(urllib.parse.urlsplit(data).path).stem, f"url|{data}", range(1, most + 1)
    if source.is_dir():
        files = list_image_files(source)
        digest = hashlib.sha1()
        prefix = len(str(source))
        for file in files:
            try:
                info = os.stat(file)
                state = f"{info.st_size}|{info.st_mtime_ns}"
            except OSError as error:   # a broken or looping symbolic link: decoding skips it and counts it
                state = f"unreadable {error.errno}"
            digest.update(f"{file[prefix:]}|{state}\n".encode())
        name = KAGGLE_SLUG if data == "kaggle" else source.name
        return name, f"folder|{source.resolve()}|{len(files)}|{digest.hexdigest()}", range(1, min(most, len(files)) + 1)
    info = source.stat()
    return source.stem, f"file|{source.resolve()}|{info.st_size}|{info.st_mtime_ns}", range(1, most + 1)


def _cache_problem(path: Path, image_size: int, counts: range) -> str | None:
    """Why the cache file `path` cannot be used for these images, or None if it can. Reads the .npy header only and
    compares the size it announces with the file's, so a truncated file is caught without reading the pixels."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return "is not a regular file"
        with open(path, "rb") as file:
            version = np.lib.format.read_magic(file)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                return f"is a .npy file of version {version}, which this project does not write"
            shape, fortran_order, dtype = read_header(file)
            offset = file.tell()
    except (OSError, ValueError) as error:
        return f"is not a readable .npy file ({error})"
    wanted = (3, image_size, image_size)
    if dtype != np.uint8 or fortran_order or len(shape) != 4 or shape[1:] != wanted:
        order = (" in Fortran order", " in C order") if fortran_order else ("", "")
        return f"holds {dtype} images of shape {shape[1:]}{order[0]}, not uint8 of shape {wanted}{order[1]}"
    if shape[0] not in counts:
        expected = f"{counts.start:,}" if len(counts) == 1 else f"1 to {counts.stop - 1:,}"
        return f"holds {shape[0]:,} images where {expected} are expected"
    size = offset + math.prod(shape) * dtype.itemsize
    if info.st_size != size:
        return f"has {info.st_size:,} bytes but its header announces {size:,} (truncated or overwritten)"
    return None


def _build_cache(config: TrainConfig, source: Path | None, path: Path, progress: bool) -> None:
    size = config.image_size
    if config.data == "synthetic":
        count = config.max_images or SYNTHETIC_DEFAULT_COUNT
        _write_cache(path, count, size, lambda: synthetic_faces(count, size, config.seed).numpy())
        return
    if source is None:
        source = download_url(config.data, Path(config.data_dir), progress)
    with open_source(source, config.max_images) as listing:
        _write_cache(path, len(listing.names), size, lambda: decode_all(source, listing, size, progress))


def _write_cache(path: Path, count: int, image_size: int, make: Callable[[], np.ndarray]) -> None:
    """Write `make()` to `path` as .npy, opening the file first so a full or read-only data_dir fails at once, not
    after minutes of decoding."""
    with atomic_path(path, needs_bytes=count * 3 * image_size**2 + 128) as tmp, open(tmp, "wb") as file:
        np.save(file, make())


# the names `atomic_path` gives the files written under data_dir's lock until they are complete
_TEMPORARIES = ("cache/.*.tmp.npy", "downloads/.*.tmp.zip")


def _remove_stale_temporaries(data_dir: Path) -> None:
    """Remove the partial downloads and caches that a process killed in data_dir left (call holding its lock)."""
    removed = []
    for stale in sorted(path for pattern in _TEMPORARIES for path in data_dir.glob(pattern)):
        with contextlib.suppress(OSError):
            stale.unlink()
            removed.append(stale)
    if removed:
        print(f"data: removed {len(removed)} partial file(s) that a stopped download or cache build left "
              f"({', '.join(map(str, removed))})")
