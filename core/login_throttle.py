"""Login back-off: per IP, per account from one IP, and (softly) per account.

There is no lock an attacker can set: failures from one address slow down
that address (and that account from that address) with a delay that
doubles per failure past ``OFFLOAD_LOGIN_MAX_FAILURES``, up to
``OFFLOAD_LOGIN_BACKOFF_MAX_S``. Failures against one account from
everywhere together only add a short delay (at most a minute) once they are
many, so a distributed guess is slowed and the owner still gets in from
their own address. The keys are the typed address's hash, so an unknown
account backs off exactly like a real one. An admin's unlock clears them.

State lives in Redis and expires on its own; when Redis does not answer,
logins go on without back-off (the password check still holds).
"""
from __future__ import annotations

import hashlib
import time

from redis import RedisError

from core import settings
from core.queue import connection

WINDOW_S = 3600
#: the account-wide delay: starts after this many times the per-IP threshold, capped here
ACCOUNT_FACTOR = 10
ACCOUNT_MAX_S = 60


def _account(email: str) -> str:
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]


def _keys(email: str, ip: str) -> list[tuple[str, int, float]]:
    """(key, threshold, cap) for each back-off that applies to this attempt."""
    threshold = settings.current().login_max_failures
    cap = float(settings.current().login_backoff_max_s)
    account = _account(email)
    return [(f"offload:login:ip:{ip}", threshold * 2, cap),
            (f"offload:login:acct:{account}:{ip}", threshold, cap),
            (f"offload:login:acct:{account}", threshold * ACCOUNT_FACTOR, min(cap, ACCOUNT_MAX_S))]


def _delay(failures: int, threshold: int, cap: float) -> float:
    if failures < threshold:
        return 0.0
    return min(cap, 2.0 ** (failures - threshold))


def wait_seconds(email: str, ip: str) -> float:
    """How long this address must wait before trying ``email`` again (0: go ahead)."""
    try:
        conn = connection()
        wait = 0.0
        now = time.time()
        for key, threshold, cap in _keys(email, ip):
            failures, last = conn.hmget(key, "n", "t")
            if failures is None:
                continue
            remaining = float(last or 0) + _delay(int(failures), threshold, cap) - now
            wait = max(wait, remaining)
        return max(0.0, wait)
    except RedisError:
        return 0.0


def record_failure(email: str, ip: str) -> None:
    try:
        pipe = connection().pipeline()
        for key, _threshold, _cap in _keys(email, ip):
            pipe.hincrby(key, "n", 1)
            pipe.hset(key, "t", str(time.time()))
            pipe.expire(key, WINDOW_S)
        pipe.execute()
    except RedisError:
        return


def record_success(email: str, ip: str) -> None:
    """A right password from this address clears this address's counts for the account."""
    try:
        connection().delete(f"offload:login:acct:{_account(email)}:{ip}")
    except RedisError:
        return


def unlock(email: str) -> int:
    """Clear every back-off of ``email`` (the admin's unlock); returns how many keys went."""
    account = _account(email)
    conn = connection()
    keys = [f"offload:login:acct:{account}", *conn.scan_iter(match=f"offload:login:acct:{account}:*", count=500)]
    return conn.delete(*keys) if keys else 0
