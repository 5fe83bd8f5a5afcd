"""SQS-triggered Lambda: send each offloaded batch through SES and report back.

Each SQS record is one batch message (CONTRACT §5). For every record the
handler renders each recipient's subject, text and HTML from the message's
template and the recipient's ``data``, sends them with SES v2
``SendBulkEmail`` (at most 50 destinations per call), then POSTs a callback
signed per Standard Webhooks (CONTRACT §4) to the message's
``callback_url``, keyed by the ``CALLBACK_SECRET`` environment variable.

Offload templates support ``{{ name }}`` substitution only: no filters,
conditions, loops or dotted names (anything else is left as written). A
missing or null variable renders empty; values are HTML-escaped in the HTML
part, used as-is in the text part, and CR/LF become spaces in the subject.
SES gets the already-rendered parts through a pass-through inline template
(``{{{subject}}}`` etc.), so SES's own Handlebars never sees user data as a
template.

Retries: when SES is throttled or transiently unavailable before anything
of a batch was sent, the record is retried (``batchItemFailures``). When
some emails already went out, the callback reports them and returns the
rest as ``failed`` with ``"retryable": true``; the service re-submits only
those, so nobody is emailed twice, and the record is done. A callback that
cannot be delivered (5xx, timeout, unreachable) retries the record; that
is the one case that can send again to recipients already emailed (the
service ignores results for recipients already final). Malformed messages
are "retried" into the dead-letter queue after ``maxReceiveCount``.
Recipients SES rejects permanently are reported ``failed``; a callback
answered 4xx (wrong secret, unknown batch) is logged and not retried.

Runtime: Python 3.12, boto3 and the standard library only; ``webhooks.py``
beside this file is an exact copy of the service's ``core/webhooks.py``.
Environment: ``CALLBACK_SECRET`` (required, ``whsec_...``), optional
``ALLOWED_CALLBACK_PREFIX`` (callback URLs must start with it),
``CALLBACK_TIMEOUT_S`` (10), ``CALLBACK_ATTEMPTS`` (3),
``CALLBACK_RETRY_DELAY_S`` (1), ``RECORD_TIME_BUDGET_S`` (40: a record is
only started with this much of the invocation left), ``SES_CONFIGURATION_SET``
(the IAM role then also needs that configuration set); boto3 honours
``AWS_ENDPOINT_URL_SESV2``. Recipient addresses and data are never logged.
"""
from __future__ import annotations

import html
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from webhooks import sign_headers

log = logging.getLogger("offload.lambda")
log.setLevel(os.environ.get("LOG_LEVEL", "INFO"))

SES_BULK_LIMIT = 50
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
#: SES renders these with the per-recipient parts as data; triple braces never escape.
PASS_THROUGH = {"subject": "{{{subject}}}", "text": "{{{text}}}", "html": "{{{html}}}"}

#: per-entry SendBulkEmail statuses worth another attempt later
RETRYABLE_ENTRY_STATUSES = frozenset({
    "ACCOUNT_THROTTLED", "TRANSIENT_FAILURE", "ACCOUNT_DAILY_QUOTA_EXCEEDED",
    "ACCOUNT_SENDING_PAUSED", "CONFIGURATION_SET_SENDING_PAUSED",
})
#: whole-call SES errors worth another attempt later (everything else is permanent)
RETRYABLE_CALL_ERRORS = frozenset({
    "TooManyRequestsException", "LimitExceededException", "SendingPausedException",
    "Throttling", "ThrottlingException", "InternalFailure", "InternalServerError",
    "ServiceUnavailable", "RequestTimeout",
})


class InvalidMessage(Exception):
    """The record is not a usable batch message; the reason names no recipient data."""


class RetryLater(Exception):
    """A transient failure: the record should be delivered again."""


class CallbackRejected(Exception):
    """The service answered the callback with a 3xx/4xx: retrying cannot help."""


# --------------------------------------------------------------------------- rendering

def _text_value(value: Any) -> str:
    """A data value as text, the same way the Cloudflare worker renders it."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def render(template: str | None, data: dict, *, escape_html: bool = False) -> str:
    """Substitute ``{{ name }}`` placeholders in ``template`` with ``data`` values."""
    if not template:
        return ""

    def substitute(match: re.Match) -> str:
        text = _text_value(data.get(match.group(1)))
        return html.escape(text, quote=True) if escape_html else text

    return PLACEHOLDER.sub(substitute, template)


def render_recipient(template: dict, data: dict) -> dict[str, str]:
    """Return this recipient's ``subject``, ``text`` and ``html``."""
    subject = re.sub(r"[\r\n]+", " ", render(template.get("subject"), data)).strip()
    return {
        "subject": subject,
        "text": render(template.get("text"), data),
        "html": render(template.get("html"), data, escape_html=True),
    }


# --------------------------------------------------------------------------- the message

def parse_message(body: str) -> dict:
    """Parse and check one SQS body as a CONTRACT §5 batch message."""
    try:
        message = json.loads(body)
    except ValueError:
        raise InvalidMessage("body is not JSON") from None
    if not isinstance(message, dict):
        raise InvalidMessage("body is not a JSON object")
    for key, kind in (("job_id", int), ("batch_number", int), ("callback_url", str),
                      ("sender", str), ("template", dict), ("recipients", list)):
        if not isinstance(message.get(key), kind) or message.get(key) in ("", None):
            raise InvalidMessage(f"{key} is missing or not a {kind.__name__}")
    template = message["template"]
    if not isinstance(template.get("subject"), str) or not (template.get("text") or template.get("html")):
        raise InvalidMessage("template needs a subject and a text or html body")
    for recipient in message["recipients"]:
        if not isinstance(recipient, dict) or not isinstance(recipient.get("email"), str):
            raise InvalidMessage("every recipient needs an email")
        if not isinstance(recipient.get("data", {}) or {}, dict):
            raise InvalidMessage("recipient data must be an object")
    _check_callback_url(message["callback_url"])
    return message


def _check_callback_url(url: str) -> None:
    if not url.startswith(("https://", "http://")):
        raise InvalidMessage("callback_url must be http(s)")
    prefix = os.environ.get("ALLOWED_CALLBACK_PREFIX", "")
    if prefix and not url.startswith(prefix):
        raise InvalidMessage("callback_url is not under ALLOWED_CALLBACK_PREFIX")


# --------------------------------------------------------------------------- SES

@lru_cache(maxsize=1)
def ses_client() -> Any:
    """The SES v2 client, made once per container (AWS_ENDPOINT_URL_SESV2 honoured)."""
    return boto3.client("sesv2", config=Config(
        retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=20))


@dataclass
class Outcome:
    """What happened to one batch: final per-recipient results and whether to retry."""

    total: int
    results: list[dict] = field(default_factory=list)
    retry: bool = False
    left: list[str] = field(default_factory=list)  # not sent yet when a transient failure stopped us
    reason: str = "transient failure"

    @property
    def status(self) -> str:
        sent = sum(1 for r in self.results if r["status"] == "sent")
        if sent == self.total:
            return "sent"
        return "failed" if sent == 0 else "partial"


def _bulk_request(message: dict, chunk: list[tuple[str, dict]]) -> dict:
    template = message["template"]
    parts = ["subject", *(part for part in ("text", "html") if template.get(part))]
    content = {part.capitalize(): PASS_THROUGH[part] for part in parts}
    request = {
        "FromEmailAddress": message["sender"],
        "DefaultContent": {"Template": {
            "TemplateContent": content,
            "TemplateData": json.dumps(dict.fromkeys(parts, "")),
        }},
        "BulkEmailEntries": [{
            "Destination": {"ToAddresses": [email]},
            "ReplacementEmailContent": {"ReplacementTemplate": {
                "ReplacementTemplateData": json.dumps({part: rendered[part] for part in parts}),
            }},
        } for email, rendered in chunk],
    }
    if os.environ.get("SES_CONFIGURATION_SET"):
        request["ConfigurationSetName"] = os.environ["SES_CONFIGURATION_SET"]
    return request


def send_chunk(message: dict, chunk: list[tuple[str, dict]]) -> list[dict]:
    """One ``SendBulkEmail`` call; per-entry results, or a whole-call error as results.

    Raises:
        RetryLater: SES throttled or was unavailable; nothing in this chunk was sent.
    """
    try:
        response = ses_client().send_bulk_email(**_bulk_request(message, chunk))
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "Unknown")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in RETRYABLE_CALL_ERRORS or status >= 500:
            raise RetryLater(f"SES {code}") from None
        error = f"{code}: {exc.response.get('Error', {}).get('Message', '')}".strip()
        return [{"email": email, "status": "failed", "error": error} for email, _ in chunk]
    except BotoCoreError as exc:
        raise RetryLater(f"SES unreachable: {type(exc).__name__}") from None
    entries = response.get("BulkEmailEntryResults", [])
    return [_entry_result(email, entries[i] if i < len(entries) else None)
            for i, (email, _) in enumerate(chunk)]


def _entry_result(email: str, entry: dict | None) -> dict:
    if entry is None:
        return {"email": email, "status": "retry"}
    status = entry.get("Status", "FAILED")
    if status == "SUCCESS":
        return {"email": email, "status": "sent", "message_id": entry.get("MessageId")}
    if status in RETRYABLE_ENTRY_STATUSES:
        return {"email": email, "status": "retry"}
    return {"email": email, "status": "failed", "error": f"{status}: {entry.get('Error', '')}".strip()}


def send_batch(message: dict) -> Outcome:
    """Render and send every recipient; stop at the first transient failure."""
    template = message["template"]
    rendered = [(r["email"], render_recipient(template, r.get("data") or {}))
                for r in message["recipients"]]
    outcome = Outcome(total=len(rendered))
    for start in range(0, len(rendered), SES_BULK_LIMIT):
        try:
            results = send_chunk(message, rendered[start:start + SES_BULK_LIMIT])
        except RetryLater as exc:
            log.warning("Batch %s/%s: %s; will retry", message["job_id"], message["batch_number"], exc)
            outcome.retry, outcome.reason = True, str(exc)
            break
        final = [r for r in results if r["status"] != "retry"]
        outcome.results.extend(final)
        if len(final) < len(results):
            outcome.retry, outcome.reason = True, "SES transient failure"
            break
    done = {r["email"] for r in outcome.results}
    outcome.left = [email for email, _ in rendered if email not in done] if outcome.retry else []
    return outcome


# --------------------------------------------------------------------------- callback

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would turn the POST into a GET and drop the body."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def post_callback(url: str, payload: dict, secret: str) -> None:
    """POST the signed callback; retry transient failures a few times in place.

    Raises:
        CallbackRejected: 3xx or 4xx (other than 408/429): do not retry the record.
        RetryLater: still failing after the attempts.
    """
    body = json.dumps(payload, separators=(",", ":")).encode()
    msg_id = f"msg_{uuid.uuid4().hex}"  # the same id on every attempt (Standard Webhooks)
    attempts = int(os.environ.get("CALLBACK_ATTEMPTS", "3"))
    delay = float(os.environ.get("CALLBACK_RETRY_DELAY_S", "1"))
    timeout = float(os.environ.get("CALLBACK_TIMEOUT_S", "10"))
    last = "no attempt"
    for attempt in range(attempts):
        if attempt:
            time.sleep(delay * 2 ** (attempt - 1))
        headers = {"Content-Type": "application/json", "User-Agent": "manireports-offload-lambda",
                   **sign_headers(secret, msg_id, body)}
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with _opener.open(request, timeout=timeout):
                return
        except urllib.error.HTTPError as exc:
            if exc.code < 500 and exc.code not in (408, 429):
                raise CallbackRejected(f"HTTP {exc.code}") from None
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = type(getattr(exc, "reason", exc)).__name__
    raise RetryLater(f"callback failed after {attempts} attempts: {last}")


# --------------------------------------------------------------------------- handler

def process_record(record: dict, secret: str) -> bool:
    """Handle one SQS record; return True when it must be delivered again."""
    message = parse_message(record["body"])
    job, batch = message["job_id"], message["batch_number"]
    outcome = send_batch(message)
    sent = sum(1 for r in outcome.results if r["status"] == "sent")
    log.info("Batch %s/%s: %d sent, %d failed, %d left to retry", job, batch, sent,
             len(outcome.results) - sent, outcome.total - len(outcome.results))
    if not outcome.results and outcome.retry:
        return True  # nothing was sent: deliver the whole record again
    # Some were sent: report them, and hand what is left back to the service as
    # retryable failures; it re-submits only those, so nobody gets a second email.
    results = outcome.results + [{"email": email, "status": "failed", "error": outcome.reason,
                                  "retryable": True} for email in outcome.left]
    payload = {"job_id": job, "batch_number": batch, "status": outcome.status, "results": results}
    try:
        post_callback(message["callback_url"], payload, secret)
    except CallbackRejected as exc:
        log.error("Batch %s/%s: callback refused (%s); not retrying, emails were sent",
                  job, batch, exc)
    except RetryLater as exc:
        log.warning("Batch %s/%s: %s; will retry", job, batch, exc)
        return True
    return False


def _time_is_short(context: Any) -> bool:
    """True when too little of the invocation is left to send a batch and call back."""
    budget_ms = float(os.environ.get("RECORD_TIME_BUDGET_S", "40")) * 1000
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return remaining is not None and remaining() < budget_ms


def handler(event: dict, context: Any) -> dict:
    """Lambda entry point for an SQS event source mapping with ReportBatchItemFailures."""
    secret = os.environ.get("CALLBACK_SECRET", "")
    if not secret:
        raise RuntimeError("CALLBACK_SECRET is not set")  # the whole batch is retried
    failures = []
    for record in event.get("Records", []):
        message_id = record.get("messageId", "?")
        if _time_is_short(context):
            # Untouched records go back to the queue rather than risk a timeout
            # mid-batch, which would retry (and re-send) the whole invocation.
            log.warning("Record %s: not enough time left in this invocation; will retry", message_id)
            failures.append({"itemIdentifier": message_id})
            continue
        try:
            retry = process_record(record, secret)
        except InvalidMessage as exc:
            log.error("Record %s: invalid batch message (%s); left for the dead-letter queue",
                      message_id, exc)
            retry = True
        except Exception as exc:  # noqa: BLE001 - one bad record must not fail the others;
            # only the type is logged: a message could quote recipient data.
            log.error("Record %s: unexpected %s; will retry", message_id, type(exc).__name__)
            retry = True
        if retry:
            failures.append({"itemIdentifier": message_id})
    return {"batchItemFailures": failures}
