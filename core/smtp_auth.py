"""SMTP submission's door: who signs in, how failures from one address slow it down, how many
sessions a company holds at once.

AUTH takes the company's id as the user name and one of its API tokens as the
password: the same token check as the API (``core.companies.authenticate_token``),
and the token must be that company's. Failed sign-ins from one address slow
that address down (as the web sign-in does, ``core.login_throttle``): past a few
failures each next attempt waits a doubling delay, at most ``MAX_DELAY_S``. There
is no lock: the right token from anywhere else is never slowed, and from the same
address only delayed, so no one can lock a company out by guessing wrong.

A company holds at most ``OFFLOAD_SMTP_MAX_CONNECTIONS`` signed-in sessions at once,
counted in Redis across every SMTP process (each session a member of a sorted set
scored by when it lapses, so a killed process's sessions lapse on their own).

State lives in Redis; when Redis does not answer, sign-ins go on without slow-down
or session count (the token check still holds).
"""
from __future__ import annotations

import hashlib
import time

from redis import RedisError

from core.companies import authenticate_token
from core.db import db
from core.models import Company
from core.queue import connection
from core.submissions import Account, cloud_storage, sender_domains

WINDOW_S = 900
#: failures of one address, and of one address for one user name, before each next attempt waits
ADDRESS_FREE, ACCOUNT_FREE = 10, 3
MAX_DELAY_S = 30.0
#: a session's slot lapses this long after its last renewal (sessions renew while they work)
SLOT_TTL_S = 600
SLOT_RENEW_S = 60


def _keys(address: str, username: str) -> list[tuple[str, int]]:
    user = hashlib.sha256(username.encode("utf-8", "replace")).hexdigest()[:24]
    return [(f"offload:smtp:auth:ip:{address}", ADDRESS_FREE),
            (f"offload:smtp:auth:user:{user}:{address}", ACCOUNT_FREE)]


def _delay(failures: int, free: int) -> float:
    return 0.0 if failures < free else min(MAX_DELAY_S, 2.0 ** (failures - free))


def backoff(address: str, username: str) -> tuple[float, int]:
    """(how long this attempt waits before it is checked, 0: at once; the failures counted for it)."""
    try:
        pipe = connection().pipeline(transaction=False)
        keys = _keys(address, username)
        for key, _free in keys:
            pipe.hmget(key, "n", "t")
        now, wait, counted = time.time(), 0.0, 0
        for (failures, last), (_key, free) in zip(pipe.execute(), keys, strict=True):
            if failures is not None:
                counted += int(failures)
                wait = max(wait, float(last or 0) + _delay(int(failures), free) - now)
        return max(0.0, wait), counted
    except (RedisError, OSError):
        return 0.0, 0


def wait_seconds(address: str, username: str) -> float:
    """How long this attempt waits before it is checked (0: at once)."""
    return backoff(address, username)[0]


def record_failure(address: str, username: str) -> None:
    try:
        pipe = connection().pipeline(transaction=False)
        for key, _free in _keys(address, username):
            pipe.hincrby(key, "n", 1)
            pipe.hset(key, "t", str(time.time()))
            pipe.expire(key, WINDOW_S)
        pipe.execute()
    except (RedisError, OSError):
        return


def record_success(address: str, username: str) -> None:
    """The right token from this address clears this address's failures for that user name."""
    try:
        connection().delete(_keys(address, username)[1][0])
    except (RedisError, OSError):
        return


def authenticate(username: str, password: str) -> Account | None:
    """The account a user name (company id) and password (an API token of that company) sign in as."""
    try:
        row = authenticate_token(password.strip())
        if row is None or username.strip() != str(row.company_id):
            return None
        company = db.session.get(Company, row.company_id)
        if company is None:
            return None
        return Account(company.id, row.prefix, sender_domains(company), cloud_storage(company))
    finally:
        db.session.rollback()


# -- sessions per company -------------------------------------------------------------------

def _slots(company_id: int) -> str:
    return f"offload:smtp:sessions:{company_id}"


def take_slot(company_id: int, session_id: str, limit: int) -> bool:
    """Count this session among the company's; False (and not counted) when it has ``limit`` already."""
    try:
        conn = connection()
        now = time.time()
        pipe = conn.pipeline(transaction=True)
        pipe.zremrangebyscore(_slots(company_id), "-inf", now)
        pipe.zadd(_slots(company_id), {session_id: now + SLOT_TTL_S})
        pipe.zcard(_slots(company_id))
        pipe.expire(_slots(company_id), SLOT_TTL_S)
        _, _, count, _ = pipe.execute()
        if count > limit:
            conn.zrem(_slots(company_id), session_id)
            return False
        return True
    except (RedisError, OSError):
        return True


def renew_slot(company_id: int, session_id: str) -> None:
    try:
        connection().zadd(_slots(company_id), {session_id: time.time() + SLOT_TTL_S}, xx=True)
    except (RedisError, OSError):
        return


def release_slot(company_id: int, session_id: str) -> None:
    try:
        connection().zrem(_slots(company_id), session_id)
    except (RedisError, OSError):
        return
