"""Print the floor plan's numbers as JSON: modules, the longest function, in-function imports of animad
modules, hidden imports, and import circles at module and package level (every import counts,
including those inside functions). The graph itself is tests/import_graph.py, which tests/test_layout.py
turns into rules.

    python bench/layout_metrics.py [PACKAGE_DIR]      (default: ./animad)
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from import_graph import module_circles, package_circles, read_graph, upward_imports  # noqa: E402


def measure(root: Path) -> dict:
    graph = read_graph(root)
    longest = ("", 0)
    for name, tree in graph.trees.items():
        for function in ast.walk(tree):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = function.end_lineno - function.lineno + 1
                if length > longest[1]:
                    longest = (f"{name}.{function.name}", length)
    in_function = {(i.source, i.line) for i in graph.imports if i.in_function}
    modules = [sorted({i.source for i in c} | {i.target for i in c}) for c in module_circles(graph)]
    packages = [layers for layers, _ in package_circles(graph)]
    return {"modules": len(graph.modules), "longest_function": {"name": longest[0], "lines": longest[1]},
            "in_function_animad_imports": len(in_function), "hidden_imports": graph.hidden,
            "upward_imports": [str(i) for i in upward_imports(graph)],
            "module_circles": len(modules), "package_circles": len(packages),
            "module_circle_members": modules, "package_circle_members": packages}


if __name__ == "__main__":
    print(json.dumps(measure(Path(sys.argv[1] if len(sys.argv) > 1 else "animad").resolve()), indent=2))
