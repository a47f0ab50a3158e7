"""`python -m utils.train`: train the notebooks' GAN from a shell, one option per TrainConfig field.

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

from utils.config import TrainConfig, build_parser
from utils.errors import ConfigError, run_cli


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
    from utils.run import run_dir_of, saved_config  # after argument checks: --help stays fast
    from utils.training import train
    from utils.urls import is_url
    from utils.distributed import is_main, shutdown
    from utils.visualize import save_history_plot

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
        for line in (result.history["epochs"][-1].get("diagnosis", {}) if result.history["epochs"] else {}).values():
            print(f"still seen in the last epoch: {line}")


if __name__ == "__main__":
    main()
