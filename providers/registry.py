"""One registry for every pluggable backend: senders, offload transports, storage.

A backend is a class registered under a *kind* and a name::

    @register_backend(SENDER)          # or providers.base.register, the same thing
    class SendgridProvider(Provider):
        name = "sendgrid"
        label = "SendGrid"             # what the connection test calls it
        settings = SENDGRID_SETTINGS   # the settings it reads, declared once

A backend declares the settings it reads once, as a ``SettingsGroup`` of
``Setting``s (key, label, form kind, help, choices, validation; a ``secret``
kind is write-only and encrypted). The service derives from the groups of
the registered backends: the settings form's sections, the keys
``company configure`` accepts and how it validates them, which values are
secret (encrypted at rest, redacted from check results), and the labels of
the connection test. Several backends may share one group (SES, SQS and S3
read the same AWS settings).

The built-in backends register themselves when their module is imported;
``load_builtin`` imports the modules named in ``BUILTIN``, so adding a
provider is its module plus its line there. Like the rest of ``providers``,
this imports nothing of the service.
"""
from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from providers import guard

SENDER = "sender"
TRANSPORT = "transport"
STORAGE = "storage"
KINDS = (SENDER, TRANSPORT, STORAGE)

#: the modules of the built-in backends, in the order their settings appear on the form
BUILTIN = (
    "providers.ses",
    "providers.cloudflare",
    "providers.smtp",
    "providers.sendgrid",
    "providers.mailgun",
    "providers.offload",
    "providers.storage",
)

#: form kinds a setting may have
FIELD_KINDS = ("text", "email", "number", "url", "select", "checkbox", "secret")
_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


# --------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class Setting:
    """One setting a backend reads from its config dict.

    ``parse`` turns the raw (stripped, non-blank) text into the stored value
    and raises ``ValueError`` with a reason; without it the ``kind`` decides
    (``select``: one of ``choices``; ``checkbox``: 0/1; ``url``: http(s);
    ``email``: an address). ``required``: a blank value is refused.
    """

    key: str
    label: str
    kind: str = "text"
    help: str = ""
    choices: tuple[str, ...] = ()
    placeholder: str = ""
    parse: Callable[[str], Any] | None = None
    required: bool = False

    def __post_init__(self) -> None:
        if self.kind not in FIELD_KINDS:
            raise ValueError(f"setting {self.key}: unknown kind {self.kind!r}")

    @property
    def secret(self) -> bool:
        """Secrets are write-only on the form, encrypted at rest and redacted from results."""
        return self.kind == "secret"

    def clean(self, raw: Any) -> Any:
        """The stored value of ``raw`` (``None`` when blank); ``ValueError("<key>: <reason>")``."""
        if isinstance(raw, str):
            raw = raw.strip()
        if raw in ("", None):
            return None
        try:
            return self._parse(raw)
        except ValueError as exc:
            raise ValueError(f"{self.key}: {exc}") from None

    def _parse(self, raw: Any) -> Any:
        if self.parse is not None:
            return self.parse(raw)
        if self.kind == "select" and raw not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}")
        if self.kind == "checkbox":
            return boolean(raw)
        if self.kind == "url":
            return http_url(raw)
        if self.kind == "email" and not _EMAIL.match(str(raw)):
            raise ValueError("not a valid email address")
        return raw


@dataclass(frozen=True)
class SettingsGroup:
    """The settings of one backend (or of several that share them): one form section."""

    name: str
    title: str
    intro: str
    fields: tuple[Setting, ...] = field(default_factory=tuple)


# parsers for ``Setting.parse``; each raises ValueError with the reason only


def boolean(raw: Any) -> bool:
    if str(raw).lower() not in ("0", "1", "true", "false"):
        raise ValueError("must be 0 or 1")
    return str(raw).lower() in ("1", "true")


def http_url(raw: Any) -> str:
    if not str(raw).startswith(("http://", "https://")):
        raise ValueError("expected an http(s) URL")
    return str(raw)


def whole_number(low: int, high: int | None = None) -> Callable[[Any], int]:
    """A parser for whole numbers in ``low..high``."""
    def parse(raw: Any) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("expected a whole number") from None
        if value < low or (high is not None and value > high):
            raise ValueError("out of range")
        return value
    return parse


# --------------------------------------------------------------------------- the registry

_backends: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}
_groups: dict[str, SettingsGroup] = {}
#: operator-only API base URLs per backend name (tests, private relays); never a tenant setting
_api_bases: dict[str, str] = {}


class UnknownBackend(LookupError):
    """No backend of that kind is registered under that name."""


def add(kind: str, name: str, cls: type) -> type:
    """Register ``cls`` as the ``kind`` backend ``name``, with its settings group and API hosts."""
    if kind not in KINDS:
        raise ValueError(f"unknown backend kind {kind!r}")
    group: SettingsGroup | None = getattr(cls, "settings", None)
    if group is not None:
        known = _groups.setdefault(group.name, group)
        if known is not group:
            raise ValueError(f"two settings groups are named {group.name!r}")
    hosts = getattr(cls, "api_hosts", ())
    if hosts:  # the fixed API hosts of a cloud the backend calls: what the guard allows for it
        guard.CLOUD_SUFFIXES.setdefault(name, tuple(hosts))
    _backends[kind][name] = cls
    return cls


def register_backend(kind: str) -> Callable[[type], type]:
    """Class decorator: register the class under ``kind`` and its ``name``."""
    def decorator(cls: type) -> type:
        return add(kind, cls.name, cls)
    return decorator


def load_builtin() -> None:
    """Import the built-in backend modules (each registers itself on import).

    The imports are by name because those modules import this one to
    register; a module whose optional dependency is missing is skipped.
    """
    for module in BUILTIN:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def backend(kind: str, name: str) -> type:
    """The class registered as ``kind`` ``name``; ``UnknownBackend`` if none is."""
    load_builtin()
    try:
        return _backends[kind][name]
    except KeyError:
        raise UnknownBackend(f"no {kind} backend named {name!r}") from None


def find(kind: str, name: str) -> type | None:
    """The class registered as ``kind`` ``name``, or ``None``."""
    load_builtin()
    return _backends[kind].get(name)


def create(kind: str, name: str, config: Any) -> Any:
    """Build the ``kind`` backend ``name`` from ``config``."""
    return backend(kind, name)(config)


def names(kind: str) -> tuple[str, ...]:
    """The names registered under ``kind``, in registration order."""
    load_builtin()
    return tuple(_backends[kind])


def settings_groups() -> tuple[SettingsGroup, ...]:
    """Every registered backend's settings group, in registration order."""
    load_builtin()
    return tuple(_groups.values())


def settings() -> dict[str, Setting]:
    """Every setting a registered backend reads, by key."""
    return {s.key: s for group in settings_groups() for s in group.fields}


def label(kind: str, name: str) -> str:
    """What to call the backend (``label``, else its name)."""
    cls = find(kind, name)
    return (getattr(cls, "label", "") or name) if cls is not None else name


# --------------------------------------------------------------------------- fixed API endpoints


def configure(*, api_bases: dict[str, str] | None = None) -> None:
    """Set the operator's API base overrides (``{"sendgrid": "http://127.0.0.1:8025"}``)."""
    _api_bases.clear()
    for name, url in (api_bases or {}).items():
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"API base for {name}: expected an http(s) URL")
        _api_bases[name] = url.rstrip("/")


def api_base(name: str, default: str) -> str:
    """The API base URL backend ``name`` calls: the operator's override, else ``default``."""
    return _api_bases.get(name) or default.rstrip("/")
