"""What a folder of scripts imports, read from the source (for code that import-linter cannot analyse: the
cloud workers run on other platforms; migrations are Alembic scripts, not a package)."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

STDLIB = frozenset(sys.stdlib_module_names)


def imports_of(path: Path) -> dict[str, int]:
    """Every module ``path`` imports (``from a.b import c`` names ``a.b``), with a line of it: at the top
    or inside a function, and by name (``importlib.import_module("a.b")``, ``__import__("a")``). A
    relative import is named as written (``.sibling``): no folder read here is a package."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.setdefault(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            found.setdefault("." * node.level + (node.module or ""), node.lineno)
        elif isinstance(node, ast.Call) and _by_name(node.func) and node.args:
            target = node.args[0]
            name = target.value if isinstance(target, ast.Constant) and isinstance(target.value, str) else "?"
            found.setdefault(name, node.lineno)  # "?": a name computed at run time, which no rule allows
    return found


def _by_name(func: ast.expr) -> bool:
    """``import_module``, ``importlib.import_module`` or ``__import__``."""
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name in ("import_module", "__import__")


def outside(folder: Path, allowed) -> list[str]:
    """``file:line module`` for each import under ``folder`` that ``allowed(module, file)`` refuses."""
    return [f"{path.relative_to(folder.parent)}:{line} {module}"
            for path in sorted(folder.rglob("*.py")) for module, line in imports_of(path).items()
            if not allowed(module, path)]
