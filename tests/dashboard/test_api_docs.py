"""/api/v1/docs is Swagger UI served from the package: the vendored files are
npm's swagger-ui-dist at the pinned version, byte for byte (SHA256SUMS, written by
scripts/vendor-swagger-ui.sh), and the page loads nothing from elsewhere. The
browser test (tests/e2e/test_problems.py) shows it resolving every ``$ref``."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from tests.support.browser import ROOT

VENDOR = ROOT / "static" / "vendor" / "swagger-ui"


def test_the_vendored_viewer_is_the_pinned_release():
    version = (VENDOR / "VERSION").read_text().strip()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert f"VERSION={version}" in (ROOT / "scripts" / "vendor-swagger-ui.sh").read_text()
    sums = [line.split() for line in (VENDOR / "SHA256SUMS").read_text().splitlines() if line.strip()]
    assert {name for _, name in sums} >= {"swagger-ui-bundle.js", "swagger-ui.css", "LICENSE"}
    for digest, name in sums:
        assert hashlib.sha256(Path(VENDOR / name).read_bytes()).hexdigest() == digest, name


def test_the_docs_page_loads_only_its_own_files(client):
    html = client.get("/api/v1/docs").get_data(as_text=True)
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js?v=" + (VENDOR / "VERSION").read_text().strip() in refs
    assert all(r.startswith("/") for r in refs), refs  # nothing from a CDN
