"""The LMS API's rate limit: requests per token and minute (``OFFLOAD_API_RATE_PER_MIN``).

A fixed window per token in Redis (``INCR`` and ``EXPIRE`` in one round trip),
keyed by the token's hash, so every web process counts together. A request
past the limit learns how long until the window ends (the ``Retry-After`` of
its 429). Redis not answering lets the request through: the limit protects
the service from one tenant's flood, and the API's own work needs Redis (or
the database) anyway.
"""
from __future__ import annotations

import logging
import time

from redis import RedisError

from core import settings
from core.queue import connection

log = logging.getLogger(__name__)
WINDOW_S = 60
#: what a Redis call raises when Redis is gone: redis-py's errors, the socket's, and the ``ValueError`` ("I/O
#: operation on closed file") of a connection another thread closed as the server went away (a 500 in the
#: events fault test while Redis restarted)
UNAVAILABLE = (RedisError, OSError, ValueError)


def window_of(now: float) -> int:
    return int(now // WINDOW_S)


def key(token_hash: str, window: int) -> str:
    return f"offload:api-rate:{token_hash[:32]}:{window}"


def take(token_hash: str, now: float | None = None) -> int | None:
    """Count one request of the token; ``None`` when it may go on, else the seconds to wait."""
    now = time.time() if now is None else now
    window = window_of(now)
    name = key(token_hash, window)
    try:
        pipe = connection().pipeline()
        pipe.incr(name)
        pipe.expire(name, 2 * WINDOW_S)
        count = pipe.execute()[0]
    except UNAVAILABLE as exc:
        log.warning("API rate limit unavailable: %s", type(exc).__name__)
        return None
    if count <= settings.current().api_rate_per_min:
        return None
    return max(1, int((window + 1) * WINDOW_S - now + 0.999))


def take_many(requests: dict[str, int], now: float | None = None) -> dict[str, tuple[int, int]] | None:
    """Count ``n`` requests of each token hash in one round trip (a group of LMS events: the events
    writer counts its group's requests so that each request need not ask Redis itself). Returns, per
    hash, the window's count after these and the seconds until the window ends; ``None`` when Redis
    did not answer (the requests may go on, as with ``take``)."""
    now = time.time() if now is None else now
    window = window_of(now)
    wait = max(1, int((window + 1) * WINDOW_S - now + 0.999))
    hashes = list(requests)
    try:
        pipe = connection().pipeline(transaction=False)
        for token_hash in hashes:
            pipe.incrby(key(token_hash, window), requests[token_hash])
            pipe.expire(key(token_hash, window), 2 * WINDOW_S)
        counts = pipe.execute()[::2]
    except UNAVAILABLE as exc:
        log.warning("API rate limit unavailable: %s", type(exc).__name__)
        return None
    return {h: (int(c), wait) for h, c in zip(hashes, counts, strict=True)}


def limit() -> int:
    return settings.current().api_rate_per_min
