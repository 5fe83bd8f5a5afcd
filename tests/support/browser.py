"""Where the browser tests find Chromium and keep their screenshots."""
from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core import settings
from tests.support.servers import stop_group

ROOT = Path(__file__).resolve().parents[2]


CHROMIUM = "/usr/bin/chromium"


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


ARTIFACTS = ROOT / "tests" / "artifacts"


@contextmanager
def worker_process(log_path: Path) -> Iterator[subprocess.Popen]:
    """``flask --app wsgi worker`` (RQ, with its scheduler) on the current settings' database and Redis,
    its output in ``log_path``; stopped (TERM, then KILL) at the end."""
    env = {k: v for k, v in os.environ.items() if k not in ("OFFLOAD_ENCRYPTION_KEYS", "FLASK_ENV", "OFFLOAD_ENV")}
    env.update(DATABASE_URL=settings.current().database_url, REDIS_URL=settings.current().redis_url,
               OFFLOAD_BATCH_SIZE="100", OFFLOAD_SWEEP_S="2", OFFLOAD_LEASE_S="30")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "flask"), "--app", "wsgi", "worker"], cwd=ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        stop_group(proc)
