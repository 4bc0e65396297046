"""The package's imports run one way: each module imports only from its own layer or the ones below.

Layers, lowest first, are listed in ``docs/ARCHITECTURE.md``; this test is what keeps that list
true. Imports are read from the source (every ``import``/``from`` statement, also those inside
functions), so a lazy import that runs back up is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import charlab

PACKAGE = Path(charlab.__file__).parent
# Lowest first. A top-level module is its own unit; a folder is one unit.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "paths", "io", "configfile", "costs", "__init__"),
    ("models",),
    ("store",),
    ("analysis",),
    ("constitution",),
    ("datasets",),
    ("interp",),
    ("judges",),
    ("training",),
    ("pipeline",),
    ("conditions",),
    ("evals",),
    ("report",),
    ("study",),
    ("cli", "__main__"),
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def _unit(module: str) -> str:
    """``charlab.evals.em`` -> ``evals``; ``charlab`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every charlab module ``path`` imports (``from charlab import x`` counts as ``charlab.x``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "charlab"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[:len(package.split(".")) - node.level + 1], *filter(None, [base])])
            if base.split(".")[0] != "charlab":
                continue
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names
                      if (PACKAGE.parent / f"{base}.{a.name}".replace(".", "/")).with_suffix(".py").exists()
                      or (PACKAGE.parent / f"{base}.{a.name}".replace(".", "/")).is_dir()}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_every_unit_has_a_layer():
    units = {_unit(name) for name in _graph()}
    assert units <= set(RANK), f"add these to LAYERS (and docs/ARCHITECTURE.md): {sorted(units - set(RANK))}"


def test_no_import_runs_up_a_layer():
    upward = sorted(f"{name} -> {target}" for name, targets in _graph().items() for target in targets
                    if RANK[_unit(target)] > RANK[_unit(name)])
    assert upward == []


def test_no_import_circles():
    graph = _graph()
    state: dict[str, int] = {}  # 1 on the path, 2 finished
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                circles.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    # a package's __init__ importing its own submodules is a face, not a circle
    real = [c for c in circles if not any(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:]))]
    assert real == []


def test_the_reader_sees_a_known_edge_and_a_known_upward_one(tmp_path):
    """The walker itself: a lazy import inside a function is seen, and an upward one would be flagged."""
    graph = _graph()
    assert "charlab.errors" in graph["charlab.io"]
    assert RANK[_unit("charlab.cli.study")] > RANK[_unit("charlab.study.plan")]
    assert any("charlab.study" in t for t in graph["charlab.cli.study"])  # imported inside functions
