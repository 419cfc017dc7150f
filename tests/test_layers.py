"""The package's layers: no module imports one from a higher layer, and no import cycle, counting
every import statement (module-level, inside functions, and under `if TYPE_CHECKING`), since a
function-local import hides a dependency without removing it.

`LAYERS` below is the layer order, lowest first: a module may import its own layer and the ones
below it. A new top-level module or package must be placed there.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tinyscale

LAYERS: list[tuple[str, set[str]]] = [
    ("base", {"tinyscale", "errors"}),  # "tinyscale": the package root (its version only)
    ("helpers", {"fileio", "progress", "devices", "validate", "config", "endpoint"}),
    ("models, run folders, data", {"model", "structure", "kernels", "decoding", "runs", "data", "tracking"}),
    ("stages that make and measure runs", {"train", "training", "evaluate", "generate", "export", "model_card", "export_gguf", "sweep"}),
    ("uses of trained runs", {"interpret", "incentivize", "serve"}),
    ("reports over sweeps", {"analysis"}),
    ("entry points", {"demo", "cli"}),
]

SRC = Path(tinyscale.__file__).parent


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the package folder `root`."""
    out = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(root: Path) -> dict[str, dict[str, int]]:
    """For each module of the package, the package's modules it imports, with a line number of one
    such import. `from a import b` counts as importing `a.b` when that is a module, else `a`."""
    mods = module_files(root)
    top = root.name
    graph: dict[str, dict[str, int]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, `level - 1` steps up
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                if (t == top or t.startswith(top + ".")) and t != name:
                    found.setdefault(t, node.lineno)
        graph[name] = found
    return graph


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    part = parts[1] if len(parts) > 1 else parts[0]
    return next((i for i, (_, members) in enumerate(LAYERS) if part in members), None)


def upward_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    out = []
    for mod, targets in sorted(graph.items()):
        for t, line in sorted(targets.items()):
            a, b = layer_of(mod), layer_of(t)
            if a is not None and b is not None and b > a:
                out.append(f"{mod} (line {line}, layer '{LAYERS[a][0]}') imports {t} (layer '{LAYERS[b][0]}')")
    return out


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in module_files(SRC) if layer_of(m) is None)
    assert not unplaced, f"place these in LAYERS (tests/test_layers.py): {unplaced}"


def test_no_module_imports_a_higher_layer():
    assert upward_imports(imports(SRC)) == []


def test_no_import_cycles():
    assert cycles(imports(SRC)) == []


def test_the_checks_find_a_planted_cycle_and_upward_import(tmp_path):
    """The walker sees function-local and relative imports (what hid the old cycles)."""
    pkg = tmp_path / "tinyscale"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "a.py").write_text("from . import b\n")
    (pkg / "data" / "b.py").write_text("def f():\n    from tinyscale.data.a import x\n    from tinyscale.analysis import y\n")
    (pkg / "analysis.py").write_text("")
    graph = imports(pkg)
    assert graph["tinyscale.data.a"] == {"tinyscale.data.b": 1}
    assert cycles(graph) == [["tinyscale.data.a", "tinyscale.data.b"]]
    (up,) = upward_imports(graph)
    assert up.startswith("tinyscale.data.b (line 3, layer 'models, run folders, data') imports tinyscale.analysis")
