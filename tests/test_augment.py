import pytest
import torch

from utils.augment import color, cutout, diff_augment, translation

ALL = "color,translation,cutout"


def batch(n: int = 16, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", ALL])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_each_policy_keeps_shape_and_dtype_changes_the_batch_and_passes_gradients(policy, dtype):
    x = batch().to(dtype).requires_grad_(True)

    y = diff_augment(x, policy, seeded())

    assert y.shape == x.shape and y.dtype == dtype and not torch.equal(y, x)
    y.float().square().sum().backward()
    assert x.grad.abs().sum() > 0


def test_the_seed_decides_the_augmentation_and_an_empty_policy_changes_nothing():
    x = batch()
    first, again, other = (diff_augment(x, ALL, seeded(s)) for s in (7, 7, 8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert diff_augment(x, "", seeded()) is x


def test_translation_shifts_content_and_fills_the_border_with_zeros():
    x = batch(n=32)
    y = translation(x, seeded(), ratio=0.125)  # at most 2 pixels
    rows, cols = torch.arange(16).view(16, 1), torch.arange(16).view(1, 16)
    found = []
    for image, shifted in zip(x, y):
        # out[i, j] = in[i + dy, j + dx] inside the image, zero where that falls outside
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.equal(shifted, torch.roll(image, shifts=(-dy, -dx), dims=(1, 2))
                                  * ((rows + dy >= 0) & (rows + dy < 16) & (cols + dx >= 0) & (cols + dx < 16)))]
        assert len(matches) == 1, "each image is its input shifted by one offset within the ratio"
        found.append(matches[0])
    assert len(set(found)) > 5 and any(offset != (0, 0) for offset in found)  # offsets differ between images


def test_cutout_zeroes_one_square_of_half_the_image_size():
    x = batch(n=64).abs() + 0.1  # no zeros of its own
    y = cutout(x, seeded(), ratio=0.5)
    full_squares = 0
    for image, cut in zip(x, y):
        zero = cut == 0
        assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2])  # same square in every channel
        rows, cols = zero[0].any(1).nonzero().flatten(), zero[0].any(0).nonzero().flatten()
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert zero[0, top:bottom, left:right].all() and zero[0].sum() == (bottom - top) * (right - left)  # a rectangle
        assert bottom - top <= 8 and right - left <= 8  # a square, clipped where it hangs over the border
        if 0 < top and bottom < 16 and 0 < left and right < 16:
            assert zero[0].sum() == 8 * 8
            full_squares += 1
        assert torch.equal(cut[~zero], image[~zero])  # everything else untouched
    assert full_squares > 5


def test_color_shifts_brightness_and_changes_saturation_and_contrast():
    x = batch(n=32)
    y = color(x, seeded())
    brightness = y.mean(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3))  # saturation and contrast keep the mean
    assert (brightness.abs() <= 0.5 + 1e-5).all() and brightness.abs().max() > 0.1
    assert not torch.allclose(y.std(dim=(1, 2, 3)), x.std(dim=(1, 2, 3)), atol=1e-2)  # contrast/saturation moved
