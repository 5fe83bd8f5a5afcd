"""The cloud workers stand alone: they run in the company's AWS or Cloudflare account, where nothing of ours
is installed. The Lambda imports the standard library, boto3 and its sibling modules only; the Worker the
Workers runtime and its sibling modules; and nothing of ours imports them."""
from __future__ import annotations

import re
from pathlib import Path

from tests.support.imports import STDLIB, imports_of, outside

ROOT = Path(__file__).resolve().parents[2]
WORKERS = ROOT / "cloud_workers"
OURS = ("service", "core", "dashboard", "tasks", "providers")


def test_the_lambda_imports_the_standard_library_boto3_and_its_siblings_only():
    def allowed(module: str, path: Path) -> bool:
        top = module.split(".")[0]
        return top in STDLIB or top in ("boto3", "botocore") or (path.parent / f"{top}.py").exists()

    assert list((WORKERS / "aws").glob("*.py")), "no Lambda sources found"
    assert outside(WORKERS, allowed) == []


def test_the_worker_imports_the_workers_runtime_and_its_siblings_only():
    scripts = sorted((WORKERS / "cloudflare").glob("*.js"))
    assert scripts, "no Worker sources found"
    refused = []
    for script in scripts:
        for n, line in enumerate(script.read_text().splitlines(), 1):
            for spec in re.findall(r"""^\s*import\s.*?from\s+["']([^"']+)["']|require\(\s*["']([^"']+)["']""", line):
                target = next(s for s in spec if s)
                sibling = target.startswith("./") and "/" not in target[2:] and (script.parent / target[2:]).exists()
                if not (target.startswith("cloudflare:") or sibling):
                    refused.append(f"{script.name}:{n} {target}")
    assert refused == []


def test_nothing_of_ours_imports_the_cloud_workers():
    sibling_modules = {p.stem for p in WORKERS.rglob("*.py")}
    found = [f"{path.relative_to(ROOT)}:{line} {module}"
             for package in OURS for path in sorted((ROOT / package).rglob("*.py"))
             for module, line in imports_of(path).items()
             if module.split(".")[0] in {"cloud_workers", *sibling_modules}]
    assert found == []
