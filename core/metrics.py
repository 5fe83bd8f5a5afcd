"""Operations figures kept across processes: worker heartbeats, counters and
the provider call latency histogram, all in Redis so the web process that
serves ``/metrics`` sees what every worker counted.

Workers and the web side write here; ``dashboard.ops`` reads. Writing never
gets in the way of sending: a Redis error is logged at debug level and the
figure is lost, never the work.
"""
from __future__ import annotations

import logging
import time

import redis

log = logging.getLogger(__name__)

HEARTBEATS = "offload:metrics:workers"        # sorted set: worker name -> last beat (unix seconds)
COUNTERS = "offload:metrics:counters"         # hash: "<name>|<label>" -> count
LATENCY = "offload:metrics:latency"           # hash: "<provider>|<bucket or sum or count>" -> value
#: upper bounds (seconds) of the latency buckets; +Inf is implied
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: a worker that beat within this many seconds counts as alive (the worker beats every few seconds)
WORKER_FRESH_S = 60
#: counter names (the ``name`` of ``count``)
RATE_LIMIT_WAITS = "rate_limit_waits"
CALLBACK_VERIFY_FAILURES = "callback_verification_failures"

_errors = (redis.RedisError, OSError)


def beat(conn: redis.Redis, worker: str, now: float | None = None) -> None:
    """Record that ``worker`` is alive; forget workers silent for an hour."""
    now = time.time() if now is None else now
    try:
        pipe = conn.pipeline()
        pipe.zadd(HEARTBEATS, {worker: now})
        pipe.zremrangebyscore(HEARTBEATS, "-inf", now - 3600)
        pipe.execute()
    except _errors as exc:
        log.debug("heartbeat not recorded: %s", type(exc).__name__)


def live_workers(conn: redis.Redis, now: float | None = None) -> int:
    """How many workers beat within ``WORKER_FRESH_S``; raises on a Redis error."""
    now = time.time() if now is None else now
    return int(conn.zcount(HEARTBEATS, now - WORKER_FRESH_S, "+inf"))


def count(conn: redis.Redis, name: str, label: str = "", n: int = 1) -> None:
    """Add ``n`` to the counter ``name`` (one series per ``label``)."""
    try:
        conn.hincrby(COUNTERS, f"{name}|{label}", n)
    except _errors as exc:
        log.debug("counter %s not recorded: %s", name, type(exc).__name__)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def counters(conn: redis.Redis) -> dict[str, dict[str, int]]:
    """Every counter: ``{name: {label: count}}``."""
    found: dict[str, dict[str, int]] = {}
    for key, value in conn.hgetall(COUNTERS).items():
        name, _, label = _text(key).partition("|")
        found.setdefault(name, {})[label] = int(value)
    return found


def observe_latency(conn: redis.Redis, provider: str, seconds: float) -> None:
    """One provider call took ``seconds`` (cumulative buckets, Prometheus style)."""
    try:
        pipe = conn.pipeline()
        for bound in LATENCY_BUCKETS:
            if seconds <= bound:
                pipe.hincrby(LATENCY, f"{provider}|{bound}", 1)
        pipe.hincrby(LATENCY, f"{provider}|count", 1)
        pipe.hincrbyfloat(LATENCY, f"{provider}|sum", seconds)
        pipe.execute()
    except _errors as exc:
        log.debug("latency not recorded: %s", type(exc).__name__)


def latency(conn: redis.Redis) -> dict[str, dict]:
    """Per provider: ``{"buckets": [(bound, cumulative count)...], "count", "sum"}``."""
    raw: dict[str, dict[str, float]] = {}
    for key, value in conn.hgetall(LATENCY).items():
        provider, _, part = _text(key).partition("|")
        raw.setdefault(provider, {})[part] = float(value)
    found = {}
    for provider, parts in raw.items():
        total = int(parts.get("count", 0))
        buckets = [(bound, int(parts.get(str(bound), 0))) for bound in LATENCY_BUCKETS]
        found[provider] = {"buckets": buckets, "count": total, "sum": parts.get("sum", 0.0)}
    return found


class Timer:
    """``with Timer(conn, provider):`` records the block's duration as one provider call."""

    def __init__(self, conn: redis.Redis, provider: str):
        self.conn, self.provider = conn, provider

    def __enter__(self):
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        observe_latency(self.conn, self.provider, time.perf_counter() - self.started)
        return False
