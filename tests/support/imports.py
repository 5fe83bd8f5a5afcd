"""What a folder of scripts imports, read from the source (for code that import-linter cannot analyse: the
cloud workers run on other platforms; migrations are Alembic scripts, not a package)."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

STDLIB = frozenset(sys.stdlib_module_names)


def imports_of(path: Path) -> dict[str, int]:
    """Every absolute module ``path`` imports (``from a.b import c`` names ``a.b``), with a line of it."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.setdefault(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.setdefault(node.module, node.lineno)
    return found


def outside(folder: Path, allowed) -> list[str]:
    """``file:line module`` for each import under ``folder`` that ``allowed(module, file)`` refuses."""
    return [f"{path.relative_to(folder.parent)}:{line} {module}"
            for path in sorted(folder.rglob("*.py")) for module, line in imports_of(path).items()
            if not allowed(module, path)]
