"""The layers point one way (DESIGN.md section 2): qsfl <- tuning <- reports <- CLI, no import cycles.

The import graph is read with ``ast`` from the source, every ``import`` statement counted (module level or inside a
function: a lazy import is still a dependency). An edge goes to the module that is imported; the implicit import
of a parent package's ``__init__`` is not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("qsfl", "tuning", "reports")
TOP_MODULES = ("qsfl_cli",)


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages and top-level modules."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    for name in TOP_MODULES:
        if (REPO / f"{name}.py").is_file():
            out[name] = REPO / f"{name}.py"
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest project module that ``name`` (a dotted import target) names, or None."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    modules = module_files()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for target in targets:
                dep = _resolve(target, modules)
                if dep is not None and dep != mod:
                    graph[mod].add(dep)
                    break
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def package_of(module: str) -> str:
    return module.split(".")[0]


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert graph.get("qsfl.sim")          # sanity: edges were found
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_import_cycle_between_packages():
    graph = import_graph()
    packages: dict[str, set[str]] = {}
    for mod, deps in graph.items():
        packages.setdefault(package_of(mod), set()).update(package_of(d) for d in deps if package_of(d) != package_of(mod))
    cycle = find_cycle(packages)
    assert cycle is None, "package cycle: " + " -> ".join(cycle or [])


def test_qsfl_imports_neither_tuning_nor_reports():
    bad = {m: sorted(d for d in deps if package_of(d) in ("tuning", "reports"))
           for m, deps in import_graph().items() if package_of(m) == "qsfl"}
    assert not {m: d for m, d in bad.items() if d}


def test_reports_uses_only_the_public_results_api_of_tuning():
    bad = {m: sorted(d for d in deps if package_of(d) == "tuning" and d != "tuning.results")
           for m, deps in import_graph().items() if package_of(m) == "reports"}
    assert not {m: d for m, d in bad.items() if d}


def _imported_names(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (absolute imports only)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_the_optional_flower_adapter_imports_qsfl_only_and_nothing_else_imports_it_but_the_cli():
    graph = import_graph()
    flower = [m for m in graph if m == "qsfl.flower" or m.startswith("qsfl.flower.")]
    assert flower, "qsfl.flower not found"
    assert not {m: sorted(d for d in graph[m] if package_of(d) != "qsfl") for m in flower if
                any(package_of(d) != "qsfl" for d in graph[m])}
    users = sorted(m for m, deps in graph.items() if m not in flower and any(d in flower for d in deps))
    assert users == ["qsfl_cli"]


def test_only_qsfl_flower_imports_flwr():
    files = module_files()
    importers = sorted(m for m, path in files.items() if "flwr" in _imported_names(path))
    assert importers and all(m.startswith("qsfl.flower.") for m in importers), importers
    assert "flwr" not in _imported_names(files["qsfl.flower.export"])   # `qsfl flower-app` works without Flower
    assert "flwr" not in _imported_names(files["qsfl.flower.protocol"])
