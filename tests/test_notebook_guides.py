"""Every notebook ends with "Try it" exercises and a "What you learned" summary; 03 has a troubleshooting guide.

The exercises and the fixes name what to change. Written as `name = value` (spaces around `=`), a change is to the
notebook's parameters cell: the name must be one of its parameters and the value of the same type as its default
(as papermill would pass it). Written as `TrainConfig(name=value, ...)`, it must build a valid TrainConfig. So a
renamed or removed parameter, a misspelt field or an invalid value in the text fails here, and so does a missing
section, a picture that would not display (not attached to its cell: offline, on Colab or Kaggle it would be
missing), or an exercise that does not say how long it takes.
"""

import ast
import base64
import io
import re
from pathlib import Path

import nbformat
import pytest
from PIL import Image

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


BADGES = ("https://colab.research.google.com/assets/", "https://kaggle.com/static/images/")   # "Open in ..." buttons
IMAGE_TYPES = {"image/png": b"\x89PNG", "image/jpeg": b"\xff\xd8", "image/gif": b"GIF8"}
MAX_ATTACHMENT_BYTES = 200_000   # a figure is a small copy: the notebook stays quick to open, diff and download


def markdown_images(cell) -> list[tuple[str, str]]:
    """(alt text, target) of every image in a markdown cell: `![alt](target)` and `<img src="target">`."""
    images = re.findall(r"!\[([^\]]*)\]\(\s*<?([^)\s>]+)", cell.source)
    return images + [("", src) for src in re.findall(r"<img[^>]*\ssrc=[\"']([^\"']+)", cell.source)]


def undisplayable(cell) -> list[str]:
    """Why each image of `cell` would not show everywhere the series is read, offline included.

    A cell attachment or a data: URI travels inside the notebook: JupyterLab and VS Code from a clone, offline,
    Colab and Kaggle (which open the notebook alone, from the badge) and GitHub's viewer all show it. A relative
    path shows only next to a clone, and an absolute URL only online and while the file is there. The exception
    is the Colab and Kaggle badges: links whose alt text is the working link when the picture is missing.
    """
    problems = []
    attachments = cell.get("attachments", {})
    for alt, target in markdown_images(cell):
        if target.startswith(BADGES) and alt.lower().startswith("open in"):
            continue
        if target.startswith("data:image/"):
            continue
        if not target.startswith("attachment:"):
            problems.append(f"{target} is not a cell attachment (it would not show offline, or opened alone)")
            continue
        name = target.removeprefix("attachment:")
        if name not in attachments:
            problems.append(f"{target}: the cell has no attachment {name!r} (it has {sorted(attachments)})")
            continue
        ((mime, encoded),) = attachments[name].items()
        data = base64.b64decode(encoded)
        if not data.startswith(IMAGE_TYPES.get(mime, b"?")):
            problems.append(f"{target}: the attachment is not a {mime} image")
        elif len(data) > MAX_ATTACHMENT_BYTES:
            problems.append(f"{target}: {len(data):,} bytes; keep attachments under {MAX_ATTACHMENT_BYTES:,}")
    unused = set(attachments) - {target.removeprefix("attachment:") for _, target in markdown_images(cell)}
    problems += [f"attachment {name!r} is shown nowhere in its cell" for name in sorted(unused)]
    return problems


def figure_file(attachment: str) -> Path:
    """The repository file an attached figure is a small copy of: the same name, under docs/ (any extension)."""
    stem = Path(attachment.removeprefix("attachment:")).stem
    matches = [path for path in (REPO / "docs").rglob(f"{stem}.*") if path.suffix in (".png", ".jpg")]
    assert len(matches) == 1, f"{attachment}: no single figure named {stem}.* under docs/ ({matches})"
    return matches[0]


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
        assert type(parsed) is type(known[key]) or (type(known[key]) is float and type(parsed) is int) \
            or (known[key] is None and type(parsed) is int), \
            f"{name}: `{key} = {value}` has another type than the parameter's default {known[key]!r}"   # None: sized
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
        assert figure.startswith("attachment:"), f"{figure}: attach it to the cell (test_every_picture_displays)"
        figure_file(figure)
    # the mode collapse and "D wins" figures are curves of real runs whose commands are written down
    readme = (REPO / "docs" / "troubleshooting" / "README.md").read_text()
    for figure in figures:
        if figure_file(figure).parent.name == "troubleshooting":
            assert figure_file(figure).name in readme, f"docs/troubleshooting/README.md does not say how {figure} was made"
    assert readme.count("python -m utils.train") >= 2


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_picture_displays_everywhere(name):
    """No markdown image that needs the repository or the network: each is an attachment (or a data: URI)."""
    problems = [f"cell {index}: {problem}" for index, cell in enumerate(load(name).cells) if cell.cell_type == "markdown"
                for problem in undisplayable(cell)]
    assert not problems, f"{name}: " + "; ".join(problems)


def test_attached_figures_are_copies_of_the_repository_figures():
    """Each attachment shows the docs/ figure of its name (same aspect ratio), so the prose describes what is shown."""
    for name in NOTEBOOKS:
        for cell in load(name).cells:
            for attachment, bundle in cell.get("attachments", {}).items():
                ((_, encoded),) = bundle.items()
                with Image.open(io.BytesIO(base64.b64decode(encoded))) as shown, Image.open(figure_file(attachment)) as original:
                    assert abs(shown.width / shown.height - original.width / original.height) < 0.02, attachment


def test_the_image_check_rejects_what_would_not_display():
    """The check itself: a URL, a relative path and a missing attachment fail; an attachment and a badge pass."""
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, "PNG")
    attached = {"a.png": {"image/png": base64.b64encode(png.getvalue()).decode()}}
    cell = nbformat.v4.new_markdown_cell
    assert undisplayable(cell("![x](attachment:a.png)", attachments=attached)) == []
    assert undisplayable(cell("[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](u)")) == []
    for source in ("![x](https://raw.githubusercontent.com/o/r/main/docs/a.png)", "![x](../docs/a.png)",
                   '<img src="../docs/a.png">', "![x](attachment:b.png)"):
        assert len(undisplayable(cell(source, attachments=attached))) >= 1, source
    assert undisplayable(cell("no picture", attachments=attached)) == ["attachment 'a.png' is shown nowhere in its cell"]


# this project's own machines and dates belong in the README and docs/, dated, never in what a learner reads
LAB_FACTS = re.compile(r"(?<![\w-])\d{4}-\d{2}-\d{2}(?![\w-])|\b(H100|H200|A100|Xeon|EPYC|AMX|AVX\w*)\b|benchmarks/",
                       re.I)   # a date alone, not inside a file name such as pt_inception-2015-12-05-6726825d.pth


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_prose_names_no_date_machine_or_benchmark_of_this_project(name):
    """Figures a learner needs come from their own machine (the code prints them) or from a cited source."""
    found = [(index, match.group(0)) for index, cell in enumerate(load(name).cells) if cell.cell_type == "markdown"
             for match in LAB_FACTS.finditer(cell.source)]
    assert not found, f"{name}: lab-notebook facts in its prose (cell, text): {found}"


def test_the_lab_facts_check_finds_dates_machines_and_benchmarks_but_not_file_names():
    for text in ("(2026-12-01, busy)", "on an H100", "2-core Intel Xeon with AMX", "AMD EPYC", "`benchmarks/quality.py`"):
        assert LAB_FACTS.search(text), text
    for text in ("`pt_inception-2015-12-05-6726825d.pth`", "a T4 or a CPU", "the H-bridge"):
        assert not LAB_FACTS.search(text), text


def prose_words(name: str, before: str | None = None) -> int:
    """Words of a notebook's markdown (whitespace-split), all of it or up to the first code cell containing `before`."""
    words = 0
    for cell in load(name).cells:
        if before and cell.cell_type == "code" and before in cell.source:
            return words
        words += len(cell.source.split()) if cell.cell_type == "markdown" else 0
    assert before is None, f"{name} has no code cell with {before!r}"
    return words


def test_the_series_reads_in_under_an_hour_and_03_trains_early():
    """Issue 27's budget: at most 8,000 words of prose in all (40 minutes at 200 words a minute), 2,000 in notebook
    03, and 03's hand-written loop running within 600 words of its top: the engineering lives in docs/."""
    assert sum(prose_words(name) for name in NOTEBOOKS) <= 8000, {name: prose_words(name) for name in NOTEBOOKS}
    assert prose_words("03_training") <= 2000
    assert prose_words("03_training", before="for step in bar") <= 600


def test_the_notebooks_readme_lists_every_notebook():
    listed = (REPO / "notebooks" / "README.md").read_text()
    front = (REPO / "README.md").read_text()
    for name in NOTEBOOKS:
        assert f"]({name}.ipynb)" in listed, f"notebooks/README.md does not list {name}"
        assert f"](notebooks/{name}.ipynb)" in front, f"README.md does not list {name}"
