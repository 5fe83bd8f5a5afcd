"""Where the browser tests find Chromium and keep their screenshots."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


CHROMIUM = "/usr/bin/chromium"


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


ARTIFACTS = ROOT / "tests" / "artifacts"
