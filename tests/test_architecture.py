"""The package layers: every import of megatron_ixt points down or sideways, never up, and
the packages form no cycle (the layer table is the one in docs/DEVELOPING.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "megatron_ixt"

# From the ground up. A package may import packages of its own floor or below.
LAYERS = [
    {"config", "format"},
    {"runtime", "tokenizers"},
    {"preprocess", "data", "model", "feedback", "checkpoint"},
    {"training", "evaluation"},
    {"conversion"},
]
FLOOR = {package: floor for floor, packages in enumerate(LAYERS) for package in packages}


def package_imports() -> dict[str, set[str]]:
    """{package: packages of megatron_ixt it imports} (module-level and deferred imports)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) < 2:
            continue
        source = parts[0]
        graph.setdefault(source, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                bits = name.split(".")
                if bits[0] == "megatron_ixt" and len(bits) > 1 and bits[1] != source:
                    graph[source].add(bits[1])
    return graph


def test_every_package_has_a_floor():
    assert set(package_imports()) <= set(FLOOR), set(package_imports()) - set(FLOOR)


def test_no_import_runs_up_a_floor():
    upward = sorted(f"{source} (floor {FLOOR[source]}) imports {target} (floor {FLOOR[target]})"
                    for source, targets in package_imports().items() for target in targets
                    if FLOOR[target] > FLOOR[source])
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    graph = package_imports()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target, path + [target])
        state[node] = 2

    for package in sorted(graph):
        if package not in state:
            visit(package, [package])
