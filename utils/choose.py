"""Which run notebooks 04 and 05 work on: the one notebook 03 trained last, unless the learner names another.

    >>> run_dir = choose_run(out, config)      # prints which run, the others, and how to pick one

No settings need retyping: the run folder is found, not rebuilt from the notebook's parameters, and where those
parameters differ from the run's own settings (config.json) one line says so and the run is used as it was trained.
A notebook trains only where no run exists and the learner asked for it (its `train_if_missing` parameter).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from utils.config import NAMED_FIELDS, TrainConfig
from utils.urls import redact
from utils.run import (CHECKPOINT, GENERATED, default_run_dir, differences, list_frames, read_checkpoint,
                       saved_config, trained_runs)

SHOWN_OTHERS = 6   # the other runs listed by name; the rest are counted


def builtin_networks(run_dir: Path, saved: TrainConfig) -> bool:
    """Whether the run trained the built-in Generator and Discriminator (not your own networks of notebook 03).

    A run named from its settings says it in its name (your networks add a tag); a run with an explicit `out`
    says it in its checkpoint.
    """
    if not saved.out:
        return run_dir.name == default_run_dir(saved).name
    networks = read_checkpoint(run_dir / CHECKPOINT).get("networks", {})
    return all(description.startswith(("Generator (", "Discriminator (")) for description in networks.values())


def mismatch_line(run_dir: Path, saved: TrainConfig, requested: TrainConfig) -> str:
    """One line naming the settings in which the notebook's parameters and the run differ ("" when none do)."""
    differ = differences(saved, requested, NAMED_FIELDS + ("epochs",))
    if not differ:
        return ""
    listed = "; ".join(f"{name} {new!r} here, {old!r} in the run" for name, old, new in differ)
    return redact(f"note: this notebook's parameters differ from {run_dir}'s settings ({listed}): the run is used as "
                  "trained")


def choose_run(out: str, config: TrainConfig, recipe: str | None = None, root: str | Path = GENERATED,
               log: Callable[[str], None] = print) -> Path | None:
    """The run folder to work on, saying which and why; None when there is none yet (train one, or run 03 first).

    `out` given: that folder. Otherwise the run with sample grids and the built-in networks trained last under
    `root` (of `recipe` when it is given, as notebook 05 needs), and the others are listed with the line that picks
    one. Runs of your own networks are passed over: notebook 03 trains them after its main run, which is the one
    notebooks 04-06 continue with (name one in `out` to use it).
    """
    if out:
        log(f"working on {out} (the parameters' out)")
        return Path(out)
    runs = []
    for run_dir in trained_runs(root):
        saved = saved_config(run_dir)
        if saved is not None and list_frames(run_dir) and builtin_networks(run_dir, saved) and (
                recipe is None or saved.recipe == recipe):
            runs.append((run_dir, saved))
    if not runs:
        return None
    (chosen, saved), others = runs[0], [run_dir for run_dir, _ in runs[1:]]
    log(f"working on {chosen}: the run trained last ({saved.image_size}x{saved.image_size}, "
        f"{len(list_frames(chosen))} epoch{'' if len(list_frames(chosen)) == 1 else 's'})")
    mismatch = mismatch_line(chosen, saved, config)
    if mismatch:
        log(mismatch)
    if others:
        named = ", ".join(run_dir.name for run_dir in others[:SHOWN_OTHERS])
        more = f" and {len(others) - SHOWN_OTHERS} more" if len(others) > SHOWN_OTHERS else ""
        log(f"other runs, newest first: {named}{more}. To use one, set out = \"{others[0]}\" (for example) in the "
            "parameters cell and run again")
    return chosen
