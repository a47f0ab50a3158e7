"""Command line for the notebooks' training code: one option per TrainConfig field.

    python -m utils.train --data synthetic --image-size 32 --epochs 5     # -> generated/dcgan-32px
    python -m utils.train --data synthetic --image-size 32 --epochs 10    # the same run, 5 more epochs
    python -m utils.train --image-size 32 --lr-g 1e-3                     # a sibling run: generated/dcgan-32px-lr_g=0.001
    python -m utils.train --data kaggle --epochs 25 --out generated/mine  # an explicit run folder
    python -m utils.train --out generated/mine --epochs 30 --lr-d 1e-4    # continue it: only these two change
    torchrun --nproc_per_node 2 -m utils.train --data kaggle              # several GPUs
    python -m utils.train --help

Without --out the run folder is named from the settings that differ from the defaults (utils/run.py), so a
changed learning rate trains a new run beside the old one. Continuing a run, the options not given take the
run's own values (from its checkpoint), not the defaults, and the ones given are changes: those that can change
between epochs are applied and recorded, the others refused. RUN_DIR holds samples/epoch_NNN.png,
checkpoint.pt, history.json, history.png and config.json; `python -m utils.gif RUN_DIR` makes the GIF.
"""

from __future__ import annotations

import argparse
import inspect
import re
from dataclasses import MISSING, fields

from .config import TrainConfig
from .errors import ConfigError, run_cli


def _field_help() -> dict[str, str]:
    """The comment after each field in TrainConfig's source: one place documents both notebook and CLI."""
    source = inspect.getsource(TrainConfig)
    return {name: comment.strip() for name, comment in re.findall(r"^\s+(\w+): [^=\n]+=[^#\n]*#(.*)$", source, re.M)}


def build_parser(defaults: bool = True) -> argparse.ArgumentParser:
    """One option per TrainConfig field; `defaults=False` leaves out the options not given (to tell which were)."""
    parser = argparse.ArgumentParser(prog="python -m utils.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    help_text = _field_help()
    for field in fields(TrainConfig):
        option = "--" + field.name.replace("_", "-")
        default = field.default if field.default is not MISSING else None
        shown = default if defaults else argparse.SUPPRESS
        if isinstance(default, bool):
            parser.add_argument(option, action=argparse.BooleanOptionalAction, default=shown,
                                help=help_text.get(field.name, ""))
        else:
            parser.add_argument(option, type=type(default), default=shown, metavar=field.name.upper(),
                                help=help_text.get(field.name, ""))
    return parser


def config_to_argv(config: TrainConfig) -> list[str]:
    """The options that rebuild `config` on this command line (used to launch torchrun from a notebook)."""
    argv = []
    for field in fields(TrainConfig):
        value = getattr(config, field.name)
        option = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(option if value else "--no-" + field.name.replace("_", "-"))
        else:
            argv += [option, str(value)]
    return argv


def main(argv: list[str] | None = None) -> None:
    """The command line: a UserError (bad value, missing file, ...) prints `error: ...` and exits with 1."""
    run_cli(lambda: _train_from_command_line(argv))


def _train_from_command_line(argv: list[str] | None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    given = vars(build_parser(defaults=False).parse_args(argv))
    try:
        requested = TrainConfig(**vars(args))
    except ConfigError as error:
        parser.error(str(error))
    from .run import run_dir_of, saved_config  # after argument checks: --help stays fast
    from .training import train
    from .urls import is_url
    from .distributed import is_main, shutdown
    from .visualize import save_history_plot

    saved = saved_config(run_dir_of(requested)) if requested.resume else None
    config = requested
    if saved is not None and "data" not in given and is_url(saved.data) and "***" in saved.data:
        parser.error(f"the run's data URL is stored without its password or token ({saved.data}): give it again "
                     "with --data URL to continue")
    if saved is not None:  # continuing: what is not given keeps the run's value, what is given is a change
        try:
            config = TrainConfig.from_dict(saved.to_dict() | given | {"out": requested.out})
        except ConfigError as error:
            parser.error(str(error))
        if is_main():
            print(f"continuing {run_dir_of(requested)}: options not given keep the run's values")
    result = train(config)
    shutdown()
    if is_main():
        plot = save_history_plot(result.history, result.run_dir / "history.png")
        print(f"done: {result.epochs_done} epochs in {result.run_dir} (samples/, checkpoint.pt, history.json, {plot.name}); "
              f"make the GIF with: python -m utils.gif {result.run_dir}")
        won = [e["epoch"] for e in result.history["epochs"] if e.get("warning") == "D has won"]
        if won:
            print(f"warning: D won outright in epoch(s) {', '.join(map(str, won))}: the faces stopped improving there "
                  "(see the warning above for what to change)")


if __name__ == "__main__":
    main()
