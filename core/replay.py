"""Replay sets shared by every process of the service: a signed webhook delivery is taken once.

A signature proves who sent a request, not that it is the first time it arrives: within its
timestamp tolerance the same request can be posted again, to any web process. Each webhook's
delivery id (a Mailgun token, a Standard Webhooks ``webhook-id``, an SNS ``MessageId``, the
signed content of a SendGrid delivery; ``providers.base.WebhookReply``) is claimed here in Redis
with ``SET NX`` and an expiry longer than the tolerance, so one process's claim is every
process's. Batch callbacks have theirs in the database (``WebhookReceipt``, ``core.callbacks``).
"""
from __future__ import annotations

import hashlib

from redis import RedisError

from core.queue import connection

PREFIX = "offload:replay"


class ReplayUnavailable(RuntimeError):
    """The replay set cannot be read now (Redis does not answer): take nothing."""


def _key(scope: str, delivery_id: str) -> str:
    return f"{PREFIX}:{scope}:{hashlib.sha256(delivery_id.encode()).hexdigest()[:40]}"


def claim(scope: str, delivery_id: str, ttl_s: int) -> bool:
    """True the first time ``delivery_id`` is claimed in ``scope`` within ``ttl_s`` seconds."""
    try:
        return bool(connection().set(_key(scope, delivery_id), "1", nx=True, ex=max(1, int(ttl_s))))
    except RedisError as exc:
        raise ReplayUnavailable(type(exc).__name__) from None


def release(scope: str, delivery_id: str) -> None:
    """Forget a claim whose delivery was not applied (so the sender's retry is taken)."""
    try:
        connection().delete(_key(scope, delivery_id))
    except RedisError:
        return
