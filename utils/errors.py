"""What a failure the user can fix looks like: one message saying what happened and what to do, no traceback.

Every error a user can cause or meet (a bad config value, a missing file, the network, a full disk, a run
folder used by another process) is raised as a `UserError`. Its message names the field or file, says what
happened and what to do, with any password or token hidden (utils.urls.redact). Where it surfaces:

- on the command line (`python -m utils.train`, `python -m utils.gif`), `run_cli` prints `error: <message>`
  and exits with status 1; an interrupted run prints what was saved and exits with 130;
- in a notebook, IPython shows the exception as its message alone (`_render_traceback_`, IPython's hook for
  exceptions that render themselves), and the cell still fails, so "Run all" and papermill stop there.

Anything else is a bug in this project and keeps its full traceback.

    >>> raise ConfigError("config field 'epochs' must be >= 1; got 0")
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from utils.urls import redact


class _ShortTraceback:
    """Mixin: IPython renders the exception as `Name: message`, without the frames of this package."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {self}"]


class UserError(_ShortTraceback, Exception):
    """A failure the user can fix; the message says what happened and what to do, without a credential (`redact`)."""

    def __init__(self, message: str = ""):
        super().__init__(redact(str(message)))


class ConfigError(UserError, ValueError):
    """A config field has a value that is out of range or does not fit the run, the data or the machine."""


class Interrupted(_ShortTraceback, KeyboardInterrupt):
    """Ctrl-C or Kernel > Interrupt, with a message saying what was kept and how to continue.

    A KeyboardInterrupt still, so code that catches those (and Jupyter's "stop running the queued cells")
    behaves as for any interrupt.
    """


def run_cli(main: Callable[[], object]) -> None:
    """Run a command line's `main`: a UserError becomes `error: ...` and exit status 1, an interrupt 130."""
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt as interrupt:
        print(f"\ninterrupted: {interrupt}" if isinstance(interrupt, Interrupted) else "\ninterrupted",
              file=sys.stderr)
        raise SystemExit(130) from None
