import math
import re
from dataclasses import fields
from pathlib import Path

import pytest

from utils.config import (FIXED_FIELDS, HOW_FIELDS, IMPROVED_RECIPE, NAMED_FIELDS, TUNABLE_FIELDS, TrainConfig,
                          build_parser, config_to_argv)
from utils.train import main

REPO = Path(__file__).resolve().parents[1]
FIELDS = [f.name for f in fields(TrainConfig)]

# One or more out-of-range values per field (each must be refused naming the field). Booleans can only be
# wrong in type; `fid_weights` is a path, checked when training starts (see test_faults.py).
BAD_VALUES = {
    "data": ["", "http://[::1/x.zip", "https://host:port/x.zip"], "data_dir": [""], "image_size": [8, 48, 0, -64], "max_images": [-1],
    "latent_dim": [0], "g_width": [0], "d_width": [-8],
    "epochs": [0], "batch_size": [0], "lr_g": [0.0, 2.0, math.nan], "lr_d": [-1e-4, math.inf],
    "beta1": [1.0, -0.1], "beta2": [1.5], "scale_lr": ["yes"],
    "recipe": ["fancy"], "loss": ["wgan"], "ema_decay": [1.0, -0.5], "diffaugment": ["color,blur", "Color"],
    "spectral_norm": [1], "real_label": [0.0, 1.5], "fake_label": [-0.1, 1.0], "label_flip": [0.5, -0.01],
    "device": ["gpu", "cuda:x", "cuda:"], "amp": ["fp8"], "channels_last": ["yes"],
    "cuda_graphs": ["yes"], "data_on_device": ["gpu"], "sync_batchnorm": [0], "log_every": [0],
    "seed": [-1, 2**32], "out": [3], "num_samples": [0, 2000], "resume": ["no"], "max_minutes": [-1.0],
    "fid_every": [-1], "fid_samples": [1], "fid_real": [-5], "fid_weights": [3],
}
WRONG_TYPES = {bool: "yes", int: "64", float: "0.5", str: 1}   # what a user could plausibly pass instead


def test_defaults_are_the_dcgan_reference_and_the_bad_values_cover_every_field():
    config = TrainConfig()
    assert (config.image_size, config.batch_size, config.lr_g, config.lr_d, config.beta1) == (64, 128, 2e-4, 2e-4, 0.5)
    assert (config.loss, config.ema_decay, config.diffaugment, config.spectral_norm) == ("bce", 0.0, "", False)
    assert set(BAD_VALUES) == set(FIELDS)


@pytest.mark.parametrize("field,value", [(f, v) for f, values in BAD_VALUES.items() for v in values])
def test_out_of_range_value_is_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"config field '{field}' must be .+; got"):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("field,value", [(f.name, WRONG_TYPES[type(f.default)]) for f in fields(TrainConfig)] +
                         [("image_size", 64.0), ("epochs", True), ("seed", 1.5), ("resume", 1)])
def test_wrong_type_is_refused_naming_the_field_and_type(field, value):
    expected = type(getattr(TrainConfig(), field)).__name__
    with pytest.raises(ValueError, match=rf"config field '{field}' must be of type {expected}"):
        TrainConfig(**{field: value})


def test_integers_are_accepted_for_float_fields_and_validate_checks_again_after_assignment():
    config = TrainConfig(lr_g=1, beta1=0, max_minutes=5)
    assert [(v, type(v)) for v in (config.lr_g, config.beta1, config.max_minutes)] == [(1.0, float), (0.0, float),
                                                                                       (5.0, float)]
    config.image_size = 100
    with pytest.raises(ValueError, match="'image_size'"):
        config.validate()


def test_the_improved_recipe_fills_only_the_fields_left_at_their_default_and_lrs_scale_by_the_square_root():
    config = TrainConfig(recipe="improved", lr_g=3e-4)   # set by the user: kept
    assert {name: getattr(config, name) for name in IMPROVED_RECIPE} == IMPROVED_RECIPE | {"lr_g": 3e-4}
    assert TrainConfig(recipe="dcgan").loss == "bce"
    assert TrainConfig(batch_size=512).scaled_lrs() == (2e-4, 2e-4)  # off by default
    lr_g, lr_d = TrainConfig(batch_size=256, scale_lr=True, lr_d=4e-4).scaled_lrs(world_size=2)
    assert lr_g == pytest.approx(2e-4 * 2) and lr_d == pytest.approx(4e-4 * 2)


def test_save_and_load_round_trip_and_unknown_keys_are_ignored(tmp_path):
    config = TrainConfig(image_size=32, recipe="improved", out=str(tmp_path / "run"))
    config.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json") == config
    assert TrainConfig.from_dict(config.to_dict() | {"from_a_newer_version": 1}) == config


def test_every_field_has_a_cli_option_with_its_help_and_the_options_rebuild_a_config():
    usage = " ".join(build_parser().format_help().split())  # argparse wraps lines: compare words
    missing = [f.name for f in fields(TrainConfig) if f"--{f.name.replace('_', '-')}" not in usage
               or not f.metadata["help"] or " ".join(f.metadata["help"].split()) not in usage]
    assert not missing, missing
    config = TrainConfig(image_size=32, lr_d=1e-3, spectral_norm=True, resume=False, diffaugment="color", out="x/y")
    assert TrainConfig(**vars(build_parser().parse_args(config_to_argv(config)))) == config


def test_every_field_says_what_it_is_for_a_run():
    """A continued run must know of each field whether to refuse a new value, apply it or ignore it: a field
    declared the plain dataclass way (no fixed, tunable, how or call) fails here, naming it."""
    kinds = {f.name: f.metadata.get("kind") for f in fields(TrainConfig)}
    assert set(kinds.values()) == {"fixed", "tunable", "call"}, kinds
    assert set(HOW_FIELDS) <= set(TUNABLE_FIELDS) and not set(HOW_FIELDS) & set(NAMED_FIELDS)
    assert set(FIXED_FIELDS) <= set(NAMED_FIELDS) <= set(FIXED_FIELDS + TUNABLE_FIELDS)
    # a few that must not move: what fixes the networks, what names a run, what only says how fast
    assert {"image_size", "g_width", "loss", "seed"} <= set(FIXED_FIELDS)
    assert {"lr_g", "batch_size"} <= set(NAMED_FIELDS) - set(FIXED_FIELDS)
    assert {"epochs", "amp", "device"} <= set(TUNABLE_FIELDS) - set(NAMED_FIELDS)
    assert {"amp", "device", "data_dir"} <= set(HOW_FIELDS) and "epochs" not in HOW_FIELDS


@pytest.mark.parametrize("field,argv", [("image_size", "--image-size=48"), ("diffaugment", "--diffaugment=color,blur"),
                                        ("resume", "--resume=maybe"), ("image_size", "--image-size=64.5"),
                                        ("epochs", "--epochs=ten"), ("lr_g", "--lr-g=fast")])
def test_cli_refuses_a_bad_option_naming_it_before_training(field, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([argv])
    assert exit_info.value.code == 2  # argument errors; a failed training exits with 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"config field '{field}' must be" in error or f"argument --{field.replace('_', '-')}" in error, error


def test_the_engineering_guide_shows_a_field_as_utils_config_declares_it():
    """docs/engineering.md's "Adding a setting" diff is real: its new line is a line of TrainConfig today."""
    guide = (REPO / "docs" / "engineering.md").read_text()
    diff = re.search(r"\*\*Adding a setting\*\*.*?```diff\n(.*?)```", guide, re.S)
    assert diff, "docs/engineering.md has no 'Adding a setting' paragraph with a diff"
    added = [line[1:] for line in diff.group(1).splitlines() if line.startswith("+")]
    assert added and set(added) <= set((REPO / "utils" / "config.py").read_text().splitlines()), added
