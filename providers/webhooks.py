"""Standard Webhooks signing and verification, standard library only.

Implements https://www.standardwebhooks.com (the scheme CONTRACT §4 names):
the signed content is ``"{webhook-id}.{webhook-timestamp}.{raw body}"``,
HMAC-SHA256 keyed by the secret, sent as ``webhook-signature: v1,<base64>``
(several space-separated signatures allowed). Secrets are ``whsec_<base64>``;
a bare base64 secret is accepted too, as the reference libraries do.

This module must stay dependency-free: the AWS Lambda worker ships an
identical copy (``cloud_workers/aws/webhooks.py``) and a test checks they
agree. Errors follow itsdangerous: one base class, subclasses that carry
context, and no secret or body in any message.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _secrets
import time
from collections.abc import Iterable, Mapping

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE = 300  # seconds either way, per the specification


class WebhookError(Exception):
    """Base of every verification failure; the message is safe to log."""


class MissingHeaders(WebhookError):
    """``webhook-id``, ``webhook-timestamp`` or ``webhook-signature`` is absent or malformed."""


class BadSignature(WebhookError):
    """No signature in the header matches any of the configured secrets."""


class TimestampOutOfRange(WebhookError):
    """The timestamp is further than the tolerance from now; ``timestamp`` is what was sent."""

    def __init__(self, message: str, *, timestamp: int):
        super().__init__(message)
        self.timestamp = timestamp


def generate_secret(nbytes: int = 32) -> str:
    """Return a new random secret in the ``whsec_<base64>`` form."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(nbytes)).decode("ascii")


def decode_secret(secret: str) -> bytes:
    """Return the key bytes of a ``whsec_<base64>`` (or bare base64) secret.

    Raises:
        ValueError: the secret is empty or not base64.
    """
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        # Unpadded base64 is accepted, as by the reference Python library.
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("webhook secret is not valid base64") from None
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def _digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the ``webhook-signature`` value (``v1,<base64>``) for one delivery."""
    digest = _digest(decode_secret(secret), msg_id, int(timestamp), body)
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def sign_headers(secret: str, msg_id: str, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
    """Return the three Standard Webhooks headers for ``body``, timestamped now by default."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, body),
    }


def _header(headers: Mapping, name: str) -> str:
    """Case-insensitive header lookup on any mapping (dict, werkzeug Headers, ...)."""
    value = headers.get(name)
    if value is None:
        for key, candidate in headers.items():
            if key.lower() == name:
                value = candidate
                break
    if not value:
        raise MissingHeaders(f"missing {name} header")
    return value


def _parse_timestamp(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise MissingHeaders("webhook-timestamp is not an integer") from None


def _check_timestamp(timestamp: int, tolerance: int, now: float | None) -> None:
    current = time.time() if now is None else now
    if timestamp < current - tolerance:
        raise TimestampOutOfRange("webhook timestamp too old", timestamp=timestamp)
    if timestamp > current + tolerance:
        raise TimestampOutOfRange("webhook timestamp too new", timestamp=timestamp)


def _offered_signatures(header: str) -> list[bytes]:
    """Decode the ``v1`` entries of a signature header; other versions are skipped."""
    offered = []
    for item in header.split():
        version, _, encoded = item.partition(",")
        if version != SIGNATURE_VERSION or not encoded:
            continue
        try:
            offered.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return offered


def verify(secrets: Iterable[str], headers: Mapping, body: bytes, *,
           tolerance: int = DEFAULT_TOLERANCE, now: float | None = None) -> None:
    """Check a delivery's headers against ``body``; return ``None`` or raise.

    Args:
        secrets: every secret currently valid (e.g. old and new during a
            rotation); a signature made with any of them is accepted.
        headers: the request headers, looked up case-insensitively.
        body: the raw request body, exactly as received.
        tolerance: seconds the timestamp may differ from ``now`` either way.
        now: the current unix time (for tests); ``time.time()`` by default.

    Raises:
        MissingHeaders: a required header is absent or malformed.
        TimestampOutOfRange: the timestamp is outside the tolerance.
        BadSignature: no offered signature matches any secret.
    """
    msg_id = _header(headers, "webhook-id")
    timestamp = _parse_timestamp(_header(headers, "webhook-timestamp"))
    offered = _offered_signatures(_header(headers, "webhook-signature"))
    _check_timestamp(timestamp, tolerance, now)
    keys = [decode_secret(secret) for secret in secrets]
    if not keys:
        raise BadSignature("no webhook secret configured")
    matched = False
    for key in keys:
        expected = _digest(key, msg_id, timestamp, body)
        for candidate in offered:
            # No early exit: every comparison runs, in constant time.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise BadSignature("no matching webhook signature")
