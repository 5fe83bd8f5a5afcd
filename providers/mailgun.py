"""Mailgun (Messages API v3) as a direct-send provider.

``POST /v3/<domain>/messages`` (HTTP Basic ``api:<key>``, a form body) with
batch sending: one ``to`` per recipient, up to 1,000, and
``recipient-variables`` giving each recipient their own finished subject,
text and HTML, which the message's parts reference as
``%recipient.<name>%``. With recipient variables Mailgun sends every
recipient a message of their own. The variable names carry a random nonce
per call, so text in a recipient's content is never read as a reference.
Messages whose extra headers differ (a per-recipient ``List-Unsubscribe``)
go in different calls, as do messages with attachments (one call each). A
message taken by SMTP submission (``Message.raw``) goes whole, one call each,
to ``POST /v3/<domain>/messages.mime`` (the MIME as the ``message`` file).

Answers: ``200`` with ``{"id": "<...>", "message": "Queued..."}``; the id
(without brackets, as webhooks report it) is recorded for every recipient
of the call. ``400`` refuses the call: alone, the message fails; in a
batch, each message is sent on its own to find the one refused. ``401``/
``403`` is a refused key, ``404`` an unknown domain, ``429`` throttling,
``5xx`` retryable. Region ``us`` is ``api.mailgun.net``, ``eu``
``api.eu.mailgun.net``.

Webhooks are verified with the account's HTTP webhook signing key:
``hex(HMAC-SHA256(key, timestamp + token)) == signature``, the three in the
body's ``signature`` object; the timestamp must be recent, and the token is
the delivery's id in the service's replay set (shared by all its processes), so
a signature is accepted once.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
from email.utils import parseaddr
from typing import Any

from providers import mime, registry
from providers.base import (
    BounceReport,
    Message,
    PermanentError,
    Provider,
    ProviderError,
    Result,
    ResultStatus,
    WebhookRefused,
    WebhookReply,
    for_field,
    not_the_provider,
    register,
    results_after_error,
    send_grouped,
)
from providers.http_api import ApiSession, call_error, json_body
from providers.registry import Setting, SettingsGroup

log = logging.getLogger(__name__)

API_BASES = {"us": "https://api.mailgun.net", "eu": "https://api.eu.mailgun.net"}
REGIONS = tuple(API_BASES)
MAX_RECIPIENTS = 1000
#: recipient-variables per call, in bytes (Mailgun's message limit is 25 MB)
MAX_VARIABLES_BYTES = 10 * 1024 * 1024
WEBHOOK_TOLERANCE_S = 300
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
#: headers Mailgun writes itself
_RESERVED = frozenset({"from", "to", "cc", "bcc", "subject", "date", "message-id", "mime-version",
                       "content-type", "content-transfer-encoding"})


def _domain(raw: str) -> str:
    value = raw.strip().lower()
    if not _DOMAIN.match(value):
        raise ValueError("expected a domain name such as mg.example.com")
    return value


MAILGUN_SETTINGS = SettingsGroup(
    "mailgun", "Mailgun", "A sending API key of the Mailgun account, the sending domain and its region; the "
    "sender address must be on that domain.",
    (
        Setting("mailgun_api_key", "API key", "secret"),
        Setting("mailgun_domain", "Sending domain", placeholder="mg.example.com", parse=_domain),
        Setting("mailgun_region", "Region", "select", choices=REGIONS, help="where the domain was created"),
        Setting("mailgun_webhook_signing_key", "Webhook signing key", "secret",
                help="Sending → Webhooks → HTTP webhook signing key; point the failed and complained webhooks "
                     "at /callbacks/v1/bounces/mailgun/<company id>"),
    ))


# -- webhooks ------------------------------------------------------------------------

def signature_of(signing_key: str, timestamp: str, token: str) -> str:
    """Mailgun's webhook signature: hex HMAC-SHA256 of ``timestamp + token``."""
    return hmac.new(signing_key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()


def verify_signature(signing_key: str, signature: Any, now: float, tolerance: int = WEBHOOK_TOLERANCE_S) -> str:
    """Check a webhook's ``signature`` object and return its token; ``WebhookRefused`` when it
    is not authentic."""
    if not signing_key:
        raise WebhookRefused("no signing key is configured")
    if not isinstance(signature, dict):
        raise WebhookRefused("signature missing")
    timestamp, token, given = (str(signature.get(k) or "") for k in ("timestamp", "token", "signature"))
    if not timestamp.isdigit() or not token or not given:
        raise WebhookRefused("signature incomplete")
    if abs(now - int(timestamp)) > tolerance:
        raise WebhookRefused("timestamp outside the tolerance")
    if not hmac.compare_digest(signature_of(signing_key, timestamp, token), given.lower()):
        raise WebhookRefused("signature does not match")
    return token


def bounce_reports(event: Any) -> list[BounceReport]:
    """The bounce or complaint of one webhook's ``event-data`` (other events: none).

    ``failed`` with severity ``permanent`` is a hard bounce, ``temporary`` a
    soft one; ``complained`` is a complaint.
    """
    if not isinstance(event, dict):
        raise ValueError("event-data must be an object")
    name = event.get("event")
    if name == "failed":
        kind = "hard" if event.get("severity") == "permanent" else "soft"
    elif name == "complained":
        kind = "complaint"
    else:
        return []
    email = event.get("recipient")
    if not isinstance(email, str):
        raise ValueError("event-data.recipient is missing")
    message = event["message"] if isinstance(event.get("message"), dict) else {}
    headers = message["headers"] if isinstance(message.get("headers"), dict) else {}
    message_id = headers.get("message-id") if isinstance(headers.get("message-id"), str) else None
    status = event["delivery-status"] if isinstance(event.get("delivery-status"), dict) else {}
    detail = f"{name}: {event.get('reason') or status.get('code') or kind}"[:255]
    event_id = str(event.get("id") or f"{message_id}:{name}:{email}")
    return [BounceReport(kind, email, message_id and message_id.strip("<>"), detail, event_id)]


# -- sending -------------------------------------------------------------------------

def _headers(message: Message) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in message.headers.items() if k.lower() not in _RESERVED))


def _parts(message: Message) -> tuple[bool, bool]:
    """Which body parts a message has: (text, html); at least one."""
    return (message.text is not None or message.html is None, message.html is not None)


def _message_id(response: Any) -> str | None:
    body = json_body(response)
    value = body.get("id") if isinstance(body, dict) else None
    return value.strip().strip("<>") if isinstance(value, str) and value.strip() else None


@register
class MailgunProvider(Provider):
    """Send through Mailgun's Messages API, batches of up to 1,000 recipients.

    Config keys: ``mailgun_api_key``, ``mailgun_domain``, ``mailgun_region``
    (``us`` or ``eu``, default ``us``), optionally ``timeout`` (seconds).
    """

    name = "mailgun"
    label = "Mailgun"
    settings = MAILGUN_SETTINGS
    api_hosts = ("mailgun.net",)
    chunk_size = MAX_RECIPIENTS
    webhook_max_bytes = 256 * 1024

    def __init__(self, config: dict):
        super().__init__(config)
        self.domain = str(config.get("mailgun_domain") or "").lower()
        self.region = str(config.get("mailgun_region") or "us").lower()
        base = registry.api_base(f"{self.name}-{self.region}", registry.api_base(
            self.name, API_BASES.get(self.region, API_BASES["us"])))
        self.api = ApiSession(self.label, self.name, base, timeout=float(config.get("timeout") or self.timeout_s),
                              auth=("api", config.get("mailgun_api_key") or ""))

    @classmethod
    def configured(cls, config: dict) -> bool:
        return bool(config.get("mailgun_api_key") and config.get("mailgun_domain"))

    def close(self) -> None:
        self.api.close()

    def _require(self) -> None:
        if not self.config.get("mailgun_api_key"):
            raise PermanentError("mailgun_api_key is not set", code="config")
        if not self.domain:
            raise PermanentError("mailgun_domain is not set", code="config")
        if self.region not in API_BASES:
            raise PermanentError("mailgun_region must be us or eu", code="config")

    def send(self, sender: str, messages: list[Message]) -> list[Result]:
        """Send ``messages``; one Result per message, in order."""
        self._require()
        return send_grouped(sender, messages, self._plan, self._send_unit)

    @staticmethod
    def _plan(messages: list[Message], pending: list[int]) -> list[list[int]]:
        """Calls of messages with the same parts and headers, no address twice, within the limits."""
        units: list[tuple[tuple | None, set[str], list[int], list[int]]] = []
        for index in pending:
            message = messages[index]
            if message.attachments or message.raw is not None:
                units.append((None, set(), [index], [0]))
                continue
            key = (_parts(message), _headers(message))
            address = parseaddr(message.to)[1].lower() or message.to.lower()
            size = len(message.subject.encode()) + len((message.text or "").encode()) + \
                len((message.html or "").encode()) + 64
            for unit_key, addresses, members, total in units:
                if unit_key == key and address not in addresses and len(members) < MAX_RECIPIENTS \
                        and total[0] + size <= MAX_VARIABLES_BYTES:
                    addresses.add(address)
                    members.append(index)
                    total[0] += size
                    break
            else:
                units.append((key, {address}, [index], [size]))
        return [members for _, _, members, _ in units]

    def _form(self, sender: str, group: list[Message]) -> tuple[list[tuple[str, str]], list]:
        """The form fields (and files) of one call."""
        first = group[0]
        fields: list[tuple[str, str]] = [("from", sender)]
        files = []
        has_text, has_html = _parts(first)
        if len(group) == 1:
            fields += [("to", first.to), ("subject", first.subject)]
            if has_text:
                fields.append(("text", first.text or ""))
            if has_html:
                fields.append(("html", first.html or ""))
            files = [("attachment", (a.filename, a.content, a.content_type)) for a in first.attachments]
        else:
            nonce = secrets.token_hex(6)
            s, t, h = f"s{nonce}", f"t{nonce}", f"h{nonce}"
            variables = {}
            for message in group:
                fields.append(("to", message.to))
                entry = {s: message.subject}
                if has_text:
                    entry[t] = message.text or ""
                if has_html:
                    entry[h] = message.html or ""
                variables[parseaddr(message.to)[1] or message.to] = entry
            fields.append(("subject", f"%recipient.{s}%"))
            if has_text:
                fields.append(("text", f"%recipient.{t}%"))
            if has_html:
                fields.append(("html", f"%recipient.{h}%"))
            fields.append(("recipient-variables", json.dumps(variables, ensure_ascii=False)))
        fields += [(f"h:{name}", value) for name, value in _headers(first)]
        return fields, files

    def _post(self, sender: str, group: list[Message]) -> Any:
        """One call: a urlencoded form, multipart when there are attachments; the LMS's own MIME
        (``Message.raw``) goes to ``messages.mime`` as it is, with ``to`` its envelope recipient."""
        if group[0].raw is not None:
            data = mime.outgoing(group[0].raw, group[0].headers)
            return self.api.request("POST", f"/v3/{self.domain}/messages.mime", data=[("to", group[0].to)],
                                    files=[("message", ("message.mime", data, "message/rfc822"))])
        fields, files = self._form(sender, group)
        return self.api.request("POST", f"/v3/{self.domain}/messages", data=fields, files=files or None)

    def _send_unit(self, sender: str, group: list[Message]) -> list[Result]:
        response = self._post(sender, group)
        error = call_error(self.label, response)
        if error is None and response.status_code == 404:
            error = PermanentError(f"Mailgun HTTP 404: no domain {self.domain} on this account", code="404")
        if error is not None:
            log.warning("Mailgun send: %s", error.reason)
            raise error
        if response.status_code == 200:
            message_id = _message_id(response)
            return [Result(m.key, ResultStatus.SENT, message_id=message_id) for m in group]
        if len(group) > 1 and response.status_code == 400:
            # which recipient was refused is not said: send each on its own
            results: list[Result] = []
            for position, message in enumerate(group):
                try:
                    results += self._send_unit(sender, [message])
                except ProviderError as exc:
                    return results + results_after_error(exc, results, group[position:])
            return results
        reason = "Mailgun 413: message too large" if response.status_code == 413 else \
            f"Mailgun HTTP {response.status_code}: message refused"
        return [Result(m.key, ResultStatus.FAILED, error=reason) for m in group]

    # -- checks and webhooks -------------------------------------------------

    def test_connection(self) -> dict:
        """``GET /v3/domains/<domain>``: the key works and the domain's state. Passes only on Mailgun's
        own answer (the domain and its state)."""
        self._require()
        try:
            response = self.api.request("GET", f"/v3/domains/{self.domain}")
        except ProviderError as exc:
            raise for_field(exc, "mailgun_region") from None
        error = call_error(self.label, response)
        if error is None and response.status_code == 404:
            error = PermanentError(f"Mailgun HTTP 404: no domain {self.domain} in the {self.region} region",
                                   code="404")
        if error is None and response.status_code != 200:
            error = PermanentError(f"Mailgun HTTP {response.status_code}: domain check refused",
                                   code=str(response.status_code))
        if error is not None:
            raise for_field(error, "mailgun_domain" if error.code == "404" else "mailgun_api_key")
        body = json_body(response)
        domain = body.get("domain") if isinstance(body, dict) else None
        if not isinstance(domain, dict) or not isinstance(domain.get("state"), str):
            raise not_the_provider(self.label, "mailgun_region", "no domain and its state")
        state = domain["state"] or "unknown"
        if state == "disabled":
            raise PermanentError(f"Mailgun domain {self.domain} is disabled", code="domain_disabled",
                                 field="mailgun_domain")
        warnings = [] if state == "active" else [f"the domain is {state}: verify its DNS records in Mailgun"]
        return {"provider": self.name, "api_base": self.api.base, "region": self.region, "domain": self.domain,
                "state": state, "warnings": warnings}

    @classmethod
    def read_webhook(cls, config: dict, headers, body: bytes, now: float) -> WebhookReply:
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        # the signature sits in the body: only its three strings are read before verifying
        signature = payload.get("signature") if isinstance(payload, dict) else None
        token = verify_signature(config.get("mailgun_webhook_signing_key") or "", signature, now)
        return WebhookReply(bounce_reports(payload.get("event-data")), delivery_id=f"token:{token}",
                            delivery_ttl_s=2 * WEBHOOK_TOLERANCE_S + 60)

