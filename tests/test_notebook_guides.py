"""Every notebook ends with "Try it" exercises and a "What you learned" summary; 03 has a troubleshooting guide.

The exercises and the fixes name what to change. Written as `name = value` (spaces around `=`), a change is to the
notebook's parameters cell: the name must be one of its parameters and the value of the same type as its default
(as papermill would pass it). Written as `TrainConfig(name=value, ...)`, it must build a valid TrainConfig. So a
renamed or removed parameter, a misspelt field or an invalid value in the text fails here, and so does a missing
section, a figure that is not in the repository, or an exercise that does not say how long it takes.
"""

import ast
import re
from pathlib import Path

import nbformat
import pytest

from utils.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(path.stem for path in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PROBLEMS = ["mode collapse", "d wins", "divergence", "checkerboard", "blurry", "slow"]   # 03's troubleshooting


def load(name: str) -> nbformat.NotebookNode:
    return nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)


def parameters(name: str) -> dict:
    (cell,) = [c for c in load(name).cells if "parameters" in c.metadata.get("tags", [])]
    namespace = {"os": type("os", (), {"environ": {}})}
    exec(cell.source, namespace)
    return {key: value for key, value in namespace.items() if key not in ("os", "__builtins__")}


def figure_file(link: str) -> Path:
    """The repository file an image link shows: a raw.githubusercontent.com URL of this repository's main branch (so
    that Colab and Kaggle, which open the notebook alone, can show it) or a path relative to notebooks/."""
    bootstrap = next(c for c in load(NOTEBOOKS[0]).cells if c.cell_type == "code").source
    repository = re.search(r'"ANIME_GAN_REPO", "https://github.com/([^"]+)"', bootstrap).group(1)
    raw = f"https://raw.githubusercontent.com/{repository}/main/"
    return REPO / link.removeprefix(raw) if link.startswith(raw) else REPO / "notebooks" / link


def section(name: str, title: str) -> str:
    """The markdown of the section `## title` up to the next `## ` heading (one or more cells)."""
    text = "\n".join(cell.source for cell in load(name).cells if cell.cell_type == "markdown")
    match = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"{name} has no '## {title}' section"
    return match.group(1)


def items(text: str) -> list[str]:
    """The numbered list items of `text` (an item runs until the next one)."""
    return [m.group(1) for m in re.finditer(r"^\d+\. (.*?)(?=^\d+\. |\Z)", text, re.M | re.S)]


def changes(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(`name = value` parameter changes, `TrainConfig(...)` expressions) written in backticks in `text`."""
    spans = re.findall(r"`([^`]+)`", text)
    assignments = [(m.group(1), m.group(2).strip()) for s in spans
                   for m in [re.fullmatch(r"(\w+) = (.+)", s)] if m]
    configs = [s for s in spans if s.startswith("TrainConfig(")]
    return assignments, configs


def check_changes(name: str, text: str) -> int:
    """Assert every change in `text` is real; return how many there are."""
    known = parameters(name)
    assignments, configs = changes(text)
    for key, value in assignments:
        assert key in known, f"{name}: `{key} = {value}` names no parameter of its parameters cell"
        parsed = ast.literal_eval(value)
        assert type(parsed) is type(known[key]) or (type(known[key]) is float and type(parsed) is int), \
            f"{name}: `{key} = {value}` has another type than the parameter's default {known[key]!r}"
        if key in TrainConfig.__dataclass_fields__:
            TrainConfig(**{key: parsed})   # a valid value for the field it sets (raises a ConfigError otherwise)
    for expression in configs:
        call = ast.parse(expression, mode="eval").body
        assert not call.args, expression
        TrainConfig(**{kw.arg: ast.literal_eval(kw.value) for kw in call.keywords})
    return len(assignments) + len(configs)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_ends_with_try_it_and_what_you_learned(name):
    headings = [line for cell in load(name).cells if cell.cell_type == "markdown"
                for line in cell.source.splitlines() if line.startswith("## ")]
    assert "## Try it" in headings and "## What you learned" in headings, name
    assert headings.index("## Try it") < headings.index("## What you learned")
    after = headings[headings.index("## What you learned") + 1:]
    assert after in ([], ["## Next"]), f"{name}: the exercises and the summary come last, not before {after}"
    learned = section(name, "What you learned")
    assert len(re.findall(r"^- ", learned, re.M)) >= 3, f"{name}: the summary has fewer than 3 points"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_exercises_are_concrete_and_name_real_parameters(name):
    exercises = items(section(name, "Try it"))
    assert 3 <= len(exercises) <= 5, f"{name}: {len(exercises)} exercises"
    for exercise in exercises:
        assert "T4" in exercise and "CPU" in exercise, f"{name}: says not how long on a T4 and on a CPU: {exercise[:60]}"
        check_changes(name, exercise)
    assert sum(check_changes(name, exercise) > 0 for exercise in exercises) >= 2, \
        f"{name}: fewer than two exercises say which parameter to change"


def test_troubleshooting_covers_each_problem_with_signs_and_a_fix_from_real_runs():
    guide = section("03_training", "Troubleshooting")
    parts = re.split(r"^### ", guide, flags=re.M)[1:]
    titles = [part.splitlines()[0].lower() for part in parts]
    for problem in PROBLEMS:
        matching = [part for title, part in zip(titles, parts) if problem in title]
        assert len(matching) == 1, f"03's troubleshooting: no section (or several) for {problem!r}: {titles}"
        part = matching[0]
        assert "**Signs**" in part and "**Fix**" in part, problem
        check_changes("03_training", part)   # every value named, measured or advised, is a real one
        fix = part[part.index("**Fix**"):]
        assert check_changes("03_training", fix) > 0, f"{problem}: the fix names no parameter to change"
        assert "**Measured**" in part or "**Not measured**" in part, f"{problem}: say what was measured"
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", guide)
    assert len(figures) >= 4
    for figure in figures:
        assert figure_file(figure).resolve().is_file(), f"{figure} is not in the repository"
    # the mode collapse and "D wins" figures are curves of real runs whose commands are written down
    readme = (REPO / "docs" / "troubleshooting" / "README.md").read_text()
    for figure in figures:
        if "troubleshooting/" in figure:
            assert Path(figure).name in readme, f"docs/troubleshooting/README.md does not say how {figure} was made"
    assert readme.count("python -m utils.train") >= 2
