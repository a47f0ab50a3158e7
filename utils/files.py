"""Every file written or read back: `atomic_path`, the guard before writing where told, readers that never run code."""

import errno
import json
import os
import pickle
import re
import shutil
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from utils.errors import UserError

# A run folder's layout (utils/run.py writes it; nothing else may write these)
CHECKPOINT, CONFIG, HISTORY, LOCK, SAMPLES = "checkpoint.pt", "config.json", "history.json", ".lock", "samples"
REMADE = ("training.gif", "history.png")   # a run's pictures that `make_gif` and `python -m utils.train` write again
MAKER = "anime-face-gan"   # in every picture and generator file this project writes, stored as a PNG stores it:
MAKER_BYTES = b"Software\x00" + MAKER.encode()
TEMPORARY = re.compile(r"\..*\.\d+\.tmp(\.\w+)?")   # the name `atomic_path` writes under until the file is complete
_FRAME_NAME = re.compile(r"epoch_(\d+)\.png")


class CannotWrite(UserError, OSError):
    """A file could not be written: the disk is full, the folder is read-only, or the name is too long."""


@contextmanager
def atomic_path(path: str | Path, needs_bytes: int = 0, make_folder: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to `path`; once written, sync it to the disk and move it onto `path` in one step.
    `make_folder=False`: a run folder renamed while it trains must not come back empty under its old name."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem[:64]}.{os.getpid()}.tmp{path.suffix}")
    try:
        if make_folder:
            path.parent.mkdir(parents=True, exist_ok=True)
        check_free_space(path, needs_bytes)
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        with suppress(OSError):   # the new name on disk too (Windows and some network file systems cannot)
            _fsync(path.parent)
    except OSError as error:
        raise _explain(error, path, tmp, needs_bytes)
    except RuntimeError as error:  # torch.save reports a failed write as "[enforce fail at inline_container.cc...]"
        if "inline_container" not in str(error) and "PytorchStreamWriter" not in str(error):
            raise
        raise _explain(OSError(None, str(error).splitlines()[0]), path, tmp, needs_bytes) from error
    finally:
        tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)   # Windows syncs only writable handles
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_free_space(path: str | Path, needs_bytes: int) -> None:
    free = _free_bytes(Path(path))
    if free is not None and free < needs_bytes:
        raise CannotWrite(_disk_full_message(Path(path), needs_bytes, free))


def explain_write_error(error: OSError, path: str | Path, needs_bytes: int = 0) -> OSError:
    """`error`, raised while a library wrote `path`, as atomic_path's CannotWrite (one without errno: as it is)."""
    return error if error.errno is None else _explain(error, Path(path), Path(path), needs_bytes)


def _explain(error: OSError, path: Path, tmp: Path, needs_bytes: int) -> OSError:
    if isinstance(error, CannotWrite):
        return error
    free, written = _free_bytes(path), tmp.stat().st_size if tmp.is_file() else 0
    # numpy reports a short write as "N requested and M written" and torch.save a failed one, without errno
    nearly_full = free is not None and free < max(needs_bytes - written, 1 << 20)
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or (error.errno in (None, errno.EIO) and nearly_full):
        return CannotWrite(_disk_full_message(path, needs_bytes, free, written))
    if error.errno in (None, errno.EIO, errno.ENAMETOOLONG, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
                       errno.EEXIST, errno.EISDIR):   # EISDIR: a folder of that name is in the way
        return CannotWrite(f"cannot write {path} ({error.strerror or error}): choose another name or a writable "
                           "folder (on Kaggle, write under /kaggle/working)")
    return error   # such as a folder that vanished: the caller says what that means


def _disk_full_message(path: Path, needs_bytes: int, free: int | None, written: int = 0) -> str:
    needed = (f"about {needs_bytes / 2**20:,.1f} MiB" if needs_bytes
              else f"more than the {written / 2**20:,.1f} MiB written until it was full")
    has = f"{free / 2**20:,.1f} MiB free" if free is not None else "no free space"
    return (f"no space left to write {path}: it needs {needed} and the disk has {has}. Free some space (old runs in "
            "generated/, decoded caches in data/cache/) or write to another disk")


def _free_bytes(path: Path) -> int | None:
    folder = next((folder for folder in path.parents if folder.exists()), path.parent)
    with suppress(OSError):
        return shutil.disk_usage(folder).free
    return None


class OutputRefused(UserError, ValueError):
    """A command was asked to write where it must not: a run's own file, its samples/, or someone else's file."""


def frame_path(run_dir: str | Path, epoch: int) -> Path:
    return Path(run_dir) / SAMPLES / f"epoch_{epoch:03d}.png"


def list_frames(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(epoch, path) of every sample grid in RUN_DIR/samples, by the number in the name (epoch_1000 after _999)."""
    samples = Path(run_dir) / SAMPLES
    found = ((_FRAME_NAME.fullmatch(path.name), path) for path in samples.iterdir()) if samples.is_dir() else ()
    return sorted((int(match.group(1)), path) for match, path in found if match and path.is_file())


def is_run_folder(folder: str | Path) -> bool:
    return any((Path(folder) / name).is_file() for name in (CHECKPOINT, CONFIG, HISTORY)) or bool(list_frames(folder))


def run_part(path: Path) -> str:
    """What `path` is of a run folder ("" for nothing): one of its own files, or in its samples/. As written: a
    quoted ~ is a folder named ~, as open() reads it."""
    if any(len(os.fsencode(part)) > 255 for part in Path(path).parts):
        raise OutputRefused(f"{path} has a name longer than the 255 bytes a file system holds: choose a shorter one")
    path = Path(path).resolve()
    if path.name in (CHECKPOINT, CONFIG, HISTORY, LOCK) and is_run_folder(path.parent):
        return f"the own {path.name} of the run {path.parent}"
    for folder in (path, *path.parents):
        if folder.name == SAMPLES and is_run_folder(folder.parent):
            return f"in {folder}, where the run keeps its grid of each epoch"
    return ""


def output_folder(folder: str | Path, what: str, keep: re.Pattern) -> Path:
    """`folder` if a command may write there (not a run folder nor its samples/, holding only `keep` files that this
    project made: it writes over those)."""
    folder = Path(folder)
    part = run_part(folder) or ("a run folder" if is_run_folder(folder) else "")
    if folder.exists() and not folder.is_dir():
        raise OutputRefused(f"{what} {folder} is a file: pass a folder (it is created if missing)")
    if part:
        raise OutputRefused(f"{what} {folder} is {part}: choose a folder of its own")
    others = sorted(path.name for path in folder.iterdir() if not TEMPORARY.fullmatch(path.name)
                    and not (keep.fullmatch(path.name) and made_here(path))) if folder.is_dir() else []
    if others:
        listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise OutputRefused(f"{what} {folder} holds other files ({listed}): choose a new or empty folder")
    return folder


def output_file(path: str | Path, what: str) -> Path:
    """`path` if a command may write it: not a run's own file nor in its samples/; new or `made_here`."""
    path, part = Path(path), run_part(Path(path))
    if path.is_dir():
        raise OutputRefused(f"{what} {path} is a folder: pass the name of the file to write")
    if part:
        raise OutputRefused(f"{what} {path} is {part}: choose a file outside the run's own files and samples/")
    if (path.exists() or path.is_symlink()) and not made_here(path):
        raise OutputRefused(f"{what} {path} already exists and was not written by this project: choose another name")
    return path


def made_here(path: Path) -> bool:
    """Whether the regular file `path` holds MAKER_BYTES in its first MiB (where PNG, GIF and TorchScript put it)."""
    with suppress(OSError):
        if path.is_file():   # never open a FIFO: it would wait for a writer
            with open(path, "rb") as file:
                return MAKER_BYTES in file.read(1 << 20)
    return False


def read_json(path: str | Path) -> Any:
    """The JSON in `path`, or a ValueError saying why not (a FIFO would wait for ever, a huge file fill the memory)."""
    info = Path(path).stat()
    if not stat.S_ISREG(info.st_mode):
        raise ValueError("is not a regular file")
    if info.st_size > 64 * 2**20:
        raise ValueError(f"has {info.st_size:,} bytes, more than this project writes")
    try:
        return json.loads(Path(path).read_bytes())
    except (ValueError, RecursionError) as error:   # JSONDecodeError, UnicodeDecodeError, [[[... nested too deep
        raise ValueError(f"is not valid JSON ({error})") from None


def load_data(path: str | Path, what: str, error: type[Exception], remedy: str, mmap: bool = False) -> Any:
    """The tensors and plain data in the PyTorch file `path`, never running its code; else `error`, with `remedy`."""
    import torch   # here: `python -m utils.train --help` imports this module and must stay fast

    path = Path(path)
    if path.exists() and not path.is_file():   # a FIFO or a device: torch.load would wait on it for ever
        raise error(f"{path} is not a regular file, so not a readable {what}. {remedy}")
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning adds nothing to the line below
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise error(f"refused to load {path}: it holds Python objects other than tensors and plain data (loading "
                    f"those could run arbitrary code), or it is not a PyTorch file at all. {remedy}") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as failure:  # truncated, empty or foreign
        detail = str(failure).strip().splitlines()[0][:80] if str(failure).strip() else "the file ends too early"
        raise error(f"{path} is not a readable {what} ({type(failure).__name__}: {detail}). {remedy}") from None
