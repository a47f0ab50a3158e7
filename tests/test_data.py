"""utils/data.py and utils/image_files.py: synthetic faces, the decoded cache, and reading folders and zips of real
image files."""

import os
import re
import signal
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import utils.data as data
import utils.image_files as image_files
from small_disk import small_disk
from utils.config import TrainConfig
from utils.data import cache_path, load_dataset
from utils.image_files import DataError, DataNotFound, load_images
from utils.synthetic import synthetic_faces
from utils.files import CannotWrite
from utils.run import frame_path
from utils.visualize import save_grid

REPO = Path(__file__).resolve().parents[1]


def save(path: Path, image: Image.Image, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def solid(colour, size=(40, 30), mode="RGB") -> Image.Image:
    return Image.new(mode, size, colour)


# ------------------------------------------------------------------------------------------ synthetic

@pytest.mark.parametrize("size", [16, 32, 64, 128])
def test_synthetic_faces_are_uint8_images_determined_by_their_seed(size):
    faces = synthetic_faces(6, size, seed=3)
    assert faces.shape == (6, 3, size, size) and faces.dtype == torch.uint8
    assert torch.equal(faces, synthetic_faces(6, size, seed=3))
    assert not torch.equal(faces, synthetic_faces(6, size, seed=4))


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


def test_dangling_and_looping_symbolic_links_are_skipped_and_counted_in_one_warning(tmp_path, capsys):
    folder = tmp_path / "faces"
    for i in range(3):
        save(folder / f"good{i}.png", solid((0, 0, 255)))
    (folder / "a-dangling.png").symlink_to(folder / "deleted.png")
    (folder / "b-loop.jpg").symlink_to("b-loop.jpg")   # points to itself
    (folder / "c-linked.png").symlink_to(folder / "good0.png")   # a working link is read like its target
    config = TrainConfig(data=str(folder), data_dir=str(tmp_path / "data"), image_size=16)

    with pytest.warns(UserWarning) as record:
        images = load_dataset(config, progress=False)
    assert len(record) == 1
    assert str(record[0].message) == (f"skipped 2 of 6 files that are not readable images (e.g. {folder}/a-dangling.png: "
                                      f"a symbolic link that points to nothing ({folder}/deleted.png), so not read)")
    assert images.shape == (4, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(load_dataset(config, progress=False), images)   # the cache: nothing decoded again
    (folder / "a-dangling.png").unlink()
    with pytest.warns(UserWarning, match=rf"^skipped 1 of 5 files .*\(e\.g\. {folder}/b-loop\.jpg: a symbolic link "
                                         r"that loops \(b-loop\.jpg\), so not read\)$"):
        assert len(load_images(folder, 16, progress=False)) == 4


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
    assert sorted(p.name for p in (tmp_path / "data").rglob("*") if p.is_file()) == [".lock", cache_path(config).name]
    assert not Path("/abs/evil.png").exists() and not (tmp_path.parent / "evil.png").exists()


# ------------------------------------------------------------------------------------------ errors

def test_a_missing_source_says_what_to_pass(tmp_path):
    with pytest.raises(DataNotFound, match="does not exist.*'synthetic' or 'kaggle'"):
        load_images(tmp_path / "nowhere", 16)
    with pytest.raises(DataNotFound, match="does not exist"):
        load_dataset(TrainConfig(data=str(tmp_path / "nowhere.zip"), data_dir=str(tmp_path)))


def test_a_source_without_readable_images_is_an_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=f"no images found in {tmp_path}: expected files ending in .jpg"):
        load_images(tmp_path, 16)
    zipfile.ZipFile(tmp_path / "empty.zip", "w").close()
    with pytest.raises(ValueError, match="no images found"):
        load_images(tmp_path / "empty.zip", 16)
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.png").write_text("nope")
    with pytest.raises(DataError, match="no images found in .*none of its 2 image files could be decoded"):
        load_images(tmp_path, 16, progress=False)
    (tmp_path / "faces.tar").write_bytes(b"\0" * 1024)
    with pytest.raises(DataError, match="neither a folder nor a .zip"):
        load_images(tmp_path / "faces.tar", 16)


# ------------------------------------------------------------------------------------------ a cache that lies

def synthetic_config(tmp_path, **changes) -> TrainConfig:
    return TrainConfig(**{**dict(data="synthetic", data_dir=str(tmp_path), image_size=16, max_images=8, seed=5),
                          **changes})


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def replace_with(array: np.ndarray):
    return lambda path: np.save(path, array)


@pytest.mark.parametrize("damage,reason", [
    (truncate, r"has 1,000 bytes but its header announces 6,272 \(truncated or overwritten\)"),
    (lambda path: path.write_bytes(b""), r"is not a readable \.npy file \(EOF: reading magic string"),
    (lambda path: path.write_text("not an array"), r"is not a readable \.npy file \(the magic string is not correct"),
    (replace_with(np.zeros((8, 3, 32, 32), np.uint8)), r"holds uint8 images of shape \(3, 32, 32\), not uint8 of "
                                                       r"shape \(3, 16, 16\)"),
    (replace_with(np.zeros((8, 3, 16, 16), np.float32)), r"holds float32 images of shape \(3, 16, 16\), not uint8"),
    (replace_with(np.zeros((8, 16, 16, 3), np.uint8)), r"holds uint8 images of shape \(16, 16, 3\)"),
    (replace_with(np.asfortranarray(np.zeros((8, 3, 16, 16), np.uint8))),
     r"holds uint8 images of shape \(3, 16, 16\) in Fortran order, not uint8 of shape \(3, 16, 16\) in C order"),
    (replace_with(np.zeros((5, 3, 16, 16), np.uint8)), r"holds 5 images where 8 are expected"),
])
def test_a_damaged_or_foreign_cache_is_rebuilt_with_the_reason_never_used(tmp_path, capsys, damage, reason):
    config = synthetic_config(tmp_path)
    expected = load_dataset(config, progress=False).clone()   # not the map of the file about to be damaged
    path = cache_path(config)
    damage(path)
    capsys.readouterr()

    images = load_dataset(config, progress=False)

    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(rf"dataset cache: {re.escape(str(path))} {reason}.*: rebuilding it", out[0]), out
    assert out[1].startswith(f"dataset cache: rebuilt {path}")
    assert torch.equal(images, expected)
    load_dataset(config, progress=False)
    assert "reusing" in capsys.readouterr().out   # and the rebuilt file is good


def test_a_folder_cache_holding_more_images_than_the_folder_is_rebuilt(tmp_path, capsys):
    for i in range(3):
        save(tmp_path / "faces" / f"{i}.png", solid((i * 80, 0, 0)))
    config = TrainConfig(data=str(tmp_path / "faces"), data_dir=str(tmp_path / "data"), image_size=16)
    load_dataset(config, progress=False)
    np.save(cache_path(config), np.zeros((7, 3, 16, 16), np.uint8))
    capsys.readouterr()
    assert len(load_dataset(config, progress=False)) == 3
    assert "holds 7 images where 1 to 3 are expected: rebuilding it" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ where the cache goes

def test_an_unwritable_data_dir_fails_before_any_decoding(tmp_path, monkeypatch):
    for i in range(3):
        save(tmp_path / "faces" / f"{i}.png", solid((0, 0, 255)))
    decoded = []
    monkeypatch.setattr(image_files, "_decode_image", lambda *args: decoded.append(args) or pytest.fail("decoded"))
    with small_disk(tmp_path / "disk", size="16m", read_only=True) as disk:
        with pytest.raises(CannotWrite, match=r"cannot write .*disk/cache/faces-16px-\w+\.npy \(Read-only file "
                                              r"system\): make the folder writable"):
            load_dataset(TrainConfig(data=str(tmp_path / "faces"), data_dir=str(disk), image_size=16), progress=False)
    assert decoded == []


def test_a_data_dir_without_room_for_the_cache_fails_before_any_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "synthetic_faces", lambda *args: pytest.fail("drew the faces"))
    with small_disk(tmp_path / "disk", size="1m") as disk:
        with pytest.raises(CannotWrite, match=r"no space left to write .*disk/cache/synthetic-seed5-64px-\w+\.npy: it "
                                              r"needs about 2\.3 MiB and the disk has 1\.0 MiB free"):
            load_dataset(synthetic_config(disk, image_size=64, max_images=200), progress=False)
        assert list((disk / "cache").iterdir()) == []


def test_a_folder_with_a_very_long_name_gets_a_cache_name_that_fits(tmp_path):
    folder = tmp_path / ("faces-" + "x" * 240)   # 246 characters: the old cache name had 266 (ENAMETOOLONG)
    save(folder / "a.png", solid((255, 0, 0)))
    config = TrainConfig(data=str(folder), data_dir=str(tmp_path / "data"), image_size=16)
    assert len(load_dataset(config, progress=False)) == 1
    assert len(cache_path(config).name) <= 64 + len("-16px-") + 12 + len(".npy")


def test_a_run_folder_and_a_cache_inside_the_data_folder_are_never_read_as_images(tmp_path, capsys):
    faces = tmp_path / "faces"
    for i in range(3):
        save(faces / f"{i}.png", solid((0, 255, 0)))
    run = faces / "generated" / "run"
    for epoch in (1, 2):
        save_grid(torch.zeros(4, 3, 16, 16), frame_path(run, epoch), nrow=2)
    save(run / "history.png", solid((255, 0, 0)))
    save(run / "training.gif", solid((255, 0, 0)))
    config = TrainConfig(data=str(faces), data_dir=str(faces / "data"), image_size=16)   # the cache lands inside too

    images = load_dataset(config, progress=False)
    assert images.shape[0] == 3 and (images[:, 1] == 255).all()
    save_grid(torch.zeros(4, 3, 16, 16), frame_path(run, 3), nrow=2)   # the run goes on: the cache still holds
    capsys.readouterr()
    assert torch.equal(load_dataset(config, progress=False), images)
    assert "reusing" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ nothing hangs or explodes

def test_a_fifo_with_an_image_name_is_skipped_not_waited_on(tmp_path):
    for i in range(2):
        save(tmp_path / "faces" / f"{i}.png", solid((0, 0, 255)))
    os.mkfifo(tmp_path / "faces" / "blocked.jpg")   # opening it for reading would wait for a writer for ever
    result = subprocess.run([sys.executable, "-c", f"from utils.image_files import load_images; "
                             f"print(tuple(load_images({str(tmp_path / 'faces')!r}, 16, progress=False).shape))"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(2, 3, 16, 16)"
    assert "skipped 1 of 3 files" in result.stderr and "blocked.jpg: not a regular file" in result.stderr


def test_files_over_the_size_limit_are_skipped_unread(tmp_path):
    save(tmp_path / "ok.png", solid((0, 255, 0)))
    with open(tmp_path / "huge.jpg", "wb") as file:
        file.truncate(2**30)   # a sparse 1 GiB "JPEG": reading it would take 1 GiB of memory
    with pytest.warns(UserWarning, match=r"skipped 1 of 2 .*huge.jpg: 1,024.0 MiB, over the 64 MiB limit for one "
                                         r"image file, so not read"):
        images = load_images(tmp_path, 8, progress=False)
    assert images.shape[0] == 1


def test_a_zip_member_of_1_gib_is_skipped_without_reading_it_into_memory(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("faces/ok.png", save(tmp_path / "ok.png", solid((255, 0, 0))).read_bytes())
        with zf.open("faces/huge.jpg", "w", force_zip64=True) as member:   # 1 GiB of zeros, ~4 MB compressed
            for _ in range(64):
                member.write(bytes(2**24))
    small = tmp_path / "small.zip"
    with zipfile.ZipFile(small, "w") as zf:
        zf.write(tmp_path / "ok.png", "faces/ok.png")
    code = f"""
import resource, warnings
from utils.image_files import load_images
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
load_images({str(small)!r}, 16, progress=False)
before = peak()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    images = load_images({str(archive)!r}, 16, progress=False)
print(len(images), peak() - before, caught[0].message)
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    count, growth_mib, message = result.stdout.split(" ", 2)
    assert count == "1"
    assert int(growth_mib) < 100   # reading the member whole took 2 GiB more
    assert "huge.jpg: 1,024.0 MiB, over the 64 MiB limit" in message


def test_ctrl_c_during_decoding_stops_at_once(tmp_path):
    """Ctrl-C drops the images still queued: only those being decoded at that moment (at most the pool's 16 threads)
    are decoded after it, not the ~1,500 left, which take a minute on two cores."""
    noise = save(tmp_path / "noise.png", Image.effect_noise((1200, 1200), 80).convert("RGB"))
    faces = tmp_path / "faces"
    faces.mkdir()
    for i in range(1500):   # hard links take no space
        os.link(noise, faces / f"{i:04d}.png")
    (faces / "0003.png").unlink()
    os.mkfifo(faces / "0003.png")   # before, a thread blocked on it, and Ctrl-C then waited for it for ever
    # counts the images decoded by the time of Ctrl-C and by the exit, once the pool's threads have ended
    code = f"""
import atexit, signal
from utils import image_files
decoded, at_interrupt, decode = [], [], image_files._decode_image

def counted(*args):
    pixels = decode(*args)
    decoded.append(1)
    return pixels

def interrupt(*args):   # Python's own Ctrl-C handler, after noting the count
    at_interrupt.append(len(decoded))
    signal.default_int_handler(*args)

image_files._decode_image = counted
signal.signal(signal.SIGINT, interrupt)   # also where this suite runs as a background job (SIGINT ignored)
atexit.register(lambda: print(at_interrupt[0], len(decoded)))
image_files.load_images({str(faces)!r}, 16)
"""
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        progress = ""
        while "decoding faces:" not in progress or "/1500" not in progress:   # the bar is up: decoding has started
            progress += process.stderr.read(1)
            assert process.poll() is None, progress
        process.send_signal(signal.SIGINT)
        counts, rest = process.communicate(timeout=300)   # a hang guard only
    finally:
        process.kill()
    assert "KeyboardInterrupt" in rest
    at_interrupt, at_exit = map(int, counts.split())
    assert at_exit - at_interrupt <= 16 and at_exit < 1499   # the images still queued were dropped, not decoded


# ------------------------------------------------------------------------------------------ nonsense is named

def test_upsampling_past_the_sources_size_is_warned_once(tmp_path):
    for i in range(3):
        save(tmp_path / f"{i}.png", solid((0, 0, 255), size=(24, 20)))
    save(tmp_path / "big.png", solid((0, 0, 255), size=(64, 64)))
    with pytest.warns(UserWarning) as record:
        load_images(tmp_path, 32, progress=False)
    assert [str(w.message) for w in record] == [
        f"3 of 4 images are smaller than 32x32 (e.g. {tmp_path}/0.png is 24x20) and were upsampled, which adds no "
        "detail: an image_size of at most 20 keeps them at their own resolution"]


def test_the_command_line_prints_a_missing_data_source_in_one_line(tmp_path):
    # fp32 NCHW named: no CPU trial to time first
    result = subprocess.run([sys.executable, "-m", "utils.train", "--data", str(tmp_path / "nowhere"), "--data-dir",
                             str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--device", "cpu", "--amp", "off",
                             "--channels-last", "off"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: data source does not exist: {tmp_path}/nowhere: pass a folder or .zip of images, an http(s) URL of "
        "a .zip, 'synthetic' or 'kaggle'")
