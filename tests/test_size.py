"""The `size` parameter of every notebook: size_preset resolves it to the same values in notebooks 01 to 06 on one
machine, a value the learner types wins, and a CPU's preset is sized from its cached CPU trial."""

import ast

import pytest
import torch

from test_notebooks import NOTEBOOKS, code_cells, load, parameters
from utils import environment
from utils.config import TrainConfig
from utils.environment import CPU_MIN_STEPS, SIZES, cpu_trial, size_preset, trial_cache_file

GPU, CPU = torch.device("cuda"), torch.device("cpu")
CPU_NETWORKS = TrainConfig(**{**SIZES["cpu"], "max_images": 0})


@pytest.fixture
def trial(tmp_path, monkeypatch):
    """trial(nchw, channels_last): the "cpu" preset's networks measured (again) at these fp32 images/s."""
    monkeypatch.setenv("ANIME_GAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ANIME_GAN_AMP", raising=False)
    monkeypatch.setattr(environment, "cpu_has_bf16", lambda: False)

    def measured(nchw, channels_last):
        trial_cache_file().unlink(missing_ok=True)
        cpu_trial(CPU_NETWORKS, lambda _: ({"fp32 NCHW": nchw, "fp32 channels_last": channels_last} for _ in range(5)))
    return measured


def notebook_resolution(name: str, device: torch.device, smoke: bool = False) -> dict:
    """What notebook `name`'s own size_preset(...) call returns with its parameters' defaults, on `device`."""
    namespace = parameters(name, smoke)
    (call,) = [node for cell in code_cells(load(name)) for node in ast.walk(ast.parse(cell.source))
               if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "size_preset"]
    args = [eval(compile(ast.Expression(arg), name, "eval"), {}, namespace) for arg in call.args]
    given = {k.arg: eval(compile(ast.Expression(k.value), name, "eval"), {}, namespace) for k in call.keywords}
    sized = [key for key in namespace if key in SIZES["gpu"]]
    assert sorted(given) == sorted(sized) and all(given[key] is namespace[key] for key in sized), \
        f"{name} passes size_preset {sorted(given)}, its parameters cell has {sorted(sized)}"
    return size_preset(args[0], device, **given)


@pytest.mark.parametrize("device", [GPU, CPU], ids=["gpu", "cpu"])
def test_every_notebook_resolves_size_to_the_same_values(device, trial, capsys):
    trial(400.0, 500.0)
    resolved = {name: notebook_resolution(name, device) for name in NOTEBOOKS}
    assert all(values == resolved[NOTEBOOKS[0]] for values in resolved.values()), resolved
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(NOTEBOOKS) and len(set(lines)) == 1   # one line per notebook, the same one
    values = resolved[NOTEBOOKS[0]]
    if device == GPU:
        assert values == SIZES["gpu"] and lines[0].startswith('size "auto" -> gpu (a CUDA GPU): 64x64')
        assert {name: getattr(TrainConfig(), name) for name in values} == values   # the recipe: TrainConfig's defaults
    else:   # 2.25 minutes at 500 x 0.75 = 375 images/s: 50,625 images, 2,531 an epoch, up to 3,000
        assert values == {**SIZES["cpu"], "max_images": 3_000, "epochs": 17}
        assert lines[0].startswith('size "auto" -> cpu (no CUDA GPU): 32x32') and "375 images/s an epoch" in lines[0]
    TrainConfig(**values)   # valid settings


def test_the_smoke_configuration_resolves_without_measuring(trial):
    for name in NOTEBOOKS:
        assert notebook_resolution(name, CPU, smoke=True)["image_size"] == 16
    assert not trial_cache_file().exists()   # max_images given: no trial, nothing cached


def test_a_value_the_learner_types_wins_and_the_rest_follow_the_size(trial, capsys):
    trial(400.0, 500.0)
    values = size_preset("auto", CPU, image_size=16, max_images=500, epochs=None)
    assert values == {**SIZES["cpu"], "image_size": 16, "max_images": 500}
    assert capsys.readouterr().out.rstrip().endswith('; yours: image_size, max_images. size = "gpu" is the 64x64 recipe '
                                                     '(hours on a CPU)')
    assert size_preset("gpu", CPU) == SIZES["gpu"]          # asked for: the 64x64 recipe, even on a CPU
    assert size_preset("cpu", GPU)["image_size"] == 32      # and the small run on a GPU
    with pytest.raises(ValueError, match="parameter 'size' must be 'auto', 'cpu' or 'gpu'; got 'large'"):
        size_preset("large", CPU)


def test_the_cpu_preset_is_sized_from_the_cached_trial_and_trains_enough_steps_on_a_slow_cpu(trial, capsys):
    trial(400.0, 500.0)
    assert size_preset("cpu", CPU)["max_images"] == 3_000
    trial(4000.0, 5000.0)   # a fast CPU: at most all 20,000 synthetic faces
    assert size_preset("cpu", CPU)["max_images"] == 20_000
    trial(10.0, 20.0)   # a slow CPU: 2.25 min at 0.75 x 20 images/s are 2,025 images, 63 steps
    values = size_preset("cpu", CPU)
    assert values == {**SIZES["cpu"], "max_images": 2_000, "epochs": 15}   # 30,000 images: CPU_MIN_STEPS, rounded up
    assert CPU_MIN_STEPS <= values["max_images"] * values["epochs"] // values["batch_size"] < CPU_MIN_STEPS + 2_000 // 32
    assert "(about 33 min at the 15 images/s an epoch runs here; slow or busy CPU: faces need 900 steps)" in \
        capsys.readouterr().out
    assert size_preset("cpu", CPU, epochs=20)["epochs"] == 20                             # yours still wins
