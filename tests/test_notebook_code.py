"""The code the notebooks teach is the code the package runs.

Notebook 02 writes the 64x64 generator and discriminator out as `nn.Sequential` stacks (its cells tagged
`networks`), notebook 03 writes one training step out as a function (its cell tagged `training-step`), notebook 04
the making of a GIF from a run's grids (`gif`), and notebook 05 the Fréchet distance (`frechet`) and slerp
(`slerp`). These tests execute those cells' source, as committed, with controlled inputs and compare the result
with `utils`: 02's networks must be `utils.models`' layer for layer, with the same weights from the same seed and
the same output; 03's step must be `utils.step.TrainingStep`'s computation: from the same weights, on the same
real batches and noise, in fp32 on the CPU, both end with the same losses and the same weights, bit for bit; 04's
GIF must have `make_gif`'s frames, pixel for pixel, its durations and its loop; 05's distance and slerp must give
`utils.metrics.frechet_distance`'s and `utils.explore.slerp`'s results on the same inputs. So a change to either
side (a layer, an activation, the order of the updates, the loss, a label, a duration, the formula) fails here.
"""

import copy
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from torch import nn

from utils.explore import latents, slerp
from utils.gif import make_gif
from utils.metrics import frechet_distance
from utils.models import Discriminator, Generator, count_parameters, layer_table
from utils.run import frame_path
from utils.step import TrainingStep
from utils.visualize import image_grid, write_png

from test_gif import read_gif  # what a GIF viewer plays, read as the GIF tests read it

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def tagged_source(name: str, tag: str) -> str:
    """The source of notebook `name`'s code cells tagged `tag`, in order, joined as one program."""
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    cells = [cell.source for cell in notebook.cells
             if cell.cell_type == "code" and tag in cell.metadata.get("tags", [])]
    assert cells, f"{name} has no code cell tagged {tag!r}"
    return "\n\n".join(cells)


def run_cells(name: str, tag: str, **inputs) -> dict:
    """Execute the tagged cells with `inputs` as the notebook's variables; return what they define."""
    namespace = dict(inputs)
    exec(compile(tagged_source(name, tag), f"{name}.ipynb[{tag}]", "exec"), namespace)
    return namespace


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    """Every weight and buffer (BatchNorm's running statistics too) equal, bit for bit."""
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[key], sb[key]) for key in sa)


# ---------------------------------------------------------------------------------------------- notebook 02

@pytest.mark.parametrize("latent_dim, g_width, d_width, seed", [(128, 64, 64, 42), (16, 8, 4, 7)],
                         ids=["defaults", "small"])
def test_notebook_02_networks_are_the_package_networks_at_64px(latent_dim, g_width, d_width, seed):
    cells = run_cells("02_models", "networks", latent_dim=latent_dim, g_width=g_width, d_width=d_width, seed=seed)
    torch.manual_seed(seed)
    package_g = Generator(image_size=64, latent_dim=latent_dim, width=g_width)
    torch.manual_seed(seed)
    package_d = Discriminator(image_size=64, width=d_width)

    z = torch.randn(6, latent_dim, 1, 1, generator=torch.Generator().manual_seed(1))
    images = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    for mine, package, example in ((cells["netG"], package_g, z), (cells["netD"], package_d, images)):
        assert type(mine) is nn.Sequential
        # the same layers in the same order: a layer's repr holds its type, sizes and options
        assert [repr(layer) for layer in mine] == [repr(layer) for layer in package]
        assert [(shape, params) for _, shape, params in layer_table(mine, example)] == \
               [(shape, params) for _, shape, params in layer_table(package, example)]
        assert count_parameters(mine) == count_parameters(package)
        # the same seed gives the same initial weights, so the same output for the same input
        assert states_equal(mine, package)
        assert torch.equal(mine(example), package(example))          # training mode: BatchNorm on the batch
        assert states_equal(mine, package)                           # ... and the same running statistics
        mine.eval(), package.eval()
        assert torch.equal(mine(example), package(example))          # eval mode: the running statistics
    assert cells["netG"](z).shape == (6, 3, 64, 64)
    assert cells["netD"](images).shape == (6,)


def test_notebook_02_networks_follow_the_seed():
    """The equality above is not an accident of fixed weights: another seed gives other weights."""
    one = run_cells("02_models", "networks", latent_dim=16, g_width=8, d_width=4, seed=1)
    two = run_cells("02_models", "networks", latent_dim=16, g_width=8, d_width=4, seed=2)
    assert not states_equal(one["netG"], two["netG"]) and not states_equal(one["netD"], two["netD"])


# ---------------------------------------------------------------------------------------------- notebook 03

def test_notebook_03_training_step_is_the_package_training_step():
    step_function = run_cells("03_training", "training-step")["training_step"]
    image_size, latent_dim, batch, steps = 16, 16, 8, 4
    torch.manual_seed(0)
    generator, discriminator = Generator(image_size, latent_dim, 8), Discriminator(image_size, 8)
    initial = copy.deepcopy(generator), copy.deepcopy(discriminator)
    data = torch.Generator().manual_seed(1)
    reals = [torch.rand(batch, 3, image_size, image_size, generator=data) * 2 - 1 for _ in range(steps)]
    noise = [torch.randn(batch, latent_dim, 1, 1, generator=data) for _ in range(steps)]

    def adam(model, **options):  # the DCGAN recipe's rates and betas, as train() sets them
        return torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.5, 0.999), **options)

    # the notebook's step: its own copies of the networks, plain torch.optim.Adam as in the notebook
    hand_g, hand_d = copy.deepcopy(generator), copy.deepcopy(discriminator)
    hand_opt_g, hand_opt_d = adam(hand_g), adam(hand_d)
    hand = [step_function(hand_g, hand_d, hand_opt_g, hand_opt_d, real, z) for real, z in zip(reals, noise)]

    # utils.step's step, with the optimiser options train() uses on a CPU (foreach Adam), fp32, no channels_last
    opt_g, opt_d = adam(generator, foreach=True), adam(discriminator, foreach=True)
    step = TrainingStep(generator, discriminator, opt_g, opt_d, loss="bce")
    package = []
    for real, z in zip(reals, noise):
        step(real, z)
        package.append(step.read(1))

    # read() rounds to 5 decimals for the history; the notebook returns full floats
    for mine, theirs in zip(hand, package):
        assert {key: round(value, 5) for key, value in mine.items()} == theirs
    # bit for bit: every weight, every BatchNorm statistic, every Adam moment
    assert states_equal(hand_g, generator) and states_equal(hand_d, discriminator)
    for hand_opt, opt in ((hand_opt_g, opt_g), (hand_opt_d, opt_d)):
        for a, b in zip(hand_opt.state.values(), opt.state.values()):
            assert all(torch.equal(a[key], b[key]) for key in ("exp_avg", "exp_avg_sq"))
    # and both really trained: the weights moved
    assert not states_equal(generator, initial[0]) and not states_equal(discriminator, initial[1])


def test_notebook_03_training_step_losses_are_exact_before_rounding():
    """The unrounded losses of one step are the same floats as TrainingStep's sums (no tolerance needed)."""
    step_function = run_cells("03_training", "training-step")["training_step"]
    torch.manual_seed(3)
    generator, discriminator = Generator(16, 16, 8), Discriminator(16, 8)
    hand_g, hand_d = copy.deepcopy(generator), copy.deepcopy(discriminator)
    real = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    z = torch.randn(8, 16, 1, 1, generator=torch.Generator().manual_seed(5))
    adam = lambda model: torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.5, 0.999))
    mine = step_function(hand_g, hand_d, adam(hand_g), adam(hand_d), real, z)
    step = TrainingStep(generator, discriminator, adam(generator), adam(discriminator))
    step(real, z)
    assert [mine[key] for key in ("loss_d", "loss_g", "d_real", "d_fake")] == step.totals.tolist()


def test_notebook_03_training_step_is_the_package_training_step_with_smoothed_and_noisy_labels():
    """With real_label, fake_label and label_flip set, both steps use the same targets (the flips drawn from the
    same random stream, real images first) and end with the same weights, bit for bit."""
    step_function = run_cells("03_training", "training-step")["training_step"]
    labels = dict(real_label=0.9, fake_label=0.1, label_flip=0.25)
    torch.manual_seed(6)
    generator, discriminator = Generator(16, 16, 8), Discriminator(16, 8)
    hand_g, hand_d = copy.deepcopy(generator), copy.deepcopy(discriminator)
    data = torch.Generator().manual_seed(7)
    batches = [(torch.rand(8, 3, 16, 16, generator=data) * 2 - 1, torch.randn(8, 16, 1, 1, generator=data))
               for _ in range(3)]
    adam = lambda model: torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.5, 0.999))
    torch.manual_seed(8)  # the coin tosses of label_flip
    hand = [step_function(hand_g, hand_d, adam_g, adam_d, real, z, **labels)
            for adam_g, adam_d in [(adam(hand_g), adam(hand_d))] for real, z in batches]
    step = TrainingStep(generator, discriminator, adam(generator), adam(discriminator), **labels)
    torch.manual_seed(8)
    package = []
    for real, z in batches:
        step(real, z)
        package.append(step.totals.tolist())
        step.totals.zero_()
    assert [[mine[key] for key in ("loss_d", "loss_g", "d_real", "d_fake")] for mine in hand] == package
    assert states_equal(hand_g, generator) and states_equal(hand_d, discriminator)
    # the labels matter: the default targets give another D
    plain_d = copy.deepcopy(hand_d)
    torch.manual_seed(6)
    g2, d2 = Generator(16, 16, 8), Discriminator(16, 8)
    plain = TrainingStep(g2, d2, adam(g2), adam(d2))
    for real, z in batches:
        plain(real, z)
    assert not states_equal(d2, plain_d)


# ---------------------------------------------------------------------------------------------- notebook 04

@pytest.mark.parametrize("image_size, faces, epochs", [(16, 64, [1, 2, 3, 998, 999, 1000]), (64, 8, [1, 2]), (16, 4, [7])],
                         ids=["small-grids-past-epoch-999", "wide-grids", "one-epoch"])
def test_notebook_04_gif_by_hand_is_make_gif(tmp_path, image_size, faces, epochs):
    """On grids that must be enlarged (146 px: x4) and past epoch 999 (sorted by number, not name), on grids wide
    enough as they are (530 px), and on a run of one epoch: the same frames, durations and loop as make_gif."""
    random = torch.Generator().manual_seed(image_size + len(epochs))
    for epoch in epochs:   # every epoch its own faces, so a frame out of order or missing shows
        images = torch.rand(faces, 3, image_size, image_size, generator=random) * 2 - 1
        write_png(image_grid(images).permute(1, 2, 0).numpy(), frame_path(tmp_path, epoch))
    cells = run_cells("04_gif", "gif", run_dir=tmp_path, frame_ms=120, hold_last_ms=900)
    hand = read_gif(cells["hand_gif"])
    package = read_gif(make_gif(tmp_path, frame_ms=120, hold_last_ms=900))
    assert len(hand[0]) == len(package[0]) == len(epochs)
    assert all(np.array_equal(mine, theirs) for mine, theirs in zip(hand[0], package[0]))
    assert hand[1:] == package[1:] == ([120] * (len(epochs) - 1) + [900], 0)
    assert hand[0][0].shape[1] >= 512


# ---------------------------------------------------------------------------------------------- notebook 05

def random_gaussian(dim: int, rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A mean and a covariance of rank min(dim, rank): the statistics of `rank` samples' features."""
    generator = torch.Generator().manual_seed(seed)
    factor = torch.randn(dim, rank, generator=generator, dtype=torch.float64)
    return torch.randn(dim, generator=generator, dtype=torch.float64), factor @ factor.T / rank


@pytest.mark.parametrize("dim, rank", [(64, 80), (256, 1000), (64, 20), (256, 100)],
                         ids=["full-rank", "full-rank-256", "singular", "singular-256"])
def test_notebook_05_frechet_distance_is_the_package_frechet_distance(dim, rank):
    """The notebook takes Tr((sigma1 sigma2)^(1/2)) from the eigenvalues of the product (np.linalg.eigvals), the
    package from the symmetric S sigma2 S (torch.linalg.eigh): the same number up to rounding. Full-rank, both are
    exact to ~1e-16 relative (1e-12 allowed). A singular covariance (fewer images than features) has dim - rank zero
    eigenvalues, which each method returns as rounding noise of about eps x lambda_max; their square roots, up to
    sqrt(eps x lambda_max) each, enter the distance twice: the two may differ by 2 (dim - rank) sqrt(eps x
    lambda_max), and no more (measured: 4e-7 for 64 and 20, a twentieth of that bound; 1e-7 for 256 and 100)."""
    frechet_by_hand = run_cells("05_evaluate", "frechet")["frechet_by_hand"]
    (mu1, sigma1), (mu2, sigma2) = random_gaussian(dim, rank, seed=1), random_gaussian(dim, rank, seed=2)
    mine, package = frechet_by_hand(mu1, sigma1, mu2, sigma2), frechet_distance(mu1, sigma1, mu2, sigma2)
    largest = torch.linalg.matrix_norm(sigma1, 2) * torch.linalg.matrix_norm(sigma2, 2)   # >= lambda_max(sigma1 sigma2)
    noise = 2 * max(0, dim - rank) * (torch.finfo(torch.float64).eps * largest).sqrt().item()
    assert mine == pytest.approx(package, rel=1e-12, abs=noise)
    assert mine > 0 and isinstance(mine, float)
    # the numpy arrays of pytorch-fid's saved statistics go in as well, and 1-d Gaussians give the closed form
    assert frechet_by_hand(mu1.numpy(), sigma1.numpy(), mu2.numpy(), sigma2.numpy()) == mine
    one_d = [torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([3.0]), torch.tensor([[9.0]])]
    assert frechet_by_hand(*one_d) == pytest.approx((1 - 3) ** 2 + (2 - 3) ** 2, rel=1e-12)


def test_notebook_05_slerp_is_the_package_slerp():
    """On the same random latents, at every t, both give the same latents bit for bit: the same operations in the
    same order (the package adds only the case of two latents in one direction, which random latents never are)."""
    slerp_by_hand = run_cells("05_evaluate", "slerp")["slerp_by_hand"]
    z0, z1 = latents(12, 128, seed=3).split(6)   # six walks at once, as interpolation_frames slerps them
    for t in (0.0, 0.1, 0.25, 0.5, 0.9, 1.0):
        mine, package = slerp_by_hand(z0, z1, t), slerp(z0, z1, t)
        assert mine.shape == z0.shape and torch.equal(mine, package), t
    assert not torch.equal(slerp_by_hand(z0, z1, 0.5), (z0 + z1) / 2)   # not a straight line
    halfway = slerp_by_hand(z0, z1, 0.5).flatten(1).norm(dim=1)
    assert torch.allclose(halfway, (z0.flatten(1).norm(dim=1) + z1.flatten(1).norm(dim=1)) / 2)
