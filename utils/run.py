"""A run folder: one training run's files, who may write them, and what may change when it continues.

    generated/dcgan-64px/     named from the settings that differ from the defaults (or `out`)
        config.json           the settings; checkpoint.pt: everything needed to continue exactly
        history.json          losses and scores; samples/epoch_001.png, ...: the fixed noise's grid per epoch
        .lock                 held (filelock) while a process trains here; it names no process or command line

A continued run refuses other values of the `fixed` fields and applies the `tunable` ones, saying so. The checkpoint
is the truth: a damaged config.json or history.json is rewritten from it, and nothing a run made is deleted (earlier
files are moved aside into earlier-N/). Epochs are saved in the background, atomically, into the folder as opened.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import urllib.parse
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout
from PIL import Image
from torch import nn

from utils.config import FIXED_FIELDS, IMPROVED_RECIPE, NAMED_FIELDS, TUNABLE_FIELDS, TrainConfig
from utils.errors import ConfigError, UserError
from utils.files import (CHECKPOINT, CONFIG, HISTORY, LOCK, REMADE, SAMPLES, atomic_path, frame_path, list_frames,
                         load_data, read_json, run_part)
from utils.models import Discriminator, Generator, describe_network
from utils.step import EMA
from utils.urls import is_url, redact_url

GENERATED = Path("generated")


class RunInUse(UserError):
    """Another process holds the run folder's lock."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used: unreadable, incomplete, holding more than plain data, or tensors that do
    not fit the networks."""


class RunMoved(UserError):
    """The run folder was renamed or deleted while a process trained in it."""


# ------------------------------------------------------------------------------------------- names and files

def default_run_dir(config: TrainConfig, networks: str = "") -> Path:
    """generated/<recipe>-<size>px[-field=value...] from the NAMED_FIELDS that differ from the recipe's defaults:
    re-running a notebook resumes its run, a tweak starts a sibling. `networks`: see `network_tag`."""
    defaults = TrainConfig(recipe=config.recipe)
    parts = [f"{config.recipe}-{config.image_size}px"]
    for name in NAMED_FIELDS:
        value = getattr(config, name)
        if name != "image_size" and not _same_value(name, value, getattr(defaults, name)):
            parts.append(f"{name}={_short(name, value)}")
    if networks:
        parts.append(networks)
    return GENERATED / "-".join(parts)


def run_dir_of(config: TrainConfig, networks: str = "") -> Path:
    """The folder `config` trains in: `out` when given, else `default_run_dir`."""
    return Path(config.out) if config.out else default_run_dir(config, networks)


def _short(name: str, value: Any) -> str:
    if name == "data":
        path = urllib.parse.urlsplit(value).path if is_url(value) else str(value)  # never a token into a folder name
        value = value if value in ("synthetic", "kaggle") else Path(path.rstrip("/")).stem or "data"
    elif isinstance(value, float):
        value = f"{value:g}"
    return re.sub(r"[^\w.+=-]", "+", str(value))[:40]


_MOVE_AWAY = "Move it away to start a new run in its folder"


# ------------------------------------------------------------------------------------------- the checkpoint

# What `read_checkpoint` requires: all that `checkpoint_state` writes but "networks", "ema" and "precision".
_CHECKPOINT_KEYS = ("epoch", "config", "history", "fixed_noise", "generator", "discriminator", "opt_g", "opt_d",
                    "scaler", "rng")


@dataclass
class TrainingState:
    """What a run's checkpoint saves and `restore_checkpoint` puts back (the networks plain, not as trained)."""

    generator: nn.Module
    discriminator: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: EMA | None
    fixed_noise: torch.Tensor
    history: dict
    networks: dict[str, str]
    precision: str = ""           # what the epochs trained with ("bf16 channels_last", ...): a resumed run keeps it


def checkpoint_state(config: TrainConfig, epoch: int, state: TrainingState) -> dict:
    """The checkpoint after `epoch`: everything needed to continue exactly, the CPU's random state included."""
    return {"epoch": epoch, "config": config.to_dict(stored=True), "networks": state.networks,
            "history": state.history, "fixed_noise": state.fixed_noise, "generator": state.generator.state_dict(),
            "discriminator": state.discriminator.state_dict(),
            "ema": state.ema.state_dict() if state.ema is not None else None,
            "opt_g": state.opt_g.state_dict(), "opt_d": state.opt_d.state_dict(), "scaler": state.scaler.state_dict(),
            "rng": {"cpu": torch.get_rng_state()}, "precision": state.precision}


def restore_checkpoint(path: Path, saved: dict, state: TrainingState, adam_options: dict) -> int:
    """Load `saved` (from `read_checkpoint(path)`) into `state`, every tensor checked first; return its epochs.
    The optimisers take this device's `adam_options` (fused, foreach, capturable), not the saved ones."""
    _check_resumable(path, saved, state)
    state.generator.load_state_dict(saved["generator"])
    state.discriminator.load_state_dict(saved["discriminator"])
    _load_optimizer(state.opt_g, saved["opt_g"], adam_options)
    _load_optimizer(state.opt_d, saved["opt_d"], adam_options)
    if state.scaler.is_enabled() and saved["scaler"]:
        state.scaler.load_state_dict(saved["scaler"])
    if state.ema is not None:
        state.ema.load_state_dict(saved["ema"])
    state.fixed_noise, state.history = saved["fixed_noise"], saved["history"]
    torch.set_rng_state(saved["rng"]["cpu"])
    return saved["epoch"]


def _check_resumable(path: Path, saved: dict, state: TrainingState) -> None:
    """Raise CheckpointError, naming the first tensor, unless every tensor fits what it is loaded into."""
    check_weights(path, "generator", saved["generator"], state.generator.state_dict())
    check_weights(path, "discriminator", saved["discriminator"], state.discriminator.state_dict())
    if state.ema is not None:
        check_weights(path, "ema", saved.get("ema"), state.ema.state_dict())
    check_optimizer_state(path, "opt_g", saved["opt_g"], state.opt_g)
    check_optimizer_state(path, "opt_d", saved["opt_d"], state.opt_d)
    check_weights(path, "", {"fixed_noise": saved["fixed_noise"]}, {"fixed_noise": state.fixed_noise})
    check_weights(path, "rng", saved["rng"], {"cpu": torch.get_rng_state()})


def _load_optimizer(optimizer: torch.optim.Optimizer, saved: dict, adam_options: dict) -> None:
    """Load the moments with this device's flags (a run moved between a GPU and a CPU), not the saved ones."""
    flags = {"fused": None, "foreach": None, "capturable": False, **adam_options}
    optimizer.load_state_dict({**saved, "param_groups": [{**group, **flags} for group in saved["param_groups"]]})


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint, loaded as data only (nothing in it can run code), with every key, type and setting checked."""
    path = Path(path)
    state = load_data(path, "checkpoint", CheckpointError, "Use checkpoints written by this code only. " + _MOVE_AWAY)
    missing = [key for key in _CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"{path} is not a checkpoint of this project: it has no {', '.join(missing)}. "
                              + _MOVE_AWAY)
    plain = {"epoch": isinstance(state["epoch"], int) and not isinstance(state["epoch"], bool) and state["epoch"] >= 0,
             "config": isinstance(state["config"], dict), "history": _is_history(state["history"]),
             "fixed_noise": isinstance(state["fixed_noise"], torch.Tensor),
             "rng": isinstance(state["rng"], dict) and isinstance(state["rng"].get("cpu"), torch.Tensor),
             "precision": isinstance(state.get("precision", ""), str)}   # older checkpoints have none
    plain |= {key: isinstance(state[key], dict) for key in ("generator", "discriminator", "opt_g", "opt_d")}
    wrong = [key for key, ok in plain.items() if not ok]
    if wrong:
        raise CheckpointError(f"{path} is not a checkpoint of this project: its {', '.join(wrong)} "
                              f"{'is' if len(wrong) == 1 else 'are'} not what this code writes. {_MOVE_AWAY}")
    try:
        TrainConfig.from_dict(state["config"])
    except ConfigError as error:
        raise CheckpointError(f"{path} holds settings that are not valid ({error}). {_MOVE_AWAY}") from None
    return state


def check_weights(path: Path, role: str, saved: Any, expected: dict[str, torch.Tensor]) -> None:
    """Raise CheckpointError unless `saved` has exactly the names, shapes and dtypes of `expected` (load_state_dict
    would fail with a page of text, or convert a dtype silently)."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: its {role or 'state'} is not a dict of tensors. {_MOVE_AWAY}")
    missing, unexpected = sorted(expected.keys() - saved.keys()), sorted(saved.keys() - expected.keys())
    if missing or unexpected:
        names = ", ".join([f"no {name}" for name in missing[:3]] + [f"an unknown {name}" for name in unexpected[:3]])
        raise CheckpointError(f"{path}: its {role or 'state'} does not fit the run's settings ({names}). {_MOVE_AWAY}")
    for name, tensor in expected.items():
        value = saved[name]
        if not isinstance(value, torch.Tensor) or value.shape != tensor.shape or value.dtype != tensor.dtype:
            where = f"{role}.{name}" if role else name
            raise CheckpointError(f"{path}: {where} is {_found(value)}; the run's settings "
                                  f"need {tensor.dtype} {tuple(tensor.shape)}. {_MOVE_AWAY}")


def check_optimizer_state(path: Path, role: str, saved: dict, optimizer: torch.optim.Optimizer) -> None:
    """Raise CheckpointError unless `saved` has `optimizer`'s parameter groups and moments of each parameter's shape."""
    groups = saved.get("param_groups")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sizes = [len(group["params"]) for group in optimizer.param_groups]
    if (not isinstance(groups, list) or not isinstance(saved.get("state"), dict)
            or [len(g.get("params", ())) if isinstance(g, dict) else -1 for g in groups] != sizes):
        raise CheckpointError(f"{path}: its {role} does not fit the optimiser of its networks. {_MOVE_AWAY}")
    for index, moments in saved["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(moments, dict):
            raise CheckpointError(f"{path}: its {role} holds moments of no parameter ({index!r}). {_MOVE_AWAY}")
        for name, value in moments.items():
            shape = () if name == "step" else params[index].shape
            if not isinstance(value, torch.Tensor) or value.shape != shape or not value.is_floating_point():
                raise CheckpointError(f"{path}: {role} {name} of parameter {index} is {_found(value)}, not float "
                                      f"{tuple(shape)}. {_MOVE_AWAY}")


def _found(value: Any) -> str:
    return f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__


def network_descriptions(generator: nn.Module, discriminator: nn.Module) -> dict[str, str]:
    """What a checkpoint records of its networks (`describe_network`): a run continues only with the same."""
    return {"generator": describe_network(generator), "discriminator": describe_network(discriminator)}


def network_tag(config: TrainConfig, generator: nn.Module | None, discriminator: nn.Module | None) -> str:
    """The part of the run folder's name that tells networks other than the built-in ones apart ('' for those)."""
    parts = []
    for role, model, builtin in (
            ("G", generator, lambda: Generator(config.image_size, config.latent_dim, config.g_width)),
            ("D", discriminator, lambda: Discriminator(config.image_size, config.d_width, config.spectral_norm))):
        if model is not None and describe_network(model) != describe_network(builtin()):
            parts.append(f"{role}={type(model).__name__}{describe_network(model).rsplit('#', 1)[1].rstrip(')')}")
    return "-".join(parts)


def load_models(run_dir: str | Path, generator: nn.Module | None = None,
                discriminator: nn.Module | None = None) -> tuple[nn.Module, nn.Module, dict]:
    """A run's generator (its EMA weights if kept), discriminator and history, on the CPU. A run trained with your
    own networks needs fresh instances of them passed in."""
    return models_from_checkpoint(read_checkpoint(Path(run_dir) / CHECKPOINT), run_dir, generator, discriminator)


def models_from_checkpoint(state: dict, run_dir: str | Path, generator: nn.Module | None = None,
                           discriminator: nn.Module | None = None) -> tuple[nn.Module, nn.Module, dict]:
    """`load_models` from a checkpoint already read (`run_dir` only names it in errors)."""
    config = TrainConfig.from_dict(state["config"])
    if generator is None:
        generator = Generator(config.image_size, config.latent_dim, config.g_width)
    if discriminator is None:
        discriminator = Discriminator(config.image_size, config.d_width, config.spectral_norm)
    for role, model in (("generator", generator), ("discriminator", discriminator)):
        trained = state.get("networks", {}).get(role, describe_network(model))
        if trained != describe_network(model):
            raise ConfigError(f"{run_dir} was trained with the {role} {trained}, not {describe_network(model)}: "
                              f"pass that {role} to load_models")
    path = Path(run_dir) / CHECKPOINT
    if state.get("ema") is not None:
        check_weights(path, "ema", state["ema"], EMA(generator, config.ema_decay).state_dict())
        ema = state["ema"]
        generator.load_state_dict({k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")})
    else:
        check_weights(path, "generator", state["generator"], generator.state_dict())
        generator.load_state_dict(state["generator"])
    check_weights(path, "discriminator", state["discriminator"], discriminator.state_dict())
    discriminator.load_state_dict(state["discriminator"])
    return generator, discriminator, state["history"]


def _is_history(value: Any) -> bool:
    return (isinstance(value, dict) and isinstance(value.get("steps"), list) and isinstance(value.get("epochs"), list)
            and all(isinstance(record, dict) for record in value["steps"] + value["epochs"]))


def _read_config_file(run_dir: Path) -> tuple[TrainConfig | None, str]:
    """(config.json's settings, "") / (None, "") when it is missing / (None, what is wrong with it)."""
    if not (run_dir / CONFIG).is_file():
        return None, ""
    try:
        return TrainConfig.load(run_dir / CONFIG), ""
    except (ConfigError, OSError) as error:
        return None, str(error)


def read_history_file(run_dir: Path) -> tuple[dict | None, str]:
    """(history.json's records, "") / (None, "") when it is missing / (None, what is wrong with it)."""
    path = run_dir / HISTORY
    if not path.exists():
        return None, ""
    try:
        history = read_json(path)
    except ValueError as error:
        return None, f"{path} {error}"
    except OSError as error:
        return None, f"{path} cannot be read ({error.strerror})"
    if not _is_history(history):
        return None, f"{path} does not hold a history (a 'steps' and an 'epochs' list of records)"
    return history, ""


def saved_config(run_dir: str | Path) -> TrainConfig | None:
    """The run's settings: config.json, else the checkpoint's (config.json lost or damaged), else None."""
    run_dir = Path(run_dir)
    config, _ = _read_config_file(run_dir)
    if config is None and (run_dir / CHECKPOINT).is_file():
        return TrainConfig.from_dict(read_checkpoint(run_dir / CHECKPOINT)["config"])
    return config


def read_run(run_dir: str | Path) -> tuple[TrainConfig | None, dict]:
    """(config, history) from config.json and history.json, (None, {}) where missing; a damaged one is taken from
    the checkpoint (without one, a UserError names the file). Reads only: the folder may be training."""
    run_dir = Path(run_dir)
    (config, config_problem), (history, history_problem) = _read_config_file(run_dir), read_history_file(run_dir)
    if config_problem or history_problem:
        if not (run_dir / CHECKPOINT).is_file():
            raise UserError(f"{config_problem or history_problem}, and {run_dir} has no {CHECKPOINT} to recover it "
                            "from: fix the file or move it away")
        state = read_checkpoint(run_dir / CHECKPOINT)
        config = TrainConfig.from_dict(state["config"]) if config_problem else config
        history = state["history"] if history_problem else history
    return config, history if history is not None else {}


def _history_files(run_dir: Path) -> list[Path]:
    """history.json and the pictures remade from it (REMADE), where they exist."""
    return [run_dir / name for name in (HISTORY, *REMADE) if (run_dir / name).exists()]


def _write_json(path: Path, value: dict, make_folder: bool = True) -> None:
    with atomic_path(path, make_folder=make_folder) as tmp:
        tmp.write_text(json.dumps(value, indent=1) + "\n")


def _move_aside(run_dir: Path, paths: list[Path]) -> Path:
    """Move `paths` into a newly created run_dir/earlier-N/ (N past the highest taken), keeping relative paths."""
    taken = [int(path.name[8:]) for path in run_dir.glob("earlier-*") if path.name[8:].isdigit()]
    number = max(taken, default=0) + 1
    while True:
        aside = run_dir / f"earlier-{number}"
        try:
            aside.mkdir()
            break
        except FileExistsError:
            number += 1
    for path in paths:
        target = aside / path.relative_to(run_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, target)
    return aside


def _identity(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of a folder: changes when it is renamed away or deleted, even if another takes its name."""
    try:
        stat = os.stat(folder)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _refuse_data_folders(run_dir: Path, config: TrainConfig) -> None:
    """Raise ConfigError if the run folder is, lies in or holds the data folder (it would train on its own grids),
    or is data_dir (whose temporary files other processes clean up)."""
    run = run_dir.expanduser().resolve()
    data = Path(config.data).expanduser()
    if config.data not in ("synthetic", "kaggle") and not config.data.startswith(("http://", "https://")) \
            and data.is_dir():
        data = data.resolve()
        relation = ("is" if run == data else "lies inside" if data in run.parents else
                    "holds" if run in data.parents else "")
        if relation:
            raise ConfigError(f"config field 'out' ({run_dir}) {relation} the data folder {config.data} (config field "
                              "'data'): the run's grids would mix with the images it trains on. Choose another out, "
                              "or leave out='' (a folder under generated/)")
    data_dir = Path(config.data_dir).expanduser().resolve()
    if run == data_dir:
        raise ConfigError(f"config field 'out' ({run_dir}) is data_dir (downloads and caches): choose another out, "
                          "or leave out='' (a folder under generated/)")


# -------------------------------------------------------------------------------------------- what may change

def _same_value(name: str, a: Any, b: Any) -> bool:
    """Equal as settings: floats within rounding, data folders however spelled (faces, ./faces/, /abs/faces)."""
    if name == "data" and isinstance(a, str) and isinstance(b, str):
        return _data_identity(a) == _data_identity(b)
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    return a == b


def _shown(name: str, value: Any) -> Any:
    return redact_url(value) if name == "data" and isinstance(value, str) else value


def _data_identity(data: str) -> str:
    if data in ("synthetic", "kaggle"):
        return data
    if is_url(data):  # the run stored it without its credentials: the same URL is the same data
        return redact_url(data)
    return str(Path(data).expanduser().resolve())


def differences(saved: TrainConfig, requested: TrainConfig, names: tuple[str, ...]) -> list[tuple[str, Any, Any]]:
    """(field, saved value, requested value) for each of `names` whose value differs."""
    return [(name, getattr(saved, name), getattr(requested, name)) for name in names
            if not _same_value(name, getattr(saved, name), getattr(requested, name))]


def refuse_fixed_changes(run_dir: Path, saved: TrainConfig, requested: TrainConfig, epochs_done: int) -> None:
    """Raise ConfigError listing every fixed field whose value differs from the trained run's, with what to do."""
    fixed = differences(saved, requested, FIXED_FIELDS)
    if not fixed:
        return
    lines = [f"  {name}: {_shown(name, old)!r} -> {_shown(name, new)!r}{_recipe_note(name, saved, requested)}"
             for name, old, new in fixed]
    keep = (f"recipe={saved.recipe!r}" if saved.recipe != requested.recipe else
            ", ".join(f"{name}={old!r}" for name, old, _ in fixed))
    raise ConfigError(
        f"{run_dir} holds a run trained for {epochs_done} epoch(s) with other values of fields that fix the networks, "
        f"the data or the game (saved -> requested):\n" + "\n".join(lines) + "\n"
        f"To continue that run, set {keep} (all its settings are in {run_dir / CONFIG}). To start a new run with "
        f"your values, leave out='' (the new run gets a folder named from its settings) or choose another out.")


def _recipe_note(name: str, saved: TrainConfig, requested: TrainConfig) -> str:
    if name in IMPROVED_RECIPE and saved.recipe != requested.recipe:
        return f" (set by recipe: {saved.recipe!r} -> {requested.recipe!r})"
    return ""


# ------------------------------------------------------------------------------------------------------ lock

class _Lock:
    """RUN_DIR/.lock (an empty file) locked by this process until `release` or its death (filelock: flock on Unix)."""

    def __init__(self, run_dir: Path):
        self._file = FileLock(run_dir / LOCK, thread_local=False)
        try:
            self._file.acquire(blocking=False)
        except Timeout:
            raise RunInUse(f"{run_dir} is in use: another process is training in it. Wait for it to finish or stop it "
                           "(a notebook: Kernel > Interrupt; a shell: Ctrl-C), or train in another folder") from None
        try:  # the folder as opened, to tell where it is if it is renamed while training (`folder_now`)
            self._folder = os.open(run_dir, os.O_RDONLY)
        except OSError:  # Windows cannot open a folder
            self._folder = None

    def release(self) -> None:
        """Unlock; the file stays, so every process locks the same one."""
        if self._folder is not None:
            os.close(self._folder)
            self._folder = None
        self._file.release()

    def folder_now(self) -> Path | None:
        """Where the locked folder is now, renamed or not (Linux tells by the open folder); None if it was deleted or
        this system cannot tell."""
        try:
            target = os.readlink(f"/proc/self/fd/{self._folder}")
        except (OSError, TypeError):
            return None
        return None if target.endswith(" (deleted)") else Path(target)


# -------------------------------------------------------------------------------------------------- the run

class Run:
    """The run folder of one `train()` call: open it, read what it holds, save each epoch, close it.

        run = Run.open(config, networks)        # folder, lock, checks: before any data is decoded
        run.state                               # the checkpoint to continue from, or None for a new run
        run.record_settings(config, history)    # record and print the changes; write config.json
        run.save_epoch(epoch, grid, history, state)   # in the background
        run.close()                             # everything written, lock released
    """

    def __init__(self, run_dir: Path, state: dict | None, saved: TrainConfig | None, lock: _Lock | None,
                 log: Callable[[str], None]):
        self.dir, self.state, self.saved, self.log = run_dir, state, saved, log
        self._lock = lock
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="run-writer") if lock else None
        self._pending: Future | None = None
        self._identity = _identity(run_dir) if lock else None  # the folder as opened: a rename or a new one differs
        self._saved_epoch = state["epoch"] if state else 0

    @classmethod
    def open(cls, config: TrainConfig, networks: dict[str, str], tag: str = "", main: bool = True,
             log: Callable[[str], None] = print) -> "Run":
        """Create or open `config`'s run folder, lock it (main process only) and check that it can continue: a
        ConfigError before anything is written if it is not writable or holds a run `config` cannot continue."""
        run_dir = run_dir_of(config, tag)
        if run_part(run_dir):
            raise ConfigError(f"config field 'out' ({run_dir}) is {run_part(run_dir)}: choose a folder of its own")
        _refuse_data_folders(run_dir, config)
        if not main:  # other processes of a distributed run only read; process 0 owns the folder
            path = run_dir / CHECKPOINT
            state = read_checkpoint(path) if config.resume and path.exists() else None
            return cls(run_dir, state, TrainConfig.from_dict(state["config"]) if state else None, None, log)
        try:  # prove the folder is writable before any work: a probe file, as root ignores permission bits
            (run_dir / SAMPLES).mkdir(parents=True, exist_ok=True)
            probe = run_dir / SAMPLES / f".write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as error:
            raise ConfigError(f"config field 'out': cannot write to {run_dir} ({error.strerror}): choose a writable "
                              "folder (on Kaggle, under /kaggle/working)") from None
        lock = _Lock(run_dir)
        try:
            run = cls._check(run_dir, config, networks, lock, log)
        except BaseException:
            lock.release()
            raise
        return run

    @classmethod
    def _check(cls, run_dir: Path, config: TrainConfig, networks: dict[str, str], lock: _Lock,
               log: Callable[[str], None]) -> "Run":
        # temporary files of writes that a kill interrupted (see atomic_path): never complete, never needed
        for stale in [*run_dir.glob(".*.tmp.*"), *(run_dir / SAMPLES).glob(".*.tmp.*")]:
            stale.unlink()
        path = run_dir / CHECKPOINT
        if not path.exists():
            cls._set_aside_earlier_run(run_dir, config, log)
            return cls(run_dir, None, None, lock, log)
        if not config.resume:
            raise ConfigError(f"config field 'resume' is False but {run_dir} already holds a run: pass resume=True "
                              "(--resume) to continue it, or choose another 'out' folder")
        state = read_checkpoint(path)
        saved = TrainConfig.from_dict(state["config"])
        refuse_fixed_changes(run_dir, saved, config, state["epoch"])
        trained_with = state.get("networks", {})
        for role, description in networks.items():
            if trained_with.get(role, description) != description:
                raise ConfigError(f"{run_dir} was trained with another {role}: {trained_with[role]}, "
                                  f"not {description}. "
                                  f"Pass the same {role} to continue it, or leave out='' (or set another out) to "
                                  "train yours in a folder of its own")
        cls._match_checkpoint(run_dir, state, log)
        return cls(run_dir, state, saved, lock, log)

    @staticmethod
    def _match_checkpoint(run_dir: Path, state: dict, log: Callable[[str], None]) -> None:
        """Make the folder hold what the checkpoint holds, losing nothing. Silently: the grid of an epoch a kill cut
        short is deleted, a history.json one epoch behind rewritten. Saying so: later epochs (an older checkpoint
        copied in) are moved aside, a damaged or edited config.json or history.json is rewritten."""
        epoch = state["epoch"]
        later = [(e, frame) for e, frame in list_frames(run_dir) if e > epoch]
        history, history_problem = read_history_file(run_dir)
        history_ahead = history is not None and len(history["epochs"]) > len(state["history"]["epochs"])
        if history_ahead or [e for e, _ in later] not in ([], [epoch + 1]):
            aside = _move_aside(run_dir, [frame for _, frame in later] + _history_files(run_dir))
            log(f"{run_dir}: {CHECKPOINT} holds epochs 1-{epoch}, but the folder had grids or history of later epochs "
                f"(an older checkpoint copied in?): moved those to {aside}/ (nothing deleted); continuing after epoch "
                f"{epoch}")
            history = None
        else:
            for _, frame in later:  # the grid of the epoch a kill cut short: that epoch is trained again
                frame.unlink()
        repaired = []
        config, config_problem = _read_config_file(run_dir)
        if config is None:
            TrainConfig.from_dict(state["config"]).save(run_dir / CONFIG)
            repaired += [config_problem] if config_problem else []
        if history != state["history"]:
            behind = history is not None and all(history[key] == state["history"][key][:len(history[key])]
                                                 for key in ("steps", "epochs"))
            if history is not None and not behind:
                history_problem = f"{run_dir / HISTORY} does not match {CHECKPOINT} (edited by hand?)"
            _write_json(run_dir / HISTORY, state["history"])
            repaired += [history_problem] if history_problem else []
        if repaired:
            log(f"{'; '.join(repaired)}: rewritten from {run_dir / CHECKPOINT}, which holds the run's settings and "
                f"history; continuing after epoch {epoch}")

    @staticmethod
    def _set_aside_earlier_run(run_dir: Path, config: TrainConfig, log: Callable[[str], None]) -> None:
        """A folder with grids or history but no checkpoint: a first epoch cut short, or someone else's run."""
        frames = list_frames(run_dir)
        saved, damaged = _read_config_file(run_dir)
        own_first_epoch = (saved is not None and not differences(saved, config, FIXED_FIELDS)
                           and not (run_dir / HISTORY).exists() and [e for e, _ in frames] in ([], [1]))
        if own_first_epoch:  # this run, killed before its first checkpoint: its grid is obsolete
            for _, frame in frames:
                frame.unlink()
            return
        leftovers = [path for _, path in frames] + _history_files(run_dir)
        if not leftovers and not damaged:
            return
        aside = _move_aside(run_dir, leftovers + ([run_dir / CONFIG] if (run_dir / CONFIG).exists() else []))
        held = (f"{len(frames)} sample grid(s) and the history of an earlier run" if leftovers
                else "a damaged config.json")
        log(f"{run_dir} held {held}, but no {CHECKPOINT}: moved them to {aside}/ (nothing deleted); starting a new run "
            "here")

    # --------------------------------------------------------------------------------------------- training

    def record_settings(self, config: TrainConfig, history: dict, epoch: int, step: int) -> None:
        """Before the first epoch that trains: record and print what changed since the checkpoint; write config.json."""
        if self.saved is not None:
            for name, old, new in differences(self.saved, config, TUNABLE_FIELDS):
                self.log(f"{name}: {old!r} -> {new!r} from epoch {epoch}")
                history.setdefault("changes", []).append({"epoch": epoch, "step": step, "field": name,
                                                          "from": old, "to": new})
        if self.saved is None or differences(self.saved, config, TUNABLE_FIELDS):
            config.save(self.dir / CONFIG)

    def save_epoch(self, epoch: int, grid: np.ndarray, history: dict, state: dict) -> None:
        """Write the epoch's grid, checkpoint and history.json in the background, in that order, each atomically.
        At most one epoch is pending (a slow disk slows training); a failed write raises here or in `close`."""
        self._wait()
        state, history = _to_cpu(state), copy.deepcopy(history)
        self._pending = self._writer.submit(self._write_epoch, epoch, grid, history, state)

    def _write_epoch(self, epoch: int, grid: np.ndarray, history: dict, state: dict) -> None:
        """Into the folder as opened only: one renamed or deleted meanwhile gets nothing, and RunMoved says where."""
        self._check_in_place(epoch)
        try:
            with atomic_path(frame_path(self.dir, epoch), make_folder=False) as tmp:
                Image.fromarray(grid).save(tmp, format="PNG")
            needs = sum(t.numel() * t.element_size() for t in _tensors(state))
            with atomic_path(self.dir / CHECKPOINT, needs_bytes=needs, make_folder=False) as tmp:
                torch.save(state, tmp)
            self._saved_epoch = epoch
            _write_json(self.dir / HISTORY, history, make_folder=False)
        except OSError:
            self._check_in_place(epoch)
            raise

    def _check_in_place(self, epoch: int) -> None:
        """Raise RunMoved if the folder is no longer where it was opened (renamed, deleted, or replaced by another)."""
        if self._identity is None or _identity(self.dir) == self._identity:
            return
        stopped = f"training stopped at epoch {epoch}" + (", before saving it" if epoch > self._saved_epoch else "")
        saved = f"epochs 1-{self._saved_epoch}" if self._saved_epoch else "no epoch had been saved"
        now = self._lock.folder_now() if self._lock is not None else None
        if now is None:
            raise RunMoved(f"{self.dir} was deleted (or moved where this process cannot see it) while training: "
                           f"{stopped}; {saved + ' went with it' if self._saved_epoch else saved}. Run the same again "
                           "to start a new run there")
        where = f"{saved} are in {now}" if self._saved_epoch else saved
        raise RunMoved(f"{self.dir} was moved to {now} while training: {stopped}; {where}. Move it back and run the "
                       f"same again to continue, or continue it where it is with out={str(now)!r}")

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Wait until every file is written, then release the lock (also after an error or an interrupt)."""
        try:
            self._wait()
        finally:
            if self._writer is not None:
                self._writer.shutdown()
            if self._lock is not None:
                self._lock.release()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, error_type, *_) -> None:
        """Close; after a run that ended well, check that its folder is still where the caller will look for it."""
        self.close()
        if error_type is None:
            self._check_in_place(self._saved_epoch)


def _tensors(value: Any):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _to_cpu(value: Any) -> Any:
    """A copy of `value` with every tensor copied to the CPU (the originals keep training)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(item) for item in value)
    return copy.deepcopy(value)


def trained_runs(root: str | Path = GENERATED) -> list[Path]:
    """The run folders under `root` that hold a checkpoint, the one trained last first."""
    checkpoints = [path for path in Path(root).glob(f"*/{CHECKPOINT}") if path.is_file()]
    return [path.parent for path in sorted(checkpoints, key=lambda path: path.stat().st_mtime_ns, reverse=True)]
