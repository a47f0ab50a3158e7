"""The ways to install the project agree: pyproject.toml, environment.yml (conda) and the README's quick start."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch"}  # conda-forge names that differ from the PyPI ones
CONDA_ONLY = {"python", "pip"}       # what conda needs in addition to the project's own dependencies
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
ENVIRONMENT = yaml.safe_load((REPO / "environment.yml").read_text())


def requirement(spec: str) -> tuple[str, str]:
    """('name', 'version constraint') of a requirement such as 'torch-fidelity>=0.3' or 'pytorch >=2.1'."""
    name, constraint = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*", spec).groups()
    return re.sub(r"[-_.]+", "-", name).lower(), constraint.replace(" ", "")


def conda_requirements() -> dict[str, str]:
    specs = []
    for entry in ENVIRONMENT["dependencies"]:
        specs += entry["pip"] if isinstance(entry, dict) else [entry]
    named = dict(map(requirement, specs))
    return {CONDA_TO_PIP.get(name, name): constraint for name, constraint in named.items() if name not in CONDA_ONLY}


def test_environment_yml_uses_conda_forge_the_python_and_the_minimum_versions_of_pyproject():
    assert ENVIRONMENT["channels"] == ["conda-forge"]
    assert f"python{PROJECT['requires-python']}" in ENVIRONMENT["dependencies"]
    specs = PROJECT["dependencies"] + [spec for extra in PROJECT["optional-dependencies"].values() for spec in extra]
    assert conda_requirements() == dict(map(requirement, specs))


def test_readme_quick_start_is_make_demo_then_make_test():
    section = re.search(r"^## Quick start\n(.*?)(?=^## |\Z)", (REPO / "README.md").read_text(), re.M | re.S)
    block = re.search(r"^```[a-z]*\n(.*?)^```", section.group(1), re.M | re.S)
    commands = [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.strip().startswith("#")]
    assert commands == ["make demo", "make test"]


def test_ci_runs_the_test_suite_with_strict_bash():
    script = (REPO / ".ci" / "run").read_text()
    assert script.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in script
    assert re.search(r"^make test$", script, re.M)
    assert (REPO / ".ci" / "run").stat().st_mode & 0o111, ".ci/run must be executable"


FAKE_PYTHON = """#!/usr/bin/env bash
# Logs how it was called; `-m venv DIR` creates DIR/bin/python as a copy of itself.
echo "$0 $*" >> "$MAKE_LOG"
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python"; fi
"""


def test_make_test_creates_the_venv_once_and_reinstalls_only_when_pyproject_changes(tmp_path, monkeypatch):
    """`make test` on a copy of the Makefile whose pythons only log their calls."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    shutil.copy(REPO / "Makefile", tmp_path)
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    fake, log = tmp_path / "tools" / "python3", tmp_path / "make.log"
    fake.parent.mkdir()
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    monkeypatch.setenv("MAKE_LOG", str(log))

    def make_test() -> list[str]:   # the calls it logged this time
        log.write_text("")
        subprocess.run(["make", "-s", "test", f"PYTHON={fake}"], cwd=tmp_path, check=True, capture_output=True)
        return log.read_text().replace(f"{tmp_path}/", "").splitlines()

    assert make_test() == ["tools/python3 -m venv .venv", ".venv/bin/python -m pip install -e .[dev]",
                           ".venv/bin/python -m pytest"]
    assert make_test() == [".venv/bin/python -m pytest"]
    later = (tmp_path / ".venv" / ".installed").stat().st_mtime + 10
    os.utime(tmp_path / "pyproject.toml", (later, later))
    assert make_test() == [".venv/bin/python -m pip install -e .[dev]", ".venv/bin/python -m pytest"]
