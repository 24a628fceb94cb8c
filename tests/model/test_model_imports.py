"""lbctl.model's modules import one way: the vocabulary every layer shares has no cycles of
its own (a cycle hidden under TYPE_CHECKING still couples two modules)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_model_imports_one_way() -> None:
    """No cycle between lbctl.model's modules, counting imports under TYPE_CHECKING (which
    hide one from the interpreter, not from a reader)."""
    model = ROOT / "lbctl" / "model"
    graph: dict[str, set[str]] = {}
    for path in model.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "lbctl.model":
                    deps |= {a.name for a in node.names}
                elif node.module.startswith("lbctl.model."):
                    deps.add(node.module.split(".")[2])
        graph[path.stem] = deps & {p.stem for p in model.glob("*.py")} - {path.stem}
    graph["__init__"] = set()  # the package's face imports everything, nothing imports it

    def visit(node: str, stack: list[str]) -> None:
        assert node not in stack, " -> ".join([*stack, node])
        for dep in graph[node]:
            visit(dep, [*stack, node])

    for name in graph:
        visit(name, [])
