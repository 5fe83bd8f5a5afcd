"""The bench scripts (``bench/``) are not run by the suite (they print figures); each must at least start:
its imports resolve and it parses its arguments (``--help`` imports everything and measures nothing)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.app import ROOT

SCRIPTS = sorted(p.name for p in (Path(ROOT) / "bench").glob("*.py"))


def test_there_are_bench_scripts():
    assert {"bulk_send.py", "fairness.py", "lms_takeover.py", "certificates.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_bench_script_starts(script):
    done = subprocess.run([sys.executable, os.path.join("bench", script), "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:")
