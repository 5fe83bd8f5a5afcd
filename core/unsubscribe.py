"""Unsubscribe tokens for bulk and re-engagement mail (RFC 8058).

Only that mail carries one (``core.models.is_bulk``), and an unsubscribe
puts the address on the company's ``unsubscribe`` list, which stops bulk
mail only: password, account, licence and IOMAD's mail is transactional
and is never unsubscribed (``core.suppressions.lists_for``).

The token is an itsdangerous signature of ``[company_id, email]`` keyed by
its own signing keys, ``OFFLOAD_UNSUBSCRIBE_KEYS`` (newest first); when the
operator sets none, a key derived from each OFFLOAD_ENCRYPTION_KEYS key
(with its own salt) is used, which is secret wherever the encryption keys
are. It needs no database row, cannot be guessed, survives restarts and
keeps working through a key rotation while the old key is listed.
"""
from __future__ import annotations

import hashlib
import hmac

from itsdangerous import BadSignature, URLSafeSerializer

from core import settings

SALT = "offload-unsubscribe"
_serializers: dict[tuple, URLSafeSerializer] = {}


def _serializer() -> URLSafeSerializer:
    own = settings.current().unsubscribe_keys
    keys = tuple(own or settings.current().encryption_keys)  # newest first
    found = _serializers.get(keys)
    if found is None:
        # itsdangerous wants oldest to newest; it signs with the last one
        secrets = [k.decode() if own else hmac.new(k, SALT.encode(), hashlib.sha256).hexdigest()
                   for k in reversed(keys)]
        found = _serializers[keys] = URLSafeSerializer(secrets, salt=SALT,
                                                         signer_kwargs={"digest_method": hashlib.sha256})
    return found


def make_token(company_id: int, email: str) -> str:
    return _serializer().dumps([int(company_id), email.strip().lower()])


def read_token(token: str) -> tuple[int, str] | None:
    """(company id, email) of a genuine token, else ``None``."""
    if len(token) > 1000:
        return None
    try:
        value = _serializer().loads(token)
    except BadSignature:
        return None
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int)
            and isinstance(value[1], str)):
        return None
    return value[0], value[1]


def unsubscribe_url(company_id: int, email: str) -> str:
    return f"{settings.current().public_url}/u/{make_token(company_id, email)}"
