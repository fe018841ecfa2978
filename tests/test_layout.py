"""The package's layout: rooms import only from rooms below them, no import cycles, small files.

Every import counts, including those inside functions (made there for start-up time) and
under ``TYPE_CHECKING``: a room that needs an upper room's names is in the wrong place.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "gradfit"

# Bottom to top. A module may import from its own room and from rooms listed before it.
LAYERS = [
    {"errors", "kernel", "threads", "files", "torchrun", "_fused"},
    {"parallel"},
    {"expr"},
    {"config"},
    {"data"},
    {"models"},
    {"optim"},
    {"results"},
    {"train"},
    {"equations"},
    {"cli"},
]
EXEMPT = {"gradfit", "gradfit.__main__"}  # the public API and the entry point import on demand

MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80
MAX_TOP_LEVEL_MODULES = 10


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(SRC.rglob("*.py")):
        parts = p.relative_to(SRC.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The gradfit modules ``name`` imports, anywhere in its text."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            for a in node.names:  # `from gradfit.data import tables` imports a module
                if f"{mod}.{a.name}" in MODULES:
                    found.add(f"{mod}.{a.name}")
    return {m for m in found if m in MODULES and m != name and (m != "gradfit" or name == "gradfit.__main__")}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _room(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _level(name: str) -> int:
    room = _room(name)
    for i, rooms in enumerate(LAYERS):
        if room in rooms:
            return i
    raise AssertionError(f"module {name} is in no layer of tests/test_layout.py: add its room there")


def test_every_room_imports_only_from_rooms_below():
    wrong = []
    for name, deps in GRAPH.items():
        if name in EXEMPT:
            continue
        for dep in deps:
            if dep in EXEMPT or _level(dep) > _level(name):
                wrong.append(f"{name} imports {dep}")
    assert not wrong, "upward imports:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle():
    graph = {n: {d for d in deps if d not in EXEMPT} for n, deps in GRAPH.items() if n not in EXEMPT}
    state: dict[str, int] = {}
    cycles = []

    def visit(n, path):
        state[n] = 1
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join(path[path.index(d):] + [d]) if d in path else f"{n} -> {d}")
            elif d not in state:
                visit(d, path + [d])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_files_and_functions_are_small():
    long_files = [f"{p.relative_to(SRC)}: {n} lines" for p in MODULES.values()
                  if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    long_functions = []
    for p in MODULES.values():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{p.relative_to(SRC)}:{node.lineno} {node.name}: {n} lines")
    assert not long_files, "files over the limit:\n" + "\n".join(long_files)
    assert not long_functions, "functions over the limit:\n" + "\n".join(long_functions)


def test_few_modules_at_the_top_level():
    top = [p.name for p in SRC.glob("*.py")]
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


@pytest.mark.parametrize("room", sorted({_room(n) for n in MODULES if n.count(".") >= 1 and (SRC / _room(n)).is_dir()}))
def test_each_room_says_what_it_holds(room):
    init = SRC / room / "__init__.py"
    assert init.exists() and ast.get_docstring(ast.parse(init.read_text())), f"{room}/__init__.py needs a docstring"
