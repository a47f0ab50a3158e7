"""utils/data.py: synthetic faces, the decoded cache, and reading folders and zips of real image files."""

import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import utils.data as data
from utils.config import TrainConfig
from utils.data import cache_path, load_dataset, load_images, synthetic_faces


def save(path: Path, image: Image.Image, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def solid(colour, size=(40, 30), mode="RGB") -> Image.Image:
    return Image.new(mode, size, colour)


# ------------------------------------------------------------------------------------------ synthetic

@pytest.mark.parametrize("size", [16, 32, 64, 128])
def test_synthetic_faces_shape_and_dtype(size):
    faces = synthetic_faces(6, size, seed=1)
    assert faces.shape == (6, 3, size, size)
    assert faces.dtype == torch.uint8


def test_synthetic_faces_are_deterministic_per_seed():
    assert torch.equal(synthetic_faces(8, 32, seed=3), synthetic_faces(8, 32, seed=3))
    assert not torch.equal(synthetic_faces(8, 32, seed=3), synthetic_faces(8, 32, seed=4))


def test_synthetic_faces_prefix_does_not_depend_on_count():
    many = synthetic_faces(70, 64, seed=7)   # 70 faces are drawn in several chunks at 64px
    assert torch.equal(many[:5], synthetic_faces(5, 64, seed=7))
    assert torch.equal(many[:40], synthetic_faces(40, 64, seed=7))


def test_synthetic_faces_leave_torch_threads_as_they_were():
    threads = torch.get_num_threads()
    synthetic_faces(2, 16)
    assert torch.get_num_threads() == threads


def test_synthetic_faces_are_structured_and_varied():
    faces = synthetic_faces(64, 64, seed=0).float()
    per_image_std = faces.flatten(1).std(dim=1)
    assert per_image_std.min() > 25   # drawn shapes, not flat colour
    distance = (faces.flatten(1)[:, None] - faces.flatten(1)[None]).abs().mean(-1)
    distance += torch.eye(64) * 1e9
    assert distance.min() > 10   # no two faces alike
    # hair colours vary: the mean colour of the top rows (hair) spreads over many values
    top_colour = faces[:, :, :8, 24:40].mean(dim=(2, 3))
    assert top_colour.std(dim=0).min() > 20


def test_synthetic_faces_are_the_same_faces_at_every_resolution():
    small, large = synthetic_faces(16, 32, seed=2).float(), synthetic_faces(16, 64, seed=2).float()
    other = synthetic_faces(16, 32, seed=5).float()
    downscaled = F.avg_pool2d(large, 2)
    assert (downscaled - small).abs().mean() < 8
    assert (downscaled - other).abs().mean() > 3 * (downscaled - small).abs().mean()


# ------------------------------------------------------------------------------------------ the cache

def mapped_from_file(tensor: torch.Tensor, path: Path) -> bool:
    """Whether the tensor's memory lies in a mapping of `path` (Linux: /proc/self/maps)."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, *rest = line.split()
        low, high = (int(value, 16) for value in span.split("-"))
        if rest and rest[-1] == str(path.resolve()) and low <= address < high:
            return True
    return False


def test_load_dataset_builds_the_cache_once_then_memory_maps_it(tmp_path, monkeypatch, capsys):
    config = TrainConfig(data="synthetic", data_dir=str(tmp_path), image_size=32, max_images=50, seed=9)
    first = load_dataset(config, progress=False)
    assert "built" in capsys.readouterr().out
    path = cache_path(config)
    assert path.is_file() and path.parent == tmp_path / "cache"
    assert torch.equal(first, synthetic_faces(50, 32, seed=9))

    monkeypatch.setattr(data, "synthetic_faces", lambda *args: pytest.fail("decoded again"))
    modified = path.stat().st_mtime_ns
    second = load_dataset(config, progress=False)
    out = capsys.readouterr().out
    assert "reusing" in out and str(path) in out
    assert path.stat().st_mtime_ns == modified
    assert torch.equal(first, second)
    assert second.shape == (50, 3, 32, 32) and second.dtype == torch.uint8
    if Path("/proc/self/maps").exists():
        assert mapped_from_file(second, path)
    expected = second[0].clone()
    second[0] = 0   # copy-on-write: writing into the tensor leaves the file alone
    assert torch.equal(load_dataset(config, progress=False)[0], expected)


def test_synthetic_max_images_0_means_the_default_count(tmp_path):
    images = load_dataset(TrainConfig(data="synthetic", data_dir=str(tmp_path), image_size=16, max_images=0, seed=3),
                          progress=False)
    assert len(images) == data.SYNTHETIC_DEFAULT_COUNT == 20_000
    assert torch.equal(images[:4], synthetic_faces(4, 16, seed=3))


def test_cache_path_depends_on_everything_that_changes_the_images(tmp_path):
    base = dict(data="synthetic", data_dir=str(tmp_path), image_size=32, max_images=10, seed=1)
    path = cache_path(TrainConfig(**base))
    assert cache_path(TrainConfig(**base)) == path
    for change in (dict(image_size=64), dict(max_images=11), dict(seed=2), dict(data_dir=str(tmp_path / "x"))):
        assert cache_path(TrainConfig(**{**base, **change})) != path


def test_a_folder_cache_is_rebuilt_when_the_folder_changes(tmp_path):
    save(tmp_path / "faces" / "a.png", solid((255, 0, 0)))
    config = TrainConfig(data=str(tmp_path / "faces"), data_dir=str(tmp_path / "data"), image_size=16)
    assert len(load_dataset(config, progress=False)) == 1
    save(tmp_path / "faces" / "b.png", solid((0, 255, 0)))
    assert len(load_dataset(config, progress=False)) == 2


def test_an_interrupted_build_leaves_no_cache(tmp_path, monkeypatch):
    def interrupted_save(file, array):
        file.write(b"the first bytes of a .npy")
        raise KeyboardInterrupt

    config = TrainConfig(data="synthetic", data_dir=str(tmp_path), image_size=16, max_images=4)
    monkeypatch.setattr(np, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(config, progress=False)
    assert list((tmp_path / "cache").iterdir()) == []   # neither a cache nor a temporary file
    monkeypatch.undo()
    assert torch.equal(load_dataset(config, progress=False), synthetic_faces(4, 16, seed=config.seed))


# ------------------------------------------------------------------------------------------ folders and zips

def test_load_images_reads_nested_folders_in_sorted_order_and_converts_modes(tmp_path):
    root = tmp_path / "faces"
    save(root / "a_rgb.jpg", solid((200, 30, 30)), quality=95)
    save(root / "b" / "gray.png", solid(128, mode="L"))
    save(root / "b" / "c" / "palette.gif", solid((30, 200, 30)).convert("P"))
    transparent = solid((0, 0, 255, 0), mode="RGBA")
    save(root / "d_rgba.png", transparent)
    save(root / "e_cmyk.jpg", solid((0, 0, 0, 0), mode="CMYK"))   # CMYK white
    save(root / "f_large.jpg", solid((30, 30, 200), size=(3000, 2000)))
    save(root / "g.bmp", solid((10, 20, 30)))
    save(root / "h.webp", solid((250, 250, 0)), lossless=True)
    save(root / "i.JPEG", solid((0, 200, 200)))
    (root / "notes.txt").write_text("not an image, not counted")
    save(root / ".ipynb_checkpoints" / "copy.png", solid((1, 2, 3)))   # hidden folders are skipped

    with warnings.catch_warnings():
        warnings.simplefilter("error")   # nothing here is broken
        images = load_images(root, 16, progress=False)

    assert images.shape == (9, 3, 16, 16) and images.dtype == torch.uint8
    mean = images.float().mean(dim=(2, 3))   # one colour per image, in sorted order: b/c/ before b/gray.png
    expected = [(200, 30, 30), (30, 200, 30), (128, 128, 128), (255, 255, 255), (255, 255, 255),
                (30, 30, 200), (10, 20, 30), (250, 250, 0), (0, 200, 200)]
    assert (mean - torch.tensor(expected, dtype=torch.float32)).abs().max() < 6


def test_load_images_centre_crops_to_a_square(tmp_path):
    wide = Image.new("RGB", (90, 30), (255, 0, 0))
    wide.paste((0, 0, 255), (30, 0, 60, 30))   # blue middle third = the centre square
    images = load_images(save(tmp_path / "wide.png", wide).parent, 8, progress=False)
    assert images[0, 2].float().mean() > 240 and images[0, 0].float().mean() < 15


def test_max_images_takes_the_first_files(tmp_path):
    for i in range(5):
        save(tmp_path / f"{i}.png", solid((i * 50, 0, 0)))
    images = load_images(tmp_path, 8, max_images=2)   # with the progress bar
    assert images.shape[0] == 2
    assert images[:, 0].float().mean(dim=(1, 2)).tolist() == [0.0, 50.0]


def test_broken_files_are_skipped_and_counted_in_one_warning(tmp_path):
    for i in range(3):
        save(tmp_path / f"good{i}.png", solid((0, 0, 255)))
    jpeg = save(tmp_path / "truncated.jpg", Image.effect_noise((256, 256), 64).convert("RGB")).read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not a JPEG")

    with pytest.warns(UserWarning) as record:
        images = load_images(tmp_path, 16, progress=False)
    assert len(record) == 1
    message = str(record[0].message)
    assert message.startswith("skipped 3 of 6 files that are not readable images")
    assert str(tmp_path) in message
    assert images.shape[0] == 3
    assert (images[:, 2] == 255).all()


def test_decompression_bombs_are_skipped_not_fatal(tmp_path, monkeypatch):
    save(tmp_path / "normal.png", solid((0, 255, 0), size=(10, 10)))
    save(tmp_path / "huge.png", solid((255, 0, 0), size=(100, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)   # 100 x 100 is now > 2 x the limit: a "bomb"
    with pytest.warns(UserWarning, match="skipped 1 of 2 .*DecompressionBombError"):
        images = load_images(tmp_path, 8, progress=False)
    assert images.shape[0] == 1 and images[0, 1].float().mean() > 250


def test_zip_is_read_in_place_and_hostile_member_names_write_nothing(tmp_path, monkeypatch):
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    archive = tmp_path / "upload" / "faces.zip"
    archive.parent.mkdir()
    png = save(tmp_path / "one.png", solid((255, 0, 0))).read_bytes()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("faces/a.png", png)
        zf.writestr("faces/nested/b.png", png)
        zf.writestr("../evil.png", png)
        zf.writestr("/abs/evil.png", png)
        zf.writestr("__MACOSX/faces/._a.png", b"resource fork")
        zf.writestr("faces/readme.txt", "not an image")
    before = sorted(tmp_path.rglob("*"))

    config = TrainConfig(data=str(archive), data_dir=str(tmp_path / "data"), image_size=16)
    images = load_dataset(config, progress=False)

    assert images.shape == (4, 3, 16, 16)   # the hostile names were simply read
    assert (images[:, 0] == 255).all()
    created = set(tmp_path.rglob("*")) - set(before)
    assert all((tmp_path / "data") in path.parents or path == tmp_path / "data" for path in created)
    assert [p.name for p in (tmp_path / "data").rglob("*") if p.is_file()] == [cache_path(config).name]
    assert not Path("/abs/evil.png").exists() and not (tmp_path.parent / "evil.png").exists()


# ------------------------------------------------------------------------------------------ errors

def test_a_missing_source_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*'synthetic' or 'kaggle'"):
        load_images(tmp_path / "nowhere", 16)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(TrainConfig(data=str(tmp_path / "nowhere.zip"), data_dir=str(tmp_path)))


def test_a_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=f"no images found in {tmp_path}: expected files ending in .jpg"):
        load_images(tmp_path, 16)
    empty_zip = tmp_path / "empty.zip"
    zipfile.ZipFile(empty_zip, "w").close()
    with pytest.raises(ValueError, match="no images found"):
        load_images(empty_zip, 16)


def test_a_folder_of_only_broken_files_is_an_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.png").write_text("nope")
    with pytest.raises(ValueError, match="no images found in .*none of its 2 image files could be decoded"):
        load_images(tmp_path, 16, progress=False)


def test_a_file_that_is_not_a_zip_is_an_error(tmp_path):
    (tmp_path / "faces.tar").write_bytes(b"\0" * 1024)
    with pytest.raises(ValueError, match="neither a folder nor a .zip"):
        load_images(tmp_path / "faces.tar", 16)
