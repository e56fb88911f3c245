"""The package's import graph stays one-way: `core` knows nothing of Dagster nor of the layers above it,
resources build on core only, and no module imports itself back through a cycle (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "enrichment_pipeline"
# Each layer may import from itself and from the layers listed for it (settings are plain values).
ALLOWED = {
    "core": {"core"},
    "standins": {"core", "standins"},
    "resources": {"core", "resources", "settings"},
    "checks": {"core", "resources", "settings", "partitions"},  # specs name their assets by key
    "assets": {"core", "resources", "settings", "partitions", "checks", "assets"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, *, typing_too: bool) -> set[str]:
    """Modules `path` imports; without `typing_too`, those under `if TYPE_CHECKING:` are left out."""
    tree = ast.parse(path.read_text())
    type_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for statement in block.body
        for node in ast.walk(statement)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only and not typing_too:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


PATHS = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
MODULES = {module: imports(path, typing_too=False) for module, path in PATHS.items()}


def layer(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


@pytest.mark.parametrize("module", sorted(name for name in MODULES if layer(name) == "core"))
def test_core_modules_import_no_dagster(module):
    assert not {name for name in MODULES[module] if name.split(".")[0] in {"dagster", "dagster_postgres"}}


@pytest.mark.parametrize("module", sorted(name for name in MODULES if layer(name) in ALLOWED))
def test_each_layer_imports_only_the_layers_below_it(module):
    ours = {name for name in MODULES[module] if name.startswith("enrichment_pipeline.")}
    outside = {name for name in ours if layer(name) not in ALLOWED[layer(module)]}
    assert not outside, f"{module} imports {sorted(outside)}"


def test_no_import_cycles_between_the_package_modules():
    # Type-only imports count too: a cycle hidden behind TYPE_CHECKING still ties two modules together.
    def resolved(name: str) -> str | None:
        # `from enrichment_pipeline.core.inventory import x` is the package; a name may also be a symbol.
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in PATHS.items():
        targets = {resolved(name) for name in imports(path, typing_too=True)}
        graph[module] = {target for target in targets if target and target != module}
    # A package's __init__ re-exporting its submodules is not a cycle of theirs: submodules never need it.
    for module, targets in graph.items():
        graph[module] = {target for target in targets if not module.startswith(target + ".")}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for target in graph[node]:
                if target == start:
                    return [*path, start]
                if target not in path:
                    stack.append((target, [*path, target]))
        return None

    cycles = [cycle for module in graph if (cycle := cycle_from(module))]
    assert not cycles, f"import cycle: {' -> '.join(cycles[0])}"
