"""The diagnosis after each epoch (utils/diagnose.py): each detector on signals built to show its problem, and
real small runs: a failing one is named, a healthy one says nothing."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from utils.compare import compare_runs
from utils.config import TrainConfig
from utils.diagnose import TROUBLESHOOTING, Diagnosis, findings, knob, since, stride_pattern, untile, variety
from utils.models import to_uint8
from utils.visualize import diagnosis_marks, image_grid, plot_history

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
torch.set_grad_enabled(True)
GEN = torch.Generator().manual_seed(0)


def smooth_images(n=64, size=16) -> torch.Tensor:
    """Varied images with a smooth spectrum, as real photos have: random colours blurred by upsampling."""
    coarse = torch.rand(n, 3, 4, 4, generator=GEN) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)


def grid_of(images: torch.Tensor) -> np.ndarray:
    return image_grid(images).permute(1, 2, 0).numpy()


def steps_of(epoch: int, d_real: float, d_fake: float, loss_d: float = 1.0, loss_g: float = 1.0, n: int = 5):
    return [{"epoch": epoch, "step": (epoch - 1) * n + i, "loss_d": loss_d, "loss_g": loss_g, "d_real": d_real,
             "d_fake": d_fake} for i in range(1, n + 1)]


def epoch(number: int, collapsed: bool = False, **signals) -> dict:
    record = {"epoch": number, "signals": {"variety": 0.9, "pattern": 0.02, "loss_d": 1.0, "loss_g": 1.0} | signals}
    return record | ({"diagnosis": {"mode collapse": "..."}} if collapsed else {})


def test_untile_gives_back_the_images_of_a_grid_and_variety_and_a_checkerboard_are_measured():
    images = smooth_images(16)
    back = untile(grid_of(images), 16, 16)
    assert back.shape == images.shape
    assert (back - to_uint8(images).float().div(127.5).sub(1)).abs().max() < 1e-6
    assert variety(images[:1].expand(64, -1, -1, -1)) == 0 and variety(smooth_images()) > 0.3
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    checkerboard = ((yy + xx) % 2 * 2 - 1).float() * 0.2  # a root mean square of 0.2
    assert stride_pattern(images) < 0.05 and stride_pattern(images + checkerboard) == pytest.approx(0.2, abs=0.01)


H = steps_of(2, 0.7, 0.3)  # a healthy epoch's steps
STILL = [epoch(1), epoch(2, change=0.01)]


@pytest.mark.parametrize("epochs, steps, seen", [
    ([epoch(1), epoch(2, change=0.4)], H, []),
    ([epoch(1, variety=0.1), epoch(2, variety=0.1)], H, []),  # a young G's alike blobs, and D rejects them
    ([epoch(1, variety=0.1), epoch(2, variety=0.1)], steps_of(2, 0.4, 0.9), ["mode collapse"]),  # D takes them
    ([epoch(1, variety=0.1, collapsed=True), epoch(2, variety=0.3)], H, ["mode collapse"]),  # as long as it stays low
    ([epoch(1, variety=0.8), epoch(2, variety=0.35)], H, ["mode collapse"]),  # varied samples that lost it
    ([epoch(1, variety=0.3), epoch(2, variety=0.1)], H, []),  # blobs that never formed
    ([epoch(1)], steps_of(1, 0.999, 0.001, loss_d=0.002, loss_g=7), ["D wins"]),
    ([epoch(1)], steps_of(1, 0.97, 0.04), []),  # a strong D, as in a healthy DCGAN run
    ([epoch(1)], steps_of(1, 0.4, 0.7), ["G fools D"]),
    ([epoch(1)], steps_of(1, 0.5, 0.52), []),  # a draw is not G fooling D
    ([epoch(1, pattern=0.1)], H, ["checkerboard"]),
    ([epoch(1, pattern=0.1, variety=0.2)], H, []),  # a young G's blobs
    ([epoch(1, pattern=0.02), epoch(2, pattern=0.1)], H, []),  # one epoch's flicker
    ([{"epoch": 1, "signals": {"variety": 0.9, "checker": 20.0, "loss_d": 1.0, "loss_g": 1.0}}, epoch(2)], H, []),
    # resumed from a run of the older signal
    ([epoch(1), epoch(2)], steps_of(2, 0.7, 0.3, loss_g=500), ["divergence"]),
    ([epoch(1)], steps_of(1, 0.7, 0.3, loss_g=float("nan")), ["divergence"]),
    (STILL, H, ["no progress"]),
    (STILL, steps_of(2, 0.7, 0.3, loss_g=2), []),  # the losses moved
    (STILL, steps_of(2, 1.0, 0.0, loss_g=9), ["D wins"]),  # what explains it is said alone
])
def test_each_problem_is_seen_in_its_signals_and_a_healthy_epoch_says_nothing(epochs, steps, seen):
    assert list(findings(epochs, steps)) == seen


def test_the_evidence_and_the_knob_name_the_values_and_the_problem_dates_from_its_first_epoch():
    assert findings([epoch(1, variety=0.1), epoch(2, variety=0.1)], steps_of(2, 0.4, 0.9)) == {"mode collapse": (
        "the grid's samples are 10% as varied as the real images, and D(G(z)) = 0.90 is above D(x) = 0.40")}
    assert findings([epoch(1, variety=0.8), epoch(2, variety=0.35)], H) == {
        "mode collapse": "the grid's samples are 35% as varied as the real images (they were 80%)"}
    assert knob("mode collapse", TrainConfig(lr_g=1e-3)) == \
        "lower lr_g (now 0.001) to at most lr_d (now 0.0002), or try recipe='improved'"
    assert knob("mode collapse", TrainConfig(lr_g=1e-3, lr_d=1e-3)) == \
        "lower lr_g (now 0.001), or try recipe='improved'"
    assert "recipe" not in knob("mode collapse", TrainConfig(recipe="improved"))
    assert knob("D wins", TrainConfig(lr_g=1, lr_d=1)) == \
        "lower lr_g (now 1) and lr_d (now 1) to the DCGAN recipe's 0.0002, or try recipe='improved'"
    assert knob("D wins", TrainConfig()) == "slow D down: lower lr_d (now 0.0002) to 0.0001, or try recipe='improved'"
    assert knob("D wins", TrainConfig(recipe="improved")) == "slow D down: lower lr_d (now 0.001) to 0.0005"
    assert knob("checkerboard", TrainConfig(lr_g=2e-3, lr_d=2e-3)) == \
        "lower lr_g (now 0.002) and lr_d (now 0.002) to the DCGAN recipe's 0.0002 and train longer: the pattern " \
        "fades as G learns"
    epochs = [{"epoch": 1}, {"epoch": 2, "diagnosis": {"D wins": "..."}}, {"epoch": 3, "diagnosis": {"D wins": "..."}},
              {"epoch": 4}]
    assert since(epochs[:3] + [{"epoch": 4}], "D wins") == 2
    assert since(epochs, "mode collapse") == 4


def test_a_run_records_and_says_what_it_sees_marks_it_on_the_curves_and_lists_it_in_compare(tmp_path, capsys):
    """Three epochs of a G that draws one image for every z while D takes it for real."""
    config = TrainConfig(image_size=16, lr_g=5e-3, lr_d=1e-4)
    diagnose = Diagnosis(config, to_uint8(smooth_images(256)))
    history, one = {"steps": [], "epochs": []}, smooth_images(1).expand(64, -1, -1, -1)
    for number in (1, 2, 3):
        history["steps"] += steps_of(number, 0.4, 0.9)
        history["epochs"].append({"epoch": number})
        lines = diagnose(history, grid_of(one + 0.01 * number))

    assert lines == [history["epochs"][-1]["diagnosis"]["mode collapse"]]
    assert lines[0] == ("mode collapse since epoch 1: the grid's samples are 0% as varied as the real images, and "
                        "D(G(z)) = 0.90 is above D(x) = 0.40: lower lr_g (now 0.005) to at most lr_d (now 0.0001), "
                        "or try recipe='improved' (see notebook 03's Troubleshooting: Mode collapse)")
    assert history["epochs"][-1]["signals"]["change"] == pytest.approx(0.01 / variety(smooth_images(64)), rel=0.5)
    assert diagnosis_marks(history) == [(0, 15, "mode collapse")]  # from the start of epoch 1 to the end of 3
    assert "mode collapse" in [t.get_text() for ax in plot_history(history, Figure()).axes for t in ax.texts]
    config.save(tmp_path / "config.json")
    (tmp_path / "history.json").write_text(json.dumps(history))
    compare_runs([tmp_path])
    assert "| mode collapse from 1 |" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- real small runs

@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """1,024 synthetic faces of 16x16: 32 steps an epoch at batch 32."""
    from utils.data import load_dataset

    return load_dataset(TrainConfig(data="synthetic", data_dir=str(tmp_path_factory.mktemp("data")), image_size=16,
                                    max_images=1024), progress=False)


def train_small(faces, tmp_path, **settings) -> list[dict]:
    from utils.training import train

    config = TrainConfig(image_size=16, latent_dim=32, g_width=16, d_width=16, batch_size=32, epochs=3, device="cpu",
                         amp="off", log_every=4, out=str(tmp_path / "run"), **settings)
    return train(config, progress=False, images=faces).history["epochs"]


@pytest.mark.parametrize("settings, named, evidence", [
    ({}, (), ""), ({"recipe": "improved"}, (), ""),  # healthy: nothing said
    ({"lr_g": 5e-3, "lr_d": 1e-4}, ("G fools D", "mode collapse"), "is above D(x)"),  # G 50 times faster than D
    ({"lr_g": 1.0, "lr_d": 1.0}, ("D wins",), "D is certain"),
    ({"lr_g": 2e-3, "lr_d": 2e-3}, ("checkerboard",), "a 2-pixel pattern covers the samples")],  # ten times DCGAN's
    ids=["dcgan", "improved", "g-outruns-d", "d-wins", "checkerboard"])
def test_a_small_run_names_what_goes_wrong_and_a_healthy_one_says_nothing(faces, tmp_path, capsys, settings, named,
                                                                          evidence):
    epochs = train_small(faces, tmp_path, **settings)
    assert all("signals" in e for e in epochs)
    out = capsys.readouterr().out
    if not named:
        assert [e.get("diagnosis") for e in epochs] == [None] * 3 and "since epoch" not in out
        return
    said = [line for line in out.splitlines() if line.startswith("  ")]
    (problem, line), = epochs[-1]["diagnosis"].items()
    assert problem in named and evidence in line
    assert said[-1] == "  " + line and said[-1].startswith(f"  {problem} since epoch ")


def test_each_line_points_to_a_section_of_notebook_03s_troubleshooting():
    notebook = json.loads((Path(__file__).parents[1] / "notebooks" / "03_training.ipynb").read_text())
    text = "\n".join("".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "markdown")
    troubleshooting = text[text.index("## Troubleshooting"):]
    headings = [line[4:] for line in troubleshooting.splitlines() if line.startswith("### ")]
    for problem, section in TROUBLESHOOTING.items():
        assert any(heading.startswith(section) for heading in headings), (problem, section, headings)


def test_each_stretch_of_a_problem_is_shaded_from_the_end_of_the_epoch_before():
    steps = [{"epoch": e, "step": s} for e, s in [(1, 5), (1, 10), (2, 15), (2, 20), (3, 25), (3, 30), (4, 35)]]
    epochs = [{"epoch": 1}, {"epoch": 2, "diagnosis": {"D wins": ""}},
              {"epoch": 3, "diagnosis": {"D wins": "", "checkerboard": ""}}, {"epoch": 4}]
    assert diagnosis_marks({"steps": steps, "epochs": epochs}) == [(10, 30, "D wins"), (20, 30, "checkerboard")]
