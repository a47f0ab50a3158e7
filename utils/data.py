"""The training images: `config.data` in, a uint8 tensor (N, 3, S, S) out, decoded once and cached on disk.

    >>> from utils.config import TrainConfig
    >>> from utils.data import load_dataset
    >>> images = load_dataset(TrainConfig(data="synthetic", image_size=32))   # drawn here, nothing downloaded
    >>> images.shape, images.dtype
    (torch.Size([20000, 3, 32, 32]), torch.uint8)

`config.data` is one of
    "synthetic"          anime-style faces drawn procedurally by `synthetic_faces` (offline, a few seconds)
    "kaggle"             the Anime Face Dataset (63,565 JPEGs): an attached Kaggle input, or a download
    a folder or a .zip   your own images (searched recursively; a zip is read in place, never extracted)
    an http(s) URL       of a .zip of images, downloaded once into `config.data_dir`

Decoding tens of thousands of JPEGs takes minutes, so the decoded pixels are written once to
`config.data_dir/cache/*.npy` and memory-mapped on every later run (well under a second).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import threading
import urllib.parse
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from utils.config import TrainConfig
from utils.files import atomic_path
from utils.synthetic import synthetic_faces

SYNTHETIC_DEFAULT_COUNT = 20_000
KAGGLE_DATASET = "splcher/animefacedataset"   # 63,565 JPEGs under images/
KAGGLE_URL = f"https://www.kaggle.com/datasets/{KAGGLE_DATASET}"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")


# ---------------------------------------------------------------------------------------------
# The one entry point: resolve config.data, decode once, cache as .npy, memory-map afterwards.

_CACHE_FORMAT = 2   # bump when decoding or the synthetic renderer changes, so old caches are not reused


def load_dataset(config: TrainConfig, progress: bool = True) -> torch.Tensor:
    """The images named by `config.data`, uint8 (N, 3, S, S) with S = config.image_size.

    N is at most config.max_images (0 = all; for "synthetic" 0 means SYNTHETIC_DEFAULT_COUNT, drawn
    with config.seed). The first call decodes and writes `cache_path(config)`; later calls
    memory-map it, so they cost well under a second and share pages with other processes. The map
    is copy-on-write: writing into the tensor never changes the file.
    """
    path = cache_path(config)
    if path.exists():
        verb = "reusing"
    else:
        images = _decode_source(config, progress).numpy()
        with atomic_path(path) as tmp, open(tmp, "wb") as file:  # never a truncated cache
            np.save(file, images)
        verb = "built"
    images = torch.from_numpy(np.load(path, mmap_mode="c"))
    print(f"dataset cache: {verb} {path} ({len(images)} images of {config.image_size}x{config.image_size})")
    return images


def cache_path(config: TrainConfig) -> Path:
    """Where `load_dataset` keeps the decoded images for this config.

    The name hashes the source's identity (a local folder's file names, sizes and modification
    times; a zip's size and time; the URL; the synthetic seed and count) with image_size and
    max_images, so editing a folder or changing either knob builds a new cache.
    """
    name, identity = _source_identity(config)
    key = f"{_CACHE_FORMAT}|{identity}|{config.image_size}|{config.max_images}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "data"
    return Path(config.data_dir) / "cache" / f"{safe_name}-{config.image_size}px-{digest}.npy"


def _source_identity(config: TrainConfig) -> tuple[str, str]:
    """(a readable name, a string that changes whenever the images would) for config.data."""
    data = config.data
    if data == "synthetic":
        count = config.max_images or SYNTHETIC_DEFAULT_COUNT
        return f"synthetic-seed{config.seed}", f"synthetic|{config.seed}|{count}"
    if data == "kaggle":   # the same images whether attached on Kaggle or downloaded
        return KAGGLE_DATASET.split("/")[1], f"kaggle|{KAGGLE_DATASET}"
    if _is_url(data):
        return Path(urllib.parse.urlsplit(data).path).stem, f"url|{data}"
    source = _existing(Path(data).expanduser())
    if source.is_dir():
        files = _image_files(source)
        digest = hashlib.sha1()
        prefix = len(str(source))
        for file in map(str, files):
            stat = os.stat(file)
            digest.update(f"{file[prefix:]}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return source.name, f"folder|{source.resolve()}|{len(files)}|{digest.hexdigest()}"
    stat = source.stat()
    return source.stem, f"file|{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _decode_source(config: TrainConfig, progress: bool) -> torch.Tensor:
    data, data_dir = config.data, Path(config.data_dir)
    if data == "synthetic":
        return synthetic_faces(config.max_images or SYNTHETIC_DEFAULT_COUNT, config.image_size, config.seed)
    if data == "kaggle":
        source = download_kaggle(data_dir)
    elif _is_url(data):
        source = download_url(data, data_dir)
    else:
        source = Path(data).expanduser()
    return load_images(source, config.image_size, config.max_images, progress)


def _is_url(data: str) -> bool:
    return data.startswith(("http://", "https://"))


def _existing(source: Path) -> Path:
    if not source.exists():
        raise FileNotFoundError(f"data source does not exist: {source}: pass a folder or .zip of images, "
                                f"an http(s) URL of a .zip, 'synthetic' or 'kaggle'")
    return source


# ---------------------------------------------------------------------------------------------
# Decoding a folder or a zip of images.

def load_images(source: Path, image_size: int, max_images: int = 0, progress: bool = True) -> torch.Tensor:
    """Decode the images in a folder (searched recursively) or a .zip (read in place) into uint8 (N, 3, S, S).

    Files are taken in sorted order (the first `max_images` of them when that is > 0), converted
    to RGB (transparency composited on white), centre-cropped to a square and resized with a
    Lanczos filter. Files that do not decode (corrupt, truncated, empty, not an image, too large)
    are skipped and reported in one warning at the end: one bad file should not stop a long run.
    """
    source = _existing(Path(source))
    with _open_source(source) as (names, read, describe):
        if max_images:
            names = names[:max_images]
        if not names:
            raise ValueError(f"no images found in {source}: expected files ending in "
                             f"{', '.join(IMAGE_EXTENSIONS)} (folders are searched recursively)")

        def decode(name: str) -> tuple[np.ndarray | None, str]:
            try:
                return _decode_image(read(name), image_size), ""
            except UnidentifiedImageError:
                return None, "not a recognised image format"
            except Exception as error:   # PIL raises many types for broken files; all mean "skip it"
                return None, f"{type(error).__name__}: {error}"

        images = np.empty((len(names), 3, image_size, image_size), dtype=np.uint8)
        count, failures = 0, []
        pool = ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) + 2))   # PIL frees the GIL
        try:
            results = tqdm(pool.map(decode, names), total=len(names), desc=f"decoding {source.name}",
                           unit="img", disable=not progress)
            for name, (pixels, error) in zip(names, results):
                if pixels is None:
                    failures.append((describe(name), error))
                else:
                    images[count] = pixels.transpose(2, 0, 1)
                    count += 1
        finally:
            pool.shutdown(cancel_futures=True)   # after Ctrl-C, do not decode the files still queued
    if count == 0:
        example, error = failures[0]
        raise ValueError(f"no images found in {source}: none of its {len(names)} image files could be "
                         f"decoded (e.g. {example}: {error})")
    if failures:
        example, error = failures[0]
        warnings.warn(f"skipped {len(failures)} of {len(names)} files that are not readable images "
                      f"(e.g. {example}: {error})", stacklevel=2)
    return torch.from_numpy(images[:count])


@contextlib.contextmanager
def _open_source(source: Path):
    """Yield (names, read(name) -> bytes, describe(name) -> str for messages) for a folder or a zip."""
    if source.is_dir():
        yield [str(file) for file in _image_files(source)], lambda name: Path(name).read_bytes(), str
    elif zipfile.is_zipfile(source):
        # Members are read, never extracted, so names like "../x.jpg" or "/x.jpg" cannot write anywhere.
        with zipfile.ZipFile(source) as archive:
            lock = threading.Lock()   # one file handle shared by the decoding threads

            def read(name: str) -> bytes:
                with lock:
                    return archive.read(name)

            names = sorted(info.filename for info in archive.infolist()
                           if not info.is_dir() and _is_image_name(info.filename))
            yield names, read, lambda name: f"{source}:{name}"
    else:
        raise ValueError(f"data source {source} is neither a folder nor a .zip: pass a folder or .zip of images")


def _image_files(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, sorted. os.walk on plain strings: listing 30,000 files
    this way takes a fraction of what Path.rglob + relative_to took (3.8 s), so reusing a cache stays fast."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if _is_image_name(d + ".jpg")]  # prune hidden folders and __MACOSX early
        found += [os.path.join(root, name) for name in names if _is_image_name(name)]
    return [Path(path) for path in sorted(found)]


def _is_image_name(name: str) -> bool:
    """An image extension, and no hidden part (skips .ipynb_checkpoints/, macOS "._x.jpg" and __MACOSX/)."""
    parts = name.replace("\\", "/").split("/")
    return (name.lower().endswith(IMAGE_EXTENSIONS) and "__MACOSX" not in parts
            and not any(part.startswith(".") and part not in (".", "..") for part in parts))


def _decode_image(data: bytes, size: int) -> np.ndarray:
    """Bytes of one image file -> uint8 (size, size, 3): RGB, centre-cropped, resized."""
    with Image.open(io.BytesIO(data)) as image:   # raises DecompressionBombError above 2 x MAX_IMAGE_PIXELS
        image.draft("RGB", (size, size))   # JPEG: decode at 1/2..1/8 scale when that is still >= size
        if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
        else:
            rgb = image.convert("RGB")   # grayscale, palette, CMYK, ...; also reads the first GIF frame
    return np.asarray(ImageOps.fit(rgb, (size, size), Image.Resampling.LANCZOS))


# ---------------------------------------------------------------------------------------------
# Downloads: an attached Kaggle input, the Kaggle dataset, or a zip at a URL.

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
    slug = KAGGLE_DATASET.split("/")[1]
    preferred = [folder for folder in candidates if slug in folder.relative_to(root).parts]
    return (preferred or candidates or [None])[0]


def download_kaggle(data_dir: Path) -> Path:
    """The folder holding the Anime Face Dataset: attached on Kaggle, already downloaded, or downloaded now.

    The download goes through `opendatasets` into data_dir/.kaggle-download/ and is renamed to
    data_dir/animefacedataset/ only once complete, so an interrupted download is never mistaken
    for a finished one. opendatasets reads credentials only from ./kaggle.json and otherwise
    *prompts* (which hangs a notebook or a script), so we find the credentials ourselves, fail
    fast without them, and hand them over in a private kaggle.json (mode 0600) that is deleted
    afterwards (opendatasets copies them into KAGGLE_USERNAME / KAGGLE_KEY for this process).
    """
    attached = find_kaggle_input()
    if attached is not None:
        print(f"kaggle: using the attached dataset in {attached}")
        return attached
    data_dir = Path(data_dir)
    slug = KAGGLE_DATASET.split("/")[1]
    target = data_dir / slug
    if target.is_dir() and any(target.iterdir()):
        return target
    username, key = _kaggle_credentials()
    staging = data_dir / ".kaggle-download"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _write_private(staging / "kaggle.json", json.dumps({"username": username, "key": key}))
        import opendatasets
        with _working_directory(staging):
            opendatasets.download(KAGGLE_URL, data_dir=str(staging.resolve()))
        os.replace(staging / slug, target)
    except Exception as error:
        raise RuntimeError(f"downloading {KAGGLE_URL} failed ({type(error).__name__}): check the network and "
                           f"your Kaggle credentials, or use data='synthetic'") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _kaggle_credentials() -> tuple[str, str]:
    """(username, key) from the first place that has both; raises at once if none has (never prompts)."""
    found = os.environ.get("KAGGLE_USERNAME"), os.environ.get("KAGGLE_KEY")
    files = [Path("kaggle.json"), Path.home() / ".kaggle" / "kaggle.json",
             Path.home() / ".config" / "kaggle" / "kaggle.json"]
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        files.insert(1, Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json")
    for file in files:
        if all(found):
            break
        with contextlib.suppress(OSError, ValueError, AttributeError):   # missing, unreadable or not JSON
            values = json.loads(file.read_text())
            found = values.get("username"), values.get("key")
    if not all(found):
        with contextlib.suppress(Exception):   # Colab only; raises if the secrets are missing or not shared
            from google.colab import userdata
            found = userdata.get("KAGGLE_USERNAME"), userdata.get("KAGGLE_KEY")
    if not all(found):
        with contextlib.suppress(Exception):   # Kaggle notebooks only (Add-ons > Secrets)
            from kaggle_secrets import UserSecretsClient
            secrets = UserSecretsClient()
            found = secrets.get_secret("KAGGLE_USERNAME"), secrets.get_secret("KAGGLE_KEY")
    if not all(found):
        raise RuntimeError(
            "Kaggle credentials not found: set KAGGLE_USERNAME and KAGGLE_KEY, put kaggle.json (kaggle.com > "
            "Settings > API > Create New Token) in the working directory or ~/.kaggle/, or add Colab secrets "
            "KAGGLE_USERNAME and KAGGLE_KEY (or attach the dataset to a Kaggle notebook); or use data='synthetic'")
    return found


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


def download_url(url: str, data_dir: Path) -> Path:
    """Download a .zip of images once into data_dir/downloads/ and return its path (read in place).

    Uses opendatasets' downloader with a file name of our own (opendatasets.download would take
    the name from the server's Content-Disposition header, which could point outside data_dir)
    and a ".part" file renamed when complete (opendatasets reuses any existing file, even a
    half-downloaded one). Nothing is extracted. Note that opendatasets retries a failed https
    download over plain http.
    """
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(urllib.parse.urlsplit(url).path).stem)
    digest = hashlib.sha1(url.encode()).hexdigest()[:8]   # two URLs ending in faces.zip do not collide
    target = Path(data_dir) / "downloads" / f"{stem or 'download'}-{digest}.zip"
    if target.exists():
        print(f"download: reusing {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    from opendatasets.utils.network import download_url as fetch
    fetch(url, str(target.parent), filename=partial.name, force=True)
    if not zipfile.is_zipfile(partial):
        partial.unlink()
        raise ValueError(f"{url} did not return a .zip archive: data must be the URL of a .zip of images")
    os.replace(partial, target)
    return target
