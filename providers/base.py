"""The provider interface, its error hierarchy and its registration (``providers.registry``).

Modelled on listmonk's ``Messenger``: a provider is built from a plain
config dict, sends a list of already-rendered messages and reports one
``Result`` per message. Whole-call failures are raised as a
``ProviderError`` subclass that tells the caller what to do next:

- ``RetryableError``: try again later (timeouts, 5xx).
  - ``ConnectionFailure``: the provider could not be reached at all; counts
    towards the circuit breaker and lets the batch take the SMTP fallback.
  - ``ThrottledError``: slow down; does not burn an attempt.
- ``QuotaExceededError``: the account's sending quota is spent; pause the job.
- ``PermanentError``: retrying cannot help (bad sender, bad credentials).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar

from providers import guard, registry

_NOT_CODE = re.compile(r"[^A-Za-z0-9_.-]")
#: the longest remote error code kept
CODE_LIMIT = 64


def safe_code(code) -> str:
    """A remote error code (AWS's ``Code``, a status word) reduced to letters, digits, ``_.-`` and
    ``CODE_LIMIT`` characters: a tenant-named endpoint may answer any text as its "code"."""
    return _NOT_CODE.sub("", str(code or ""))[:CODE_LIMIT] or "Unknown"


_NOT_SAFE = re.compile(r"[^A-Za-z0-9 .,:;_()/@+=#'-]+")
#: the longest remote text kept (a bounce's diagnostic)
TEXT_LIMIT = 200


def safe_text(text, limit: int = TEXT_LIMIT) -> str:
    """Remote text a tenant may see (a bounce report's diagnostic), reduced to letters, digits, spaces
    and plain punctuation (no markup, quotes or control characters) and ``limit`` characters."""
    return " ".join(_NOT_SAFE.sub(" ", str(text or "")).split())[:limit]


class ProviderError(Exception):
    """Base of every error a provider raises; ``reason`` is safe to store and show. ``field``: the
    setting (its key) a person should look at to fix it, when the provider knows."""

    def __init__(self, reason: str, *, code: str | None = None, field: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.field = field


class RetryableError(ProviderError):
    """A transient failure: the same call may succeed later."""


class ConnectionFailure(RetryableError):
    """The provider could not be reached (DNS, refused, TLS, connect timeout)."""


class ThrottledError(RetryableError):
    """The provider asked us to slow down; ``retry_after`` in seconds when known."""

    def __init__(self, reason: str, *, code: str | None = None, retry_after: float | None = None):
        super().__init__(reason, code=code)
        self.retry_after = retry_after


class QuotaExceededError(ProviderError):
    """The account's daily (or other) sending quota is exhausted."""


class PermanentError(ProviderError):
    """Retrying the same call cannot succeed."""


class NotTheProvider(PermanentError):
    """A connection test got an answer, but not the one the provider gives (an error page, a
    body of another shape): whatever answered there is not the provider the settings name."""


def not_the_provider(label: str, field: str, what: str) -> NotTheProvider:
    """The error of a connection test whose answer was not ``label``'s (``what`` it lacked)."""
    return NotTheProvider(f"the endpoint answered, but not as {label} does ({what}): check the setting",
                          code="not_the_provider", field=field)


def for_field(error: ProviderError, field: str) -> ProviderError:
    """``error`` naming ``field`` as the setting to fix, unless it names one already."""
    if error.field is None:
        error.field = field
    return error


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes
    content_type: str = "application/octet-stream"


@dataclass
class Message:
    """One rendered email for one recipient.

    ``key`` is the caller's handle (the recipient id); it comes back on the
    ``Result``. ``headers`` are extra headers (e.g. List-Unsubscribe); values
    have already been checked for CR/LF/NUL by the renderer, and providers
    must still refuse such values rather than emit them.

    ``raw`` is a whole MIME message as the LMS wrote it (SMTP submission):
    the provider sends those bytes as they are, ``headers`` added on top
    (``providers.mime.outgoing``), to ``to`` as the envelope recipient, from
    ``envelope_from`` where the provider has an envelope; ``subject`` is then
    only the decoded Subject (for logs and checks), ``text``, ``html`` and
    ``attachments`` are unused. A provider whose API takes parts rebuilds them
    from the MIME (``providers.mime.parts``).
    """

    key: int
    to: str
    subject: str
    text: str | None = None
    html: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    attachments: list[Attachment] = field(default_factory=list)
    raw: bytes | None = None
    envelope_from: str | None = None


@dataclass(frozen=True)
class BounceReport:
    """One bounce or complaint a provider's webhook reported.

    ``kind`` is ``hard``, ``soft`` or ``complaint``; ``event_id`` is the
    provider's id of the event (what makes a redelivery apply once).
    """

    kind: str
    email: str
    message_id: str | None
    detail: str
    event_id: str


class WebhookRefused(Exception):
    """A provider webhook failed verification (signature, key, timestamp); nothing was parsed."""


class WebhookUnavailable(Exception):
    """A webhook could not be verified now (say, its signing certificate could not be
    fetched): the sender should deliver it again later."""


@dataclass(frozen=True)
class WebhookReply:
    """What a verified webhook request asks of the service, when it is more than reports.

    ``answer``: more fields of the JSON reply (an SNS subscription handshake:
    ``{"confirmed": True}``); ``audit``: an event for the audit log, as
    ``(action, details)``. ``delivery_id``: what makes this delivery one of a
    kind (a signature's nonce, a message id), which the service keeps in a replay
    set shared by all its processes for ``delivery_ttl_s`` (longer than the
    signature's tolerance): the same delivery again has no second effect.
    Without one the service keys the delivery by its body.
    """

    reports: list[BounceReport] = field(default_factory=list)
    answer: dict = field(default_factory=dict)
    audit: tuple[str, dict] | None = None
    delivery_id: str | None = None
    delivery_ttl_s: int = 86400


class ResultStatus(StrEnum):
    """A ``Result``'s status: what the provider did with one message.

    The providers' own vocabulary (this package imports nothing of ours); the
    caller maps it onto its recipient statuses.
    """

    SENT = "sent"
    #: permanent, with ``error``
    FAILED = "failed"
    #: a hard bounce at send time: the mailbox does not exist; the address is suppressed
    BOUNCED = "bounced"
    #: transient for this message only, with ``error``
    RETRY = "retry"


@dataclass
class Result:
    """The outcome for one message.

    ``status`` is a ``ResultStatus``: ``sent``, ``failed`` (permanent, with
    ``error``), ``bounced`` (a hard bounce at send time: the mailbox does not
    exist; the address is suppressed) or ``retry`` (transient for this message
    only, with ``error``).
    """

    key: int
    status: ResultStatus
    message_id: str | None = None
    error: str | None = None


class Provider:
    """Base class: subclasses set ``name`` and implement ``send``.

    ``label`` names the provider in the connection test; ``settings`` is the
    group of settings it reads (``providers.registry``); ``cloud`` is the
    endpoint guard's name for the hosts its endpoints live on (default: its
    name, under which its ``api_hosts`` are allowed).
    """

    name: ClassVar[str] = ""
    #: older names it still answers to (``registry.canonical``)
    aliases: ClassVar[tuple[str, ...]] = ()
    label: ClassVar[str] = ""
    settings: ClassVar[registry.SettingsGroup | None] = None
    cloud: ClassVar[str] = ""
    #: the read timeout of one call, in seconds (``config["timeout"]`` overrides it)
    timeout_s: ClassVar[float] = 15.0
    #: a bounce webhook's body limit; 0 when the provider has no webhook
    webhook_max_bytes: ClassVar[int] = 0
    #: the webhook's path segment, ``/callbacks/v1/bounces/<path>/<company id>`` (default: ``name``)
    webhook_path: ClassVar[str] = ""
    #: messages per provider call the caller should group (SES bulk: 50)
    chunk_size: ClassVar[int] = 50
    #: the sender batches fall back to when a company's own is unavailable (one only: SMTP)
    fallback: ClassVar[bool] = False

    def __init__(self, config: dict):
        self.config = config

    @classmethod
    def configured(cls, config: dict) -> bool:
        """Whether ``config`` holds what sending needs (the onboarding checklist asks):
        by default every secret and every required setting of its group."""
        fields = cls.settings.fields if cls.settings else ()
        return all(config.get(s.key) for s in fields if s.secret or s.required)

    def send(self, sender: str, messages: list[Message]) -> list[Result]:
        """Send ``messages`` from ``sender``; one ``Result`` per message, same order."""
        raise NotImplementedError

    def test_connection(self) -> dict:
        """Check credentials and reachability; return facts to show (quota, identity)."""
        raise NotImplementedError

    @classmethod
    def read_webhook(cls, config: dict, headers, body: bytes, now: float) -> list[BounceReport] | WebhookReply:
        """Verify a bounce webhook with ``config``'s key, then parse it.

        ``config`` is the company's settings, with ``callback_secrets`` (the
        secrets its callbacks may be signed with) added. Raises
        ``WebhookRefused`` before parsing when the request is not authentic
        (no key configured, bad signature, stale timestamp),
        ``WebhookUnavailable`` when it cannot be verified now, and
        ``ValueError`` when an authentic body cannot be read. Returns the
        reports, or a ``WebhookReply`` when there is more to it.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release connections; safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def register(cls: type[Provider]) -> type[Provider]:
    """Class decorator: make ``cls`` available under ``cls.name`` (``registry``, kind ``sender``)."""
    return registry.add(registry.SENDER, cls.name, cls)


def get_provider(name: str, config: dict) -> Provider:
    """Build the provider registered as ``name`` from ``config``."""
    try:
        return registry.create(registry.SENDER, name, config)
    except registry.UnknownBackend:
        raise PermanentError(f"unknown provider {name!r}") from None


# -- helpers shared by the built-in providers ---------------------------------

INVALID_HEADER = "invalid_header"
_BREAKING = ("\r", "\n", "\0")


def breaks_header(value: str) -> bool:
    """True when ``value`` holds CR, LF or NUL, i.e. could start a new header line."""
    return any(ch in value for ch in _BREAKING)


def valid_header_name(name: str) -> bool:
    """RFC 5322 field name: printable ASCII (33-126) without a colon."""
    return bool(name) and all(33 <= ord(ch) <= 126 and ch != ":" for ch in name)


def header_problem(sender: str, message: Message) -> str | None:
    """Return ``INVALID_HEADER`` when any header-bound text of ``message`` is unsafe.

    Checks the sender, recipient, subject, extra header names and values and
    attachment file names; a provider refuses such a message (failed result)
    instead of sending it.
    """
    texts = [sender, message.to, message.subject, *message.headers.values(),
             *(a.filename for a in message.attachments)]
    if any(breaks_header(text) for text in texts):
        return INVALID_HEADER
    if not all(valid_header_name(name) for name in message.headers):
        return INVALID_HEADER
    return None


def results_after_error(exc: ProviderError, done: list[Result], rest: list[Message]) -> list[Result]:
    """Settle a call that ``exc`` interrupted part-way.

    When nothing was sent yet, ``exc`` is re-raised so the caller sees the
    whole-call failure (throttle, quota, connection). Once something was
    sent, raising would lose those results, so ``rest`` is marked ``retry``
    with the error's reason instead; the next call meets the error again.
    """
    if not any(result.status == ResultStatus.SENT for result in done):
        raise exc
    return [Result(message.key, ResultStatus.RETRY, error=exc.reason) for message in rest]


def send_each(messages: list[Message], send_one) -> list[Result]:
    """Send ``messages`` one call each with ``send_one(message) -> Result``; a call
    that raises settles the rest through ``results_after_error``."""
    results: list[Result] = []
    for position, message in enumerate(messages):
        try:
            results.append(send_one(message))
        except ProviderError as exc:
            return results + results_after_error(exc, results, messages[position:])
    return results


def send_grouped(sender: str, messages: list[Message], plan, send_group) -> list[Result]:
    """Send ``messages`` in the calls ``plan(messages, pending)`` groups them into (lists of
    indices), each with ``send_group(sender, group) -> [Result]``. A message whose headers
    cannot be sent fails alone; a call that raises settles it and every later call's
    messages through ``results_after_error``. One Result per message, in order."""
    outcome: dict[int, Result] = {}
    pending = []
    for index, message in enumerate(messages):
        problem = header_problem(sender, message)
        if problem:
            outcome[index] = Result(message.key, ResultStatus.FAILED, error=problem)
        else:
            pending.append(index)
    units = plan(messages, pending)
    for position, indices in enumerate(units):
        try:
            results = send_group(sender, [messages[i] for i in indices])
        except ProviderError as exc:
            rest = [i for later in units[position:] for i in later]
            settled = results_after_error(exc, list(outcome.values()), [messages[i] for i in rest])
            outcome.update(zip(rest, settled, strict=True))
            break
        outcome.update(zip(indices, results, strict=True))
    return [outcome[i] for i in range(len(messages))]


# -- the endpoint guard, as providers use it --------------------------------------

#: config key set only by the service itself on configs built from operator settings
#: (OFFLOAD_FALLBACK_SMTP, AWS_ENDPOINT_URL_S3): their endpoints are the operator's, not a tenant's
OPERATOR_ENDPOINT = "_operator_endpoint"


class EndpointRefused(PermanentError):
    """The endpoint guard refused a host a tenant named; the reason names the rule."""


def guarded_url(config: dict, url: str | None, cloud: str) -> str | None:
    """``url`` once ``guard.check_url`` accepts it (``None`` stays ``None``)."""
    if not url or config.get(OPERATOR_ENDPOINT):
        return url or None
    try:
        return guard.check_url(url, cloud)
    except guard.EndpointRefused as exc:
        raise EndpointRefused(f"endpoint refused ({exc.rule}): {exc}", code="endpoint_refused") from None
