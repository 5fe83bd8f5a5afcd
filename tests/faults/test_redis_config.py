"""Redis must not evict RQ's keys: a worker warns at start-up when
``maxmemory-policy`` is anything but ``noeviction``."""
from __future__ import annotations

import logging
import shutil

import pytest
import redis as redis_py

from core.queue import warn_if_evicting
from service import create_app
from tasks.worker import run_worker
from tests.support.servers import ManagedProcess, RedisServer, free_port

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


@pytest.fixture
def evicting_redis():
    """A redis-server configured the way RQ must not run: allkeys-lru."""
    port = free_port()
    server = ManagedProcess([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"],
                            port, log_name="redis-lru")
    with server:
        yield f"redis://127.0.0.1:{port}/0"
    server.log_path.unlink(missing_ok=True)


@pytest.mark.timeout(30)
def test_warns_when_redis_may_evict(evicting_redis, caplog):
    with caplog.at_level(logging.WARNING, logger="core.queue"):
        warn_if_evicting(redis_py.Redis.from_url(evicting_redis))
    assert any("allkeys-lru" in r.getMessage() and "noeviction" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(30)
def test_quiet_when_redis_is_configured_for_rq(caplog):
    with RedisServer() as server, caplog.at_level(logging.WARNING, logger="core.queue"):
        warn_if_evicting(redis_py.Redis.from_url(server.url))
    server.log_path.unlink(missing_ok=True)
    assert not [r for r in caplog.records if r.name == "core.queue"]


@pytest.mark.timeout(60)
def test_worker_start_up_warns(evicting_redis, caplog, tmp_path):
    app = create_app({"database_url": f"sqlite:///{tmp_path}/x.db", "redis_url": evicting_redis})
    app.testing = True
    with caplog.at_level(logging.WARNING, logger="core.queue"):
        run_worker(app, burst=True)  # empty queues: starts, checks, exits
    assert any("maxmemory-policy" in r.getMessage() for r in caplog.records)
