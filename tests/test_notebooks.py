"""The notebooks: all committed clean and parameterised alike; 01-04 also run headless, as a series and alone.

Each run executes a notebook in a fresh kernel with papermill and SMOKE_TEST=1, which its `parameters` cell turns
into a tiny configuration (seconds on a CPU). The series runs in a temporary copy of the repository layout, so the
checkout's data/ and generated/ stay untouched. The last test checks the first cell's other path, the one Colab
takes: `utils` missing, so the project is pip-installed from its git repository.
"""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import types
from pathlib import Path

import ast
from dataclasses import fields

import nbformat
import papermill
import pytest
from papermill.cli import _resolve_type as resolve_type
from PIL import Image

from utils.config import TrainConfig
from utils.run import read_checkpoint, run_dir_of

REPO = Path(__file__).resolve().parents[1]
SERIES = ["01_dataset", "02_models", "03_training", "04_gif"]   # executed here, in this order
NOTEBOOKS = sorted(path.stem for path in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))   # checked statically
TRAINS_FIRST = "training one first"    # what 04 prints before training a run when none exists (train_if_missing)


def load(name: str) -> nbformat.NotebookNode:
    return nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)


def code_cells(notebook: nbformat.NotebookNode) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def parameters_cells(notebook: nbformat.NotebookNode) -> list:
    return [cell for cell in code_cells(notebook) if "parameters" in cell.metadata.get("tags", [])]


def parameters(name: str, smoke: bool) -> dict:
    """The variables that notebook `name`'s parameters cell sets, with SMOKE_TEST set or not."""
    (cell,) = parameters_cells(load(name))
    namespace = {"os": types.SimpleNamespace(environ={"SMOKE_TEST": "1"} if smoke else {})}
    exec(cell.source, namespace)
    return {key: value for key, value in namespace.items() if key not in ("os", "__builtins__")}


def smoke_run() -> Path:
    """The run folder of 03's smoke configuration: named from its settings, as `out = ""` asks."""
    known = {f.name for f in fields(TrainConfig)}
    return run_dir_of(TrainConfig(**{k: v for k, v in parameters("03_training", smoke=True).items() if k in known}))


def repository_url() -> str:
    """The project's git URL, as written once in the bootstrap cell."""
    return re.search(r'"ANIME_GAN_REPO", "([^"]+)"', code_cells(load(SERIES[0]))[0].source).group(1)


def execute(name: str, cwd: Path, executed: Path, parameters: dict | None = None) -> str:
    """Run notebook `name` in a fresh kernel with `cwd` as working folder; return all its text output."""
    executed.mkdir(exist_ok=True)
    output = executed / f"{name}.ipynb"
    source = cwd / f"{name}.ipynb" if (cwd / f"{name}.ipynb").exists() else REPO / "notebooks" / f"{name}.ipynb"
    papermill.execute_notebook(str(source), str(output), cwd=str(cwd), kernel_name="python3", parameters=parameters,
                               progress_bar=False, log_output=False, execution_timeout=300)
    texts = []
    for cell in code_cells(nbformat.read(output, as_version=4)):
        for out in cell.outputs:
            texts.append(out.get("text", "") + out.get("data", {}).get("text/plain", ""))
    return "\n".join(texts)


def image_outputs(executed: Path, name: str) -> int:
    notebook = nbformat.read(executed / f"{name}.ipynb", as_version=4)
    return sum("image/png" in out.get("data", {}) for cell in code_cells(notebook) for out in cell.outputs)


def gif_frames(path: Path) -> int:
    with Image.open(path) as gif:
        return gif.n_frames


# ------------------------------------------------------------------------------------- the committed files

@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_has_exactly_one_parameters_cell_with_a_smoke_configuration(name):
    cells = parameters_cells(load(name))
    assert len(cells) == 1, f"{name}: {len(cells)} cells tagged 'parameters'"
    assert 'os.environ.get("SMOKE_TEST")' in cells[0].source
    assert parameters(name, smoke=True) != parameters(name, smoke=False)


DROPDOWNS = {"data": "kaggle", "device": "cuda", "amp": "fp16", "recipe": "improved"}  # a choice each must offer


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_cell_is_a_colab_form_with_dropdowns(name):
    """Colab draws `name = value  # @param SPEC` lines as a form; papermill and plain Jupyter read them as Python."""
    (cell,) = parameters_cells(load(name))
    lines = cell.source.splitlines()
    assert lines[0].startswith("# @title ")
    assignments = [line for line in lines if re.match(r"^\w+ = ", line)]  # the top level: not the SMOKE_TEST block
    assert [line.split(" = ")[0] for line in assignments] == list(parameters(name, smoke=False))
    for line in assignments:
        key, rest = line.split(" = ", 1)
        value, spec = rest.split("  # @param ", 1)
        default = ast.literal_eval(value)
        if key in DROPDOWNS:
            choices = ast.literal_eval(spec[:spec.index("]") + 1])
            assert default in choices and DROPDOWNS[key] in choices, f"{name}: {key} dropdown {choices}"
        elif spec.startswith("["):  # any other dropdown offers its default
            assert default in ast.literal_eval(spec[:spec.index("]") + 1]), line
        else:
            kind = re.search(r'type:"(\w+)"', spec).group(1)
            if kind == "raw":   # None: the value that `size` picks (utils.environment.size_preset)
                assert default is None, line
                continue
            expected = {"string": str, "integer": int, "number": float, "boolean": bool, "slider": int}[kind]
            assert type(default) is expected, line
            if kind == "slider":
                low, high = (int(re.search(rf"{edge}:(-?\d+)", spec).group(1)) for edge in ("min", "max"))
                assert low <= default <= high, line
    known = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in parameters(name, smoke=False).items() if k in known and v is not None}
    TrainConfig(**values)  # the form's defaults are valid settings (tests/test_size.py: with those `size` picks)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_papermill_sees_every_parameter(name):
    """papermill skips lines it cannot parse (e.g. an '=' in a comment) and then warns about `-p` for them."""
    seen = papermill.inspect_notebook(str(REPO / "notebooks" / f"{name}.ipynb"))
    assert list(seen) == list(parameters(name, smoke=False))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_without_outputs(name):
    for cell in code_cells(load(name)):
        assert cell.outputs == [] and cell.execution_count is None, f"{name}: run `nbstripout notebooks/*.ipynb`"
    verify = subprocess.run([sys.executable, "-m", "nbstripout", "--verify", str(REPO / "notebooks" / f"{name}.ipynb")],
                            capture_output=True, text=True)
    assert verify.returncode == 0, f"{name}: nbstripout would change it (run `nbstripout notebooks/*.ipynb`)"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_opens_with_colab_and_kaggle_badges_for_itself(name):
    first = load(name).cells[0]
    assert first.cell_type == "markdown"
    page = f"{repository_url().removeprefix('https://github.com/')}/blob/main/notebooks/{name}.ipynb"
    assert f"(https://colab.research.google.com/github/{page})" in first.source
    assert f"(https://kaggle.com/kernels/welcome?src=https://github.com/{page})" in first.source


def test_every_notebook_starts_with_the_same_bootstrap_cell():
    first_cells = {code_cells(load(name))[0].source for name in NOTEBOOKS}
    assert len(first_cells) == 1
    assert "ANIME_GAN_REPO" in first_cells.pop()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_parameter_is_used_after_the_parameters_cell(name):
    cells = code_cells(load(name))
    later = "\n".join(cell.source for cell in cells[cells.index(parameters_cells(load(name))[0]) + 1:])
    unused = [key for key in parameters(name, smoke=False) if not re.search(rf"\b{key}\b", later)]
    assert not unused, f"{name}: parameters never used: {unused}"


@pytest.mark.parametrize("smoke", [False, True], ids=["default", "smoke"])
def test_parameters_shared_by_notebooks_have_the_same_values(smoke):
    """Same data, sizes and run folder everywhere, so 02-04 reuse 01's cache and 04 animates 03's run."""
    values = {}
    for name in NOTEBOOKS:
        for key, value in parameters(name, smoke).items():
            assert values.setdefault(key, (value, name))[0] == value, \
                f"{key} is {value!r} in {name} but {values[key][0]!r} in {values[key][1]}"


def test_make_demo_runs_the_series_in_order_overriding_only_existing_parameters():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry_run = subprocess.run(["make", "-n", "demo"], cwd=REPO, check=True, capture_output=True, text=True).stdout
    runs = [line for line in dry_run.splitlines() if "papermill" in line]
    assert [re.search(r"notebooks/(\w+)\.ipynb", line).group(1) for line in runs] == SERIES
    for line, name in zip(runs, SERIES):
        defaults = parameters(name, smoke=False)
        for key, text in re.findall(r"-p (\w+) (\S+)", line):
            assert key in defaults, f"make demo passes {key} to {name}, whose parameters cell has no {key}"
            value = resolve_type(text)  # how papermill's command line reads the value
            assert type(value) is type(defaults[key]), f"make demo passes {key}={value!r} to {name}"


# ------------------------------------------------------------------------------------------ executing them

@pytest.fixture
def smoke_env(monkeypatch):
    monkeypatch.setenv("SMOKE_TEST", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend shows the figures


@pytest.mark.parametrize("amp", [None, "fp16"], ids=["default", "fp16"])
def test_series_runs_in_order_in_the_repository_layout(tmp_path, smoke_env, monkeypatch, amp):
    """01 -> 04 from notebooks/, as `make demo` and a clone opened in Jupyter run them; and with amp="fp16" forced
    (ANIME_GAN_AMP), the path a T4 takes under "auto", here on the CPU."""
    if amp:
        monkeypatch.setenv("ANIME_GAN_AMP", amp)
    shutil.copytree(REPO / "notebooks", tmp_path / "notebooks")
    (tmp_path / "utils").symlink_to(REPO / "utils", target_is_directory=True)
    notebooks, executed, run = tmp_path / "notebooks", tmp_path / "executed", tmp_path / smoke_run()

    execute("01_dataset", notebooks, executed)
    assert list((tmp_path / "data" / "cache").iterdir()), "01 left no decoded cache in data/cache"
    assert image_outputs(executed, "01_dataset") >= 2   # the grid of faces and the colour histogram

    text = execute("02_models", notebooks, executed)
    assert "D(x)" in text and "D(G(z))" in text
    assert image_outputs(executed, "02_models") >= 1    # the untrained generator's grid

    text = execute("03_training", notebooks, executed)
    assert amp != "fp16" or "fp16 on a CPU runs a T4's path" in text
    smoke = parameters("03_training", smoke=True)
    assert [p.name for p in sorted((run / "samples").glob("epoch_*.png"))] == \
           [f"epoch_{epoch:03d}.png" for epoch in range(1, smoke["epochs"] + 1)]
    for name in ("checkpoint.pt", "history.json", "config.json"):
        assert (run / name).is_file(), f"03 left no {name} in {run}"
    assert '"image_size": %d' % smoke["image_size"] in (run / "config.json").read_text()
    assert amp != "fp16" or read_checkpoint(run / "checkpoint.pt")["precision"] == "fp16 channels_last"

    # 04 left at another size than 03's: 03's run stands in, one line saying so and what differs; nothing trains
    text = execute("04_gif", notebooks, executed, parameters={"image_size": 64, "epochs": 25})
    assert TRAINS_FIRST not in text, "04 trained again although 03 had left the grids"
    assert re.search(rf"^working on {re.escape(str(smoke_run()))} \(2 epochs\): no run of these settings yet .*; it "
                     r"differs from these settings in image_size$", text, re.M), text
    assert gif_frames(run / "training.gif") == smoke["epochs"]
    assert not (REPO / "notebooks" / "data").exists() and not (REPO / "notebooks" / "generated").exists()


@pytest.mark.parametrize("name", SERIES)
def test_notebook_runs_alone_in_an_empty_folder(name, tmp_path, smoke_env, monkeypatch):
    """As on Colab or Kaggle: no repository around, only the notebook; `utils` comes from the environment."""
    folder = tmp_path / "alone"
    folder.mkdir()
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("ANIME_GAN_REPO", "file:///nonexistent/do-not-install")  # utils must import without pip

    text = execute(name, folder, tmp_path / "executed")
    assert set(os.listdir(folder)) <= {"data", "generated"}, "the notebook wrote outside data/ and generated/"
    assert list((folder / "data" / "cache").iterdir())
    run = folder / smoke_run()
    if name == "03_training":
        assert (run / "checkpoint.pt").is_file()
    if name == "04_gif":
        assert TRAINS_FIRST in text
        assert gif_frames(run / "training.gif") == parameters(name, smoke=True)["epochs"]


def test_04_alone_trains_nothing_unless_asked(tmp_path, smoke_env, monkeypatch):
    """Opened from its badge with no run anywhere and train_if_missing left False: one line saying what to do."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("ANIME_GAN_REPO", "file:///nonexistent/do-not-install")
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        execute("04_gif", tmp_path, tmp_path / "executed", parameters={"train_if_missing": False})
    assert failure.value.ename == "UserError"
    assert "no run of these settings under generated/ yet: run notebook 03 first" in failure.value.evalue
    assert not (tmp_path / "generated").exists() and not (tmp_path / "data").exists()


def test_bootstrap_cell_installs_the_project_from_its_git_repository(tmp_path):
    """The first cell where `utils` is not importable (Colab): pip installs the project from ANIME_GAN_REPO.

    A throwaway venv sees this environment's packages through a plain path in a .pth file, which does not run
    that directory's own .pth files (the editable install among them): torch imports there, utils does not.
    The repository is a snapshot of the working tree's package files committed to a new git repository, and pip
    builds it without network (no index; setuptools from this environment).
    """
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    snapshot = tmp_path / "repository"   # what the package build reads, from the working tree
    shutil.copytree(REPO / "utils", snapshot / "utils", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, snapshot / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run(git + command, cwd=snapshot, check=True)

    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = str(env_dir / "bin" / "python")
    env_site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                   check=True, capture_output=True, text=True).stdout.strip())
    (env_site / "main-environment.pth").write_text(sysconfig.get_path("purelib") + "\n")

    empty = tmp_path / "empty"
    empty.mkdir()
    # PIP_NO_BUILD_ISOLATION reads inverted (pip's "no-" options): "false" turns build isolation off
    env = {**os.environ, "ANIME_GAN_REPO": f"file://{snapshot}", "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "false"}
    env.pop("PYTHONPATH", None)
    probe = "import importlib.util as u; print(u.find_spec('utils') is None, u.find_spec('torch') is not None)"
    assert subprocess.run([python, "-c", probe], cwd=empty, env=env, check=True, capture_output=True,
                          text=True).stdout.split() == ["True", "True"], "the throwaway venv must lack only utils"

    bootstrap = code_cells(load(SERIES[0]))[0].source
    subprocess.run([python, "-c", bootstrap], cwd=empty, env=env, check=True, capture_output=True)
    where = subprocess.run([python, "-c", "import utils.config; print(utils.__file__)"], cwd=empty, env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert Path(where).is_relative_to(env_site)
    assert os.listdir(empty) == []


def test_notebook_06_runs_alone_and_its_explorer_falls_back_to_a_static_grid(tmp_path, smoke_env, monkeypatch):
    """06 from a folder holding no run: it trains the tiny smoke run, then writes faces, a morph and an export; the
    explorer's output, where no frontend draws widgets (papermill), carries the grid as a PNG."""
    folder = tmp_path / "alone"
    folder.mkdir()
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("ANIME_GAN_REPO", "file:///nonexistent/do-not-install")
    text = execute("06_use_your_gan", folder, tmp_path / "executed")
    assert f"no run of these settings under generated/ yet: {TRAINS_FIRST}" in text
    run, smoke = folder / smoke_run(), parameters("06_use_your_gan", smoke=True)
    assert sorted(p.name for p in (run / "faces").iterdir()) == [f"seed42_{i:04d}.png" for i in range(smoke["n_faces"])]
    assert gif_frames(run / "morph.gif") == 2 * smoke["morph_steps"]
    assert (run / "generator.pt").is_file() and (run / "picked_face.pt").is_file()
    notebook = nbformat.read(tmp_path / "executed" / "06_use_your_gan.ipynb", as_version=4)
    (explorer,) = [cell for cell in code_cells(notebook) if "explorer.show(" in cell.source]
    shown = [out.get("data", {}) for out in explorer.outputs if out.get("output_type") == "display_data"]
    assert any("application/vnd.jupyter.widget-view+json" in data and "image/png" in data for data in shown)


def test_02_names_the_layer_whose_input_does_not_fit_in_one_line(capsys):
    """A width edited in one line of the written-out generator: one line naming the layer, no traceback."""
    cells = code_cells(load("02_models"))
    init, network_g, network_d = [cell.source for cell in cells if "networks" in cell.metadata.get("tags", [])]
    check = next(cell.source for cell in cells if "def first_misfit" in cell.source)
    namespace = {"latent_dim": 128, "g_width": 64, "d_width": 64, "seed": 42}
    exec(init, namespace)
    edited = network_g.replace("nn.BatchNorm2d(ngf * 4),", "nn.BatchNorm2d(ngf * 3),", 1)
    assert edited != network_g
    for source in (edited, network_d, check):
        exec(source, namespace)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("G:", "D:"))]
    assert lines[0] == ("G: the written-out network does not run: layer 4 (BatchNorm2d) expects 192 channels but "
                        "layer 3 gives it 256 (shape (8, 256, 8, 8)): make the two agree")
    assert lines[1].startswith("D: 13 layers, same as utils.models: True")
