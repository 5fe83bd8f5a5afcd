"""Fixtures for the browser tests: the real app served over HTTP on a thread,
a real RQ worker in a child process (same database and Redis), and headless
Debian Chromium driven by Playwright."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tests.support.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, worker_process


@pytest.fixture
def live_server(app):
    """The test's app on a free loopback port (werkzeug, threaded)."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def live_worker(app, tmp_path):
    """``flask --app wsgi worker`` (RQ, with scheduler) on the test's database and Redis."""
    with worker_process(tmp_path / "worker.log") as proc:
        yield proc


@pytest.fixture
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
