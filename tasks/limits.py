"""Shared limits in Redis: a per-company send rate that holds across all
workers, throttle back-off levels, and a circuit breaker per provider.

Redis trouble never stops a send: the limits degrade open (and log), since
the database, not Redis, is the record of what was sent.
"""
from __future__ import annotations

import logging
import math
import random
import time

import redis

from core import metrics
from core.routing import breaker_key

log = logging.getLogger(__name__)
BREAKER_THRESHOLD = 3      # consecutive connection failures that open the circuit
BREAKER_WINDOW_S = 60      # failures older than this are forgotten
BREAKER_OPEN_S = 30        # how long the circuit stays open
THROTTLE_TTL_S = 60        # a throttle level decays after this long without throttling


def _window(rate: float) -> tuple[int, int]:
    """(window seconds, sends allowed per window) for ``rate`` per second."""
    window = max(1, math.ceil(1 / rate)) if rate < 1 else 1
    return window, max(1, int(rate * window))


def chunk_limit(rate: float | None, default: int) -> int:
    """The largest chunk a provider call may carry under ``rate``."""
    if not rate:
        return default
    return max(1, min(default, _window(rate)[1]))


def acquire(conn: redis.Redis, company_id: int, n: int, rate: float | None, *,
            keepalive=None, max_wait: float = 300.0) -> int | None:
    """Block until ``n`` sends fit in ``company_id``'s rate (fixed windows, all workers).

    Returns the window slot the sends were counted in (``None`` when unlimited).
    ``keepalive`` is called while waiting (to renew a lease).
    """
    if not rate:
        return None
    window, capacity = _window(rate)
    n = min(n, capacity)
    deadline = time.monotonic() + max_wait
    while True:
        now = time.time()
        slot = int(now // window)
        key = f"offload:rate:{company_id}:{slot}"
        try:
            pipe = conn.pipeline()
            pipe.incrby(key, n)
            pipe.expire(key, window * 2)
            used = pipe.execute()[0]
            if used <= capacity:
                return slot
            conn.decrby(key, n)
        except redis.RedisError as exc:
            log.warning("Company %s: rate limiter unavailable (%s); sending unthrottled", company_id,
                        type(exc).__name__)
            return None
        if time.monotonic() > deadline:
            return None
        metrics.count(conn, metrics.RATE_LIMIT_WAITS, str(company_id))
        time.sleep((slot + 1) * window - now + random.uniform(0, 0.02))
        if keepalive:
            keepalive()


def throttle_level(conn: redis.Redis, company_id: int, bump: bool = False) -> int:
    """The company's current throttle level; ``bump`` raises it (provider said slow down)."""
    key = f"offload:throttle:{company_id}"
    try:
        if bump:
            pipe = conn.pipeline()
            pipe.incr(key)
            pipe.expire(key, THROTTLE_TTL_S)
            return int(pipe.execute()[0])
        return int(conn.get(key) or 0)
    except redis.RedisError:
        return 1 if bump else 0


def throttle_delay(level: int, retry_after: float | None = None) -> float:
    """Back-off before the next call: exponential in the level, with jitter."""
    base = min(30.0, 0.25 * (2 ** max(0, level - 1)))
    if retry_after:
        base = max(base, min(retry_after, 60.0))
    return base * random.uniform(0.5, 1.0)


def breaker_is_open(conn: redis.Redis, company_id: int, provider: str) -> bool:
    try:
        return bool(conn.exists(breaker_key(company_id, provider) + ":open"))
    except redis.RedisError:
        return False


def breaker_failure(conn: redis.Redis, company_id: int, provider: str) -> bool:
    """Record a connection failure; True when the circuit is (now) open."""
    key = breaker_key(company_id, provider)
    try:
        pipe = conn.pipeline()
        pipe.incr(key + ":fails")
        pipe.expire(key + ":fails", BREAKER_WINDOW_S)
        fails = pipe.execute()[0]
        if fails >= BREAKER_THRESHOLD:
            conn.set(key + ":open", 1, ex=BREAKER_OPEN_S)
            log.warning("Company %s: circuit for %s open after %s connection failures",
                        company_id, provider, fails)
            return True
    except redis.RedisError:
        pass
    return False


def breaker_success(conn: redis.Redis, company_id: int, provider: str) -> None:
    try:
        conn.delete(breaker_key(company_id, provider) + ":fails")
    except redis.RedisError:
        pass
