"""A training subprocess stopped (SIGSTOP) while none of its epoch files is being written, so that a test can act on
its run folder (kill it, rename the folder) without racing its background writer (utils/run.py)."""

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from utils.files import CHECKPOINT, HISTORY, list_frames
from utils.run import read_checkpoint


@contextlib.contextmanager
def frozen_between_saves(process: subprocess.Popen, run_dir: Path, log: Path, timeout_s: float = 300) -> Iterator[int]:
    """Stop `process`, training a new run in `run_dir`, once an epoch is saved and its writer is idle; yield that
    epoch (1..epoch are saved, nothing half-written); let it go on after the block."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            pytest.fail(f"training exited ({process.returncode}) before an epoch was saved:\n{log.read_text()[-3000:]}")
        if (run_dir / HISTORY).exists():   # epoch 1 is saved (history.json is written last)
            process.send_signal(signal.SIGSTOP)
            _, status = os.waitpid(process.pid, os.WUNTRACED)   # returns once every thread of it has stopped
            if not os.WIFSTOPPED(status):   # it exited meanwhile
                process.returncode = os.waitstatus_to_exitcode(status)
                continue
            if epoch := _saved_epoch(run_dir):
                break
            process.send_signal(signal.SIGCONT)   # a write is under way: look again in a moment
        assert time.monotonic() < deadline, log.read_text()[-3000:]   # a hang guard only
        time.sleep(0.01)
    try:
        yield epoch
    finally:
        process.send_signal(signal.SIGCONT)   # nothing once the block has killed and reaped it


def _saved_epoch(run_dir: Path) -> int:
    """The last epoch if the grids, checkpoint and history.json all end there and no temporary file is open; else 0."""
    if list(run_dir.rglob(".*.tmp*")):
        return 0
    epoch = json.loads((run_dir / HISTORY).read_text())["epochs"][-1]["epoch"]
    frames = [e for e, _ in list_frames(run_dir)]
    return epoch if read_checkpoint(run_dir / CHECKPOINT)["epoch"] == epoch and frames == [*range(1, epoch + 1)] else 0
