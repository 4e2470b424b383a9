"""The module map of docs/design.md holds: no import cycles inside deploytools, and no
import of one of its modules hidden in a function to dodge one."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "deploytools"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        here = module.split(".") if is_package else module.split(".")[:-1]
        here = here[:len(here) - (node.level - 1)]
        base = ".".join(here + ([node.module] if node.module else []))
    if not base.startswith("deploytools"):
        return []
    # `from . import gate` names a module; `from .errors import X` names its module.
    return [f"{base}.{a.name}" for a in node.names] + [base]


def _lazy_import(node: ast.AST) -> str | None:
    """The one exception to "imports are import statements": `lazy.module("deploytools.x")`
    (deploytools/lazy.py), which defers an import so that `deploytools --list` stays
    cheap. It is an import of that module all the same: an edge of the graph, held to
    the module map, and never inside a function."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "module" and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "lazy" and len(node.args) == 1
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
            and node.args[0].value.startswith("deploytools")):
        return node.args[0].value
    return None


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    hidden: list[str] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        functions = [n for n in ast.walk(tree)
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        inner = {id(n) for f in functions for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                targets = _resolve(name, is_package, node)
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("deploytools")]
            elif _lazy_import(node):
                targets = [_lazy_import(node)]
            else:
                continue
            targets = [t for t in targets if t in modules and t != name]
            if targets and id(node) in inner:
                hidden.append(f"{name}:{node.lineno} imports {', '.join(sorted(set(targets)))}")
            graph[name].update(targets)
    return graph, hidden


def test_no_module_imports_another_inside_a_function():
    _, hidden = _graph()
    assert hidden == []


def test_a_lazy_import_is_an_import():
    """`lazy.module("deploytools.x")` counts: tasks -> operations is an edge, so the
    layer and cycle tests see it (a lazy import upward would fail them)."""
    graph, _ = _graph()
    assert {"deploytools.operations", "deploytools.monitor"} <= graph["deploytools.tasks"]
    assert "deploytools.session" in graph["deploytools.cli"]
    tree = ast.parse('def f():\n    x = lazy.module("deploytools.rollout")\n')
    assert _lazy_import(tree.body[0].body[0].value) == "deploytools.rollout"


def test_no_import_cycles():
    graph, _ = _graph()
    # The package's own __init__ re-exports; edges into a package are edges to it.
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):  # a package importing its own submodules
                continue
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


# The module map of docs/design.md ("Module map"): a module imports only from
# layers below its own. A new module gets a layer here and a line in the doc.
LAYERS = {
    0: {"errors", "booleans", "waves", "plan", "report", "render", "lockfiles", "alembic_ops",
        "lazy", "signals"},
    1: {"config", "script", "vcs", "probe", "inventory", "handoff", "migrations"},
    2: {"health", "supervisor", "venv", "lb", "hooks"},
    3: {"hoststate", "lock", "gate", "releases"},
    4: {"rollout", "session"},
    5: {"operations", "monitor"},
    6: {"tasks"},
    7: {"cli"},
    8: {"__main__"},
}


def _layer(module: str) -> int | None:
    top = module.split(".")[1] if "." in module else ""
    for layer, names in LAYERS.items():
        if top in names:
            return layer
    return None


def test_every_import_goes_down_the_module_map():
    graph, _ = _graph()
    unplaced = sorted(m for m in graph if m != "deploytools" and _layer(m) is None)
    assert unplaced == [], "give these modules a layer in LAYERS and in docs/design.md"
    upward = []
    for module, targets in graph.items():
        if module == "deploytools":
            continue
        for target in targets:
            if target == "deploytools" or target.split(".")[:2] == module.split(".")[:2]:
                continue  # the package itself, or a sibling inside the same subpackage
            if target == "deploytools.errors" and module != target:
                continue  # the floor: layer 0 may import it (design.md: "but `errors`")
            if _layer(target) >= _layer(module):
                upward.append(f"{module} (layer {_layer(module)}) imports {target} "
                              f"(layer {_layer(target)})")
    assert upward == []


def test_test_modules_have_unique_basenames():
    """pytest imports test modules by basename (rootdir-relative `pythonpath`, no
    packages): two files of one name in tests/unit and tests/system stop the whole run
    at collection."""
    root = Path(__file__).resolve().parents[1]
    names = [p.name for p in root.rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
