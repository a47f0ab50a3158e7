"""A run folder (generated/dcgan-64px/: checkpoint.pt, config.json, history.json, samples/): who may write it, what may
change when it continues, and how its files are made to match the checkpoint."""

import io
import json
import os
import re
import shutil
import tempfile
import urllib.parse
from collections.abc import Callable
from contextlib import suppress
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
from utils.models import Discriminator, Generator, check_network_size, describe_network
from utils.step import EMA
from utils.urls import is_url, redact_url

GENERATED = Path("generated")
_MOVE_AWAY = "Move it away to start a new run in its folder"
_BY_NAME = ("synthetic", "kaggle")   # data that is a word, not a folder or URL
STEP_KEYS = ("epoch", "step", "loss_d", "loss_g", "d_real", "d_fake")   # the numbers of every step in a history
_CHECKPOINT_KEYS = ("epoch", "config", "history", "fixed_noise", "generator", "discriminator", "opt_g", "opt_d",
                    "scaler", "rng")   # all that `checkpoint_state` writes but what older checkpoints lack


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used: unreadable, incomplete, or tensors that do not fit the networks."""


def default_run_dir(config: TrainConfig, networks: str = "") -> Path:
    """generated/<recipe>-<size>px[-field=value...][-networks] from the NAMED_FIELDS off the recipe's defaults."""
    named = [f"{name}={_short(name, value)}" for name, value, _ in
             differences(config, TrainConfig(recipe=config.recipe), NAMED_FIELDS) if name != "image_size"]
    return GENERATED / "-".join([f"{config.recipe}-{config.image_size}px", *named] + ([networks] if networks else []))


def run_dir_of(config: TrainConfig, networks: str = "") -> Path:
    return Path(config.out) if config.out else default_run_dir(config, networks)


def _short(name: str, value: Any) -> str:
    if name == "data" and value not in _BY_NAME:   # a file's stem: never a URL's token in a folder name
        value = Path(urllib.parse.urlsplit(value).path.rstrip("/")).stem or "data"
    elif isinstance(value, float):
        value = f"{value:g}"
    return re.sub(r"[^\w.+=-]", "+", str(value))[:40]


def differences(saved: TrainConfig, requested: TrainConfig, names: tuple[str, ...]) -> list[tuple[str, Any, Any]]:
    """(field, saved value, requested value) for each of `names` whose value differs (data however spelled)."""
    def value(config: TrainConfig, name: str) -> Any:   # faces, ./faces/ and /abs/faces are one; a URL as stored
        if name != "data" or config.data in _BY_NAME:
            return getattr(config, name)
        return redact_url(config.data) if is_url(config.data) else Path(config.data).expanduser().resolve()
    return [(name, getattr(saved, name), getattr(requested, name)) for name in names
            if value(saved, name) != value(requested, name)]


def refuse_fixed_changes(run_dir: Path, saved: TrainConfig, requested: TrainConfig, epochs_done: int) -> None:
    """Raise ConfigError listing every fixed field whose value differs from the trained run's, with what to do."""
    fixed = differences(saved, requested, FIXED_FIELDS)
    if not fixed:
        return
    # a changed recipe set those of IMPROVED_RECIPE: setting it back restores them
    recipe = [("recipe", saved.recipe, requested.recipe)] if saved.recipe != requested.recipe else []
    keep = ", ".join(f"{name}={old!r}" for name, old, _ in recipe + fixed if not (recipe and name in IMPROVED_RECIPE))
    changed = "".join(f"\n  {name}: {old!r} -> {new!r}" for name, old, new in recipe + fixed)
    raise ConfigError(   # which hides a URL's credentials
        f"{run_dir} holds a run of {epochs_done} epoch(s) with other values of fields that fix the networks, the data "
        f"or the game (saved -> requested):{changed}\nTo continue that run, set {keep}. To start a new run with your "
        "values, leave out='' (a folder named from its settings) or choose another out.")


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
    """Load `saved` into `state` (Adam with this device's `adam_options`), every tensor checked first: its epoch."""
    networks = [role for role in ("generator", "discriminator", "ema") if getattr(state, role) is not None]
    for role in networks:
        check_weights(path, role, saved.get(role), getattr(state, role).state_dict())
    check_optimizer_state(path, "opt_g", saved["opt_g"], state.opt_g)
    check_optimizer_state(path, "opt_d", saved["opt_d"], state.opt_d)
    for role in networks:
        getattr(state, role).load_state_dict(saved[role])
    flags = {"fused": None, "foreach": None, "capturable": False, **adam_options}
    for optimizer, moments in ((state.opt_g, saved["opt_g"]), (state.opt_d, saved["opt_d"])):
        optimizer.load_state_dict({**moments, "param_groups": [group | flags for group in moments["param_groups"]]})
    if state.scaler.is_enabled() and saved["scaler"]:
        state.scaler.load_state_dict(saved["scaler"])
    state.fixed_noise, state.history = saved["fixed_noise"], saved["history"]
    torch.set_rng_state(saved["rng"]["cpu"])
    return saved["epoch"]


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint, loaded as data only (it cannot run code), its keys, settings and plain values checked."""
    path = Path(path)
    state = load_data(path, "checkpoint", CheckpointError, "Use checkpoints written by this code only. " + _MOVE_AWAY)
    state = state if isinstance(state, dict) else {}
    plain = {"epoch": type(state.get("epoch")) is int and state["epoch"] >= 0,
             "config": isinstance(state.get("config"), dict), "history": _is_history(state.get("history")),
             "precision": isinstance(state.get("precision", ""), str),   # older checkpoints have none
             "networks": isinstance(state.get("networks", {}), dict)}
    wrong = [key for key in _CHECKPOINT_KEYS if key not in state] or [key for key, ok in plain.items() if not ok]
    if wrong:
        raise CheckpointError(f"{path} is not a checkpoint of this project (missing or not what this code writes: "
                              f"{', '.join(wrong)}). {_MOVE_AWAY}")
    try:
        config = TrainConfig.from_dict(state["config"])
        check_network_size(config, torch.device("cpu"))   # before anything is built from them
    except ConfigError as error:
        raise CheckpointError(f"{path} holds settings that are not valid ({error}). {_MOVE_AWAY}") from None
    noise = torch.empty(config.num_samples, config.latent_dim, 1, 1)
    check_weights(path, "", {"fixed_noise": state["fixed_noise"]}, {"fixed_noise": noise})
    check_weights(path, "rng", state["rng"], {"cpu": torch.get_rng_state()})
    return state


def check_weights(path: Path, role: str, saved: Any, expected: dict[str, torch.Tensor]) -> None:
    """Raise CheckpointError unless `saved` has `expected`'s names, shapes and dtypes (load_state_dict would cast)."""
    if not isinstance(saved, dict) or saved.keys() != expected.keys():
        raise CheckpointError(f"{path}: its {role} does not hold the tensors the run's settings make. {_MOVE_AWAY}")
    for name, tensor in expected.items():
        value, needed = saved[name], f"{tensor.dtype} {tuple(tensor.shape)}"
        found = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        if found != needed:
            raise CheckpointError(f"{path}: {f'{role}.{name}' if role else name} is {found}; the run's settings need "
                                  f"{needed}. {_MOVE_AWAY}")


def check_optimizer_state(path: Path, role: str, saved: dict, optimizer: torch.optim.Optimizer) -> None:
    """Raise CheckpointError unless `saved` has `optimizer`'s parameter groups and Adam's moments of each parameter."""
    groups, moments = (saved.get("param_groups"), saved.get("state")) if isinstance(saved, dict) else (None, None)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sizes = [len(group["params"]) for group in optimizer.param_groups]
    if (not isinstance(groups, list) or not isinstance(moments, dict) or not moments.keys() <= set(range(len(params)))
            or [len(g.get("params", ())) if isinstance(g, dict) else -1 for g in groups] != sizes):
        raise CheckpointError(f"{path}: its {role} does not fit the optimiser of its networks. {_MOVE_AWAY}")
    for index, values in moments.items():
        check_weights(path, f"{role}.{index}", values, {"step": torch.zeros(()), "exp_avg": params[index],
                                                        "exp_avg_sq": params[index]})


def _is_history(value: Any) -> bool:
    """Lists of step and epoch records with numbers where the curves and the table read them (a hand edit may not)."""
    steps, epochs = (value.get("steps"), value.get("epochs")) if isinstance(value, dict) else (None, None)
    return (isinstance(steps, list) and isinstance(epochs, list)
            and all(isinstance(s, dict) and all(isinstance(s.get(k), (int, float)) for k in STEP_KEYS) for s in steps)
            and all(isinstance(e, dict) and isinstance(e.get("fid") or 0, (int, float)) for e in epochs))


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


def _refuse_other_networks(run_dir: str | Path, state: dict, networks: dict[str, str], how: str) -> None:
    for role, description in networks.items():
        trained = state.get("networks", {}).get(role, description)
        if trained != description:
            raise ConfigError(f"{run_dir} was trained with another {role}: {trained}, not {description}. Pass that "
                              f"{role} {how}")


def load_models(run_dir: str | Path, generator: nn.Module | None = None, discriminator: nn.Module | None = None,
                state: dict | None = None) -> tuple[nn.Module, nn.Module, dict]:
    """A run's generator (its EMA weights if kept), discriminator and history on the CPU, from its checkpoint or
    `state` (the checkpoint already read); own networks: fresh ones of their classes to load into."""
    state = read_checkpoint(Path(run_dir) / CHECKPOINT) if state is None else state
    config = TrainConfig.from_dict(state["config"])
    if generator is None:
        generator = Generator(config.image_size, config.latent_dim, config.g_width)
    if discriminator is None:
        discriminator = Discriminator(config.image_size, config.d_width, config.spectral_norm)
    _refuse_other_networks(run_dir, state, network_descriptions(generator, discriminator), "to load_models")
    ema = state.get("ema")
    if isinstance(ema, dict):  # sample from the averaged weights, as training showed them
        state = state | {"generator": {k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")}}
    for role, model in (("generator", generator), ("discriminator", discriminator)):
        check_weights(Path(run_dir) / CHECKPOINT, role, state[role], model.state_dict())
        model.load_state_dict(state[role])
    return generator, discriminator, state["history"]


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
        return None, f"{path} is not a training history (steps and epochs with numbers in {', '.join(STEP_KEYS)}, fid)"
    return history, ""


def saved_config(run_dir: str | Path) -> TrainConfig | None:
    """The run's settings: config.json, else the checkpoint's (config.json lost or damaged), else None."""
    run_dir = Path(run_dir)
    config, _ = _read_config_file(run_dir)
    if config is None and (run_dir / CHECKPOINT).is_file():
        return TrainConfig.from_dict(read_checkpoint(run_dir / CHECKPOINT)["config"])
    return config


def read_run(run_dir: str | Path) -> tuple[TrainConfig | None, dict]:
    """(config, history) from config.json and history.json ((None, {}) where missing); if one is damaged, what is
    missing or damaged comes from the checkpoint (without one, a UserError). Reads only: the folder may be training."""
    run_dir = Path(run_dir)
    (config, config_problem), (history, history_problem) = _read_config_file(run_dir), read_history_file(run_dir)
    if config_problem or history_problem:
        if not (run_dir / CHECKPOINT).is_file():
            raise UserError(f"{config_problem or history_problem}, and {run_dir} has no {CHECKPOINT} to recover it "
                            "from: fix the file or move it away")
        state = read_checkpoint(run_dir / CHECKPOINT)
        config, history = config or TrainConfig.from_dict(state["config"]), history or state["history"]
    return config, history or {}


def trained_runs(root: str | Path = GENERATED) -> list[Path]:
    """The run folders under `root` that hold a checkpoint, the one trained last first."""
    checkpoints = [path for path in Path(root).glob(f"*/{CHECKPOINT}") if path.is_file()]
    return [path.parent for path in sorted(checkpoints, key=lambda path: path.stat().st_mtime_ns, reverse=True)]


def _refuse_unusable_folder(run_dir: Path, config: TrainConfig) -> None:
    if run_part(run_dir):
        raise ConfigError(f"config field 'out' ({run_dir}) is {run_part(run_dir)}: choose a folder of its own")
    run, data = run_dir.expanduser().resolve(), Path(config.data).expanduser().resolve()
    if config.data not in _BY_NAME and data.is_dir() and (data in (run, *run.parents) or run in data.parents):
        raise ConfigError(f"config field 'out' ({run_dir}) is, lies in or holds the data folder ({config.data}): its "
                          "grids would mix with the images it trains on. Choose another out, or leave out=''")
    if run == Path(config.data_dir).expanduser().resolve():
        raise ConfigError(f"config field 'out' ({run_dir}) is data_dir (downloads and caches): choose another out")
    try:
        (run_dir / SAMPLES).mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=run_dir / SAMPLES).close()   # a real write: root ignores permission bits
    except OSError as error:
        raise ConfigError(f"config field 'out': cannot write to {run_dir} ({error.strerror}): choose a writable "
                          "folder (on Kaggle, under /kaggle/working)") from None


def _match_checkpoint(run_dir: Path, config: TrainConfig, state: dict | None, log: Callable[[str], None]) -> None:
    """Make the folder hold what `state` (None: no run yet) holds: a cut short epoch's grid deleted, files it lacks
    moved aside, a damaged config.json or history.json rewritten, each said in one line."""
    epoch = state["epoch"] if state else 0
    later = [(e, frame) for e, frame in list_frames(run_dir) if e > epoch]
    history, history_problem = read_history_file(run_dir)
    saved, config_problem = _read_config_file(run_dir)
    remade = [run_dir / name for name in (HISTORY, *REMADE) if (run_dir / name).exists()]
    if state is None:  # cut short before its first checkpoint: this run's settings, no history yet
        cut_short = saved is not None and not differences(saved, config, FIXED_FIELDS) and not remade
    else:
        cut_short = history is None or len(history["epochs"]) <= len(state["history"]["epochs"])
    if cut_short and [e for e, _ in later] in ([], [epoch + 1]):
        for _, frame in later:
            frame.unlink()
    elif later or remade or config_problem:
        own = [run_dir / CONFIG] if state is None and (run_dir / CONFIG).exists() else []
        taken = [int(path.name[8:]) for path in run_dir.glob("earlier-*")
                 if path.name[8:].isdecimal() and len(path.name) < 20]   # earlier-99...9: no longer name for the next
        aside = run_dir / f"earlier-{max(taken, default=0) + 1}"
        (aside / SAMPLES).mkdir(parents=True)   # never into a folder already there: the lock keeps others out meanwhile
        for path in [frame for _, frame in later] + remade + own:
            shutil.move(path, aside / path.relative_to(run_dir))
        held = (f"{CHECKPOINT} holds epochs 1-{epoch}, but the folder had grids or history of later epochs (an older "
                f"checkpoint copied in?)" if state else f"the folder held files of an earlier run but no {CHECKPOINT}")
        then = f"continuing after epoch {epoch}" if state else "starting a new run here"
        log(f"{run_dir}: {held}: moved them to {aside}/ (nothing deleted); {then}")
        history = None
    if state is None:
        return
    if saved is None:
        TrainConfig.from_dict(state["config"]).save(run_dir / CONFIG)
    # behind the checkpoint is what a kill between its two writes leaves; anything else was edited
    if history is not None and any(history[k] != state["history"][k][:len(history[k])] for k in ("steps", "epochs")):
        history_problem = f"{run_dir / HISTORY} does not match {CHECKPOINT} (edited by hand?)"
    if history != state["history"]:
        with atomic_path(run_dir / HISTORY) as tmp:
            tmp.write_text(json.dumps(state["history"], indent=1) + "\n")
    repaired = [problem for problem in (config_problem, history_problem) if problem]
    if repaired:
        log(f"{'; '.join(repaired)}: rewritten from {run_dir / CHECKPOINT}; continuing after epoch {epoch}")


class Run:
    """One `train()` call's run folder: `with Run.open(config, networks) as run:` locks and checks it before any data
    is decoded; `run.state` is the checkpoint to continue (None: a new run)."""

    def __init__(self, run_dir: Path, state: dict | None, log: Callable[[str], None], lock: FileLock | None = None):
        self.dir, self.state, self.log, self._lock = run_dir, state, log, lock
        self.saved = TrainConfig.from_dict(state["config"]) if state else None
        self._saved_epoch = state["epoch"] if state else 0
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="run-writer")   # its thread starts on use
        self._pending: Future | None = None
        self._opened = os.stat(run_dir) if lock else None   # a rename, a deletion or a new folder of its name differs

    @classmethod
    def open(cls, config: TrainConfig, networks: dict[str, str], tag: str = "", main: bool = True,
             log: Callable[[str], None] = print) -> "Run":
        """Create, lock (main process only) and check `config`'s run folder: a ConfigError before any write."""
        run_dir = run_dir_of(config, tag)
        if not main:  # other processes of a distributed run only read; process 0 owns and checks the folder
            path = run_dir / CHECKPOINT
            return cls(run_dir, read_checkpoint(path) if config.resume and path.exists() else None, log)
        _refuse_unusable_folder(run_dir, config)
        lock = FileLock(run_dir / LOCK, thread_local=False)   # flock on Unix: released when this process dies
        try:
            lock.acquire(blocking=False)
        except Timeout:
            raise UserError(f"{run_dir} is in use: another process is training in it. Wait for it to finish or stop it "
                            "(a notebook: Kernel > Interrupt; a shell: Ctrl-C), or train in another folder") from None
        except OSError as error:   # a folder or a device named .lock
            raise UserError(f"cannot lock {run_dir / LOCK} ({error.strerror}): move it away or choose another out")
        try:
            for stale in [*run_dir.glob(".*.tmp.*"), *(run_dir / SAMPLES).glob(".*.tmp.*")]:
                stale.unlink()   # what writes cut short by a kill left: never complete
            state = None
            if (run_dir / CHECKPOINT).exists():
                if not config.resume:
                    raise ConfigError(f"config field 'resume' is False but {run_dir} already holds a run: pass "
                                      "resume=True (--resume) to continue it, or choose another 'out' folder")
                state = read_checkpoint(run_dir / CHECKPOINT)
                refuse_fixed_changes(run_dir, TrainConfig.from_dict(state["config"]), config, state["epoch"])
                _refuse_other_networks(run_dir, state, networks, "to continue it, or leave out='' (or set another "
                                                                 "out) to train yours in a folder of its own")
            _match_checkpoint(run_dir, config, state, log)
            return cls(run_dir, state, log, lock)
        except BaseException:
            lock.release()
            raise

    def record_settings(self, config: TrainConfig, history: dict, epoch: int, step: int) -> None:
        """Before the first epoch that trains: record and print what changed since the checkpoint; write config.json."""
        changes = differences(self.saved, config, TUNABLE_FIELDS) if self.saved is not None else []
        for name, old, new in changes:
            self.log(f"{name}: {old!r} -> {new!r} from epoch {epoch}")
            history.setdefault("changes", []).append({"epoch": epoch, "step": step, "field": name, "from": old,
                                                      "to": new})
        if self.saved is None or changes:
            config.save(self.dir / CONFIG)

    def save_epoch(self, epoch: int, grid: np.ndarray, history: dict, state: dict) -> None:
        """Write grid, checkpoint, history.json in that order, in the background; a failure raises on the next call."""
        self._wait()
        checkpoint = io.BytesIO()
        torch.save(state, checkpoint)   # now: the tensors keep training
        self._pending = self._writer.submit(self._write_epoch, epoch, grid, json.dumps(history, indent=1),
                                            checkpoint.getbuffer())

    def _write_epoch(self, epoch: int, grid: np.ndarray, history: str, checkpoint: memoryview) -> None:
        """Into the folder as opened only: one renamed or deleted meanwhile gets nothing but a UserError."""
        self._check_in_place(epoch)
        try:
            with atomic_path(frame_path(self.dir, epoch), make_folder=False) as tmp:
                Image.fromarray(grid).save(tmp, format="PNG")
            with atomic_path(self.dir / CHECKPOINT, needs_bytes=len(checkpoint), make_folder=False) as tmp:
                tmp.write_bytes(checkpoint)
            self._saved_epoch = epoch
            with atomic_path(self.dir / HISTORY, make_folder=False) as tmp:
                tmp.write_text(history + "\n")
        except OSError:
            self._check_in_place(epoch)
            raise

    def _check_in_place(self, epoch: int) -> None:
        with suppress(OSError):
            if self._opened is None or os.path.samestat(os.stat(self.dir), self._opened):
                return
        raise UserError(f"{self.dir} was moved or deleted while training: stopped at epoch {epoch}, with "
                        f"{self._saved_epoch} saved. To continue, move it back or set out to its new place; run again")

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, error_type, *_) -> None:
        """Wait for the writes, release the lock (also after an error); after a run that ended well, check its place."""
        try:
            self._wait()
            if error_type is None:
                self._check_in_place(self._saved_epoch)
        finally:
            self._writer.shutdown()
            if self._lock is not None:
                self._lock.release()   # the file stays, so every process locks the same one
