"""`python -m utils.train`: the notebooks' training from a shell (README); the same command again continues its run."""

from utils.config import TrainConfig, build_parser
from utils.errors import ConfigError, run_cli


def main(argv: list[str] | None = None) -> None:
    run_cli(lambda: _train_from_command_line(argv))


def _train_from_command_line(argv: list[str] | None) -> None:
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    from utils.run import run_dir_of, saved_config  # after parsing: --help stays fast
    from utils.training import train
    from utils.distributed import is_main, shutdown
    from utils.visualize import save_history_plot

    try:
        config = TrainConfig(**given)
        run_dir = run_dir_of(config)
        saved = saved_config(run_dir) if config.resume else None
        if saved is not None:  # continuing: what is not given keeps the run's value, what is given is a change
            if "data" not in given and "***" in saved.data:   # config.json hides a URL's token
                raise ConfigError(f"the run's data URL is stored without its password or token ({saved.data}): give "
                                  "it again with --data URL to continue")
            config = TrainConfig.from_dict(saved.to_dict() | given | {"out": config.out})
            if is_main():
                print(f"continuing {run_dir}: options not given keep the run's values")
    except ConfigError as error:
        parser.error(str(error))
    result = train(config)
    shutdown()
    if is_main():
        plot = save_history_plot(result.history, result.run_dir / "history.png")
        print(f"done: {result.epochs_done} epochs in {result.run_dir} (samples/, checkpoint.pt, history.json, "
              f"{plot.name}); make the GIF with: python -m utils.gif {result.run_dir}")
        for line in (result.history["epochs"] or [{}])[-1].get("diagnosis", {}).values():
            print(f"still seen in the last epoch: {line}")


if __name__ == "__main__":
    main()
