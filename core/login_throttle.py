"""Login back-off: per address, per account from one address, per known device, and (softly)
per account, so that an attack from elsewhere never keeps the owner out.

There is no lock an attacker can set. Failures from one address slow down that address (and
that account from that address) with a delay that doubles per failure past
``OFFLOAD_LOGIN_MAX_FAILURES``, up to ``OFFLOAD_LOGIN_BACKOFF_MAX_S``. Failures against one
account from everywhere together add a short delay (at most a minute) once they are many, and
that account-wide delay applies only to:

- an address that has failures of its own (against any account, within the hour): a
  distributed guess is slowed once each of its addresses has guessed, but the owner, signing
  in from an address that has not failed, is not delayed by what others did;
- never to a *known device*: a browser that signed in to the account before carries a signed
  device cookie (the web side checks it and passes its ``device`` id), and only that device's
  own failures slow it down, wherever it connects from (a shared address included).

IPv6 addresses count per /64 (one subscriber's whole network), so a fresh address costs an
attacker more than a rotation within it. The keys are the typed address's hash, so an unknown
account backs off exactly like a real one. An admin's unlock clears them.

State lives in Redis and expires on its own; when Redis does not answer, logins go on without
back-off (the password check still holds).
"""
from __future__ import annotations

import hashlib
import ipaddress
import time

from redis import RedisError

from core import settings
from core.queue import connection

WINDOW_S = 3600
#: the account-wide delay: starts after this many times the per-address threshold, capped here
ACCOUNT_FACTOR = 10
ACCOUNT_MAX_S = 60
PREFIX = "offload:login"


def account_id(email: str) -> str:
    """The account's key in the back-off (a hash of the typed address)."""
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]


def address_key(ip: str) -> str:
    """The part of an address that counts: IPv4 as it is, IPv6 by its /64."""
    try:
        address = ipaddress.ip_address((ip or "").split("%")[0])
    except ValueError:
        return (ip or "-")[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _address_keys(account: str, ip: str) -> tuple[str, str]:
    where = address_key(ip)
    return f"{PREFIX}:ip:{where}", f"{PREFIX}:acct:{account}:{where}"


def _device_key(account: str, device: str) -> str:
    return f"{PREFIX}:acct:{account}:dev:{device}"


def _account_key(account: str) -> str:
    return f"{PREFIX}:acct:{account}"


def _delay(failures: int, threshold: int, cap: float) -> float:
    if failures < threshold:
        return 0.0
    return min(cap, 2.0 ** (failures - threshold))


def _remaining(conn, key: str, threshold: int, cap: float, now: float) -> tuple[int, float]:
    """(failures, seconds still to wait) of one back-off key."""
    failures, last = conn.hmget(key, "n", "t")
    if failures is None:
        return 0, 0.0
    return int(failures), float(last or 0) + _delay(int(failures), threshold, cap) - now


def wait_seconds(email: str, ip: str, device: str | None = None) -> float:
    """How long this attempt must wait before ``email`` may be tried again (0: go ahead).

    ``device``: the id of a device cookie the web side verified for this account, or ``None``.
    """
    threshold = settings.current().login_max_failures
    cap = float(settings.current().login_backoff_max_s)
    account, now = account_id(email), time.time()
    try:
        conn = connection()
        if device:  # a known device: its own failures only
            return max(0.0, _remaining(conn, _device_key(account, device), threshold, cap, now)[1])
        ip_key, pair_key = _address_keys(account, ip)
        ip_failures, ip_wait = _remaining(conn, ip_key, threshold * 2, cap, now)
        pair_failures, pair_wait = _remaining(conn, pair_key, threshold, cap, now)
        wait = max(ip_wait, pair_wait)
        if ip_failures or pair_failures:  # only an address that failed meets the account-wide delay
            wait = max(wait, _remaining(conn, _account_key(account), threshold * ACCOUNT_FACTOR,
                                        min(cap, ACCOUNT_MAX_S), now)[1])
        return max(0.0, wait)
    except RedisError:
        return 0.0


def record_failure(email: str, ip: str, device: str | None = None) -> None:
    account = account_id(email)
    keys = [_account_key(account), *([_device_key(account, device)] if device else _address_keys(account, ip))]
    try:
        pipe = connection().pipeline()
        now = str(time.time())
        for key in keys:
            pipe.hincrby(key, "n", 1)
            pipe.hset(key, "t", now)
            pipe.expire(key, WINDOW_S)
        pipe.execute()
    except RedisError:
        return


def record_success(email: str, ip: str, device: str | None = None) -> None:
    """A right password clears this address's (or this device's) counts for the account."""
    account = account_id(email)
    try:
        connection().delete(_address_keys(account, ip)[1], *([_device_key(account, device)] if device else []))
    except RedisError:
        return


def unlock(email: str) -> int:
    """Clear every back-off of ``email`` (the admin's unlock); returns how many keys went."""
    account = account_id(email)
    conn = connection()
    keys = [_account_key(account), *conn.scan_iter(match=f"{PREFIX}:acct:{account}:*", count=500)]
    return conn.delete(*keys) if keys else 0
