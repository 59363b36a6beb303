"""Print the floor plan's numbers as JSON: modules, the longest function, in-function imports of animad
modules, hidden imports, and import circles at module and package level (every import counts,
including those inside functions).

    python bench/layout_metrics.py [PACKAGE_DIR]      (default: ./animad)
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(node: ast.AST, modules: set[str], current: str) -> list[str]:
    """animad modules that an Import/ImportFrom node names (a `from pkg import mod` names pkg.mod)."""
    names = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = current.split(".")[: -node.level] if not current.endswith("__init__") else current.split(".")
            base = ".".join(package + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    out = []
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name.startswith("animad"):
            out.append(name)
    return out


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; components with more than one member (or a self-loop) are circles."""
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
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

    sys.setrecursionlimit(10000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return result


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else (parts[1] if len(parts) == 2 else "animad")


def measure(root: Path) -> dict:
    files = sorted(root.rglob("*.py"))
    modules = {module_name(f, root): f for f in files}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    in_function, hidden, longest = 0, [], ("", 0)
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        inner = {id(n) for f in functions for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets = imported_modules(node, set(modules), name)
                graph[name].update(t for t in targets if t != name)
                if id(node) in inner and targets:
                    in_function += 1
            elif isinstance(node, ast.Call):
                func = node.func
                called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                if called in ("__import__", "import_module") and any(
                        isinstance(a, ast.Constant) and str(a.value).startswith("animad") for a in node.args):
                    hidden.append(f"{name}:{node.lineno}")
        for function in functions:
            length = function.end_lineno - function.lineno + 1
            if length > longest[1]:
                longest = (f"{name}.{function.name}", length)
    packages: dict[str, set[str]] = {}
    for source, targets in graph.items():
        packages.setdefault(package_of(source), set()).update(
            package_of(t) for t in targets if package_of(t) != package_of(source))
    module_circles = strongly_connected(graph)
    package_circles = strongly_connected(packages)
    return {"modules": len(modules), "longest_function": {"name": longest[0], "lines": longest[1]},
            "in_function_animad_imports": in_function, "hidden_imports": hidden,
            "module_circles": len(module_circles), "package_circles": len(package_circles),
            "module_circle_members": module_circles, "package_circle_members": package_circles}


if __name__ == "__main__":
    print(json.dumps(measure(Path(sys.argv[1] if len(sys.argv) > 1 else "animad").resolve()), indent=2))
