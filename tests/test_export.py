"""utils.export: the run's generator as one TorchScript file that samples in a Python that cannot import `utils`."""

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from utils.export import export_generator, main
from utils.files import OutputRefused
from utils.generate import load_faces

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# A Python that sees torch but not this project: isolated (-I: no PYTHONPATH, no current folder on the path), no
# site module (-S: the editable install's .pth finder never runs), with only the site-packages folder added back.
ISOLATED = f"import sys; sys.path.append({sysconfig.get_paths()['purelib']!r})\n"
SAMPLE = ISOLATED + """
import importlib.util, json, torch
assert importlib.util.find_spec("utils") is None, "utils is importable here"
extra = {"meta.json": ""}
generator = torch.jit.load("generator.pt", _extra_files=extra)
z = torch.load("z.pt")
torch.save(generator(z), "images.pt")
print(json.dumps({"latent_dim": generator.latent_dim, "image_size": generator.image_size,
                  "meta": json.loads(extra["meta.json"])}))
"""


@pytest.fixture
def run_dir(request) -> Path:
    """tests/conftest.py: 16x16, latent 16, 2 epochs; fp32 (tiny_run) unless a test asks for tiny_fp16_run."""
    return request.getfixturevalue(getattr(request, "param", "tiny_run"))


@pytest.mark.parametrize("run_dir", ["tiny_run", "tiny_fp16_run"], indirect=True)
def test_the_export_samples_without_utils_and_gives_the_runs_images(run_dir, tmp_path):
    assert export_generator(run_dir, tmp_path / "generator.pt") == tmp_path / "generator.pt"
    z = torch.randn(10, 16, 1, 1, generator=torch.Generator().manual_seed(1))
    torch.save(z, tmp_path / "z.pt")
    result = subprocess.run([sys.executable, "-I", "-S", "-c", SAMPLE], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["latent_dim"] == info["image_size"] == 16 and info["meta"]["epoch"] == 2
    images, faces = torch.load(tmp_path / "images.pt"), load_faces(run_dir, "cpu")
    with torch.no_grad():
        torch.testing.assert_close(images, faces.generator(z), rtol=0, atol=1e-6)
    assert torch.equal(((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8), faces.decode(z))


def test_main_writes_the_file_and_refuses_what_is_not_a_run(run_dir, tmp_path, capsys):
    main([str(run_dir), "--out", str(tmp_path / "g.pt")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "g.pt")
    extra = {"meta.json": ""}
    assert torch.jit.load(str(tmp_path / "g.pt"), _extra_files=extra).latent_dim == 16
    assert json.loads(extra["meta.json"])["run"] == str(run_dir)
    with pytest.raises(SystemExit) as exit:
        main([str(tmp_path), "--out", str(tmp_path / "h.pt")])
    error = capsys.readouterr().err
    assert exit.value.code == 1 and error.startswith("error: ") and "is not a run folder" in error
    with pytest.raises(OutputRefused, match="is a folder"):
        export_generator(run_dir, tmp_path)
