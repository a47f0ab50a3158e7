"""The repository's layout on a fresh clone is the one the README shows: every folder it lists is in git."""

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def tracked(folder: str) -> list[str]:
    """The files git tracks under `folder`: what a fresh clone has there."""
    result = subprocess.run(["git", "ls-files", "--", folder], cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"not a git checkout: {result.stderr.strip()}")
    return result.stdout.split()


def test_every_folder_of_the_readme_layout_exists_in_a_fresh_clone():
    section = re.search(r"^## Layout\n+```\n(.*?)^```", (REPO / "README.md").read_text(), re.M | re.S)
    assert section, "README.md has no '## Layout' section with a code block"
    folders = re.findall(r"^(\S+/)", section.group(1), re.M)
    assert {"data/", "generated/", "utils/", "tests/"} <= set(folders)
    assert [folder for folder in folders if not tracked(folder)] == []


@pytest.mark.parametrize("folder", ["data", "generated"])
def test_the_output_folders_say_what_goes_there_and_that_it_is_not_committed(folder):
    assert tracked(folder) == [f"{folder}/README.md"]
    assert "None of it is committed" in (REPO / folder / "README.md").read_text()
