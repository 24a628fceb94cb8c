"""Imports go one way (cli -> daemon/api -> controller -> dataplane/runtime -> model): the
controller owns its vocabulary (lbctl.model) and its Protocols (controller.interfaces), the
adapters implement them and the daemon injects them, so no module under lbctl/controller
imports an adapter or a layer above it, at its top or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import lbctl

CONTROLLER = Path(lbctl.__file__).parent / "controller"
# What the controller may import of lbctl: itself, the vocabulary, the settings tree, the
# atomic file write its state store uses and the version its metrics show.
ALLOWED = ("lbctl.controller", "lbctl.model", "lbctl.settings", "lbctl.fsutil",
           "lbctl.__version__")


def imports(text: str, module: str) -> set[str]:
    """Every lbctl module that the source `text` of `module` imports (relative imports
    resolved, function-level ones included)."""
    package = module.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            # `from lbctl.controller import clock` imports lbctl.controller.clock
            out.update(f"{name}.{a.name}" for a in node.names)
    return {m for m in out if m == "lbctl" or m.startswith("lbctl.")}


def module_name(path: Path) -> str:
    parts = path.relative_to(CONTROLLER.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) + (
        ".__init__" if parts[-1] == "__init__" else "")


def within(module: str, allowed: tuple[str, ...]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allowed)


def test_the_controller_imports_no_adapter_and_no_layer_above_it() -> None:
    modules = sorted(CONTROLLER.rglob("*.py"))
    assert len(modules) > 10, "the controller's modules were not found"
    wrong = sorted(f"{module_name(p)}: {m}" for p in modules
                   for m in imports(p.read_text(), module_name(p)) if not within(m, ALLOWED))
    assert wrong == []


def test_the_check_finds_imports_in_functions_and_relative_ones() -> None:
    """The rule must not be passed by moving an import into a function or making it
    relative."""
    text = ("import json\nfrom lbctl.model import AppSpec\n"
            "def f():\n    from lbctl.dataplane import hostnet\n"
            "    from ..runtime import engine\n    from . import clock\n")
    found = imports(text, "lbctl.controller.sample")
    assert found == {"lbctl.model.AppSpec", "lbctl.dataplane.hostnet",
                     "lbctl.runtime.engine", "lbctl.controller.clock"}
    assert sorted(m for m in found if not within(m, ALLOWED)) == [
        "lbctl.dataplane.hostnet", "lbctl.runtime.engine"]
