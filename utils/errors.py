"""What a failure the user can fix looks like: one message saying what happened and what to do, no traceback.

A `UserError` names the field or file, what happened and what to do, with credentials hidden. A command line
(`run_cli`) prints `error: <message>` and exits 1; a notebook shows the message alone and the cell still fails.
Anything else is a bug and keeps its full traceback.

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
    """Ctrl-C or Kernel > Interrupt, saying what was kept and how to continue; still a KeyboardInterrupt."""


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
