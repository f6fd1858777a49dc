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
    {"conversion", "online"},
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


def module_imports() -> dict[str, set[str]]:
    """{module: modules of megatron_ixt it imports}, deferred imports included; a module's
    import of its own parent packages (their ``__init__``) is not an edge."""
    modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        graph[module] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            graph[module] |= {n for n in names if n in modules and n != module and not module.startswith(n + ".")}
    return graph


def _first_cycle(graph: dict[str, set[str]]):
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]):
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target, path + [target])
                if found:
                    return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


def test_no_module_imports_another_that_imports_it_back():
    """Within packages too (the preprocessing encoders once imported each other, one lazily)."""
    cycle = _first_cycle(module_imports())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycles():
    cycle = _first_cycle(package_imports())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
