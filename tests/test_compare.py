"""Comparing runs (utils/compare.py) on real tiny runs trained here."""

import shutil

import pytest
import torch

from utils.compare import comparison_table, differing_fields, epoch_positions, list_runs, plot_runs, run_labels
from utils.config import TrainConfig
from utils.errors import UserError
from utils.training import train

IMAGES = torch.randint(0, 256, (128, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three sibling runs as notebook 03 makes them: the defaults, another lr_g, another batch size."""
    root = tmp_path_factory.mktemp("compare")
    base = dict(image_size=16, latent_dim=16, g_width=8, d_width=8, epochs=2, device="cpu", num_samples=16, log_every=2)
    made = []
    for name, change in (("a", {}), ("b", {"lr_g": 1e-3}), ("c", {"batch_size": 64})):
        config = TrainConfig(**base | {"batch_size": 32} | change, out=str(root / "generated" / name))
        made.append(train(config, progress=False, images=IMAGES).run_dir)
    train(TrainConfig(**base | {"image_size": 32, "batch_size": 32}, out=str(root / "generated" / "big")), progress=False,
          images=torch.zeros(64, 3, 32, 32, dtype=torch.uint8))
    return root, made


def test_list_runs_finds_the_run_folders_of_one_image_size_oldest_first(runs):
    root, made = runs
    assert list_runs(root / "generated", image_size=16) == made
    assert len(list_runs(root / "generated")) == 4
    (root / "generated" / "notes").mkdir()  # not a run
    assert list_runs(root / "generated", image_size=16) == made


def test_the_table_shows_only_the_fields_that_differ(runs):
    _, made = runs
    configs = [TrainConfig.load(run / "config.json") for run in made]
    assert differing_fields(configs) == ["batch_size", "lr_g"]

    table = comparison_table(made, fid={made[1]: 123.456})

    header, rule, *rows = table.splitlines()
    assert header == "| run | batch_size | lr_g | epochs | loss_d | loss_g | D(x) | D(G(z)) | FID |"
    assert rows[0].startswith("| a | 32 | 0.0002 | 2 |") and rows[0].endswith("| - |")
    assert rows[1].startswith("| b | 32 | 0.001 | 2 |") and rows[1].endswith("| 123.5 |")
    assert rows[2].startswith("| c | 64 | 0.0002 | 2 |")
    assert run_labels(made) == ["batch_size=32, lr_g=0.0002", "batch_size=32, lr_g=0.001", "batch_size=64, lr_g=0.0002"]
    twin = made[0].with_name("a-twin")  # same settings (e.g. your own networks): the folder names tell them apart
    shutil.copytree(made[0], twin)
    assert run_labels([made[0], twin, made[1]]) == ["a", "a-twin", "lr_g=0.001"]  # batch_size is the same in these


def test_curves_line_up_by_epoch_whatever_the_batch_size(runs):
    import json

    _, made = runs
    small, large = (json.loads((made[i] / "history.json").read_text()) for i in (0, 2))
    assert epoch_positions(small) == [0.5, 1.0, 1.5, 2.0]   # 4 steps per epoch, read every 2
    assert epoch_positions(large) == [1.0, 2.0]             # 2 steps per epoch

    fig = plot_runs(made)

    d_loss = fig.axes[3]  # after the three grids
    assert [list(line.get_xdata()) for line in d_loss.lines] == [[0.5, 1.0, 1.5, 2.0]] * 2 + [[1.0, 2.0]]
    assert [ax.get_title() for ax in fig.axes[:3]] == [f"{label}\nepoch 2" for label in run_labels(made)]


def test_compare_runs_needs_a_run():
    from utils.compare import compare_runs

    with pytest.raises(UserError, match="at least one run folder"):
        compare_runs([])
