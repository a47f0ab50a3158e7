"""The image files of a folder (recursively, never hidden ones or runs') or a .zip (read in place), decoded into uint8
(N, 3, S, S). Only regular files up to MAX_FILE_BYTES are read; those that do not decode are skipped, in one warning."""

import contextlib
import io
import os
import stat
import warnings
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from utils.errors import UserError
from utils.files import list_frames

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")
MAX_FILE_BYTES = 64 * 2**20   # a face is tens of KB; a larger "image" is skipped unread instead of filling memory


class DataError(UserError, ValueError):
    """The data source cannot be used: missing, no readable images, or neither a folder nor a .zip."""


class _Unreadable(Exception):
    """A file skipped unread: not a regular file, or larger than MAX_FILE_BYTES."""


@contextlib.contextmanager
def open_source(source: Path, max_images: int) -> Iterator[tuple[list[str], Callable[[str], bytes]]]:
    """The names of the image files of a folder or a .zip (the first `max_images` when > 0), and how to read one."""
    if source.is_dir():
        names, read, archive = list_image_files(source), _read_regular_file, contextlib.nullcontext()
    elif zipfile.is_zipfile(source):
        archive = zipfile.ZipFile(source)   # members are read, never extracted: "../x.jpg" cannot write anywhere
        members = {info.filename: info for info in archive.infolist()
                   if not info.is_dir() and _is_image_name(info.filename)}
        names = sorted(members)

        def read(name: str) -> bytes:   # zipfile's shared handle is thread-safe: members decompress in parallel
            with archive.open(members[name]) as member:
                return _read_limited(member, members[name].file_size)
    else:
        raise DataError(f"data source {source} is neither a folder nor a .zip: pass a folder or .zip of images")
    with archive:
        names = names[:max_images or None]
        if not names:
            raise DataError(f"no images found in {source}: expected files ending in "
                            f"{', '.join(IMAGE_EXTENSIONS)} (folders are searched recursively)")
        yield names, read


def decode_all(source: Path, names: list[str], read: Callable[[str], bytes], image_size: int,
               progress: bool) -> np.ndarray:
    """The files decoded on a thread pool, in order; one warning counts those skipped, one those upsampled."""
    def decode(name: str) -> tuple[np.ndarray | None, tuple[int, int] | str]:
        try:
            return _decode_image(read(name), image_size)
        except UnidentifiedImageError:
            return None, "not a recognised image format"
        except Exception as error:   # PIL raises many types for broken files; all mean "skip it"
            return None, str(error) if isinstance(error, _Unreadable) else f"{type(error).__name__}: {error}"

    images = np.empty((len(names), 3, image_size, image_size), dtype=np.uint8)
    count, failures, upsampled = 0, [], []
    prefix = "" if source.is_dir() else f"{source}:"   # a zip's members are named with the zip
    pool = ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) + 2))   # PIL frees the GIL
    try:
        results = tqdm(pool.map(decode, names), total=len(names), desc=f"decoding {source.name}", unit="img",
                       disable=not progress)
        for (pixels, found), name in zip(results, names):   # the bar first: it sees its end and shows N/N
            if pixels is None:
                failures.append((prefix + name, found))
                continue
            images[count] = pixels.transpose(2, 0, 1)
            count += 1
            if min(found) < image_size:
                upsampled.append((prefix + name, found))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)   # Ctrl-C: return at once, dropping the queued files
    if count == 0:
        raise DataError(f"no images found in {source}: none of its {len(names)} image files could be decoded "
                        f"(e.g. {failures[0][0]}: {failures[0][1]})")
    if failures:
        warnings.warn(f"skipped {len(failures)} of {len(names)} files that are not readable images "
                      f"(e.g. {failures[0][0]}: {failures[0][1]})", stacklevel=3)
    if upsampled:
        example, (width, height) = upsampled[0]
        warnings.warn(f"{len(upsampled)} of {count} images are smaller than {image_size}x{image_size} (e.g. {example} "
                      f"is {width}x{height}) and were upsampled, which adds no detail: an image_size of at most "
                      f"{min(width, height)} keeps them at their own resolution", stacklevel=3)
    return images[:count]


def _read_regular_file(name: str) -> bytes:
    """The bytes of a regular file; anything else is refused unread (O_NONBLOCK: a FIFO is never waited on)."""
    with open(os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _Unreadable("not a regular file (a FIFO, socket or device), so not read")
        return _read_limited(file, info.st_size)


def _read_limited(file: io.BufferedIOBase, declared_size: int) -> bytes:
    """`file`'s bytes, refused unread when its declared size is over MAX_FILE_BYTES, and bounded if it lies."""
    if declared_size <= MAX_FILE_BYTES:
        data = file.read(MAX_FILE_BYTES + 1)
        if len(data) <= MAX_FILE_BYTES:
            return data
    raise _Unreadable(f"{max(declared_size, MAX_FILE_BYTES + 1) / 2**20:,.1f} MiB, over the "
                      f"{MAX_FILE_BYTES / 2**20:,.0f} MiB limit for one image file, so not read")


def list_image_files(folder: Path) -> list[str]:
    """The image files under `folder` (as strings: faster than Paths), recursively, sorted, never in a run folder."""
    found = []
    for root, dirs, names in os.walk(folder):
        if "samples" in dirs and list_frames(root):
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if _is_image_name(d + ".jpg")]   # prune hidden folders and __MACOSX early
        found += [os.path.join(root, name) for name in names if _is_image_name(name)]
    return sorted(found)


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
        if image.has_transparency_data:
            rgba = image.convert("RGBA")
            rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
        else:
            rgb = image.convert("RGB")   # grayscale, palette, CMYK, ...; also reads the first GIF frame
    return np.asarray(ImageOps.fit(rgb, (size, size), Image.Resampling.LANCZOS)), original
