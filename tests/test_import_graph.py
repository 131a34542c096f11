"""No import cycles in gptjax, between modules or between packages.

The graph is read from the source: every `import` and `from ... import` anywhere in a module (function-level ones
included, since hiding an import in a function does not remove the dependency). A package-level node is a top-level
module (`gptjax.api`) or a top-level package with everything below it (`gptjax.train`)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "gptjax"


def module_files(root: Path = PACKAGE_ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module under `root` (a package's name maps to its __init__.py)."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imported(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, modules: dict) -> list[str]:
    """The gptjax modules one import statement names: `from P import m` names P.m where that is a module, else P."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = importer.split(".")[: len(importer.split(".")) - node.level + (1 if is_package else 0)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    named = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
    return named if len(named) == len(node.names) else [base, *named]


def _nearest_module(name: str, modules: dict) -> str | None:
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in modules else None


def import_statements(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in `tree`, at any depth, except those under `if TYPE_CHECKING:` (annotations only)."""
    found = []
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.If) and getattr(child.test, "id", getattr(child.test, "attr", "")) == "TYPE_CHECKING":
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            found.append(child)
        found += import_statements(child)
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in import_statements(ast.parse(path.read_text(), str(path))):
            for target in _imported(node, name, path.name == "__init__.py", modules):
                if target.split(".")[0] == "gptjax":
                    resolved = _nearest_module(target, modules)
                    if resolved and resolved != name:
                        edges.add(resolved)
        graph[name] = edges
    return graph


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        source = package_of(module)
        packages.setdefault(source, set()).update(package_of(t) for t in targets if package_of(t) != source)
    return packages


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def describe(component: list[str], graph: dict[str, set[str]]) -> str:
    members = set(component)
    return "; ".join(f"{m} -> {', '.join(sorted(graph[m] & members))}" for m in component)


GRAPH = import_graph(module_files())


def test_the_graph_sees_every_kind_of_import():
    assert "gptjax.config" in GRAPH["gptjax.train.loop"], "a module-level `from X import Y`"
    assert len(GRAPH) > 80 and all(name.startswith("gptjax") for name in GRAPH)


def test_the_checker_finds_a_planted_cycle(tmp_path):
    package = tmp_path / "gptjax"
    (package / "a").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a" / "__init__.py").write_text("")
    (package / "a" / "x.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import gptjax.c\n"
                                        "def f():\n    from gptjax.b import y\n")
    (package / "c.py").write_text("from gptjax.a.x import f\n")
    (package / "b.py").write_text("from gptjax.a import x\n")
    planted = import_graph(module_files(package))
    assert cycles(planted) == [["gptjax.a.x", "gptjax.b"]]
    assert cycles(package_graph(planted)) == [["gptjax.a", "gptjax.b"]]


def test_no_module_imports_itself_back():
    found = cycles(GRAPH)
    assert not found, "import cycles between modules: " + " | ".join(describe(c, GRAPH) for c in found)


def test_no_package_imports_itself_back():
    packages = package_graph(GRAPH)
    found = cycles(packages)
    assert not found, "import cycles between packages: " + " | ".join(describe(c, packages) for c in found)


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_evaluation_the_api_and_data_never_reach_the_trainer():
    packages = package_graph(GRAPH)
    for user in ("gptjax.api", "gptjax.eval", "gptjax.data", "gptjax.prepare", "gptjax.model", "gptjax.export"):
        assert "gptjax.train" not in reachable(packages, user), f"{user} reaches gptjax.train"
    assert "gptjax.prepare" not in reachable(packages, "gptjax.data"), "what training reads is below preparation"
