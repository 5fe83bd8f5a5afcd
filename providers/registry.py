"""One registry for every pluggable backend: senders, offload transports, storage.

A backend is a class registered under a *kind* and a name, unique within its
kind (senders ``ses``, ``cloudflare``, ``smtp``, ``sendgrid``, ``mailgun``;
transports ``sqs``, ``cloudflare_queue``, ``https``; storage ``s3``, ``r2``,
``worker_r2``, ``local``); ``aliases`` lists older names it still answers to
(``aws``, the name SES and SQS once shared)::

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
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, Protocol, TypeVar, overload
from urllib.parse import urlsplit

from providers import guard

if TYPE_CHECKING:  # the kinds' base classes import this module to register
    from providers.base import Provider
    from providers.offload import OffloadTransport
    from providers.storage import Storage

SENDER: Final = "sender"
TRANSPORT: Final = "transport"
STORAGE: Final = "storage"
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
FIELD_KINDS = ("text", "email", "number", "url", "select", "checkbox", "secret", "textarea")
_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


# --------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class Setting:
    """One setting a backend reads from its config dict.

    ``parse`` turns the raw (stripped, non-blank) text into the stored value
    and raises ``ValueError`` with a reason; without it the ``kind`` decides
    (``select``: one of ``choices``; ``checkbox``: 0/1; ``url``: http(s);
    ``email``: an address). ``required``: a blank value is refused.
    ``cloud``: for an endpoint URL, the cloud whose hosts it must name in
    production (``providers.guard``), checked when the setting is saved.
    """

    key: str
    label: str
    kind: str = "text"
    help: str = ""
    choices: tuple[str, ...] = ()
    placeholder: str = ""
    parse: Callable[[str], Any] | None = None
    required: bool = False
    cloud: str = ""
    #: what the form shows for each of ``choices`` (default: the choice itself)
    choice_labels: tuple[str, ...] = ()
    #: the value a company that never set it has
    default: Any = None

    def __post_init__(self) -> None:
        if self.kind not in FIELD_KINDS:
            raise ValueError(f"setting {self.key}: unknown kind {self.kind!r}")
        if self.choice_labels and len(self.choice_labels) != len(self.choices):
            raise ValueError(f"setting {self.key}: one label per choice")

    def choice_label(self, choice: str) -> str:
        """What the form shows for ``choice``."""
        labels = dict(zip(self.choices, self.choice_labels, strict=True)) if self.choice_labels else {}
        return labels.get(choice, choice)

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
        if self.kind == "email" and not plausible_email(str(raw)):
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


def plausible_email(raw: Any) -> bool:
    """True for a string that looks like one address (what ``email`` settings accept)."""
    return isinstance(raw, str) and len(raw) <= 254 and bool(_EMAIL.match(raw))


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


class Backend(Protocol):
    """What every kind's class declares (``Provider``, ``OffloadTransport``, ``Storage``)."""

    label: ClassVar[str]
    cloud: ClassVar[str]
    settings: ClassVar[SettingsGroup | None]

    def __init__(self, config: Any) -> None: ...

    @classmethod
    def configured(cls, config: dict) -> bool: ...


_B = TypeVar("_B", bound=type)

#: kind → name → class. A kind's classes come only through its base's typed register function
#: (``providers.base.register``, ``offload.register_transport``, ``storage.register_storage``),
#: so the overloads of ``backend`` and ``find`` say which class a kind holds.
_backends: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
#: older names of backends, per kind: alias → name
_aliases: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
_groups: dict[str, SettingsGroup] = {}
#: operator-only API base URLs per backend name (tests, private relays); never a tenant setting
_api_bases: dict[str, str] = {}


class UnknownBackend(LookupError):
    """No backend of that kind is registered under that name."""


def add(kind: str, name: str, cls: _B) -> _B:
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
    for alias in getattr(cls, "aliases", ()):
        known_as = _aliases[kind].setdefault(alias, name)
        if known_as != name or alias in _backends[kind]:
            raise ValueError(f"{kind} alias {alias!r} is taken")
    _backends[kind][name] = cls
    return cls


def register_backend(kind: str) -> Callable[[_B], _B]:
    """Class decorator: register the class under ``kind`` and its ``name``."""
    def decorator(cls: _B) -> _B:
        return add(kind, getattr(cls, "name"), cls)  # noqa: B009 - any class with a name
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


def canonical(kind: str, name: str) -> str:
    """The registered name of ``name``: itself, or the backend it is an alias of."""
    load_builtin()
    return _aliases[kind].get(name, name)


@overload
def backend(kind: Literal["sender"], name: str) -> type[Provider]: ...
@overload
def backend(kind: Literal["transport"], name: str) -> type[OffloadTransport]: ...
@overload
def backend(kind: Literal["storage"], name: str) -> type[Storage]: ...
@overload
def backend(kind: str, name: str) -> type[Backend]: ...
def backend(kind: str, name: str) -> Any:
    """The class registered as ``kind`` ``name`` (or an alias of it); ``UnknownBackend`` if none is."""
    try:
        return _backends[kind][canonical(kind, name)]
    except KeyError:
        raise UnknownBackend(f"no {kind} backend named {name!r}") from None


@overload
def find(kind: Literal["sender"], name: str) -> type[Provider] | None: ...
@overload
def find(kind: Literal["transport"], name: str) -> type[OffloadTransport] | None: ...
@overload
def find(kind: Literal["storage"], name: str) -> type[Storage] | None: ...
@overload
def find(kind: str, name: str) -> type[Backend] | None: ...
def find(kind: str, name: str) -> Any:
    """The class registered as ``kind`` ``name`` (or an alias of it), or ``None``."""
    return _backends[kind].get(canonical(kind, name))


def create(kind: str, name: str, config: Any) -> Any:
    """Build the ``kind`` backend ``name`` from ``config``."""
    return backend(kind, name)(config)


def names(kind: str) -> tuple[str, ...]:
    """The names registered under ``kind``, in registration order."""
    load_builtin()
    return tuple(_backends[kind])


def aliases(kind: str) -> dict[str, str]:
    """The older names backends of ``kind`` still answer to: alias → name."""
    load_builtin()
    return dict(_aliases[kind])


def settings_groups() -> tuple[SettingsGroup, ...]:
    """Every registered backend's settings group, in registration order."""
    load_builtin()
    return tuple(_groups.values())


def settings() -> dict[str, Setting]:
    """Every setting a registered backend reads, by key."""
    return {s.key: s for group in settings_groups() for s in group.fields}


def defaults() -> dict[str, Any]:
    """The declared default of every setting that has one, by key."""
    return {key: s.default for key, s in settings().items() if s.default is not None}


def label(kind: str, name: str) -> str:
    """What to call the backend (``label``, else its name)."""
    cls = find(kind, name)
    return (getattr(cls, "label", "") or name) if cls is not None else name


def cloud(kind: str, name: str) -> str:
    """The cloud (``providers.guard``) the backend's endpoints belong to: its ``cloud``, else its name."""
    cls = find(kind, name)
    return (getattr(cls, "cloud", "") or name) if cls is not None else name


def configured(kind: str, name: str, config: dict) -> bool:
    """Whether ``config`` gives backend ``name`` what it needs to work (its ``configured``)."""
    cls = find(kind, name)
    return cls is not None and bool(cls.configured(config))


def offload_transport(config: dict) -> str | None:
    """The transport a company's offload batches take: one serving every cloud (``cloud``
    blank: HTTPS) when its ``queue_setting`` is set, else the queue of its sender's cloud;
    ``None`` when that cloud has no queue (no cloud worker sends for that sender)."""
    load_builtin()
    sender = find(SENDER, str(config.get("provider") or ""))
    if sender is None:
        return None
    home = cloud(SENDER, sender.name)
    transports = _transports()
    queues = [name for name, cls in transports.items() if cls.cloud == home]
    if not queues:
        return None
    chosen = [name for name, cls in transports.items()
              if not cls.cloud and cls.queue_setting and config.get(cls.queue_setting)]
    return (chosen or queues)[0]


def fallback_sender() -> str:
    """The sender a batch falls back to when its company's provider is unavailable, and the
    one a company without a provider has (SMTP: the sender marked ``fallback``)."""
    return next(cls.name for cls in _senders() if getattr(cls, "fallback", False))


def call_timeout() -> float:
    """The longest read timeout of one sender call (each declares its ``timeout_s``)."""
    return max(float(cls.timeout_s) for cls in _senders())


def webhook(path: str) -> type[Provider] | None:
    """The sender whose bounce webhook is served at ``/callbacks/v1/bounces/<path>/...``, or ``None``."""
    for cls in _senders():
        if cls.webhook_max_bytes and (cls.webhook_path or cls.name) == path:
            return cls
    return None


def endpoint_clouds() -> dict[str, str]:
    """The endpoint URL settings that must name a host of a cloud, and that cloud, by key."""
    return {key: s.cloud for key, s in settings().items() if s.cloud}


def choose_storage(config: dict, *, last_resort: bool = False) -> str | None:
    """The storage a company's settings ask for: of those ``configured``, one of its sender's
    cloud first (the highest ``preference`` of them first), else in registration order; a
    ``last_resort`` one (this machine's disk) only when none is and ``last_resort`` allows it."""
    load_builtin()
    home = cloud(SENDER, str(config.get("provider") or ""))
    storages = _storages()
    asked = [(name, cls) for name, cls in storages.items() if not cls.last_resort and cls.configured(config)]

    def rank(item: tuple[str, type[Storage]]) -> tuple[bool, int]:
        mine = cloud(STORAGE, item[0]) == home
        return (not mine, -item[1].preference if mine else 0)
    asked.sort(key=rank)
    if asked:
        return asked[0][0]
    if last_resort:
        return next((name for name, cls in storages.items() if cls.last_resort), None)
    return None


def _senders() -> tuple[type[Provider], ...]:
    load_builtin()
    return tuple(_backends[SENDER].values())


def _transports() -> dict[str, type[OffloadTransport]]:
    load_builtin()
    return dict(_backends[TRANSPORT])


def _storages() -> dict[str, type[Storage]]:
    load_builtin()
    return dict(_backends[STORAGE])


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
