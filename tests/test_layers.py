"""The package's layers, read from its own imports: no cycle, nothing reaching up.

Order (lowest first): base modules at the top of the package (``device``, ``faults``, ``overlay``,
``engines``, ``pretrained``, ``statistics``, ... and the package root itself) < ``data`` < ``training`` <
``segmentation`` < ``classification`` < ``inference`` < ``tools`` < ``dev`` < entry modules (``cli``,
``commands``, ``__main__``). A module may import its own layer or lower ones. Imports inside functions
count: they run too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mgmt2d"
LAYERS = ("data", "training", "segmentation", "classification", "inference", "tools", "dev")
ENTRY = ("cli", "commands", "__main__")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(source: str, me: str, is_package: bool, known: set[str]) -> set[str]:
    """The package modules module ``me`` imports (``from a.b import c`` names a.b.c when c is a module)."""
    package = me if is_package else me.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, me)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "mgmt2d"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base.split(".")[0] != "mgmt2d":
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
    return found - {me}


def rank(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return 0   # the package root: its public names are imported lazily, on first use
    if parts[1] in ENTRY:
        return len(LAYERS) + 1
    if parts[1] in LAYERS:
        return LAYERS.index(parts[1]) + 1
    return 0       # a base module at the top of the package


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imported(path.read_text(), name, path.name == "__init__.py", set(mods))
            for name, path in mods.items()}


def test_no_import_reaches_up():
    upward = sorted(f"{a} -> {b}" for a, deps in graph().items() for b in deps if rank(b) > rank(a))
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("source, bad", [
    ("from mgmt2d.inference.predict import predict\n", "mgmt2d.data.x -> mgmt2d.inference.predict"),
    ("def f():\n    from mgmt2d.tools import download\n", "mgmt2d.data.x -> mgmt2d.tools.download"),
])
def test_the_check_sees_upward_imports(source, bad):
    """The checker itself: a data module importing inference (at the top or inside a function) is caught."""
    name = "mgmt2d.data.x"
    found = imported(source, name, False, set(modules()))
    assert [f"{name} -> {b}" for b in found if rank(b) > rank(name)] == [bad]


MAX_PARAMETERS = 10   # more, and a caller passes an options object (a dataclass) instead
MAX_TRAINER_LINES = 600


def public_functions_with_too_many_parameters() -> list[str]:
    """Public functions and methods outside ``dev/`` (development tools) taking more than MAX_PARAMETERS."""
    found = []
    for name, path in modules().items():
        if ".dev" in name:
            continue
        for node in ast.walk(ast.parse(path.read_text(), name)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                a = node.args
                named = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs) if x.arg not in ("self", "cls")]
                if len(named) > MAX_PARAMETERS:
                    found.append(f"{name}.{node.name} ({len(named)})")
    return found


def test_no_public_function_takes_more_than_ten_named_parameters():
    assert public_functions_with_too_many_parameters() == []


def test_the_trainer_stays_lean():
    lines = len((PACKAGE / "training" / "trainer.py").read_text().splitlines())
    assert lines <= MAX_TRAINER_LINES, f"training/trainer.py has {lines} lines; move a concept into its own module"
