"""Which run notebooks 04 to 06 work on: by default notebook 03's main run, never a tweak of it nor the newest."""

from collections.abc import Callable
from pathlib import Path

from utils.config import FIXED_FIELDS, NAMED_FIELDS, TrainConfig
from utils.run import (CHECKPOINT, GENERATED, default_run_dir, differences, list_frames, read_checkpoint,
                       saved_config, trained_runs)

SHOWN_OTHERS = 6   # the other runs listed by name; the rest are counted
# What a tweak in notebook 03 changes (learning rates, betas, batch size): the fields that name a run and can change
TWEAK_FIELDS = tuple(name for name in NAMED_FIELDS if name not in FIXED_FIELDS)


def builtin_networks(run_dir: Path, saved: TrainConfig) -> bool:
    """Whether the run trained the built-in networks: its name says so, or with an explicit out its checkpoint."""
    if not saved.out:
        return run_dir.name == default_run_dir(saved).name
    networks = read_checkpoint(run_dir / CHECKPOINT).get("networks", {})
    return all(description.startswith(("Generator (", "Discriminator (")) for description in networks.values())


def choose_run(out: str, config: TrainConfig, recipe: str | None = None, root: str | Path = GENERATED,
               log: Callable[[str], None] = print) -> Path | None:
    """The run folder to work on (or None), said in one line: the one `out` names (a folder, or the word listed for
    it), else the main run of `config`, else the newest untweaked run of its recipe; the others (of `recipe`) listed."""
    root = Path(root)
    main = root / default_run_dir(config).name
    runs = [(run_dir, saved) for run_dir in trained_runs(root) for saved in [saved_config(run_dir)]
            if list_frames(run_dir) and (recipe is None or saved.recipe == recipe)]
    untweaked = [run_dir for run_dir, saved in runs if builtin_networks(run_dir, saved) and saved.recipe ==
                 config.recipe and not differences(saved, config, TWEAK_FIELDS)]
    chosen = None
    if out:
        named = [folder for folder in (Path(out), root / out) if (folder / CHECKPOINT).is_file()]
        named += [run_dir for run_dir in trained_runs(root) if _word(run_dir.name, main.name) == out]
        chosen, why = (named or [Path(out)])[0], "named by out"
    elif main in untweaked:
        chosen, why = main, "the main run of these settings (notebook 03's, not a tweak)"
    elif untweaked:
        chosen, why = untweaked[0], f"no run of these settings yet ({main.name}); the newest untweaked run"
    elif runs:   # else the notebook's own line says there is no run at all
        log(f"no run of these settings yet ({main})")
    if chosen is not None:
        saved = saved_config(chosen) if (chosen / CHECKPOINT).is_file() else None
        done = len(list_frames(chosen))
        of = f" of {saved.epochs} epochs" if saved and done < saved.epochs else f" epoch{'s' * (done != 1)}"
        epochs = f" ({done}{of})" if saved else ""
        differ = ", ".join(name for name, _, _ in differences(saved, config, NAMED_FIELDS)) if saved else ""
        log(f"working on {chosen}{epochs}: {why}" + (f"; it differs from these settings in {differ}" if differ else ""))
    others = [run_dir for run_dir, _ in runs if chosen is None or run_dir.resolve() != chosen.resolve()]
    if others:
        words = ", ".join(_word(run_dir.name, main.name) for run_dir in others[:SHOWN_OTHERS])
        more = f" and {len(others) - SHOWN_OTHERS} more" if len(others) > SHOWN_OTHERS else ""
        log(f"other runs, newest first (set out to one in the parameters cell to use it): {words}{more}")
    return chosen


def _word(name: str, main_name: str) -> str:
    """What `out` takes for a run folder: its name less the main run's ("lr_g=0.001", "improved"), else the name."""
    (recipe, _, rest), (main_recipe, _, main_rest) = name.partition("-"), main_name.partition("-")
    if rest != main_rest and not rest.startswith(f"{main_rest}-"):
        return name
    tail = rest[len(main_rest) + 1:]
    return tail if tail and recipe == main_recipe else "-".join([recipe, tail] if tail else [recipe])
