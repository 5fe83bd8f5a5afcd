"""Shared limits in Redis: a per-company send rate that holds across all
workers (a token bucket; transactional mail of a company takes its tokens
before the company's bulk mail), throttle back-off levels, and a circuit
breaker per provider.

Redis trouble never stops a send: the limits degrade open (and log), since
the database, not Redis, is the record of what was sent.
"""
from __future__ import annotations

import logging
import random
import time

import redis
from redis.commands.core import Script

from core import metrics, queue, scheduler

log = logging.getLogger(__name__)
BREAKER_THRESHOLD = 3      # consecutive connection failures that open the circuit
BREAKER_WINDOW_S = 60      # failures older than this are forgotten
BREAKER_OPEN_S = 30        # how long the circuit stays open
THROTTLE_TTL_S = 60        # a throttle level decays after this long without throttling


#: a worker naps (in ``NAP_S`` slices) for tokens due this soon, and only while
#: nothing else is runnable; longer waits send the batch back to the ready set
HOLD_S = 2.0
NAP_S = 0.05
#: how many seconds of sending a company's bucket holds (its burst)
BURST_S = 1.0
#: a company's bulk mail yields its tokens while transactional mail of the
#: same company is due within this many seconds (or waiting for tokens)
TX_HORIZON_MS = 2000
#: how long a refused bulk run stays away when it yielded to transactional mail
YIELD_S = 0.2

# A token bucket per company in Redis (one script: atomic across all workers).
# ARGV: prefix, company, rate/s, capacity, n, class, horizon ms. Returns {granted, wait ms, why}.
_TAKE = """
local prefix, company = ARGV[1], ARGV[2]
local rate, cap, n, klass, horizon = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key = prefix .. ':bucket:' .. company
local txwait = prefix .. ':txwait:' .. company
if klass == 'bulk' then
  local lane = prefix .. ':lane:transactional:' .. company
  if redis.call('EXISTS', txwait) == 1 or redis.call('ZCOUNT', lane, '-inf', now + horizon) > 0 then
    return {0, tonumber(ARGV[8]), 'yield'}
  end
end
local state = redis.call('HMGET', key, 'tokens', 'ts')
local tokens, ts = tonumber(state[1]), tonumber(state[2])
if tokens == nil then tokens, ts = cap, now end
tokens = math.min(cap, tokens + math.max(0, now - ts) * rate / 1000)
local ttl = math.ceil(cap / rate * 1000) + 1000
if tokens >= n then
  redis.call('HSET', key, 'tokens', tostring(tokens - n), 'ts', now)
  redis.call('PEXPIRE', key, ttl)
  if klass ~= 'bulk' then redis.call('DEL', txwait) end
  return {1, 0, 'ok'}
end
redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', key, ttl)
local wait = math.ceil((n - tokens) * 1000 / rate)
redis.call('SET', prefix .. ':block:' .. company, now + wait, 'PX', wait + 50)
if klass ~= 'bulk' then redis.call('SET', txwait, 1, 'PX', wait + 500) end
return {0, wait, 'rate'}
"""
_take_scripts: dict[int, Script] = {}


def capacity(rate: float) -> int:
    """The most sends a company's bucket holds: ``BURST_S`` seconds of its rate, at least one."""
    return max(1, int(rate * BURST_S))


def chunk_limit(rate: float | None, default: int) -> int:
    """The largest chunk a provider call may carry under ``rate``."""
    if not rate:
        return default
    return max(1, min(default, capacity(rate)))


def take(conn: redis.Redis, company_id: int, n: int, rate: float | None,
         klass: str = "transactional") -> tuple[bool, float, str]:
    """Take ``n`` sends from the company's shared token bucket, never waiting.

    Returns ``(granted, wait_s, why)``: when not granted, ``wait_s`` is how long
    until the tokens are there (``why`` ``rate``; the company is then marked
    blocked in the ready set until then), or how long a bulk run should stay
    away because the company's transactional mail goes first (``yield``).
    Unlimited (no rate) or Redis trouble: granted (the limits degrade open).
    """
    if not rate:
        return True, 0.0, "unlimited"
    n = max(1, min(n, capacity(rate)))
    script = _take_scripts.get(id(conn))
    if script is None:
        script = _take_scripts[id(conn)] = conn.register_script(_TAKE)
    try:
        granted, wait_ms, why = script(args=[scheduler.PREFIX, company_id, rate, capacity(rate), n, klass,
                                             TX_HORIZON_MS, int(YIELD_S * 1000)])
    except redis.RedisError as exc:
        log.warning("Company %s: rate limiter unavailable (%s); sending unthrottled", company_id,
                    type(exc).__name__)
        return True, 0.0, "unavailable"
    why = why.decode() if isinstance(why, bytes) else str(why)
    if not granted:  # /metrics: offload_rate_limit_waits_total
        metrics.count(conn, metrics.RATE_LIMIT_WAITS, str(company_id))
    return bool(granted), int(wait_ms) / 1000, why


def nap(seconds: float) -> None:
    """Sleep while nothing else is runnable (the scheduler's tests count these)."""
    time.sleep(seconds)


def other_work_waiting(exclude_company: int | None = None) -> bool:
    """True when a worker has something else to do now: a job on the high or
    default queue, or a runnable ready-set entry (of another company than
    ``exclude_company``, whose entries need the same tokens)."""
    try:
        return queue.urgent_waiting() or scheduler.runnable(queue.connection(), exclude_company)
    except (redis.RedisError, OSError):
        return False


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


def breaker_key(company_id: int, provider: str) -> str:
    """The Redis key prefix of a company's circuit breaker for ``provider``."""
    return f"offload:cb:{company_id}:{provider}"


def breaker_is_open(conn: redis.Redis, company_id: int, provider: str) -> bool:
    """True while the company's circuit for ``provider`` is open; Redis trouble: closed (degrade open)."""
    try:
        return bool(conn.exists(breaker_key(company_id, provider) + ":open"))
    except (redis.RedisError, OSError):
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
