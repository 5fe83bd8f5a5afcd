"""Settings: every environment variable the service reads, declared once and parsed strictly.

``Settings`` is a frozen dataclass. Each field read from the environment is one
declaration, ``var(NAME, default, parser, doc)``: the variable's name, its default
(used when it is unset or blank), the parser that checks its type and bounds, and a
one-line doc; the annotation is its type. A bad value raises ``SettingsError``
naming the variable, so start-up stops with a message an operator can act on. A few
fields are ``derived``: worked out from others at load (``production``), or set by
code only (``password_hash_method``); no variable names them.

The composition root reads the environment once per process and installs the result
(``install(load())``); everything else reads ``current()``: ``settings.current().batch_size``.
Nothing outside this module reads ``os.environ`` (``tests/core/test_settings.py`` checks,
and that the README's settings table and these declarations agree).

Adding a variable is one line here and its row in the README's settings table::

    export_limit: int = var("OFFLOAD_EXPORT_LIMIT", 10_000, integer(1, 1_000_000), "rows one CSV export holds")

A parser takes ``(name, raw)`` and returns the value or raises ``SettingsError`` naming
``name``; ``integer``, ``number``, ``boolean``, ``text``, ``http_url``, ``absolute_path`` and
the others below cover most needs. A default that depends on other settings is worked
out in ``_derive``.

Providers never read settings: the composition root hands them plain values at start
(``configure_outbound``: the endpoint guard, the STS and SNS endpoints, the fonts).

Tests change settings by field name: ``create_app({"batch_size": 10})``, or for one test
the ``set_settings`` fixture (``set_settings(batch_size=10)``), which installs a copy.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import ipaddress
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlsplit

from cryptography.fernet import Fernet

from core import certificate_fonts, prices
from providers import aws, guard, sns
from providers.base import OPERATOR_ENDPOINT
from providers.smtp import parse_smtp_url


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


DEV_KEY_SEED = b"manireports-offload-dev-key"
Parser = Callable[[str, str], Any]


# --------------------------------------------------------------------------- parsers


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


def integer(minimum: int = 0, maximum: int | None = None) -> Parser:
    """A whole number in ``minimum..maximum``."""
    return lambda name, raw: parse_int(name, raw, minimum=minimum, maximum=maximum)


def number(minimum: float = 0.0) -> Parser:
    """A number of at least ``minimum``."""
    return lambda name, raw: parse_float(name, raw, minimum=minimum)


boolean: Parser = parse_boolean


def environment_name(name: str, raw: str) -> str:
    """``production`` or ``development`` (blank: production)."""
    value = raw.strip().lower()
    if value not in ("production", "development"):
        raise SettingsError(f"{name}: expected production or development, got {raw!r}")
    return value


def text(name: str, raw: str) -> str:
    return raw


def lowered(name: str, raw: str) -> str:
    return raw.strip().lower()


def http_url(name: str, raw: str) -> str:
    """An http(s) URL, without a trailing slash."""
    url = raw.strip().rstrip("/")
    if urlsplit(url).scheme not in ("http", "https"):
        raise SettingsError(f"{name}: expected an http(s) URL, got {raw!r}")
    return url


def absolute_path(name: str, raw: str) -> str:
    if not os.path.isabs(raw):
        raise SettingsError(f"{name}: expected an absolute path, got {raw!r}")
    return raw


def price_file(name: str, raw: str) -> dict:
    """A price table file (TOML or JSON) merged over the shipped ``core/prices.toml``."""
    try:
        return prices.load(raw.strip())
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None


def regex(name: str, raw: str) -> str:
    try:
        re.compile(raw)
    except re.error as exc:
        raise SettingsError(f"{name}: not a regular expression ({exc})") from None
    return raw


def email_address(name: str, raw: str) -> str:
    sender = raw.strip()
    if "@" not in sender or any(c in sender for c in "\r\n\0 <>"):
        raise SettingsError(f"{name}: expected an email address, got {sender!r}")
    return sender


def parse_fernet_keys(name: str, raw: str) -> tuple[bytes, ...]:
    """Comma-separated Fernet keys, newest first."""
    keys = tuple(k.strip().encode() for k in raw.split(",") if k.strip())
    if not keys:
        raise SettingsError(f"{name}: no key given")
    for i, key in enumerate(keys, 1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise SettingsError(f"{name}: key #{i} is not a valid Fernet key "
                                "(32 url-safe base64-encoded bytes)") from None
    return keys


def signing_keys(name: str, raw: str) -> tuple[bytes, ...]:
    """Comma-separated signing keys of at least 32 characters, newest first."""
    keys = tuple(k.strip().encode() for k in raw.split(",") if k.strip())
    if not keys or any(len(k) < 32 for k in keys):
        raise SettingsError(f"{name}: each key needs at least 32 characters")
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


def listen_address(name: str, raw: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:2525`` for IPv6) → (host, port)."""
    host, sep, port = raw.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"{name}: expected host:port, got {raw!r}")
    return host, int(port)


def parse_hosts(name: str, raw: str) -> tuple[str, ...]:
    return tuple(h.strip().lower() for h in raw.split(",") if h.strip())


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


def normalize_database_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` use the installed psycopg (v3) driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def database_url(name: str, raw: str) -> str:
    return normalize_database_url(raw)


def dev_encryption_key() -> bytes:
    """The derived key used when OFFLOAD_ENCRYPTION_KEYS is unset outside production."""
    return base64.urlsafe_b64encode(hashlib.sha256(DEV_KEY_SEED).digest())


# --------------------------------------------------------------------------- declarations


def var(env: str, default: Any, parse: Parser, doc: str) -> Any:
    """A field read from the environment variable ``env``; ``default`` when it is unset or blank."""
    meta = {"env": env, "parse": parse, "doc": doc}
    if isinstance(default, dict | list | set):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def derived(default: Any, doc: str) -> Any:
    """A field no variable names: worked out at load, or set by code."""
    if isinstance(default, dict | list | set):
        return field(default_factory=lambda: type(default)(default), metadata={"env": None, "doc": doc})
    return field(default=default, metadata={"env": None, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """The service's settings (CONTRACT §2); see the module docstring for how to add one."""

    # -- the environment it runs in
    env: str = var("OFFLOAD_ENV", "", environment_name,
                   "development, or production (the default: anything not explicitly development)")
    flask_env: str = var("FLASK_ENV", "", lowered, "production: as OFFLOAD_ENV=production (older deployments)")
    dev: bool = var("OFFLOAD_DEV", False, boolean, "development on: the public dev key without encryption keys")
    production: bool = derived(True, "not development (OFFLOAD_ENV=production wins over OFFLOAD_DEV)")
    development: bool = derived(False, "OFFLOAD_ENV=development or OFFLOAD_DEV, and not OFFLOAD_ENV=production")
    dev_key_in_use: bool = derived(False, "no OFFLOAD_ENCRYPTION_KEYS: the public development key is in use")
    given: frozenset[str] = derived(frozenset(), "the variables the environment set (non-blank)")
    password_hash_method: str = derived("scrypt", "werkzeug-format method of new password hashes (tests: cheaper)")

    # -- state and secrets
    database_url: str = var("DATABASE_URL", "sqlite:///instance/offload.db", database_url, "any SQLAlchemy URL")
    redis_url: str = var("REDIS_URL", "redis://127.0.0.1:6379/0", text, "RQ's Redis")
    embedded_redis: bool = var("OFFLOAD_EMBEDDED_REDIS", True, boolean,
                               "make run serves an embedded Redis when none answers at REDIS_URL")
    secret_key: str = var("SECRET_KEY", "", text, "sessions, CSRF; random per start outside production")
    encryption_keys: tuple[bytes, ...] = var("OFFLOAD_ENCRYPTION_KEYS", (), parse_fernet_keys,
                                             "Fernet keys, newest first")
    unsubscribe_keys: tuple[bytes, ...] | None = var("OFFLOAD_UNSUBSCRIBE_KEYS", None, signing_keys,
                                                     "unsubscribe link signing keys, newest first")
    instance_path: str | None = var("OFFLOAD_INSTANCE_PATH", None, absolute_path, "the instance folder")
    public_url: str = var("OFFLOAD_PUBLIC_URL", "http://127.0.0.1:5000", http_url, "callbacks' and links' base")

    # -- outbound connections
    allow_private_endpoints: bool = var("OFFLOAD_ALLOW_PRIVATE_ENDPOINTS", False, boolean,
                                        "tenant endpoints may reach loopback and private addresses")
    allowed_endpoint_hosts: tuple[str, ...] = var("OFFLOAD_ALLOWED_ENDPOINT_HOSTS", (), parse_hosts,
                                                  "production: tenant endpoint hosts beside AWS and Cloudflare")
    sts_endpoint_url: str | None = var("OFFLOAD_STS_ENDPOINT_URL", None, http_url, "the service's AssumeRole STS")
    aws_endpoint_url: str | None = var("AWS_ENDPOINT_URL", None, text, "boto3's endpoint for every AWS service")
    aws_endpoint_url_sts: str | None = var("AWS_ENDPOINT_URL_STS", None, text, "boto3's STS endpoint")
    aws_endpoint_url_s3: str | None = var("AWS_ENDPOINT_URL_S3", None, text, "boto3's S3 endpoint (certificates)")
    provider_api_bases: dict[str, str] = var("OFFLOAD_PROVIDER_API_BASES", {}, parse_api_bases,
                                             "operator-only API bases of the providers with fixed ones")
    provider_timeout_s: float | None = var("OFFLOAD_PROVIDER_TIMEOUT_S", None, number(0.5),
                                           "read timeout of one provider call (default: each provider's)")
    fallback_smtp: dict | None = var("OFFLOAD_FALLBACK_SMTP", None, parse_smtp_setting, "the operator's relay")
    fallback_from: str = var("OFFLOAD_FALLBACK_FROM", "", email_address, "From of mail through the relay")
    sns_url_pattern: str | None = var("OFFLOAD_SNS_URL_PATTERN", None, regex,
                                      "SNS certificate and subscribe URLs the service fetches")
    sns_ca_bundle: str | None = var("OFFLOAD_SNS_CA_BUNDLE", None, text, "CA bundle for those fetches")

    # -- jobs and batches
    batch_size: int = var("OFFLOAD_BATCH_SIZE", 200, integer(1, 10_000), "recipients per batch")
    max_recipients: int = var("OFFLOAD_MAX_RECIPIENTS", 50_000, integer(1), "recipients per job")
    max_attempts: int = var("OFFLOAD_MAX_ATTEMPTS", 5, integer(1, 50), "provider attempts per recipient")
    lease_s: int = var("OFFLOAD_LEASE_S", 120, integer(5), "how long a worker holds a batch without renewing")
    callback_timeout_s: int = var("OFFLOAD_CALLBACK_TIMEOUT_S", 900, integer(5),
                                  "offload batches without a callback after this are reconciled")
    sweep_s: int = var("OFFLOAD_SWEEP_S", 15, integer(1), "how often the recovery sweep runs")
    quota_resume_s: int = var("OFFLOAD_QUOTA_RESUME_S", 3600, integer(1), "quota-paused jobs resume after this")
    data_retention_days: int = var("OFFLOAD_DATA_RETENTION_DAYS", 30, integer(0),
                                   "recipient data of finished jobs is purged after this")

    # -- LMS events and the connector
    bulk_threshold: int = var("OFFLOAD_BULK_THRESHOLD", 10, integer(1), "events in a window that make a bulk job")
    bulk_window_s: float = var("OFFLOAD_BULK_WINDOW_S", 10.0, number(0.1), "that window, in seconds")
    bulk_max_hold_s: float | None = var("OFFLOAD_BULK_MAX_HOLD_S", None, number(0.1),
                                        "longest a busy window stays open (default: six windows)")
    max_buffered_events: int = var("OFFLOAD_MAX_BUFFERED_EVENTS", 50_000, integer(1),
                                   "events one company may hold in an open window")
    lms_poll_s: int = var("OFFLOAD_LMS_POLL_S", 30, integer(1), "how often each LMS database is polled")
    lms_chunk: int = var("OFFLOAD_LMS_CHUNK", 500, integer(1, 10_000), "LMS rows read per query")
    lms_max_rows: int = var("OFFLOAD_LMS_MAX_ROWS", 10_000, integer(1), "LMS rows one poll takes at most")
    lms_force: bool = var("OFFLOAD_LMS_FORCE", False, boolean, "take IOMAD's queue while its email task is on")

    # -- the web side
    max_content_length: int = var("OFFLOAD_MAX_CONTENT_LENGTH", 64 * 1024 * 1024, integer(1024),
                                  "largest request body")
    max_form_bytes: int = var("OFFLOAD_MAX_FORM_BYTES", 2 * 1024 * 1024, integer(1024),
                              "largest form body (login, settings, templates; CSV uploads have their own cap)")
    api_rate_per_min: int = var("OFFLOAD_API_RATE_PER_MIN", 1200, integer(1),
                                "LMS API requests per token and minute (then 429 with Retry-After)")
    allowed_hosts: tuple[str, ...] = var("OFFLOAD_ALLOWED_HOSTS", (), parse_hosts,
                                         "production: Host header names the web app answers (default: the "
                                         "host of OFFLOAD_PUBLIC_URL; * for any)")
    proxy_hops: int = var("OFFLOAD_PROXY_HOPS", 0, integer(0, 10), "trusted reverse proxies in front of the app")
    login_max_failures: int = var("OFFLOAD_LOGIN_MAX_FAILURES", 5, integer(1),
                                  "failed sign-ins before an address backs off")
    login_backoff_max_s: int = var("OFFLOAD_LOGIN_BACKOFF_MAX_S", 900, integer(1), "longest sign-in back-off")
    max_uploads_per_user: int = var("OFFLOAD_MAX_UPLOADS_PER_USER", 5, integer(1), "CSV uploads awaiting review")
    max_uploads_per_company: int = var("OFFLOAD_MAX_UPLOADS_PER_COMPANY", 20, integer(1),
                                       "CSV uploads awaiting review, per company")
    max_upload_bytes: int = var("OFFLOAD_MAX_UPLOAD_BYTES", 256 * 1024 * 1024, integer(1024),
                                "bytes all pending CSV uploads together may hold in Redis (then 503)")
    verify_rate_per_min: int = var("OFFLOAD_VERIFY_RATE_PER_MIN", 60, integer(1),
                                   "certificate lookups per client address and minute")
    metrics_token: str | None = var("OFFLOAD_METRICS_TOKEN", None, text, "production: /metrics bearer token")
    metrics_networks: tuple = var("OFFLOAD_METRICS_NETWORKS", parse_networks("", "127.0.0.1/32,::1/128"),
                                  parse_networks, "production: networks that read /metrics without the token")

    # -- SMTP submission (``flask --app wsgi smtp``)
    smtp_listen: tuple[str, int] | None = var("OFFLOAD_SMTP_LISTEN", None, listen_address,
                                             "host:port the SMTP submission server listens on (unset: off)")
    smtp_tls_cert: str | None = var("OFFLOAD_SMTP_TLS_CERT", None, absolute_path, "its STARTTLS certificate (PEM)")
    smtp_tls_key: str | None = var("OFFLOAD_SMTP_TLS_KEY", None, absolute_path, "that certificate's key (PEM)")
    smtp_allow_plain_auth: bool = var("OFFLOAD_SMTP_ALLOW_PLAIN_AUTH", False, boolean,
                                      "AUTH without STARTTLS from any address (default: loopback only)")
    smtp_max_bytes: int = var("OFFLOAD_SMTP_MAX_BYTES", 10 * 1024 * 1024, integer(1024), "largest message")
    smtp_max_rcpt: int = var("OFFLOAD_SMTP_MAX_RCPT", 100, integer(1, 10_000), "recipients per message")
    smtp_max_connections: int = var("OFFLOAD_SMTP_MAX_CONNECTIONS", 20, integer(1),
                                    "signed-in SMTP sessions of one company at once, across processes")
    smtp_proxy_protocol: bool = var("OFFLOAD_SMTP_PROXY_PROTOCOL", False, boolean,
                                    "clients come through a balancer speaking the PROXY protocol")
    smtp_processes: int = var("OFFLOAD_SMTP_PROCESSES", 2, integer(1, 64),
                              "SMTP processes sharing the listening socket (one event loop each)")

    # -- certificates
    local_storage: bool = var("OFFLOAD_LOCAL_STORAGE", False, boolean,
                              "certificate PDFs on this machine's disk (default: outside production)")
    local_storage_path: str | None = var("OFFLOAD_LOCAL_STORAGE_PATH", None, absolute_path,
                                         "where they are kept (default: instance/certificates)")
    certificate_font_dirs: tuple[str, ...] = var(
        "OFFLOAD_CERTIFICATE_FONT_DIRS", certificate_fonts.DEFAULT_FONT_DIRS, parse_dirs,
        "folders (':'-separated) with the certificate fonts, searched in order")

    # cost estimates
    prices: dict | None = var("OFFLOAD_PRICES", None, price_file,
                              "a price table file overriding the shipped one (core/prices.toml) key by key")


def declared() -> list[dataclasses.Field]:
    """The fields read from the environment, in declaration order."""
    return [f for f in fields(Settings) if f.metadata.get("env")]


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Read every declared variable from ``environ`` (default ``os.environ``), strictly."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    given = set()
    for f in declared():
        name = f.metadata["env"]
        raw = env.get(name)
        if raw is not None and raw.strip():
            values[f.name] = f.metadata["parse"](name, raw)
            given.add(name)
    return _derive(Settings(**values, given=frozenset(given)))


def _derive(s: Settings) -> Settings:
    """Defaults that depend on other settings, and the checks across settings."""
    # production unless development is explicitly on; an explicit production wins over OFFLOAD_DEV
    development = "production" not in (s.env, s.flask_env) and (s.env == "development" or s.dev)
    production = not development
    changes: dict[str, Any] = {"production": production, "development": development}
    if not s.encryption_keys:
        if production:
            raise SettingsError("OFFLOAD_ENCRYPTION_KEYS: required in production (the public development key "
                                "is used only when development is explicitly on: OFFLOAD_ENV=development or "
                                "OFFLOAD_DEV=1)")
        changes.update(encryption_keys=(dev_encryption_key(),), dev_key_in_use=True)
    elif dev_encryption_key() in s.encryption_keys:
        if production:
            raise SettingsError("OFFLOAD_ENCRYPTION_KEYS: holds the public development key, which anyone can "
                                "derive from the source; refused in production (generate one: "
                                "python -c 'from cryptography.fernet import Fernet; "
                                "print(Fernet.generate_key().decode())')")
        changes["dev_key_in_use"] = True
    if not s.secret_key:
        if production:
            raise SettingsError("SECRET_KEY: required in production (development only when explicitly on: "
                                "OFFLOAD_ENV=development or OFFLOAD_DEV=1)")
        changes["secret_key"] = secrets.token_hex(32)
    if production and not s.allowed_hosts:  # the Host header the web app answers: the public URL's
        changes["allowed_hosts"] = (urlsplit(s.public_url).hostname or "localhost",)
    if (s.provider_timeout_s or 0) >= s.lease_s:
        raise SettingsError("OFFLOAD_PROVIDER_TIMEOUT_S: must be shorter than OFFLOAD_LEASE_S (a worker waiting "
                            "on a provider would lose its batch to another)")
    if not s.fallback_from:
        changes["fallback_from"] = "no-reply@" + (urlsplit(s.public_url).hostname or "localhost")
    if bool(s.smtp_tls_cert) != bool(s.smtp_tls_key):
        raise SettingsError("OFFLOAD_SMTP_TLS_CERT and OFFLOAD_SMTP_TLS_KEY: set both or neither")
    if "OFFLOAD_LOCAL_STORAGE" not in s.given:  # the development default; production only when asked
        changes["local_storage"] = not production
    return replace(s, **changes)


# --------------------------------------------------------------------------- the process's settings

_current: Settings | None = None


def install(value: Settings) -> Settings:
    """Make ``value`` this process's settings (the composition root, once; tests, per test)."""
    global _current
    _current = value
    return value


def current() -> Settings:
    """This process's settings."""
    if _current is None:
        raise RuntimeError("settings are not loaded: the composition root installs them (core.settings.install)")
    return _current


def override(**changes: Any) -> Settings:
    """Install a copy of the current settings with ``changes`` (field names; a typo is a TypeError)."""
    return install(replace(current(), **changes))


def environment(changes: Mapping[str, str]) -> dict[str, str]:
    """This process's environment with ``changes``: what a child process of the service starts with."""
    return {**os.environ, **changes}


def configure_outbound(s: Settings) -> None:
    """Install the process-wide outbound policy: the endpoint guard, the operator's STS
    endpoints and SNS URL pattern (and where the certificate fonts are). The app factory calls
    it, and the worker again when it starts."""
    guard.configure(allow_private=s.allow_private_endpoints, production=s.production,
                    allowed_hosts=s.allowed_endpoint_hosts)
    aws.configure(sts_endpoint_url=s.sts_endpoint_url,
                  boto_sts_endpoint=bool(s.aws_endpoint_url_sts or s.aws_endpoint_url))
    sns.configure(url_pattern=s.sns_url_pattern, ca_bundle=s.sns_ca_bundle)
    certificate_fonts.configure(s.certificate_font_dirs or None)
