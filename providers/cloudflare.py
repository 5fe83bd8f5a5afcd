"""Cloudflare Email Service (Email Sending REST API) as a direct-send provider.

The request shape lives in ``SEND_PATH`` and ``email_payload`` only. It follows
Cloudflare's published REST API: ``POST /accounts/{account_id}/email/sending/send``
with ``Authorization: Bearer <token>`` and a JSON body of ``from`` (string or
``{address, name}``), ``to``, ``subject``, ``text``, ``html``, ``headers``
(object) and ``attachments`` (``{content (base64), filename, type,
disposition}``). The answer is Cloudflare's usual envelope
``{success, errors, messages, result}`` whose ``result`` lists
``delivered``, ``queued`` and ``permanent_bounces`` addresses.
One request per message; the session is reused for the whole batch.

Bounces and complaints come from the company's Worker (the DSNs and ARF
reports Email Routing hands its ``email()`` handler), signed with the
company's callback secret (Standard Webhooks, ``providers.webhooks``)::

    {"events": [{"type": "bounce", "bounce_type": "hard", "email": "a@example.com",
                 "message_id": "...", "reason": "550 5.1.1 no such user"}]}

``type`` is ``bounce`` or ``complaint``; ``bounce_type`` ``hard`` or ``soft``.
"""
from __future__ import annotations

import base64
import json
import logging
from email.utils import parseaddr
from typing import Any

import requests

from providers import mime, pinning, webhooks
from providers.base import (
    BounceReport,
    ConnectionFailure,
    Message,
    PermanentError,
    Provider,
    ProviderError,
    QuotaExceededError,
    Result,
    ResultStatus,
    RetryableError,
    ThrottledError,
    WebhookRefused,
    WebhookReply,
    for_field,
    guarded_url,
    header_problem,
    not_the_provider,
    register,
    send_each,
)
from providers.registry import Setting, SettingsGroup, plausible_email

log = logging.getLogger(__name__)

#: what the Cloudflare email provider, queue transport and R2 storage read: one form section
CLOUDFLARE_SETTINGS = SettingsGroup(
    "cloudflare", "Cloudflare", "API token with Email Sending (direct) or Queues Write (offload).",
    (
        Setting("cloudflare_api_token", "API token", "secret"),
        Setting("cloudflare_account_id", "Account id"),
        Setting("cloudflare_queue_id", "Queue id", help="offload mode: the queue's id, not its name"),
        Setting("cloudflare_api_base", "API base URL", "url", cloud="cloudflare",
                placeholder="https://api.cloudflare.com/client/v4"),
        Setting("cloudflare_worker_url", "Worker URL", "url", cloud="cloudflare"),
    ))

DEFAULT_API_BASE = "https://api.cloudflare.com/client/v4"
SEND_PATH = "/accounts/{account_id}/email/sending/send"
USER_VERIFY_PATH = "/user/tokens/verify"
ACCOUNT_VERIFY_PATH = "/accounts/{account_id}/tokens/verify"
DEFAULT_TIMEOUT = 15.0
_REASON_LIMIT = 300
#: a bounce report's body limit
MAX_REPORT_BYTES = 256 * 1024


def _address(value: str) -> str | dict[str, str]:
    """A sender as the API takes it: plain address, or ``{address, name}``."""
    name, address = parseaddr(value)
    if name and address:
        return {"address": address, "name": name}
    return address or value


def raw_payload(message: Message) -> dict[str, Any]:
    """The LMS's MIME (``Message.raw``) rebuilt from its parts for the REST API (the Worker's
    binding, in offload mode, sends the MIME itself)."""
    if message.raw is None:
        raise ValueError("a raw send needs the message's MIME")
    found = mime.parts(message.raw)
    payload: dict[str, Any] = {"from": _address(found.sender), "to": message.to, "subject": found.subject}
    if found.text is not None or found.html is None:
        payload["text"] = found.text or ""
    if found.html is not None:
        payload["html"] = found.html
    headers = {**found.headers, **message.headers}
    if found.reply_to:
        headers["Reply-To"] = found.reply_to
    if headers:
        payload["headers"] = headers
    files = [{"content": base64.b64encode(a.content).decode("ascii"), "filename": a.filename, "type": a.content_type,
              "disposition": "attachment"} for a in [*found.attachments, *found.inline]]
    if files:
        payload["attachments"] = files
    return payload


def email_payload(sender: str, message: Message) -> dict[str, Any]:
    """The JSON body of one send request."""
    if message.raw is not None:
        return raw_payload(message)
    payload: dict[str, Any] = {"from": _address(sender), "to": message.to, "subject": message.subject}
    if message.text is not None or message.html is None:
        payload["text"] = message.text or ""
    if message.html is not None:
        payload["html"] = message.html
    if message.headers:
        payload["headers"] = dict(message.headers)
    if message.attachments:
        payload["attachments"] = [
            {"content": base64.b64encode(a.content).decode("ascii"), "filename": a.filename,
             "type": a.content_type, "disposition": "attachment"}
            for a in message.attachments
        ]
    return payload


def _json(response: requests.Response) -> dict:
    """The body as a dict, or ``{}`` when it is not a JSON object."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _api_errors(body: dict) -> str:
    """Cloudflare's ``errors`` list as its error codes (``error 10000, 10001``).

    The messages are left out: a tenant-named API base can answer any text,
    and no remote text is shown to a tenant."""
    errors = body.get("errors") or []
    codes = [str(e.get("code"))[:12] for e in errors if isinstance(e, dict) and str(e.get("code", "")).isdigit()]
    return ("error " + ", ".join(codes))[:_REASON_LIMIT] if codes else ""


def _api_text(body: dict) -> str:
    """The errors' messages, lower-cased: only matched against, never shown."""
    errors = body.get("errors") or []
    return " ".join(str(e.get("message", "")) for e in errors if isinstance(e, dict)).lower()


def _retry_after(response: requests.Response) -> float | None:
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


def classify_response(response: requests.Response) -> ProviderError | None:
    """The whole-call error an HTTP answer means, or None when it concerns one message."""
    status = response.status_code
    body = _json(response)
    detail = _api_errors(body) or "the API refused the request"
    reason = f"Cloudflare HTTP {status}: {detail}"[:_REASON_LIMIT]
    if status == 429:
        return ThrottledError(reason, code="429", retry_after=_retry_after(response))
    if status >= 500:
        return RetryableError(reason, code=str(status))
    if status in (401, 403, 404):  # bad token, or no such account / endpoint
        return PermanentError(reason, code=str(status))
    if 300 <= status < 400:  # redirects are not followed: a Location may name any host
        return PermanentError(f"Cloudflare HTTP {status}: redirect not followed", code=str(status))
    if 400 <= status < 500 and "quota" in _api_text(body):
        return QuotaExceededError(reason, code=str(status))
    return None


def classify_exception(exc: requests.RequestException) -> ProviderError:
    """Map a transport failure of ``requests`` to our hierarchy."""
    # every transport failure says the same (a closed port reads as an open one); the code keeps a read
    # timeout apart, since the call may have been taken (core.delivery: the chunk is uncertain)
    if isinstance(exc, requests.ReadTimeout):
        return RetryableError(f"Cloudflare API {pinning.UNREACHABLE}", code=type(exc).__name__)
    if isinstance(exc, (requests.ConnectTimeout, requests.ConnectionError)):
        return ConnectionFailure(f"Cloudflare API {pinning.UNREACHABLE}", code=pinning.UNREACHABLE_CODE)
    return RetryableError(f"Cloudflare API {pinning.UNREACHABLE}", code=pinning.UNREACHABLE_CODE)


def _message_result(key: int, recipient: str, response: requests.Response) -> Result:
    """A Result for an answer that was not a whole-call error."""
    body = _json(response)
    if not response.ok or body.get("success") is False:
        detail = _api_errors(body) or f"HTTP {response.status_code}"
        return Result(key, ResultStatus.FAILED, error=detail)
    result = body.get("result") or {}
    bounced = [a.lower() for a in result.get("permanent_bounces") or [] if isinstance(a, str)]
    if recipient.lower() in bounced:
        return Result(key, ResultStatus.FAILED, error="permanent_bounce")
    return Result(key, ResultStatus.SENT, message_id=result.get("message_id") or result.get("id"))


def bounce_reports(payload: Any, event_id: str) -> list[BounceReport]:
    """The reports of a Worker's body (``{"events": [...]}``, or one event); ``ValueError`` names what is wrong."""
    items = payload.get("events") if isinstance(payload, dict) and "events" in payload else [payload]
    if not isinstance(items, list) or not items:
        raise ValueError("events must be a non-empty list")
    found = []
    for n, item in enumerate(items):
        if not isinstance(item, dict) or item.get("type") not in ("bounce", "complaint"):
            raise ValueError(f"events[{n}].type must be bounce or complaint")
        email = item.get("email")
        if not isinstance(email, str) or not plausible_email(parseaddr(email)[1].strip().lower()):
            raise ValueError(f"events[{n}].email is not a valid address")
        if item["type"] == "complaint":
            kind = "complaint"
        elif item.get("bounce_type", "hard") in ("hard", "soft"):
            kind = item.get("bounce_type", "hard")
        else:
            raise ValueError(f"events[{n}].bounce_type must be hard or soft")
        message_id = item.get("message_id") if isinstance(item.get("message_id"), str) else None
        found.append(BounceReport(kind, email, message_id, str(item.get("reason") or item["type"]), event_id))
    return found


@register
class CloudflareEmailProvider(Provider):
    """Send through Cloudflare's Email Sending REST API, one request per message.

    Config keys: ``cloudflare_api_token``, ``cloudflare_account_id``, and
    optionally ``cloudflare_api_base`` (default the public API) and
    ``timeout`` (seconds).
    """

    name = "cloudflare"
    label = "Cloudflare"
    settings = CLOUDFLARE_SETTINGS
    cloud = "cloudflare"
    timeout_s = DEFAULT_TIMEOUT
    chunk_size = 50
    webhook_max_bytes = MAX_REPORT_BYTES

    def __init__(self, config: dict):
        super().__init__(config)
        self.account_id = config.get("cloudflare_account_id") or ""
        self.api_base = (config.get("cloudflare_api_base") or DEFAULT_API_BASE).rstrip("/")
        timeout = float(config.get("timeout") or self.timeout_s)
        self.timeouts = (min(timeout, 5.0), timeout)
        self._session: requests.Session | None = None

    @classmethod
    def configured(cls, config: dict) -> bool:
        return bool(config.get("cloudflare_api_token") and config.get("cloudflare_account_id"))

    @classmethod
    def read_webhook(cls, config: dict, headers, body: bytes, now: float) -> WebhookReply:
        """The Worker's reports, signed with one of the company's callback secrets; the
        ``webhook-id`` is the delivery's id (the same on the Worker's retries)."""
        try:
            webhooks.verify(config.get("callback_secrets") or (), headers, body, now=now)
        except (webhooks.WebhookError, ValueError):
            raise WebhookRefused("a valid webhook signature is required") from None
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            raise ValueError("the body must be a JSON report") from None
        delivery = headers.get("webhook-id", "")
        return WebhookReply(bounce_reports(payload, delivery), delivery_id=f"webhook-id:{delivery}",
                            delivery_ttl_s=2 * webhooks.DEFAULT_TOLERANCE + 60)

    @property
    def session(self) -> requests.Session:
        """One HTTP session (keep-alive pool) per provider instance."""
        if self._session is None:
            token = self.config.get("cloudflare_api_token") or ""
            if not token:
                raise PermanentError("cloudflare_api_token is not set", code="config")
            self._session = pinning.session()
            self._session.headers.update({"Authorization": f"Bearer {token}",
                                          "Accept": "application/json"})
        return self._session

    def close(self) -> None:
        """Close the HTTP session; safe to call twice."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One API call; transport failures become ProviderErrors."""
        guarded_url(self.config, self.api_base, "cloudflare")
        try:  # no redirects: a Location could name a host the guard never saw
            return self.session.request(method, self.api_base + path, timeout=self.timeouts,
                                        allow_redirects=False, **kwargs)
        except requests.RequestException as exc:
            error = classify_exception(exc)
            log.warning("Cloudflare %s %s failed: %s", method, path.split("/")[-1], error.reason)
            raise error from exc

    def send(self, sender: str, messages: list[Message]) -> list[Result]:
        """Send each message; one Result per message, in order."""
        if not self.account_id:
            raise PermanentError("cloudflare_account_id is not set", code="config")
        return send_each(messages, lambda message: self._send_one(sender, message))

    def _send_one(self, sender: str, message: Message) -> Result:
        problem = header_problem(sender, message)
        if problem:
            return Result(message.key, ResultStatus.FAILED, error=problem)
        path = SEND_PATH.format(account_id=self.account_id)
        response = self._request("POST", path, json=email_payload(sender, message))
        error = classify_response(response)
        if error is not None:
            log.warning("Cloudflare send: %s", error.reason)
            raise error
        return _message_result(message.key, message.to, response)

    def test_connection(self) -> dict:
        """Verify the API token (user token, then account-owned token). Passes only on Cloudflare's own
        answer: its JSON envelope, a success, an active token."""
        where = "cloudflare_api_base" if self.config.get("cloudflare_api_base") else "cloudflare_api_token"
        try:
            response = self._request("GET", USER_VERIFY_PATH)
            if response.status_code in (401, 403, 404) and self.account_id:
                response = self._request("GET", ACCOUNT_VERIFY_PATH.format(account_id=self.account_id))
        except ProviderError as exc:
            raise for_field(exc, where) from None
        body = _json(response)
        envelope = isinstance(body.get("success"), bool) and "result" in body
        error = classify_response(response)
        if error is None and ((envelope and not response.ok) or body.get("success") is False):
            error = PermanentError(f"token verify failed: {_api_errors(body) or response.status_code}")
        if error is not None:
            refused = envelope and response.status_code in (400, 401, 403)
            raise for_field(error, "cloudflare_api_token" if refused else where)
        if not envelope or not isinstance(body.get("result"), dict):
            raise not_the_provider(self.label, where, "no Cloudflare API envelope in its answer")
        result = body["result"]
        status = result.get("status")
        if status != "active":
            shown = status if status in ("disabled", "expired") else "not active"
            raise PermanentError(f"Cloudflare API token is {shown}", code="token_status",
                                 field="cloudflare_api_token")
        return {"provider": self.name, "api_base": self.api_base, "account_id": self.account_id,
                "token_id": result.get("id"), "token_status": status}
