"""Image files: the images of a folder (searched recursively) or a .zip (read in place, never extracted) listed, read
and decoded into uint8 (N, 3, S, S), in sorted order.

An image is a file ending in one of IMAGE_EXTENSIONS, with no hidden part in its path and not inside a training
run's folder (its grids are this project's own samples). Only regular files of at most MAX_FILE_BYTES are read (a
FIFO is never waited on); files that do not decode are skipped and reported in one warning at the end.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from utils.errors import UserError
from utils.files import list_frames

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")
MAX_FILE_BYTES = 64 * 2**20   # a face is tens of KB; a larger "image" is skipped unread instead of filling memory


class DataError(UserError, ValueError):
    """The data source cannot be used: no readable images, or neither a folder, a .zip nor a URL of a .zip."""


class DataNotFound(UserError, FileNotFoundError):
    """`config.data` names a file or folder that does not exist."""


def existing_source(source: Path) -> Path:
    """`source`, or a DataNotFound that lists what `data` can be."""
    if not source.exists():
        raise DataNotFound(f"data source does not exist: {source}: pass a folder or .zip of images, "
                           f"an http(s) URL of a .zip, 'synthetic' or 'kaggle'")
    return source


class Listing(NamedTuple):
    """The image files of one source, and how to read and name one of them."""

    names: list[str]
    read: Callable[[str], bytes]       # the bytes of one file (raises _Unreadable for what is never read)
    describe: Callable[[str], str]     # the file's name in messages


class _Unreadable(Exception):
    """A file that is skipped without reading it: not a regular file, or larger than MAX_FILE_BYTES."""


def load_images(source: Path, image_size: int, max_images: int = 0, progress: bool = True) -> torch.Tensor:
    """The images of a folder or a .zip (the first `max_images` when > 0) as uint8 (N, 3, S, S): converted to RGB
    (transparency on white), centre-cropped and resized with Lanczos. Images smaller than `image_size`, which
    upsampling cannot sharpen, are counted in a warning."""
    source = existing_source(Path(source))
    with open_source(source, max_images) as listing:
        return torch.from_numpy(decode_all(source, listing, image_size, progress))


def decode_all(source: Path, listing: Listing, image_size: int, progress: bool) -> np.ndarray:
    """The listed files decoded on a thread pool, in order; the ones that do not decode are skipped and warned about."""
    def decode(name: str) -> tuple[np.ndarray | None, tuple[int, int], str]:
        try:
            return *_decode_image(listing.read(name), image_size), ""
        except _Unreadable as error:
            return None, (0, 0), str(error)
        except UnidentifiedImageError:
            return None, (0, 0), "not a recognised image format"
        except Exception as error:   # PIL raises many types for broken files; all mean "skip it"
            return None, (0, 0), f"{type(error).__name__}: {error}"

    names = listing.names
    images = np.empty((len(names), 3, image_size, image_size), dtype=np.uint8)
    count, failures, upsampled = 0, [], []
    pool = ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) + 2))   # PIL frees the GIL
    try:
        results = tqdm(pool.map(decode, names), total=len(names), desc=f"decoding {source.name}",
                       unit="img", disable=not progress)
        for (pixels, original, error), name in zip(results, names):   # the bar first: it sees its end and shows N/N
            if pixels is None:
                failures.append((listing.describe(name), error))
                continue
            images[count] = pixels.transpose(2, 0, 1)
            count += 1
            if min(original) < image_size:
                upsampled.append((listing.describe(name), original))
    finally:
        # Ctrl-C: return at once, dropping the queued files; the few being decoded finish in the background
        pool.shutdown(wait=False, cancel_futures=True)
    if count == 0:
        example, error = failures[0]
        raise DataError(f"no images found in {source}: none of its {len(names)} image files could be "
                        f"decoded (e.g. {example}: {error})")
    if failures:
        example, error = failures[0]
        warnings.warn(f"skipped {len(failures)} of {len(names)} files that are not readable images "
                      f"(e.g. {example}: {error})", stacklevel=3)
    if upsampled:
        example, (width, height) = upsampled[0]
        warnings.warn(f"{len(upsampled)} of {count} images are smaller than {image_size}x{image_size} (e.g. {example} "
                      f"is {width}x{height}) and were upsampled, which adds no detail: an image_size of at most "
                      f"{min(width, height)} keeps them at their own resolution", stacklevel=3)
    return images[:count]


@contextlib.contextmanager
def open_source(source: Path, max_images: int) -> Iterator[Listing]:
    """The image files of a folder or a zip (the first `max_images` when > 0), and how to read one."""
    if source.is_dir():
        listing = Listing(list_image_files(source), _read_regular_file, str)
        yield _check_listing(listing, source, max_images)
    elif zipfile.is_zipfile(source):
        # Members are read, never extracted, so names like "../x.jpg" or "/x.jpg" cannot write anywhere.
        with zipfile.ZipFile(source) as archive:
            lock = threading.Lock()   # one file handle shared by the decoding threads
            members = {info.filename: info for info in archive.infolist()
                       if not info.is_dir() and _is_image_name(info.filename)}

            def read(name: str) -> bytes:
                info = members[name]
                with lock, archive.open(info) as member:
                    return _read_limited(member, info.file_size)

            yield _check_listing(Listing(sorted(members), read, lambda name: f"{source}:{name}"), source, max_images)
    else:
        raise DataError(f"data source {source} is neither a folder nor a .zip: pass a folder or .zip of images")


def _check_listing(listing: Listing, source: Path, max_images: int) -> Listing:
    names = listing.names[:max_images] if max_images else listing.names
    if not names:
        raise DataError(f"no images found in {source}: expected files ending in "
                        f"{', '.join(IMAGE_EXTENSIONS)} (folders are searched recursively)")
    return listing._replace(names=names)


def _read_regular_file(name: str) -> bytes:
    """The bytes of a regular file; a FIFO, socket, device or broken link is refused (O_NONBLOCK: a FIFO is never
    waited on)."""
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        if os.path.islink(name):
            what = "loops" if error.errno == errno.ELOOP else "points to nothing"
            raise _Unreadable(f"a symbolic link that {what} ({os.readlink(name)}), so not read") from None
        raise
    with open(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _Unreadable("not a regular file (a FIFO, socket or device), so not read")
        return _read_limited(file, info.st_size)


def _read_limited(file: io.BufferedIOBase, declared_size: int) -> bytes:
    """`file`'s bytes, refused unread when its declared size is over MAX_FILE_BYTES, and bounded if it lies."""
    if declared_size <= MAX_FILE_BYTES:
        data = file.read(MAX_FILE_BYTES + 1)
        if len(data) <= MAX_FILE_BYTES:
            return data
        declared_size = len(data)
    raise _Unreadable(f"{declared_size / 2**20:,.1f} MiB, over the {MAX_FILE_BYTES / 2**20:,.0f} MiB limit for one "
                      "image file, so not read")


def list_image_files(folder: Path) -> list[str]:
    """The paths of the image files under `folder`, recursively, sorted; never those of a training run inside it.
    Plain strings from os.walk: listing is part of every cache check, and Path objects made it several times slower."""
    found = []
    for root, dirs, names in os.walk(folder):
        if _is_run_folder(root, dirs):
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if _is_image_name(d + ".jpg")]  # prune hidden folders and __MACOSX early
        found += [os.path.join(root, name) for name in names if _is_image_name(name)]
    return sorted(found)


def _is_run_folder(root: str, dirs: list[str]) -> bool:
    """Whether `root` is a training run's folder: its samples/ holds the per-epoch grids."""
    return "samples" in dirs and bool(list_frames(root))


def _is_image_name(name: str) -> bool:
    """An image extension, and no hidden part (skips .ipynb_checkpoints/, macOS "._x.jpg" and __MACOSX/)."""
    parts = name.replace("\\", "/").split("/")
    return (name.lower().endswith(IMAGE_EXTENSIONS) and "__MACOSX" not in parts
            and not any(part.startswith(".") and part not in (".", "..") for part in parts))


def _decode_image(data: bytes, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Bytes of one image file -> (uint8 (size, size, 3), RGB, centre-cropped, resized; its own (width, height))."""
    with Image.open(io.BytesIO(data)) as image:   # raises DecompressionBombError above 2 x MAX_IMAGE_PIXELS
        original = image.size
        image.draft("RGB", (size, size))   # JPEG: decode at 1/2..1/8 scale when that is still >= size
        if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
        else:
            rgb = image.convert("RGB")   # grayscale, palette, CMYK, ...; also reads the first GIF frame
    return np.asarray(ImageOps.fit(rgb, (size, size), Image.Resampling.LANCZOS)), original
