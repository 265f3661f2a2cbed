"""The layout the README's module map describes, kept true: imports point one way, the stored
trial has one owner, and no module grows past what a newcomer can read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "sweeper"
MODULES = sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The sweeper modules a module imports, at its top or inside a function (an import in a
    function body closes a circle as surely, only later); not those for type checking only."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    known = {module_name(p) for p in MODULES}

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sweeper"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sweeper"):
            base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found - {module_name(path)}


def test_no_import_cycles() -> None:
    graph = {module_name(p): imports(p) for p in MODULES}
    state: dict[str, str] = {}

    def walk(node: str, path: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                cycle = [*path[path.index(dep) :], dep] if dep in path else [node, dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                walk(dep, [*path, dep])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])


def test_only_the_registry_is_imported_from_outside_backends() -> None:
    """Outside ``backends/`` an engine is reached through the registry (``sweeper.backends``:
    ``backend_class(name)`` and what it answers), never by importing it: each engine's
    knowledge stays with it."""
    reached = {
        f"{module_name(p)} imports {dep}"
        for p in MODULES
        if "backends" not in p.relative_to(PACKAGE).parts
        for dep in imports(p)
        if dep.startswith("sweeper.backends.")
    }
    assert reached == set()


def test_only_records_touches_user_attributes() -> None:
    users = sorted(
        str(p.relative_to(PACKAGE)) for p in MODULES if "user_attr" in p.read_text(encoding="utf-8")
    )
    assert users == ["records.py", "studyrecord.py"]  # the trial's, the study's


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_readable(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    limit = 350 if "cli" in path.relative_to(PACKAGE).parts else 420  # the command line: thin
    assert lines <= limit, f"{path.name}: {lines} lines"


def test_only_the_system_module_starts_processes_or_asks_the_platform() -> None:
    """Every process sweeper starts goes through sweeper/system/, which alone branches on
    the operating system (so a Windows or macOS difference has one place to live)."""
    markers = ("subprocess", "multiprocessing.get_context", "sys.platform", "os.name ==")
    users = {
        str(p.relative_to(PACKAGE).parent)
        for p in MODULES
        if any(m in p.read_text(encoding="utf-8") for m in markers)
    }
    assert users == {"system"}


def test_the_sweep_is_made_of_small_parts() -> None:
    """The sweep's class only enqueues, optimises and promotes; one trial is objective.py's."""
    tree = ast.parse((PACKAGE / "sweep.py").read_text(encoding="utf-8"))
    sizes = {
        n.name: (n.end_lineno or n.lineno) - n.lineno + 1
        for n in tree.body
        if isinstance(n, ast.ClassDef)
    }
    assert sizes and max(sizes.values()) < 150, sizes
