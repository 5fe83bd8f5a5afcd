"""Fixtures for the fault tests: real processes, broken on purpose.

- ``pg``: a PostgreSQL cluster of the run's own (``initdb``/``pg_ctl`` in a
  temporary folder, as the ``postgres`` user when we are root), so a test
  may stop and start it; migrated once.
- ``redis``: a private ``redis-server`` per test, which a test may restart
  on the same port with its data gone.
- ``app``: overrides the suite's ``app``: the cluster and that Redis, with
  a short lease and sweep, tables emptied before each test.
- ``fleet``: ``flask --app wsgi worker`` processes under a small supervisor
  that restarts a dead one, as systemd's ``Restart=always`` would.
- ``fault_report``: the ``FAULT <name>: ...`` summary line, printed in the
  terminal summary (with or without ``-s``) and written to
  ``tests/artifacts/faults.txt``.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from core import settings
from core.db import db
from service import create_app
from tests.support.app import empty_tables
from tests.support.faults import (
    FAULT_LINES,
    FLASK,
    LEASE_S,
    RESULTS,
    ROOT,
    SWEEP_S,
    PgCluster,
    RestartableRedis,
    WorkerFleet,
)


@pytest.fixture(scope="session")
def pg():
    """The run's own PostgreSQL cluster with a migrated ``offload`` database."""
    cluster = PgCluster().init()
    try:
        cluster.start()
        url = cluster.create_database()
        subprocess.run([str(FLASK), "--app", "wsgi", "db", "upgrade"], cwd=ROOT, check=True, capture_output=True,
                       env={**os.environ, "DATABASE_URL": url}, timeout=120)
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def redis():
    server = RestartableRedis()
    yield server
    server.stop()


@pytest.fixture
def app(pg, redis):
    """An app on the cluster and the test's Redis, emptied before the test (overrides the suite's)."""
    if not pg.running():  # a failed test may have left it stopped
        pg.start()
    app = create_app({"database_url": pg.url(), "redis_url": redis.url, "lease_s": LEASE_S, "sweep_s": SWEEP_S})
    app.testing = True
    with app.app_context():
        empty_tables(db)
        yield app
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def fleet(app):
    """Start workers with ``fleet(size=2, **env)``; every fleet is stopped at teardown."""
    fleets: list[WorkerFleet] = []

    def start(size: int = 2, **env) -> WorkerFleet:
        base = {"DATABASE_URL": settings.current().database_url, "REDIS_URL": settings.current().redis_url,
                "OFFLOAD_LEASE_S": str(settings.current().lease_s), "OFFLOAD_SWEEP_S": str(SWEEP_S)}
        f = WorkerFleet({**base, **{k: str(v) for k, v in env.items()}}, size=size).start()
        fleets.append(f)
        return f

    yield start
    for f in fleets:
        f.stop()
        f.cleanup()


@pytest.fixture
def fault_report():
    """``fault_report(name, recipients=, faults=, lost=, duplicated=, wall=, **extra)``."""

    def report(name: str, *, recipients: int, faults: int, lost: int, duplicated: int, wall: float,
               **extra) -> str:
        line = (f"FAULT {name}: recipients={recipients} faults={faults} lost={lost} duplicated={duplicated} "
                f"wall={wall:.1f}s")
        if extra:
            line += " (" + ", ".join(f"{k}={v}" for k, v in extra.items()) + ")"
        print(line)
        FAULT_LINES.append(line)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with open(RESULTS, "w" if len(FAULT_LINES) == 1 else "a") as fh:
            fh.write(line + "\n")
        return line

    return report


def pytest_terminal_summary(terminalreporter):
    if FAULT_LINES:
        terminalreporter.section("fault summary")
        for line in FAULT_LINES:
            terminalreporter.write_line(line)
