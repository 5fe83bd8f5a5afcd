"""SendGrid (Twilio SendGrid v3 Web API) as a direct-send provider.

Messages arrive already rendered, one per recipient. ``POST /v3/mail/send``
takes up to 1,000 ``personalizations`` per request; each carries one
recipient, their own subject and headers, and ``substitutions`` holding
their finished text and HTML. The request's ``content`` is only the
substitution tags, so every recipient gets exactly their own content. The
tags carry a random nonce per request, so text in a recipient's content can
never be mistaken for a tag. A message whose substitutions would pass
SendGrid's 10,000 bytes per personalization, or that has attachments, goes
in a request of its own with its content inline. A message taken by SMTP
submission (``Message.raw``) is rebuilt from its parts (``providers.mime.parts``:
bodies, attachments, inline images, header fields) into a request of its own.

Answers: ``202`` accepted, with ``X-Message-Id`` (recorded for every
recipient of the request; the Event Webhook's ``sg_message_id`` starts with
it). ``400`` lists per-field errors (``personalizations.3.to.0.email``):
the messages named fail, the rest are sent again without them; an error
that names no personalization fails the request's messages. ``429`` is
throttling (``Retry-After``), ``5xx`` retryable, ``401``/``403`` a refused key.

Bounces and spam reports arrive through the Signed Event Webhook: ECDSA
P-256 / SHA-256 over ``timestamp + raw body``, with the account's public
key (base64 DER), the signature in ``X-Twilio-Email-Event-Webhook-Signature``
and the timestamp in ``X-Twilio-Email-Event-Webhook-Timestamp``.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import secrets
from email.utils import parseaddr
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

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
    send_grouped,
)
from providers.http_api import ApiSession, call_error, json_body
from providers.registry import Setting, SettingsGroup

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://api.sendgrid.com"
SEND_PATH = "/v3/mail/send"
SCOPES_PATH = "/v3/scopes"
MAX_PERSONALIZATIONS = 1000
#: SendGrid's limit on a personalization's substitutions, in bytes
MAX_SUBSTITUTION_BYTES = 10_000
#: how far a webhook timestamp may be from our clock, in seconds
WEBHOOK_TOLERANCE_S = 300
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
_FIELD = re.compile(r"^personalizations\.(\d+)\.")
_SAFE_FIELD = re.compile(r"[^A-Za-z0-9._\[\]-]")
#: headers SendGrid sets itself and refuses in ``headers``
_RESERVED = frozenset({"x-sg-id", "x-sg-eid", "received", "dkim-signature", "content-type",
                       "content-transfer-encoding", "to", "from", "subject", "reply-to", "cc", "bcc"})


def _public_key(raw: str) -> str:
    """Setting parser: a base64 DER EC public key, as SendGrid shows it."""
    load_public_key(raw)
    return raw


SENDGRID_SETTINGS = SettingsGroup(
    "sendgrid", "SendGrid", "An API key with Mail Send access (the connection test also reads its scopes); "
    "the sender address must be a verified sender or on an authenticated domain.",
    (
        Setting("sendgrid_api_key", "API key", "secret", placeholder="SG.…"),
        Setting("sendgrid_webhook_public_key", "Event Webhook verification key", parse=_public_key,
                help="Mail Settings → Signed Event Webhook; point the webhook at "
                     "/callbacks/v1/bounces/sendgrid/<company id>"),
    ))


def load_public_key(raw: str) -> ec.EllipticCurvePublicKey:
    """The EC public key of a base64 DER (or PEM) string; ``ValueError`` otherwise."""
    text = raw.strip()
    if "BEGIN PUBLIC KEY" in text:
        text = "".join(line for line in text.splitlines() if "-----" not in line)
    try:
        key = load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, UnsupportedAlgorithm):
        raise ValueError("not a base64 DER public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("not an elliptic-curve public key")
    return key


def verify_signature(public_key: str, headers, body: bytes, now: float,
                     tolerance: int = WEBHOOK_TOLERANCE_S) -> None:
    """Check a Signed Event Webhook request; ``WebhookRefused`` when it is not authentic."""
    if not public_key:
        raise WebhookRefused("no verification key is configured")
    signature, timestamp = headers.get(SIGNATURE_HEADER), headers.get(TIMESTAMP_HEADER)
    if not signature or not timestamp or not timestamp.isdigit():
        raise WebhookRefused("signature headers missing")
    if abs(now - int(timestamp)) > tolerance:
        raise WebhookRefused("timestamp outside the tolerance")
    try:
        key = load_public_key(public_key)
        key.verify(base64.b64decode(signature, validate=True), timestamp.encode() + body,
                   ec.ECDSA(hashes.SHA256()))
    except (ValueError, binascii.Error, InvalidSignature):
        raise WebhookRefused("signature does not match") from None


def bounce_reports(events: Any) -> list[BounceReport]:
    """The bounces and spam reports of an Event Webhook body (a JSON array of events).

    ``bounce`` is hard unless its ``type`` is ``blocked`` (soft); ``dropped``
    for a bounced or spam-reporting address repeats what SendGrid knew;
    ``spamreport`` is a complaint; other events are ignored.
    """
    if not isinstance(events, list):
        raise ValueError("the body must be a JSON array of events")
    found = []
    for n, event in enumerate(events):
        if not isinstance(event, dict):
            raise ValueError(f"events[{n}] is not an object")
        name, email, reason = event.get("event"), event.get("email"), str(event.get("reason") or "")
        if name == "bounce":
            kind = "soft" if event.get("type") == "blocked" else "hard"
        elif name == "spamreport":
            kind = "complaint"
        elif name == "dropped" and reason in ("Bounced Address", "Spam Reporting Address"):
            kind = "hard" if reason == "Bounced Address" else "complaint"
        else:
            continue
        if not isinstance(email, str):
            raise ValueError(f"events[{n}].email is missing")
        sg_id = event.get("sg_message_id")
        message_id = sg_id.split(".", 1)[0] if isinstance(sg_id, str) and sg_id else None
        detail = f"{name}: {event.get('status') or event.get('type') or reason or name}"[:255]
        found.append(BounceReport(kind, email, message_id, detail,
                                  str(event.get("sg_event_id") or f"{sg_id}:{name}:{email}")))
    return found


def _address(value: str) -> dict[str, str]:
    name, address = parseaddr(value)
    return {"email": address or value, **({"name": name} if name else {})}


def _safe_headers(message: Message) -> dict[str, str]:
    return {k: v for k, v in message.headers.items() if k.lower() not in _RESERVED}


def _shape(message: Message) -> tuple[bool, bool]:
    """Which content parts a message has: (text, html); at least one."""
    return (message.text is not None or message.html is None, message.html is not None)


def _substitutions(message: Message, tags: dict[str, str]) -> dict[str, str]:
    has_text, has_html = _shape(message)
    subs = {}
    if has_text:
        subs[tags["text"]] = message.text or " "
    if has_html:
        subs[tags["html"]] = message.html or ""
    return subs


def _bulk_fits(message: Message) -> bool:
    if message.raw is not None:
        return False
    size = len((message.text or "").encode()) + len((message.html or "").encode()) + 64
    return not message.attachments and size <= MAX_SUBSTITUTION_BYTES


def _field_errors(body: Any) -> list[tuple[str, str]]:
    """``(field, message)`` of a 400's ``errors`` list (field may be ``""``)."""
    errors = body.get("errors") if isinstance(body, dict) else None
    found = []
    for error in errors if isinstance(errors, list) else []:
        if isinstance(error, dict):
            found.append((str(error.get("field") or ""), str(error.get("message") or "")))
    return found


def _field_reason(field: str) -> str:
    """A stored reason for a refused field: its name (not SendGrid's text), personalization index removed."""
    name = _SAFE_FIELD.sub("", _FIELD.sub("", field))[:80] or "request"
    return f"SendGrid 400: invalid {name}"


@register
class SendgridProvider(Provider):
    """Send through SendGrid's v3 Mail Send API, up to 1,000 recipients per request.

    Config keys: ``sendgrid_api_key``, and optionally ``timeout`` (seconds).
    The API base is SendGrid's (the operator may override it for tests).
    """

    name = "sendgrid"
    label = "SendGrid"
    settings = SENDGRID_SETTINGS
    api_hosts = ("sendgrid.com",)
    chunk_size = MAX_PERSONALIZATIONS
    webhook_max_bytes = 1024 * 1024

    def __init__(self, config: dict):
        super().__init__(config)
        self.api = ApiSession(self.label, self.name, registry.api_base(self.name, DEFAULT_API_BASE),
                              timeout=float(config.get("timeout") or self.timeout_s),
                              headers={"Authorization": f"Bearer {config.get('sendgrid_api_key') or ''}"})

    def close(self) -> None:
        self.api.close()

    def _require_key(self) -> None:
        if not self.config.get("sendgrid_api_key"):
            raise PermanentError("sendgrid_api_key is not set", code="config")

    # -- sending -------------------------------------------------------------

    def send(self, sender: str, messages: list[Message]) -> list[Result]:
        """Send ``messages``; one Result per message, in order."""
        self._require_key()
        return send_grouped(sender, messages, self._plan, self._send_unit)

    @staticmethod
    def _plan(messages: list[Message], pending: list[int]) -> list[list[int]]:
        """Group messages into requests: same content parts, no address twice, at most 1,000."""
        units: list[tuple[tuple | None, set[str], list[int]]] = []
        for index in pending:
            message = messages[index]
            if not _bulk_fits(message):
                units.append((None, set(), [index]))
                continue
            shape, address = _shape(message), message.to.strip().lower()
            for unit_shape, addresses, members in units:
                if unit_shape == shape and address not in addresses and len(members) < MAX_PERSONALIZATIONS:
                    addresses.add(address)
                    members.append(index)
                    break
            else:
                units.append((shape, {address}, [index]))
        return [members for _, _, members in units]

    def _payload(self, sender: str, group: list[Message]) -> dict[str, Any]:
        if len(group) == 1 and not _bulk_fits(group[0]):
            return self._inline_payload(sender, group[0])
        nonce = secrets.token_hex(6)
        tags = {"text": f"-mr{nonce}-text-", "html": f"-mr{nonce}-html-"}
        has_text, has_html = _shape(group[0])
        content = ([{"type": "text/plain", "value": tags["text"]}] if has_text else []) + \
            ([{"type": "text/html", "value": tags["html"]}] if has_html else [])
        personalizations = []
        for message in group:
            item: dict[str, Any] = {"to": [_address(message.to)], "subject": message.subject,
                                    "substitutions": _substitutions(message, tags)}
            if _safe_headers(message):
                item["headers"] = _safe_headers(message)
            personalizations.append(item)
        return {"personalizations": personalizations, "from": _address(sender), "content": content}

    @staticmethod
    def _raw_payload(message: Message) -> dict[str, Any]:
        """The LMS's MIME (``Message.raw``) rebuilt from its parts: SendGrid's API takes no MIME. Its
        From, Reply-To, Subject, bodies, attachments, inline parts and other header fields; the
        envelope recipient is the one recipient (each Cc is a recipient of its own already)."""
        if message.raw is None:
            raise ValueError("a raw send needs the message's MIME")
        found = mime.parts(message.raw)
        content = ([{"type": "text/plain", "value": found.text or " "}] if found.text is not None
                   or found.html is None else []) + ([{"type": "text/html", "value": found.html}] if found.html else [])
        headers = {k: v for k, v in {**found.headers, **message.headers}.items() if k.lower() not in _RESERVED}
        item: dict[str, Any] = {"to": [_address(message.to)], "subject": found.subject or " "}
        if headers:
            item["headers"] = headers
        payload: dict[str, Any] = {"personalizations": [item], "from": _address(found.sender), "content": content}
        if found.reply_to:
            payload["reply_to"] = _address(found.reply_to)
        files: list[dict[str, Any]] = [{"content": base64.b64encode(a.content).decode("ascii"), "filename": a.filename,
                  "type": a.content_type, "disposition": "attachment"} for a in found.attachments]
        files += [{"content": base64.b64encode(a.content).decode("ascii"), "filename": a.filename,
                   "type": a.content_type, "disposition": "inline", "content_id": a.content_id}
                  for a in found.inline]
        if files:
            payload["attachments"] = files
        return payload

    @staticmethod
    def _inline_payload(sender: str, message: Message) -> dict[str, Any]:
        if message.raw is not None:
            return SendgridProvider._raw_payload(message)
        has_text, has_html = _shape(message)
        content = ([{"type": "text/plain", "value": message.text or " "}] if has_text else []) + \
            ([{"type": "text/html", "value": message.html}] if has_html else [])
        item: dict[str, Any] = {"to": [_address(message.to)], "subject": message.subject}
        if _safe_headers(message):
            item["headers"] = _safe_headers(message)
        payload: dict[str, Any] = {"personalizations": [item], "from": _address(sender), "content": content}
        if message.attachments:
            payload["attachments"] = [
                {"content": base64.b64encode(a.content).decode("ascii"), "filename": a.filename,
                 "type": a.content_type, "disposition": "attachment"} for a in message.attachments]
        return payload

    def _send_unit(self, sender: str, group: list[Message]) -> list[Result]:
        """One request for ``group``; a 400 fails the messages it names and resends the rest once."""
        outcome: dict[int, Result] = {}
        remaining = list(range(len(group)))
        for _attempt in range(2):
            members = [group[i] for i in remaining]
            response = self.api.request("POST", SEND_PATH, data=json.dumps(self._payload(sender, members)),
                                        headers={"Content-Type": "application/json"})
            error = call_error(self.label, response)
            if error is not None:
                log.warning("SendGrid send: %s", error.reason)
                raise error
            if response.status_code in (200, 202):
                message_id = response.headers.get("X-Message-Id")
                outcome.update({i: Result(group[i].key, ResultStatus.SENT, message_id=message_id) for i in remaining})
                return [outcome[i] for i in range(len(group))]
            refused = self._refused(response, members)
            if not refused:
                reason = self._request_reason(response)
                outcome.update({i: Result(group[i].key, ResultStatus.FAILED, error=reason) for i in remaining})
                return [outcome[i] for i in range(len(group))]
            for position, reason in refused.items():
                index = remaining[position]
                outcome[index] = Result(group[index].key, ResultStatus.FAILED, error=reason)
            remaining = [i for n, i in enumerate(remaining) if n not in refused]
            if not remaining:
                break
        for index in remaining:  # refused twice: do not loop on SendGrid's answers
            outcome.setdefault(index, Result(group[index].key, ResultStatus.FAILED,
                                             error="SendGrid 400: request refused"))
        return [outcome[i] for i in range(len(group))]

    @staticmethod
    def _refused(response: Any, members: list[Message]) -> dict[int, str]:
        """The positions a 400 names (``personalizations.N...``) and their reasons."""
        if response.status_code != 400:
            return {}
        refused: dict[int, str] = {}
        for field, _ in _field_errors(json_body(response)):
            match = _FIELD.match(field)
            if match and int(match.group(1)) < len(members):
                refused.setdefault(int(match.group(1)), _field_reason(field))
        return refused

    @staticmethod
    def _request_reason(response: Any) -> str:
        if response.status_code == 400:
            fields = [f for f, _ in _field_errors(json_body(response)) if f]
            return _field_reason(fields[0]) if fields else "SendGrid 400: request refused"
        if response.status_code == 413:
            return "SendGrid 413: message too large"
        return f"SendGrid HTTP {response.status_code}: request refused"

    # -- checks and webhooks -------------------------------------------------

    def test_connection(self) -> dict:
        """``GET /v3/scopes``: the key works; its scopes, and whether it may send. Passes only on
        SendGrid's own answer (a JSON list of scopes)."""
        self._require_key()
        try:
            response = self.api.request("GET", SCOPES_PATH)
        except ProviderError as exc:
            raise for_field(exc, "sendgrid_api_key") from None
        error = call_error(self.label, response)
        if error is None and response.status_code != 200:
            error = PermanentError(f"SendGrid HTTP {response.status_code}: scopes check refused",
                                   code=str(response.status_code))
        if error is not None:
            raise for_field(error, "sendgrid_api_key")
        body = json_body(response)
        if not isinstance(body, dict) or not isinstance(body.get("scopes"), list):
            raise not_the_provider(self.label, "sendgrid_api_key", "no list of the key's scopes")
        scopes = sorted(s for s in body["scopes"] if isinstance(s, str))
        warnings = [] if "mail.send" in scopes else ["the API key lacks the mail.send scope"]
        return {"provider": self.name, "api_base": self.api.base, "scopes": scopes,
                "can_send": "mail.send" in scopes, "warnings": warnings}

    @classmethod
    def read_webhook(cls, config: dict, headers, body: bytes, now: float) -> WebhookReply:
        verify_signature(config.get("sendgrid_webhook_public_key") or "", headers, body, now)
        try:
            events = json.loads(body)
        except ValueError:
            raise ValueError("the body is not JSON") from None
        # the signed content is the delivery (an ECDSA signature has more than one valid form)
        signed = hashlib.sha256(headers.get(TIMESTAMP_HEADER, "").encode() + b"." + body).hexdigest()
        return WebhookReply(bounce_reports(events), delivery_id=f"signed:{signed}",
                            delivery_ttl_s=2 * WEBHOOK_TOLERANCE_S + 60)
