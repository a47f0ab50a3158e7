"""The package's shape, measured from its source: every function fits on a screen, every import of the package is
absolute, and no module imports itself back through others (two such modules cannot be read or loaded one without
the other). The number of parameters is not counted: a limit on it only made options objects."""

import ast
import graphlib
from pathlib import Path


UTILS = Path(__file__).resolve().parents[1] / "utils"
MODULES = {path.stem: ast.parse(path.read_text(), str(path)) for path in sorted(UTILS.glob("*.py"))}
MAX_LINES = 60


def test_no_function_is_longer_than_a_screen():
    too_long = [f"utils/{module}.py:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
                for module, tree in MODULES.items() for node in ast.walk(tree)
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and node.end_lineno - node.lineno + 1 > MAX_LINES]
    assert not too_long, f"functions over {MAX_LINES} lines: {too_long}"


def test_every_import_of_the_package_is_absolute():
    relative = [f"utils/{name}.py:{node.lineno}" for name, tree in MODULES.items() for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.level]
    assert not relative, f"relative imports (write `from utils.x import y`): {relative}"


def package_imports(tree: ast.Module) -> set[str]:
    """The utils modules `tree` imports, late imports inside functions included."""
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "utils":
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("utils."):
            imported.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("utils.")}
    return imported


def import_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One path by which a module imports itself back, or []."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        return error.args[1]
    return []


def test_no_utils_module_imports_itself_back_through_others():
    graph = {name: package_imports(tree) & MODULES.keys() - {name} for name, tree in MODULES.items()}
    assert import_cycle(graph) == [], "import circle: " + " -> ".join(import_cycle(graph))


def test_the_cycle_check_finds_a_circle():
    cycle = import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert set(cycle) == {"a", "b", "c"} and len(cycle) == 4 and cycle[0] == cycle[-1]
    assert import_cycle({"a": {"b"}, "b": set()}) == []
