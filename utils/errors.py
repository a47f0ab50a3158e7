"""A failure the user can fix is one line, credentials hidden, in a shell or a notebook; anything else a traceback."""

import sys
from collections.abc import Callable

from utils.urls import redact


class _OneLine:
    """The message passes through `redact`; IPython shows `Name: message` without this package's frames."""

    def __init__(self, message: str = ""):
        super().__init__(redact(str(message)))

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {self}"]


class UserError(_OneLine, Exception):
    """A failure the user can fix: the message names the field or file, what happened and what to do."""


class ConfigError(UserError, ValueError):
    """A config field's value is out of range or does not fit the run, the data or the machine."""


class Interrupted(_OneLine, KeyboardInterrupt):
    """Ctrl-C or Kernel > Interrupt, saying what was kept and how to continue; still a KeyboardInterrupt."""


def run_cli(main: Callable[[], object]) -> None:
    """Run a command line's `main`: a UserError becomes `error: ...` and exit status 1, an interrupt 130."""
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt as interrupt:
        print(f"\ninterrupted: {interrupt}" if str(interrupt) else "\ninterrupted", file=sys.stderr)
        raise SystemExit(130) from None
