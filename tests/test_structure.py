"""The package's shape, measured from its source: every function fits on a screen, every import of the package is
absolute, and no module imports itself back through others.

A reader follows `train()` top to bottom; that stops being possible once a function runs past a screen, and an
import circle means two modules cannot be read (or loaded) one without the other. The number of parameters is not
counted: a limit on it made options objects that only moved the parameters one hop further from the reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

UTILS = Path(__file__).resolve().parents[1] / "utils"
MAX_LINES = 60


def _modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(), str(path)) for path in sorted(UTILS.glob("*.py"))}


def test_no_function_is_longer_than_a_screen():
    too_long = [f"utils/{module}.py:{function.lineno} {function.name} ({function.end_lineno - function.lineno + 1} "
                "lines)" for module, tree in _modules().items() for function in ast.walk(tree)
                if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
                and function.end_lineno - function.lineno + 1 > MAX_LINES]
    assert not too_long, f"functions over {MAX_LINES} lines: {too_long}"


def _package_imports(tree: ast.Module) -> tuple[set[str], list[int]]:
    """The utils modules `tree` imports (anywhere, late imports in functions included) and the lines of relative
    imports."""
    imported, relative = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # `from .x import y` or `from . import x`: inside the package too
                relative.append(node.lineno)
                imported |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
            elif node.module == "utils":
                imported |= {alias.name for alias in node.names}
            elif node.module and node.module.startswith("utils."):
                imported.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("utils.")}
    return imported, relative


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _package_imports(tree)[0] & modules.keys() - {name} for name, tree in modules.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every module that can reach itself, with one path back (depth-first search from each module)."""
    cycles = []
    for start in sorted(graph):
        stack, seen = [(start, [start])], set()
        while stack:
            module, path = stack.pop()
            for target in sorted(graph[module]):
                if target == start:
                    cycles.append(path + [start])
                    stack.clear()
                    break
                if target not in seen:
                    seen.add(target)
                    stack.append((target, path + [target]))
    return cycles


def test_no_utils_module_imports_itself_back_through_others():
    cycles = import_cycles(import_graph())
    assert not cycles, "import circles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_cycle_check_finds_a_circle():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        ["a", "b", "c", "a"], ["b", "c", "a", "b"], ["c", "a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_every_import_of_the_package_is_absolute():
    relative = {f"utils/{name}.py": lines for name, tree in _modules().items() if (lines := _package_imports(tree)[1])}
    assert not relative, f"relative imports (write `from utils.x import y`): {relative}"
