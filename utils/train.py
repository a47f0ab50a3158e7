"""Command line for the notebooks' training code: one option per TrainConfig field.

    python -m utils.train --data synthetic --image-size 32 --epochs 5 --out generated/cli-run
    python -m utils.train --data kaggle --epochs 25 --out generated/dcgan-64        # run again to resume
    python -m utils.train --data path/to/faces.zip --recipe improved --out generated/improved-64
    torchrun --nproc_per_node 2 -m utils.train --data kaggle --out generated/ddp      # several GPUs
    python -m utils.train --help

RUN_DIR (--out) then holds samples/epoch_NNN.png, checkpoint.pt, history.json, history.png and config.json;
`python -m utils.gif RUN_DIR` turns the samples into an animated GIF.
"""

from __future__ import annotations

import argparse
import inspect
import re
from dataclasses import MISSING, fields

from .config import TrainConfig
from .errors import run_cli


def _field_help() -> dict[str, str]:
    """The comment after each field in TrainConfig's source: one place documents both notebook and CLI."""
    source = inspect.getsource(TrainConfig)
    return {name: comment.strip() for name, comment in re.findall(r"^\s+(\w+): [^=\n]+=[^#\n]*#(.*)$", source, re.M)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m utils.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    help_text = _field_help()
    for field in fields(TrainConfig):
        option = "--" + field.name.replace("_", "-")
        default = field.default if field.default is not MISSING else None
        if isinstance(default, bool):
            parser.add_argument(option, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text.get(field.name, ""))
        else:
            parser.add_argument(option, type=type(default), default=default, metavar=field.name.upper(),
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
    try:
        config = TrainConfig(**vars(args))
    except ValueError as error:
        parser.error(str(error))
    from .training import train  # after argument checks: --help stays fast
    from .distributed import is_main, shutdown
    from .visualize import save_history_plot

    result = train(config)
    shutdown()
    if is_main():
        plot = save_history_plot(result.history, result.run_dir / "history.png")
        print(f"done: {result.epochs_done} epochs in {result.run_dir} (samples/, checkpoint.pt, history.json, {plot.name}); "
              f"make the GIF with: python -m utils.gif {result.run_dir}")


if __name__ == "__main__":
    main()
