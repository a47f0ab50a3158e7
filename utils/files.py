"""Writing files so that a reader (or a resumed run) never sees a half-written one.

    >>> from utils.files import atomic_path
    >>> with atomic_path("generated/run/history.json") as tmp:
    ...     tmp.write_text("{}")

Used for sample grids, GIFs, history, checkpoints, FID statistics and the decoded dataset cache.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success move it onto `path` in one step.

    A reader (the GIF maker, a notebook refreshing the latest grid) then never sees a
    half-written file, even if training is interrupted mid-write. The temporary name
    starts with a dot and keeps the suffix, so writers that go by extension still work
    and `list_frames` does not pick it up.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
