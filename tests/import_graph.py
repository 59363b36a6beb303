"""animad's import graph, read from the source: every import statement (inside functions too) and every
__import__/import_module call that names an animad module. Shared by tests/test_layout.py (the rules)
and bench/layout_metrics.py (the numbers).

A `from pkg import mod` names pkg.mod; `from pkg.mod import name` names pkg.mod. Packages are judged by
layer, bottom first: each layer may import only the layers below it (and itself).
"""

from __future__ import annotations

import ast
import dataclasses
import sys
from pathlib import Path

LAYERS = ("ground", "anima", "config", "intake", "importer", "train", "select", "daemon", "demo", "cli")


@dataclasses.dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. animad.train.loop
    target: str  # the animad module it names
    path: Path
    line: int
    in_function: bool

    def __str__(self) -> str:
        return f"{self.path}:{self.line} ({self.source}) imports {self.target}"


@dataclasses.dataclass(frozen=True)
class Graph:
    modules: dict[str, Path]
    imports: list[Import]
    hidden: list[str]  # "path:line: call" for each __import__/import_module of an animad module
    trees: dict[str, ast.Module]

    def edges(self) -> dict[str, set[str]]:
        graph = {m: set() for m in self.modules}
        for imp in self.imports:
            graph[imp.source].add(imp.target)
        return graph


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    """animad.train.loop -> train; the top-level modules are the ground; `python -m animad` is the CLI."""
    parts = module.split(".")
    if module == "animad.__main__":
        return "cli"
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else "ground"


def imported_modules(node: ast.Import | ast.ImportFrom, modules, current: str, is_package: bool) -> list[str]:
    """animad modules that an import statement names (the longest known module of each name)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the current package (a package's __init__ is its own package)
            package = current.split(".") if is_package else current.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join(package + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    out = []
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name.startswith("animad") and name != current and name not in out:
            out.append(name)
    return out


def names_animad(node: ast.expr) -> bool:
    """A string or f-string argument that starts with 'animad'."""
    if isinstance(node, ast.Constant):
        return str(node.value).startswith("animad")
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return str(node.values[0].value).startswith("animad")
    return False


def read_graph(root: Path) -> Graph:
    root = Path(root).resolve()
    files = sorted(root.rglob("*.py"))
    modules = {module_name(f, root): f for f in files}
    imports, hidden, trees = [], [], {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        trees[name] = tree
        shown = path.relative_to(root.parent)
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        inner = {id(n) for f in functions for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in imported_modules(node, modules, name, path.name == "__init__.py"):
                    imports.append(Import(name, target, shown, node.lineno, id(node) in inner))
            elif isinstance(node, ast.Call):
                func = node.func
                called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                if called in ("__import__", "import_module") and any(names_animad(a) for a in node.args):
                    hidden.append(f"{shown}:{node.lineno}: {ast.unparse(node)}")
    imports.sort(key=lambda i: (str(i.path), i.line, i.target))
    return Graph(modules, imports, hidden, trees)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; components with more than one member (or a self-loop) are circles."""
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                result.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return result


def module_circles(graph: Graph) -> list[list[Import]]:
    """Each module-level circle as the imports that bind its members together."""
    circles = strongly_connected(graph.edges())
    return [[i for i in graph.imports if i.source in c and i.target in c] for c in circles]


def package_circles(graph: Graph) -> list[tuple[list[str], list[Import]]]:
    """Each circle between layers (ground counts as one): its layers, and the imports in it that go upward."""
    layers: dict[str, set[str]] = {}
    for imp in graph.imports:
        source, target = layer_of(imp.source), layer_of(imp.target)
        if source != target:
            layers.setdefault(source, set()).add(target)
    return [(sorted(c, key=LAYERS.index), [i for i in upward_imports(graph) if layer_of(i.source) in c
                                           and layer_of(i.target) in c]) for c in strongly_connected(layers)]


def upward_imports(graph: Graph) -> list[Import]:
    """Imports of a layer above the importer's own."""
    return [i for i in graph.imports if LAYERS.index(layer_of(i.target)) > LAYERS.index(layer_of(i.source))]
