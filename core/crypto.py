"""Encryption at rest for secrets and recipient data.

One ``MultiFernet`` built from OFFLOAD_ENCRYPTION_KEYS (newest first):
new values are encrypted with the newest key, any listed key decrypts,
and ``rotate`` re-encrypts a token under the newest key.
"""
from __future__ import annotations

import json

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Text
from sqlalchemy.types import TypeDecorator

_keyring: MultiFernet | None = None


class DecryptionError(Exception):
    """A stored value could not be decrypted with any configured key."""


def configure(keys: list[bytes]) -> None:
    """Install the key ring (newest key first)."""
    global _keyring
    _keyring = MultiFernet([Fernet(k) for k in keys])


def keyring() -> MultiFernet:
    if _keyring is None:
        raise RuntimeError("encryption keys are not configured (create_app not called)")
    return _keyring


def encrypt(plaintext: str) -> str:
    return keyring().encrypt(plaintext.encode()).decode("ascii")


def encrypt_bytes(plaintext: bytes) -> str:
    return keyring().encrypt(plaintext).decode("ascii")


def decrypt_bytes(token: str) -> bytes:
    try:
        return keyring().decrypt(token.encode("ascii"))
    except InvalidToken:
        raise DecryptionError("stored value cannot be decrypted with the configured keys") from None


def decrypt(token: str) -> str:
    try:
        return keyring().decrypt(token.encode("ascii")).decode()
    except InvalidToken:
        raise DecryptionError("stored value cannot be decrypted with the configured keys") from None


def rotate(token: str) -> str:
    """Return ``token`` re-encrypted under the newest key."""
    try:
        return keyring().rotate(token.encode("ascii")).decode("ascii")
    except InvalidToken:
        raise DecryptionError("stored value cannot be decrypted with the configured keys") from None


class EncryptedText(TypeDecorator):
    """A string column stored as a Fernet token."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else encrypt(value)

    def process_result_value(self, value, dialect):
        return None if value is None else decrypt(value)


class EncryptedJSON(TypeDecorator):
    """A JSON document stored as a Fernet token."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else encrypt(json.dumps(value, separators=(",", ":")))

    def process_result_value(self, value, dialect):
        return None if value is None else json.loads(decrypt(value))


class EncryptedBytes(TypeDecorator):
    """Bytes (a MIME message) stored as a Fernet token."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else encrypt_bytes(value)

    def process_result_value(self, value, dialect):
        return None if value is None else decrypt_bytes(value)
