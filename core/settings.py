"""Settings, read once from the environment and parsed strictly.

Every variable of CONTRACT §2 is read here and nowhere else. A bad value
raises ``SettingsError`` naming the variable, so start-up stops with a
message an operator can act on.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import re
import secrets
from collections.abc import Mapping
from urllib.parse import urlsplit

from cryptography.fernet import Fernet

from core import certificate_fonts
from providers import aws, guard, sns
from providers.base import OPERATOR_ENDPOINT
from providers.smtp import parse_smtp_url


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


DEV_KEY_SEED = b"manireports-offload-dev-key"


def parse_int(name: str, raw: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingsError(f"{name}: expected a whole number, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise SettingsError(f"{name}: {value} is out of range ({bound})")
    return value


def parse_float(name: str, raw: str, *, minimum: float = 0.0) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise SettingsError(f"{name}: expected a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name}: {value} is below {minimum}")
    return value


def parse_boolean(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{name}: invalid boolean value {raw!r}")


def parse_fernet_keys(name: str, raw: str) -> list[bytes]:
    """Comma-separated Fernet keys, newest first."""
    keys = [k.strip().encode() for k in raw.split(",") if k.strip()]
    if not keys:
        raise SettingsError(f"{name}: no key given")
    for i, key in enumerate(keys, 1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise SettingsError(f"{name}: key #{i} is not a valid Fernet key "
                                "(32 url-safe base64-encoded bytes)") from None
    return keys


def parse_smtp_setting(name: str, raw: str) -> dict:
    """``smtp://[user:pass@]host:port[?tls=starttls|tls]`` → provider config
    (the SMTP provider's own parser, with its error naming the variable)."""
    try:  # the operator's own relay: the endpoint guard does not apply to it
        return {**parse_smtp_url(raw), OPERATOR_ENDPOINT: True}
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None


def parse_networks(name: str, raw: str) -> tuple:
    """Comma-separated networks (``10.0.0.0/8,127.0.0.1``) → ``ip_network`` objects."""
    found = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        try:
            found.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise SettingsError(f"{name}: {part!r} is not a network (expected e.g. 10.0.0.0/8)") from None
    return tuple(found)


def normalize_database_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` use the installed psycopg (v3) driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def dev_encryption_key() -> bytes:
    """The derived key used when OFFLOAD_ENCRYPTION_KEYS is unset outside production."""
    return base64.urlsafe_b64encode(hashlib.sha256(DEV_KEY_SEED).digest())


def load(environ: Mapping[str, str] | None = None) -> dict:
    """Read every setting from ``environ`` (default ``os.environ``) into Flask config keys."""
    env = os.environ if environ is None else environ
    production = any(env.get(v, "").strip().lower() == "production" for v in ("FLASK_ENV", "OFFLOAD_ENV"))
    development = not production and (env.get("OFFLOAD_ENV", "").strip().lower() == "development"
                                      or parse_boolean("OFFLOAD_DEV", env.get("OFFLOAD_DEV", "0")))

    cfg: dict = {"OFFLOAD_PRODUCTION": production, "OFFLOAD_DEVELOPMENT": development,
                 "OFFLOAD_DEV_KEY_IN_USE": False}
    cfg["SQLALCHEMY_DATABASE_URI"] = normalize_database_url(env.get("DATABASE_URL") or "sqlite:///instance/offload.db")
    cfg["REDIS_URL"] = env.get("REDIS_URL") or "redis://127.0.0.1:6379/0"

    secret = env.get("SECRET_KEY")
    if not secret:
        if production:
            raise SettingsError("SECRET_KEY: required in production")
        secret = secrets.token_hex(32)
    cfg["SECRET_KEY"] = secret

    raw_keys = env.get("OFFLOAD_ENCRYPTION_KEYS")
    if raw_keys:
        cfg["OFFLOAD_ENCRYPTION_KEYS"] = parse_fernet_keys("OFFLOAD_ENCRYPTION_KEYS", raw_keys)
    elif production:
        raise SettingsError("OFFLOAD_ENCRYPTION_KEYS: required in production")
    elif not development:
        raise SettingsError("OFFLOAD_ENCRYPTION_KEYS: required (the public development key is used only "
                            "when development is explicitly on: OFFLOAD_ENV=development or OFFLOAD_DEV=1)")
    else:
        cfg["OFFLOAD_ENCRYPTION_KEYS"] = [dev_encryption_key()]
        cfg["OFFLOAD_DEV_KEY_IN_USE"] = True
    raw_keys = env.get("OFFLOAD_UNSUBSCRIBE_KEYS")
    cfg["OFFLOAD_UNSUBSCRIBE_KEYS"] = [k.strip().encode() for k in raw_keys.split(",") if k.strip()] \
        if raw_keys else None
    if raw_keys and (not cfg["OFFLOAD_UNSUBSCRIBE_KEYS"] or any(len(k) < 32 for k in cfg["OFFLOAD_UNSUBSCRIBE_KEYS"])):
        raise SettingsError("OFFLOAD_UNSUBSCRIBE_KEYS: each key needs at least 32 characters")

    ints = {  # name: (default, minimum, maximum)
        "OFFLOAD_BATCH_SIZE": (200, 1, 10_000),
        "OFFLOAD_BULK_THRESHOLD": (10, 1, None),
        "OFFLOAD_MAX_ATTEMPTS": (5, 1, 50),
        "OFFLOAD_LEASE_S": (120, 5, None),
        "OFFLOAD_CALLBACK_TIMEOUT_S": (900, 5, None),
        "OFFLOAD_DATA_RETENTION_DAYS": (7, 0, None),
        "OFFLOAD_MAX_RECIPIENTS": (50_000, 1, None),
        "OFFLOAD_LOGIN_MAX_FAILURES": (5, 1, None),
        "OFFLOAD_SWEEP_S": (15, 1, None),
        "OFFLOAD_QUOTA_RESUME_S": (3600, 1, None),
        "OFFLOAD_PROXY_HOPS": (0, 0, 10),
        "OFFLOAD_LMS_POLL_S": (30, 1, None),
        "OFFLOAD_LMS_CHUNK": (500, 1, 10_000),
        "OFFLOAD_LMS_MAX_ROWS": (10_000, 1, None),
        "OFFLOAD_MAX_CONTENT_LENGTH": (64 * 1024 * 1024, 1024, None),
        "OFFLOAD_LOGIN_BACKOFF_MAX_S": (900, 1, None),
        "OFFLOAD_MAX_UPLOADS_PER_USER": (5, 1, None),
        "OFFLOAD_MAX_UPLOADS_PER_COMPANY": (20, 1, None),
        "OFFLOAD_MAX_BUFFERED_EVENTS": (50_000, 1, None),
    }
    for name, (default, lo, hi) in ints.items():
        raw = env.get(name)
        cfg[name] = default if raw in (None, "") else parse_int(name, raw, minimum=lo, maximum=hi)
    raw = env.get("OFFLOAD_BULK_WINDOW_S")
    cfg["OFFLOAD_BULK_WINDOW_S"] = 10.0 if raw in (None, "") else parse_float("OFFLOAD_BULK_WINDOW_S", raw, minimum=0.1)

    raw = env.get("OFFLOAD_PROVIDER_TIMEOUT_S")
    cfg["OFFLOAD_PROVIDER_TIMEOUT_S"] = None if raw in (None, "") else parse_float(
        "OFFLOAD_PROVIDER_TIMEOUT_S", raw, minimum=0.5)
    if (cfg["OFFLOAD_PROVIDER_TIMEOUT_S"] or 0) >= cfg["OFFLOAD_LEASE_S"]:
        raise SettingsError("OFFLOAD_PROVIDER_TIMEOUT_S: must be shorter than OFFLOAD_LEASE_S (a worker waiting "
                            "on a provider would lose its batch to another)")

    raw = env.get("OFFLOAD_BULK_MAX_HOLD_S")
    cfg["OFFLOAD_BULK_MAX_HOLD_S"] = None if raw in (None, "") else parse_float(
        "OFFLOAD_BULK_MAX_HOLD_S", raw, minimum=0.1)
    pattern = env.get("OFFLOAD_SNS_URL_PATTERN")
    if pattern:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise SettingsError(f"OFFLOAD_SNS_URL_PATTERN: not a regular expression ({exc})") from None
    cfg["OFFLOAD_SNS_URL_PATTERN"] = pattern or None
    cfg["OFFLOAD_SNS_CA_BUNDLE"] = env.get("OFFLOAD_SNS_CA_BUNDLE") or None

    raw = env.get("OFFLOAD_FALLBACK_SMTP")
    cfg["OFFLOAD_FALLBACK_SMTP"] = parse_smtp_setting("OFFLOAD_FALLBACK_SMTP", raw) if raw else None

    public = (env.get("OFFLOAD_PUBLIC_URL") or "http://127.0.0.1:5000").rstrip("/")
    if urlsplit(public).scheme not in ("http", "https"):
        raise SettingsError(f"OFFLOAD_PUBLIC_URL: expected an http(s) URL, got {public!r}")
    cfg["OFFLOAD_PUBLIC_URL"] = public
    instance = env.get("OFFLOAD_INSTANCE_PATH")
    if instance and not os.path.isabs(instance):
        raise SettingsError(f"OFFLOAD_INSTANCE_PATH: expected an absolute path, got {instance!r}")
    cfg["OFFLOAD_INSTANCE_PATH"] = instance or None
    cfg["OFFLOAD_ALLOW_PRIVATE_ENDPOINTS"] = parse_boolean(
        "OFFLOAD_ALLOW_PRIVATE_ENDPOINTS", env.get("OFFLOAD_ALLOW_PRIVATE_ENDPOINTS", "0"))
    cfg["OFFLOAD_ALLOWED_ENDPOINT_HOSTS"] = tuple(
        h.strip().lower() for h in env.get("OFFLOAD_ALLOWED_ENDPOINT_HOSTS", "").split(",") if h.strip())
    sts = env.get("OFFLOAD_STS_ENDPOINT_URL") or None
    if sts and urlsplit(sts).scheme not in ("http", "https"):
        raise SettingsError(f"OFFLOAD_STS_ENDPOINT_URL: expected an http(s) URL, got {sts!r}")
    cfg["OFFLOAD_STS_ENDPOINT_URL"] = sts
    sender = (env.get("OFFLOAD_FALLBACK_FROM") or "").strip()
    if sender and ("@" not in sender or any(c in sender for c in "\r\n\0 <>")):
        raise SettingsError(f"OFFLOAD_FALLBACK_FROM: expected an email address, got {sender!r}")
    cfg["OFFLOAD_FALLBACK_FROM"] = sender or "no-reply@" + (urlsplit(public).hostname or "localhost")
    cfg["OFFLOAD_METRICS_TOKEN"] = env.get("OFFLOAD_METRICS_TOKEN") or None
    cfg["OFFLOAD_METRICS_NETWORKS"] = parse_networks(
        "OFFLOAD_METRICS_NETWORKS", env.get("OFFLOAD_METRICS_NETWORKS") or "127.0.0.1/32,::1/128")
    # certificates on this machine's disk: the development default; production only when asked (one machine)
    raw = env.get("OFFLOAD_LOCAL_STORAGE", "")
    cfg["OFFLOAD_LOCAL_STORAGE"] = (not production) if raw.strip() == "" else parse_boolean(
        "OFFLOAD_LOCAL_STORAGE", raw)
    local_path = env.get("OFFLOAD_LOCAL_STORAGE_PATH")
    if local_path and not os.path.isabs(local_path):
        raise SettingsError(f"OFFLOAD_LOCAL_STORAGE_PATH: expected an absolute path, got {local_path!r}")
    cfg["OFFLOAD_LOCAL_STORAGE_PATH"] = local_path or None
    cfg["OFFLOAD_CERTIFICATE_FONT_DIRS"] = parse_dirs(
        "OFFLOAD_CERTIFICATE_FONT_DIRS", env.get("OFFLOAD_CERTIFICATE_FONT_DIRS", ""))
    cfg["OFFLOAD_EMBEDDED_REDIS"] = parse_boolean("OFFLOAD_EMBEDDED_REDIS", env.get("OFFLOAD_EMBEDDED_REDIS", "1"))
    cfg["OFFLOAD_PROVIDER_API_BASES"] = parse_api_bases(
        "OFFLOAD_PROVIDER_API_BASES", env.get("OFFLOAD_PROVIDER_API_BASES", ""))
    cfg["OFFLOAD_LMS_FORCE"] = parse_boolean("OFFLOAD_LMS_FORCE", env.get("OFFLOAD_LMS_FORCE", "0"))
    return cfg


def parse_dirs(name: str, raw: str) -> tuple[str, ...]:
    """Absolute folder paths separated by ``:``; empty: none (the code's defaults)."""
    dirs = tuple(part.strip() for part in raw.split(os.pathsep) if part.strip())
    for folder in dirs:
        if not os.path.isabs(folder):
            raise SettingsError(f"{name}: expected absolute paths separated by '{os.pathsep}', got {folder!r}")
    return dirs


def parse_api_bases(name: str, raw: str) -> dict[str, str]:
    """``sendgrid=http://127.0.0.1:8025,mailgun=...``: the operator's API base per provider (tests, relays)."""
    found = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        provider, sep, url = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z0-9_-]+", provider.strip()) or \
                urlsplit(url.strip()).scheme not in ("http", "https"):
            raise SettingsError(f"{name}: expected provider=http(s)://host[:port], comma-separated; got {item!r}")
        found[provider.strip()] = url.strip()
    return found


def configure_outbound(config: Mapping) -> None:
    """Install the process-wide outbound policy: the endpoint guard, the operator's STS
    endpoint and SNS URL pattern (and where the certificate fonts are). The app factory calls
    it, and the worker again from the app it is given."""
    guard.configure(allow_private=config.get("OFFLOAD_ALLOW_PRIVATE_ENDPOINTS", False),
                    production=config.get("OFFLOAD_PRODUCTION", False),
                    allowed_hosts=config.get("OFFLOAD_ALLOWED_ENDPOINT_HOSTS", ()))
    aws.configure(sts_endpoint_url=config.get("OFFLOAD_STS_ENDPOINT_URL"))
    sns.configure(url_pattern=config.get("OFFLOAD_SNS_URL_PATTERN"), ca_bundle=config.get("OFFLOAD_SNS_CA_BUNDLE"))
    certificate_fonts.configure(config.get("OFFLOAD_CERTIFICATE_FONT_DIRS") or None)
