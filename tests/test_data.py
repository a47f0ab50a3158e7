"""utils/synthetic.py, utils/data.py and utils/image_files.py: the synthetic faces, the decoded cache, and reading
folders and zips of real image files."""

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
from utils.data import load_dataset
from utils.files import CannotWrite, frame_path
from utils.image_files import DataError
from utils.synthetic import synthetic_faces

REPO = Path(__file__).resolve().parents[1]


def save(path: Path, image: Image.Image, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def solid(colour, size=(40, 30), mode="RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def pngs(folder: Path, count: int, colour=(0, 0, 255)) -> Path:
    for i in range(count):
        save(folder / f"{i}.png", solid(colour))
    return folder


def cache_files(data_dir: Path) -> list[Path]:
    return sorted((Path(data_dir) / "cache").glob("*.npy"))


def load(source: Path, data_dir: Path, image_size: int = 16, progress: bool = False, **fields) -> torch.Tensor:
    """The images of a folder or zip, through the cache in data_dir."""
    config = TrainConfig(data=str(source), data_dir=str(data_dir), image_size=image_size, **fields)
    return load_dataset(config, progress=progress)


LOAD = """from utils.config import TrainConfig
from utils.data import load_dataset
load = lambda source: load_dataset(TrainConfig(data=source, data_dir="{data_dir}", image_size=16), progress={progress})
"""


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------------------------------ synthetic

@pytest.mark.parametrize("size", [16, 32, 64, 128])
def test_synthetic_faces_are_uint8_images_determined_by_their_seed_whatever_the_count(size):
    threads = torch.get_num_threads()
    faces = synthetic_faces(40, size, seed=3)   # several chunks at 64 and 128 px
    assert faces.shape == (40, 3, size, size) and faces.dtype == torch.uint8
    assert torch.equal(faces[:5], synthetic_faces(5, size, seed=3))
    assert not torch.equal(faces[:5], synthetic_faces(5, size, seed=4))
    assert torch.get_num_threads() == threads   # drawn on one thread, then set back


def test_synthetic_faces_are_structured_varied_and_the_same_at_every_resolution():
    faces = synthetic_faces(64, 64, seed=0).float()
    assert faces.flatten(1).std(dim=1).min() > 25   # drawn shapes, not flat colour
    distance = (faces.flatten(1)[:, None] - faces.flatten(1)[None]).abs().mean(-1) + torch.eye(64) * 1e9
    assert distance.min() > 10   # no two faces alike
    assert faces[:, :, :8, 24:40].mean(dim=(2, 3)).std(dim=0).min() > 20   # the hair's colour (top rows) varies

    small, other = synthetic_faces(16, 32, seed=2).float(), synthetic_faces(16, 32, seed=5).float()
    downscaled = F.avg_pool2d(synthetic_faces(16, 64, seed=2).float(), 2)
    assert (downscaled - small).abs().mean() < 8
    assert (downscaled - other).abs().mean() > 3 * (downscaled - small).abs().mean()


# ------------------------------------------------------------------------------------------ the cache

def mapped_from_file(tensor: torch.Tensor, path: Path) -> bool:
    """Whether the tensor's memory lies in a mapping of `path` (Linux: /proc/self/maps)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, *rest = line.split()
        low, high = (int(value, 16) for value in span.split("-"))
        if rest and rest[-1] == str(path.resolve()) and low <= tensor.data_ptr() < high:
            return True
    return False


def test_load_dataset_builds_the_cache_once_then_memory_maps_it(tmp_path, monkeypatch, capsys):
    config = TrainConfig(data="synthetic", data_dir=str(tmp_path), image_size=32, max_images=50, seed=9)
    first = load_dataset(config, progress=False)
    assert "built" in capsys.readouterr().out
    [path] = cache_files(tmp_path)
    assert torch.equal(first, synthetic_faces(50, 32, seed=9))

    monkeypatch.setattr(data, "synthetic_faces", lambda *args: pytest.fail("drawn again"))
    modified = path.stat().st_mtime_ns
    second = load_dataset(config, progress=False)
    assert f"reusing {path}" in capsys.readouterr().out and path.stat().st_mtime_ns == modified
    assert torch.equal(first, second) and second.dtype == torch.uint8
    if Path("/proc/self/maps").exists():
        assert mapped_from_file(second, path)
    expected = second[0].clone()
    second[0] = 0   # copy-on-write: writing into the tensor leaves the file alone
    assert torch.equal(load_dataset(config, progress=False)[0], expected)


def test_the_cache_name_changes_with_everything_that_changes_the_images(tmp_path):
    base = dict(data="synthetic", data_dir=str(tmp_path), image_size=16, max_images=10, seed=1)
    for change in ({}, {}, dict(image_size=32), dict(max_images=11), dict(seed=2)):
        load_dataset(TrainConfig(**base | change), progress=False)
    assert len(cache_files(tmp_path)) == 4
    images = load_dataset(TrainConfig(**base | dict(max_images=0)), progress=False)   # synthetic: the default count
    assert len(images) == data.SYNTHETIC_DEFAULT_COUNT == 20_000 and torch.equal(images[:4], synthetic_faces(4, 16, 1))

    faces = pngs(tmp_path / "faces", 1)
    assert len(load(faces, tmp_path / "data")) == 1
    save(faces / "b.png", solid((0, 255, 0)))   # the folder changed: its cache is not reused
    assert len(load(faces, tmp_path / "data")) == 2


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

def test_a_folder_is_read_recursively_in_sorted_order_converting_every_mode(tmp_path):
    root = tmp_path / "faces"
    save(root / "a_rgb.jpg", solid((200, 30, 30)), quality=95)
    save(root / "b" / "gray.png", solid(128, mode="L"))
    save(root / "b" / "c" / "palette.gif", solid((30, 200, 30)).convert("P"))
    save(root / "d_rgba.png", solid((0, 0, 255, 0), mode="RGBA"))   # transparent: white
    save(root / "e_cmyk.jpg", solid((0, 0, 0, 0), mode="CMYK"))   # CMYK white
    save(root / "f_large.jpg", solid((30, 30, 200), size=(3000, 2000)))
    save(root / "g.bmp", solid((10, 20, 30)))
    save(root / "h.webp", solid((250, 250, 0)), lossless=True)
    save(root / "i.JPEG", solid((0, 200, 200)))
    (root / "notes.txt").write_text("not an image, not counted")
    save(root / ".ipynb_checkpoints" / "copy.png", solid((1, 2, 3)))   # hidden folders are skipped

    with warnings.catch_warnings():
        warnings.simplefilter("error")   # nothing here is broken
        images = load(root, tmp_path / "data")

    assert images.shape == (9, 3, 16, 16) and images.dtype == torch.uint8
    mean = images.float().mean(dim=(2, 3))   # one colour per image, in sorted order: b/c/ before b/gray.png
    expected = [(200, 30, 30), (30, 200, 30), (128, 128, 128), (255, 255, 255), (255, 255, 255),
                (30, 30, 200), (10, 20, 30), (250, 250, 0), (0, 200, 200)]
    assert (mean - torch.tensor(expected, dtype=torch.float32)).abs().max() < 6


def test_images_are_centre_cropped_and_max_images_takes_the_first(tmp_path):
    wide = Image.new("RGB", (90, 30), (255, 0, 0))
    wide.paste((0, 0, 255), (30, 0, 60, 30))   # blue middle third = the centre square
    images = load(save(tmp_path / "wide" / "wide.png", wide).parent, tmp_path / "data")
    assert images[0, 2].float().mean() > 240 and images[0, 0].float().mean() < 15

    for i in range(5):
        save(tmp_path / "five" / f"{i}.png", solid((i * 50, 0, 0)))
    images = load(tmp_path / "five", tmp_path / "data", progress=True, max_images=2)
    assert images[:, 0].float().mean(dim=(1, 2)).tolist() == [0.0, 50.0]


def truncated_jpeg(path: Path, monkeypatch) -> None:
    jpeg = save(path, Image.effect_noise((256, 256), 64).convert("RGB")).read_bytes()
    path.write_bytes(jpeg[: len(jpeg) // 2])


def bomb(path: Path, monkeypatch) -> None:
    save(path, solid((255, 0, 0), size=(100, 100)), format="PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)   # 100 x 100 is now > 2 x the limit: a "bomb"


def sparse(path: Path, monkeypatch) -> None:
    with open(path, "wb") as file:
        file.truncate(2**30)   # a sparse 1 GiB "JPEG": reading it would take 1 GiB of memory


@pytest.mark.parametrize("make,reason", [
    (truncated_jpeg, r"OSError: image file is truncated"),
    (lambda path, _: path.write_bytes(b""), "not a recognised image format"),
    (lambda path, _: path.write_text("this is not a JPEG"), "not a recognised image format"),
    (bomb, "DecompressionBombError: Image size"),
    (sparse, r"1,024\.0 MiB, over the 64 MiB limit for one image file, so not read"),
    (lambda path, _: path.symlink_to(path.parent / "deleted.png"), r"FileNotFoundError: \[Errno 2\] No such file"),
    (lambda path, _: path.symlink_to(path.name), r"OSError: \[Errno \d+\] Too many levels of symbolic links"),
], ids=["truncated", "empty", "text", "bomb", "1 GiB", "dangling link", "looping link"])
def test_a_file_that_is_not_a_readable_image_is_skipped_and_named_in_one_warning(tmp_path, monkeypatch, make, reason):
    faces = pngs(tmp_path / "faces", 2)
    (faces / "c-linked.png").symlink_to(faces / "0.png")   # a working link is read like its target
    make(faces / "bad.jpg", monkeypatch)
    with pytest.warns(UserWarning) as record:
        images = load(faces, tmp_path / "data")
    assert len(record) == 1 and images.shape == (3, 3, 16, 16) and (images[:, 2] == 255).all()
    assert re.fullmatch(rf"skipped 1 of 4 files that are not readable images \(e\.g\. {faces}/bad\.jpg: {reason}.*\)",
                        str(record[0].message))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(load(faces, tmp_path / "data"), images)   # the cache: nothing decoded again


def test_zip_is_read_in_place_and_hostile_member_names_write_nothing(tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    archive = tmp_path / "upload" / "faces.zip"
    archive.parent.mkdir()
    png = save(tmp_path / "one.png", solid((255, 0, 0))).read_bytes()
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("faces/a.png", "faces/nested/b.png", "../evil.png", "/abs/evil.png"):
            zf.writestr(name, png)
        zf.writestr("__MACOSX/faces/._a.png", b"resource fork")
        zf.writestr("faces/readme.txt", "not an image")
    before = set(tmp_path.rglob("*"))

    images = load(archive, tmp_path / "data")

    assert images.shape == (4, 3, 16, 16) and (images[:, 0] == 255).all()   # the hostile names were simply read
    [cache] = cache_files(tmp_path / "data")
    assert set(tmp_path.rglob("*")) - before == {tmp_path / "data", tmp_path / "data" / ".lock", cache.parent, cache}
    assert not Path("/abs/evil.png").exists() and not (tmp_path.parent / "evil.png").exists()


def test_a_missing_or_unusable_source_is_one_error_saying_what_to_pass(tmp_path):
    faces, data_dir = tmp_path / "faces", tmp_path / "data"
    with pytest.raises(DataError, match="does not exist.*'synthetic' or 'kaggle'"):
        load(faces, data_dir)
    faces.mkdir()
    (faces / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=f"no images found in {faces}: expected files ending in .jpg"):
        load(faces, data_dir)
    zipfile.ZipFile(tmp_path / "empty.zip", "w").close()
    with pytest.raises(DataError, match="no images found"):
        load(tmp_path / "empty.zip", data_dir)
    (faces / "a.jpg").write_bytes(b"")
    (faces / "b.png").write_text("nope")
    with pytest.raises(DataError, match="no images found in .*none of its 2 image files could be decoded"):
        load(faces, data_dir)
    (tmp_path / "faces.tar").write_bytes(b"\0" * 1024)
    with pytest.raises(DataError, match="neither a folder nor a .zip"):
        load(tmp_path / "faces.tar", data_dir)


def test_upsampling_past_the_sources_size_is_warned_once(tmp_path):
    for i in range(3):
        save(tmp_path / f"{i}.png", solid((0, 0, 255), size=(24, 20)))
    save(tmp_path / "big.png", solid((0, 0, 255), size=(64, 64)))
    with pytest.warns(UserWarning) as record:
        load(tmp_path, tmp_path / "data", 32)
    assert [str(w.message) for w in record] == [
        f"3 of 4 images are smaller than 32x32 (e.g. {tmp_path}/0.png is 24x20) and were upsampled, which adds no "
        "detail: an image_size of at most 20 keeps them at their own resolution"]


# ------------------------------------------------------------------------------------------ a cache that lies

def replace_with(array: np.ndarray):
    return lambda path: np.save(path, array)


def fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)   # reading it would wait for a writer for ever


@pytest.mark.parametrize("damage,reason", [
    (lambda path: path.write_bytes(path.read_bytes()[:1000]), r"is not a readable \.npy file \(mmap length is "
                                                              r"greater than file size\)"),
    (lambda path: path.write_bytes(b""), r"is not a readable \.npy file \(EOF: reading magic string"),
    (lambda path: path.write_text("not an array"), r"is not a readable \.npy file \(the magic string is not correct"),
    (fifo, "is not a regular file"),
    (replace_with(np.zeros((8, 3, 32, 32), np.uint8)), r"holds uint8 images of shape \(3, 32, 32\), not uint8 of "
                                                       r"shape \(3, 16, 16\)"),
    (replace_with(np.zeros((8, 3, 16, 16), np.float32)), r"holds float32 images of shape \(3, 16, 16\), not uint8"),
    (replace_with(np.zeros((8, 16, 16, 3), np.uint8)), r"holds uint8 images of shape \(16, 16, 3\)"),
    (replace_with(np.array([1, None], dtype=object)), r"is not a readable \.npy file \(Array can't be memory-mapped"),
    (replace_with(np.zeros((5, 3, 16, 16), np.uint8)), r"holds 5 images where 8 are expected"),
])
def test_a_damaged_or_foreign_cache_is_rebuilt_with_the_reason_never_used(tmp_path, capsys, damage, reason):
    config = TrainConfig(data="synthetic", data_dir=str(tmp_path), image_size=16, max_images=8, seed=5)
    expected = load_dataset(config, progress=False).clone()   # not the map of the file about to be damaged
    [path] = cache_files(tmp_path)
    damage(path)
    capsys.readouterr()

    images = load_dataset(config, progress=False)

    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(rf"dataset cache: {re.escape(str(path))} {reason}.*: rebuilding it", out[0]), out
    assert out[1].startswith(f"dataset cache: rebuilt {path}") and torch.equal(images, expected)
    load_dataset(config, progress=False)
    assert "reusing" in capsys.readouterr().out   # and the rebuilt file is good


# ------------------------------------------------------------------------------------------ where the cache goes

@pytest.mark.parametrize("read_only,message", [
    (True, r"cannot write .*disk/cache/faces-64px-\w+\.npy \(Read-only file system\): choose another name or a "
           r"writable folder"),
    (False, r"no space left to write .*disk/cache/faces-64px-\w+\.npy: it needs about 2\.3 MiB and the disk has "
            r"1\.0 MiB free"),
])
def test_a_read_only_or_full_data_dir_fails_before_any_decoding(tmp_path, monkeypatch, read_only, message):
    monkeypatch.setattr(image_files, "_decode_image", lambda *args: pytest.fail("decoded"))
    faces = pngs(tmp_path / "faces", 200)
    with small_disk(tmp_path / "disk", size="16m" if read_only else "1m", read_only=read_only) as disk:
        with pytest.raises(CannotWrite, match=message):
            load(faces, disk, 64)
        assert list(disk.glob("cache/*")) == []


def test_a_folder_with_a_very_long_name_gets_a_cache_name_that_fits(tmp_path):
    folder = pngs(tmp_path / ("faces-" + "x" * 240), 1)   # 246 characters: a name made from it whole is too long
    assert len(load(folder, tmp_path / "data")) == 1
    assert len(cache_files(tmp_path / "data")[0].name) <= 64 + len("-16px-") + 12 + len(".npy")


def test_a_run_folder_and_a_cache_inside_the_data_folder_are_never_read_as_images(tmp_path, capsys):
    faces = pngs(tmp_path / "faces", 3, colour=(0, 255, 0))
    run = faces / "generated" / "run"
    for epoch in (1, 2):
        save(frame_path(run, epoch), solid((0, 0, 0)))
    save(run / "history.png", solid((255, 0, 0)))
    save(run / "training.gif", solid((255, 0, 0)))
    images = load(faces, faces / "data")   # the cache lands inside too
    assert images.shape[0] == 3 and (images[:, 1] == 255).all()
    save(frame_path(run, 3), solid((0, 0, 0)))   # the run goes on: the cache still holds
    capsys.readouterr()
    assert torch.equal(load(faces, faces / "data"), images)
    assert "reusing" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ nothing hangs or explodes

def test_a_fifo_is_skipped_not_waited_on_and_a_zip_member_of_1_gib_is_skipped_unread(tmp_path):
    """In a subprocess, where a hang or a read of 1 GiB into memory is seen without taking the test run down."""
    faces = pngs(tmp_path / "faces", 2)
    os.mkfifo(faces / "blocked.jpg")   # opening it for reading would wait for a writer for ever
    with zipfile.ZipFile(tmp_path / "small.zip", "w") as zf:
        zf.write(faces / "0.png", "faces/ok.png")
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.write(faces / "0.png", "faces/ok.png")
        with zf.open("faces/huge.jpg", "w", force_zip64=True) as member:   # 1 GiB of zeros, ~4 MB compressed
            for _ in range(64):
                member.write(bytes(2**24))
    result = run_python(f"""
import resource
{LOAD.format(data_dir=tmp_path / "data", progress=False)}
print(tuple(load({str(faces)!r}).shape))
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
load({str(tmp_path / "small.zip")!r})
before = peak()
print(len(load({str(tmp_path / "bomb.zip")!r})), peak() - before)
""")
    assert result.returncode == 0, result.stderr
    shape, bomb = [line for line in result.stdout.splitlines() if not line.startswith("dataset cache:")]
    count, growth_mib = map(int, bomb.split())
    assert shape == "(2, 3, 16, 16)" and count == 1 and growth_mib < 100   # reading the member whole took 2 GiB more
    assert "skipped 1 of 3 files" in result.stderr and "blocked.jpg: not a regular file" in result.stderr
    assert "huge.jpg: 1,024.0 MiB, over the 64 MiB limit" in result.stderr


def test_ctrl_c_during_decoding_stops_at_once(tmp_path):
    """Ctrl-C drops the images still queued: only those being decoded at that moment (at most the pool's 16 threads)
    are decoded after it, not the ~1,500 left, which take a minute on two cores."""
    noise = save(tmp_path / "noise.png", Image.effect_noise((1200, 1200), 80).convert("RGB"))
    faces = tmp_path / "faces"
    faces.mkdir()
    for i in range(1500):   # hard links take no space
        os.link(noise, faces / f"{i:04d}.png")
    (faces / "0003.png").unlink()
    os.mkfifo(faces / "0003.png")   # a thread blocked on it once made Ctrl-C wait for ever
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
{LOAD.format(data_dir=tmp_path / "data", progress=True)}
load({str(faces)!r})
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
