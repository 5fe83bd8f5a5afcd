"""Password hashes in werkzeug's format, without werkzeug.

A stored hash is ``method$salt$hex``: ``scrypt:32768:8:1$<16 salt characters>$<64 bytes as hex>``
or ``pbkdf2:sha256:600000$...``, exactly what ``werkzeug.security.generate_password_hash``
writes, so hashes made before (by werkzeug) verify here and hashes made here verify there
(``tests/core/test_passwords.py`` checks both ways). The method names its own parameters, so
checking needs nothing but the hash; which method new hashes get is the caller's choice
(``Settings.password_hash_method``).
"""
from __future__ import annotations

import hashlib
import hmac
import secrets

SALT_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
SALT_LENGTH = 16
#: werkzeug's defaults for a method named without parameters
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
PBKDF2_HASH, PBKDF2_ITERATIONS = "sha256", 1_000_000


def _derive(method: str, salt: str, password: str) -> tuple[str, str]:
    """(hex digest, the method with all its parameters) of ``password`` under ``method``."""
    name, *args = method.split(":")
    if name == "scrypt":
        try:
            n, r, p = map(int, args) if args else (SCRYPT_N, SCRYPT_R, SCRYPT_P)
        except ValueError:
            raise ValueError("'scrypt' takes 3 arguments.") from None
        digest = hashlib.scrypt(password.encode(), salt=salt.encode(), n=n, r=r, p=p, maxmem=132 * n * r * p)
        return digest.hex(), f"scrypt:{n}:{r}:{p}"
    if name == "pbkdf2":
        if len(args) > 2:
            raise ValueError("'pbkdf2' takes 2 arguments.")
        hash_name = args[0] if args else PBKDF2_HASH
        iterations = int(args[1]) if len(args) == 2 else PBKDF2_ITERATIONS
        digest = hashlib.pbkdf2_hmac(hash_name, password.encode(), salt.encode(), iterations)
        return digest.hex(), f"pbkdf2:{hash_name}:{iterations}"
    raise ValueError(f"Invalid hash method '{name}'.")


def hash_password(password: str, method: str = "scrypt") -> str:
    """A new ``method$salt$hash`` for ``password`` with a random salt."""
    salt = "".join(secrets.choice(SALT_CHARS) for _ in range(SALT_LENGTH))
    digest, full_method = _derive(method, salt, password)
    return f"{full_method}${salt}${digest}"


def check_password(stored: str, password: str) -> bool:
    """True when ``password`` matches the stored hash (compared in constant time)."""
    try:
        method, salt, digest = stored.split("$", 2)
    except ValueError:
        return False
    return hmac.compare_digest(_derive(method, salt, password)[0], digest)
