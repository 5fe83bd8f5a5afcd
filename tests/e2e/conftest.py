"""Fixtures for the browser tests: the real app served over HTTP on a thread,
a real RQ worker in a child process (same database and Redis), and headless
Debian Chromium driven by Playwright."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from core import settings
from tests.support.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, ROOT


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
    env = {k: v for k, v in os.environ.items() if k not in ("OFFLOAD_ENCRYPTION_KEYS", "FLASK_ENV", "OFFLOAD_ENV")}
    env.update(DATABASE_URL=settings.current().database_url, REDIS_URL=settings.current().redis_url,
               OFFLOAD_BATCH_SIZE="100", OFFLOAD_SWEEP_S="2", OFFLOAD_LEASE_S="30")
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "flask"), "--app", "wsgi", "worker"], cwd=ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


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
