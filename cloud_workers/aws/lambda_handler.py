"""The company's Lambda: send each offloaded batch through SES and report back.

Two ways in, one handling: an SQS event (each record one batch message,
CONTRACT §5) and an API Gateway HTTP API event (payload format 2.0,
``POST /batches`` with the batch message as the body, signed per Standard
Webhooks with ``CALLBACK_SECRET`` and verified before the body is parsed;
``Authorization: Bearer <AUTH_TOKEN>`` too when ``AUTH_TOKEN`` is set).

Content: the service renders every recipient (the same Jinja2 sandbox as
direct mode) and the message carries each recipient's ``rendered``
subject, text and HTML, their extra ``headers`` (List-Unsubscribe for
campaign mail) and certificate ``attachments`` (base64); this worker sends
exactly that. A message without ``rendered`` (queued by an older service)
is rendered here with ``{{ name }}`` substitution only, as strictly as the
service renders: a name the recipient's data lacks fails that recipient
(``missing_fields: <name>``), never a blank. SES gets finished
parts through a pass-through inline template (``{{{subject}}}`` etc.), so
SES's own Handlebars never sees user data as a template; recipients with
attachments go one by one through ``SendEmail``. The configuration set is
the message's ``configuration_set``, else ``SES_CONFIGURATION_SET``.

Mail the LMS handed to the service by SMTP comes as it was written: such a
recipient carries ``raw`` (the MIME, base64, the service's headers already on
top) or, when that is too big for the queue, ``raw_url`` (a presigned link to
it in the company's storage, the recipient's ``headers`` then put on top
here, replacing fields of the same names), and goes one by one through
``SendEmail`` with ``Raw`` content, as is. A batch of only such recipients
needs no template.

Exactly once: before sending, the worker writes a marker
``deliveries/<company>/<job>/<delivery_id>.json`` (``state: sending``) to
``MARKER_BUCKET`` in S3, created only if absent; after sending, it stores
the callback (``state: sent``, webhook id and payload) there, then posts
it. A batch delivered again (the callback failed, a retried POST) whose
results are stored re-posts them under the same webhook id instead of
sending; one whose marker says ``sending`` without results (a worker died
mid-send, or another delivery is sending right now) is not sent blind: the
record is retried later, and ends in the dead-letter queue if that never
resolves, where the service's reconcile settles it by the company's policy.
A batch of which nothing could be sent (SES throttled at once) removes its
marker and is retried whole.

Retries: when SES stops part-way (throttled, transient), the callback
reports what went out and hands the rest back as ``failed`` with
``"retryable": true``; the service re-submits only those (another
``delivery_id``). Malformed messages are "retried" into the dead-letter
queue (SQS) or answered 400 (HTTPS). A callback answered 4xx is logged and
not retried. Over HTTPS the answer is 200 once the callback is posted, 503
(with ``Retry-After``) when the batch must come again later, 401 for a bad
signature or token, 400 for a malformed message.

Runtime: Python 3.12, boto3 and the standard library only; ``webhooks.py``
beside this file is an exact copy of the service's ``providers/webhooks.py``.
Environment: ``CALLBACK_SECRET`` (required, ``whsec_...``),
``ALLOWED_CALLBACK_PREFIX`` (required: the service's public URL; callback
URLs must start with it), ``MARKER_BUCKET`` (required), ``AUTH_TOKEN``
(optional, HTTPS only), ``CALLBACK_TIMEOUT_S`` (10), ``CALLBACK_ATTEMPTS``
(3), ``CALLBACK_RETRY_DELAY_S`` (1), ``RECORD_TIME_BUDGET_S`` (40: a record
is only started with this much of the invocation left),
``SES_CONFIGURATION_SET``; boto3 honours ``AWS_ENDPOINT_URL_SESV2`` and
``AWS_ENDPOINT_URL_S3``. Recipient addresses and data are never logged.
"""
from __future__ import annotations

import base64
import hmac
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
from webhooks import WebhookError, sign_headers, verify

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


class MissingField(ValueError):
    """A placeholder the recipient's data has no value for: that recipient fails (undefined is
    strict, as in the service: nothing is sent with a blank)."""

    def __init__(self, name: str):
        super().__init__(f"missing_fields: {name}")


def render(template: str | None, data: dict, *, escape_html: bool = False) -> str:
    """Substitute ``{{ name }}`` placeholders in ``template`` with ``data`` values; a name the data
    lacks (or has as null) raises ``MissingField``."""
    if not template:
        return ""

    def substitute(match: re.Match) -> str:
        if data.get(match.group(1)) is None:
            raise MissingField(match.group(1))
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

def parse_message(body: str | bytes) -> dict:
    """Parse and check one body as a CONTRACT §5 batch message."""
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
    for recipient in message["recipients"]:
        _check_recipient(recipient)
    template = message["template"]
    if any(not _is_raw(r) for r in message["recipients"]) and (
            not isinstance(template.get("subject"), str) or not (template.get("text") or template.get("html"))):
        raise InvalidMessage("template needs a subject and a text or html body")
    if not isinstance(message.get("delivery_id", ""), str):
        raise InvalidMessage("delivery_id must be a string")
    _check_callback_url(message["callback_url"])
    return message


def _is_raw(recipient: dict) -> bool:
    """The recipient's message is the LMS's own MIME (SMTP submission)."""
    return "raw" in recipient or "raw_url" in recipient


def _check_recipient(recipient: Any) -> None:
    if not isinstance(recipient, dict) or not isinstance(recipient.get("email"), str):
        raise InvalidMessage("every recipient needs an email")
    if "raw" in recipient and not isinstance(recipient["raw"], str):
        raise InvalidMessage("raw must be base64 text")
    if "raw_url" in recipient and not (isinstance(recipient["raw_url"], str)
                                       and recipient["raw_url"].startswith(("https://", "http://"))):
        raise InvalidMessage("raw_url must be an http(s) URL")
    if not isinstance(recipient.get("data", {}) or {}, dict):
        raise InvalidMessage("recipient data must be an object")
    rendered = recipient.get("rendered")
    if rendered is not None and (not isinstance(rendered, dict) or not isinstance(rendered.get("subject"), str)):
        raise InvalidMessage("rendered needs a subject")
    headers = recipient.get("headers") or {}
    if not isinstance(headers, dict) or any(not isinstance(v, str) or re.search(r"[\r\n\x00]", v)
                                            for v in headers.values()):
        raise InvalidMessage("headers must be single-line strings")
    for attachment in recipient.get("attachments") or []:
        if not isinstance(attachment, dict) or not all(isinstance(attachment.get(k), str)
                                                       for k in ("filename", "content_type", "content")):
            raise InvalidMessage("attachments need filename, content_type and content")


def _check_callback_url(url: str) -> None:
    if not url.startswith(("https://", "http://")):
        raise InvalidMessage("callback_url must be http(s)")
    if not url.startswith(allowed_prefix()):
        raise InvalidMessage("callback_url is not under ALLOWED_CALLBACK_PREFIX")


def allowed_prefix() -> str:
    """The service's public URL; required (an empty prefix would allow any callback URL)."""
    prefix = os.environ.get("ALLOWED_CALLBACK_PREFIX", "")
    if not prefix.startswith(("https://", "http://")):
        raise RuntimeError("ALLOWED_CALLBACK_PREFIX is not set to the service's public URL")
    return prefix


def content_of(message: dict, recipient: dict) -> dict[str, str | None]:
    """What to send this recipient: the service's rendering, else the legacy ``{{ name }}`` one."""
    rendered = recipient.get("rendered")
    if rendered is None:
        return render_recipient(message["template"], recipient.get("data") or {})
    return {"subject": re.sub(r"[\r\n]+", " ", rendered["subject"]).strip(),
            "text": rendered.get("text"), "html": rendered.get("html")}


# --------------------------------------------------------------------------- SES

@lru_cache(maxsize=1)
def ses_client() -> Any:
    """The SES v2 client, made once per container (AWS_ENDPOINT_URL_SESV2 honoured)."""
    return boto3.client("sesv2", config=Config(
        retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=20))


@lru_cache(maxsize=1)
def s3_client() -> Any:
    """The S3 client for the markers (AWS_ENDPOINT_URL_S3 honoured)."""
    return boto3.client("s3", config=Config(
        retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=10))


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


@dataclass
class Mail:
    """One recipient's finished email (or the LMS's own MIME: ``raw`` / ``raw_url``)."""

    email: str
    content: dict
    headers: dict = field(default_factory=dict)
    attachments: list = field(default_factory=list)
    raw: str | None = None
    raw_url: str | None = None

    @property
    def alone(self) -> bool:
        """Sent with a call of its own (SendEmail), not in a bulk call."""
        return bool(self.attachments or self.raw is not None or self.raw_url)

    @property
    def parts(self) -> tuple[str, ...]:
        return ("subject", *(part for part in ("text", "html") if self.content.get(part) is not None))


def _header_list(headers: dict) -> list[dict]:
    return [{"Name": name, "Value": value} for name, value in headers.items() if value]


def _configuration_set(message: dict, request: dict) -> dict:
    name = message.get("configuration_set") or os.environ.get("SES_CONFIGURATION_SET")
    if name:
        request["ConfigurationSetName"] = name
    return request


def _bulk_request(message: dict, chunk: list[Mail]) -> dict:
    parts = chunk[0].parts
    content = {part.capitalize(): PASS_THROUGH[part] for part in parts}
    entries = []
    for mail in chunk:
        entry = {"Destination": {"ToAddresses": [mail.email]},
                 "ReplacementEmailContent": {"ReplacementTemplate": {
                     "ReplacementTemplateData": json.dumps({part: mail.content[part] for part in parts}),
                 }}}
        if mail.headers:
            entry["ReplacementHeaders"] = _header_list(mail.headers)
        entries.append(entry)
    return _configuration_set(message, {
        "FromEmailAddress": message["sender"],
        "DefaultContent": {"Template": {"TemplateContent": content,
                                        "TemplateData": json.dumps(dict.fromkeys(parts, ""))}},
        "BulkEmailEntries": entries,
    })


def _single_request(message: dict, mail: Mail) -> dict:
    body = {part.capitalize(): {"Data": mail.content[part], "Charset": "UTF-8"}
            for part in ("text", "html") if mail.content.get(part) is not None}
    simple: dict[str, Any] = {"Subject": {"Data": mail.content["subject"], "Charset": "UTF-8"}, "Body": body}
    if mail.headers:
        simple["Headers"] = _header_list(mail.headers)
    if mail.attachments:
        simple["Attachments"] = [{"FileName": a["filename"], "ContentType": a["content_type"],
                                  "RawContent": base64.b64decode(a["content"]), "ContentDisposition": "ATTACHMENT",
                                  "ContentTransferEncoding": "BASE64"} for a in mail.attachments]
    return _configuration_set(message, {"FromEmailAddress": message["sender"],
                                        "Destination": {"ToAddresses": [mail.email]},
                                        "Content": {"Simple": simple}})


def error_code(code) -> str:
    """The code a result reports: SES's code (letters, digits, ``_.-``; 64 at most), never SES's text:
    the service maps codes to its own words, as in direct mode."""
    return re.sub(r"[^A-Za-z0-9_.-]", "", str(code or ""))[:64] or "Unknown"


def _call_error(exc: ClientError, chunk: list[Mail]) -> list[dict]:
    """A whole-call SES error as per-recipient results, or RetryLater when it is transient."""
    code = error_code(exc.response.get("Error", {}).get("Code", "Unknown"))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if code in RETRYABLE_CALL_ERRORS or status >= 500:
        raise RetryLater(f"SES {code}") from None
    return [{"email": mail.email, "status": "failed", "error": code} for mail in chunk]


MAX_RAW_BYTES = 40 * 1024 * 1024  # SES v2's own limit for a message


def raw_bytes(mail: Mail) -> bytes:
    """The LMS's MIME of a raw mail: inline, or fetched from its presigned link."""
    if mail.raw is not None:
        return base64.b64decode(mail.raw)
    request = urllib.request.Request(mail.raw_url, headers={"User-Agent": "manireports-offload-lambda"})
    try:
        with _opener.open(request, timeout=20) as response:
            data = response.read(MAX_RAW_BYTES + 1)
    except (urllib.error.URLError, OSError) as exc:
        raise RetryLater(f"raw message not fetched: {type(getattr(exc, 'reason', exc)).__name__}") from None
    if len(data) > MAX_RAW_BYTES:
        raise InvalidMessage("raw message larger than SES takes")
    return data


def with_headers(raw: bytes, headers: dict) -> bytes:
    """``raw`` with ``headers`` at the top of its header block, replacing the fields of the same names
    (each with its folded lines); every other byte as it came."""
    if not headers:
        return raw
    end = next((i + 1 for i in range(len(raw) - 1) if raw[i] == 10 and raw[i + 1] in (10, 13)), len(raw))
    eol = b"\r\n" if b"\r\n" in raw[:end] or not raw else b"\n"
    names = {name.lower() for name in headers}
    kept = [f for f in re.findall(rb"[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*(?:\r?\n|$)", raw[:end]) if f]
    kept = [f for f in kept if f.split(b":", 1)[0].strip().decode("latin-1").lower() not in names]
    added = b"".join(f"{name}: {value}".encode() + eol for name, value in headers.items())
    return added + b"".join(kept) + raw[end:]


def _raw_request(message: dict, mail: Mail) -> dict:
    data = raw_bytes(mail)
    if mail.raw is None:  # fetched by its link: the recipient's own fields go on top here
        data = with_headers(data, mail.headers)
    return _configuration_set(message, {"Destination": {"ToAddresses": [mail.email]},
                                        "Content": {"Raw": {"Data": data}}})


def send_chunk(message: dict, chunk: list[Mail]) -> list[dict]:
    """One ``SendBulkEmail`` call (or one ``SendEmail`` for a mail with attachments, or the LMS's MIME).

    Raises:
        RetryLater: SES throttled or was unavailable; nothing in this chunk was sent.
    """
    try:
        if len(chunk) == 1 and (chunk[0].raw is not None or chunk[0].raw_url):
            try:
                request = _raw_request(message, chunk[0])
            except (InvalidMessage, ValueError) as exc:  # not base64, or too big: this one fails
                log.warning("Raw message not sent: %s", exc)
                return [{"email": chunk[0].email, "status": "failed", "error": "invalid_raw_message"}]
            response = ses_client().send_email(**request)
            return [{"email": chunk[0].email, "status": "sent", "message_id": response.get("MessageId")}]
        if len(chunk) == 1 and chunk[0].attachments:
            response = ses_client().send_email(**_single_request(message, chunk[0]))
            return [{"email": chunk[0].email, "status": "sent", "message_id": response.get("MessageId")}]
        response = ses_client().send_bulk_email(**_bulk_request(message, chunk))
    except ClientError as exc:
        return _call_error(exc, chunk)
    except BotoCoreError as exc:
        raise RetryLater(f"SES unreachable: {type(exc).__name__}") from None
    entries = response.get("BulkEmailEntryResults", [])
    return [_entry_result(mail.email, entries[i] if i < len(entries) else None) for i, mail in enumerate(chunk)]


def _entry_result(email: str, entry: dict | None) -> dict:
    if entry is None:
        return {"email": email, "status": "retry"}
    status = entry.get("Status", "FAILED")
    if status == "SUCCESS":
        return {"email": email, "status": "sent", "message_id": entry.get("MessageId")}
    if status in RETRYABLE_ENTRY_STATUSES:
        return {"email": email, "status": "retry"}
    return {"email": email, "status": "failed", "error": error_code(status)}


def chunks(mails: list[Mail]) -> list[list[Mail]]:
    """Bulk calls of up to 50 mails in a row with the same parts; a mail with attachments (or raw) alone."""
    out: list[list[Mail]] = []
    for mail in mails:
        last = out[-1] if out else None
        if mail.alone or last is None or last[0].alone or last[0].parts != mail.parts \
                or len(last) == SES_BULK_LIMIT:
            out.append([mail])
        else:
            last.append(mail)
    return out


def send_batch(message: dict) -> Outcome:
    """Send every recipient what the message carries; stop at the first transient failure."""
    mails, unrendered = [], []
    for r in message["recipients"]:
        try:
            content = {} if _is_raw(r) else content_of(message, r)
        except MissingField as exc:  # the legacy render: this recipient fails alone, with the reason
            unrendered.append({"email": r["email"], "status": "failed", "error": str(exc)})
            continue
        mails.append(Mail(r["email"], content, r.get("headers") or {}, r.get("attachments") or [], r.get("raw"),
                          r.get("raw_url")))
    outcome = Outcome(total=len(message["recipients"]), results=unrendered)
    for chunk in chunks(mails):
        try:
            results = send_chunk(message, chunk)
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
    outcome.left = [mail.email for mail in mails if mail.email not in done] if outcome.retry else []
    return outcome


# --------------------------------------------------------------------------- markers (exactly once)

class Markers:
    """What this worker sent, per batch delivery, in the company's S3 bucket (``MARKER_BUCKET``)."""

    def __init__(self, bucket: str):
        if not bucket:
            raise RuntimeError("MARKER_BUCKET is not set")
        self.bucket = bucket

    @staticmethod
    def key(message: dict, fallback: str) -> str:
        delivery = re.sub(r"[^A-Za-z0-9._-]", "_", message.get("delivery_id") or fallback)[:200]
        return f"deliveries/{int(message.get('company_id') or 0)}/{message['job_id']}/{delivery}.json"

    def read(self, key: str) -> dict | None:
        try:
            body = s3_client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return json.loads(body)

    def claim(self, key: str) -> bool:
        """Create the ``sending`` marker; False when a marker appeared meanwhile."""
        body = json.dumps({"state": "sending", "at": int(time.time())}).encode()
        try:
            s3_client().put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*",
                                   ContentType="application/json")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def store(self, key: str, record: dict) -> None:
        s3_client().put_object(Bucket=self.bucket, Key=key, Body=json.dumps(record).encode(),
                               ContentType="application/json")

    def release(self, key: str) -> None:
        s3_client().delete_object(Bucket=self.bucket, Key=key)


# --------------------------------------------------------------------------- callback

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would turn the POST into a GET and drop the body."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def post_callback(url: str, payload: dict, secret: str, msg_id: str) -> None:
    """POST the signed callback under ``msg_id``; retry transient failures a few times in place.

    Raises:
        CallbackRejected: 3xx or 4xx (other than 408/429): do not retry the record.
        RetryLater: still failing after the attempts.
    """
    body = json.dumps(payload, separators=(",", ":")).encode()
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

def process_message(message: dict, secret: str, fallback_key: str) -> bool:
    """Send one batch message exactly once and call back; True when it must come again later."""
    job, batch = message["job_id"], message["batch_number"]
    started = time.monotonic()
    markers = Markers(os.environ.get("MARKER_BUCKET", ""))
    key = markers.key(message, fallback_key)
    record = markers.read(key)
    if record is None and not markers.claim(key):
        record = markers.read(key) or {"state": "sending"}
    if record is not None:
        if record.get("state") != "sent":
            log.warning("Batch %s/%s: a delivery of it is being sent or died mid-send; not sending blind, "
                        "will retry", job, batch)
            return True
        log.info("Batch %s/%s: already sent; posting its stored results again", job, batch)
        return _report(message, record["payload"], record["webhook_id"], secret)
    outcome = send_batch(message)
    sent = sum(1 for r in outcome.results if r["status"] == "sent")
    log.info("Batch %s/%s: %d sent, %d failed, %d left to retry", job, batch, sent,
             len(outcome.results) - sent, outcome.total - len(outcome.results))
    if not outcome.results and outcome.retry:
        markers.release(key)  # nothing was sent: the whole message may go again
        return True
    # Some were sent: report them, and hand what is left back to the service as
    # retryable failures; it re-submits only those, so nobody gets a second email.
    results = outcome.results + [{"email": email, "status": "failed", "error": "transient_failure",
                                  "retryable": True} for email in outcome.left]
    payload = {"job_id": job, "batch_number": batch, "status": outcome.status, "results": results,
               "usage": usage_of(started)}
    webhook_id = f"msg_{uuid.uuid4().hex}"  # the same id on every attempt and every re-post
    markers.store(key, {"state": "sent", "webhook_id": webhook_id, "payload": payload})
    return _report(message, payload, webhook_id, secret)


def usage_of(started: float) -> dict:
    """What this delivery used of the Lambda, for the service's cost estimate: the milliseconds
    from taking the message to posting its callback (the callback's own round trip is not in them)
    and the function's memory (``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``, set by Lambda)."""
    memory = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")
    return {"duration_ms": round((time.monotonic() - started) * 1000),
            "memory_mb": int(memory) if memory.isdigit() else None}


def _report(message: dict, payload: dict, webhook_id: str, secret: str) -> bool:
    job, batch = message["job_id"], message["batch_number"]
    try:
        post_callback(message["callback_url"], payload, secret, webhook_id)
    except CallbackRejected as exc:
        log.error("Batch %s/%s: callback refused (%s); not retrying, emails were sent", job, batch, exc)
    except RetryLater as exc:
        log.warning("Batch %s/%s: %s; will retry (results are stored, nothing is sent again)", job, batch, exc)
        return True
    return False


def process_record(record: dict, secret: str) -> bool:
    """Handle one SQS record; return True when it must be delivered again."""
    return process_message(parse_message(record["body"]), secret, record.get("messageId", "record"))


def _time_is_short(context: Any) -> bool:
    """True when too little of the invocation is left to send a batch and call back."""
    budget_ms = float(os.environ.get("RECORD_TIME_BUDGET_S", "40")) * 1000
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return remaining is not None and remaining() < budget_ms


def _secret() -> str:
    secret = os.environ.get("CALLBACK_SECRET", "")
    if not secret:
        raise RuntimeError("CALLBACK_SECRET is not set")  # the whole batch is retried
    allowed_prefix()
    return secret


def handler(event: dict, context: Any) -> dict:
    """Lambda entry point: an API Gateway HTTP API (payload 2.0) request, or an SQS
    event from an event source mapping with ReportBatchItemFailures."""
    if event.get("version") == "2.0" and "requestContext" in event:
        return http_handler(event, _secret())
    secret = _secret()
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


# --------------------------------------------------------------------------- HTTPS (API Gateway)

def _response(status: int, body: dict, headers: dict | None = None) -> dict:
    return {"statusCode": status, "headers": {"Content-Type": "application/json", **(headers or {})},
            "body": json.dumps(body)}


def _authorized(headers: dict) -> bool:
    token = os.environ.get("AUTH_TOKEN", "")
    if not token:
        return True
    offered = headers.get("authorization", "")
    return hmac.compare_digest(offered.encode(), f"Bearer {token}".encode())


def http_handler(event: dict, secret: str) -> dict:
    """``POST /batches``: verify the token and the signature of the raw body, then
    parse it and handle it like an SQS record (200 done, 503 come again later)."""
    http = event.get("requestContext", {}).get("http", {})
    if http.get("method") != "POST" or not (event.get("rawPath") or "").endswith("/batches"):
        return _response(404, {"error": "not_found"})
    headers = {name.lower(): value for name, value in (event.get("headers") or {}).items()}
    raw = event.get("body") or ""
    body = base64.b64decode(raw) if event.get("isBase64Encoded") else raw.encode()
    if not _authorized(headers):
        return _response(401, {"error": "unauthorized"})
    try:
        verify([secret], headers, body)
    except (WebhookError, ValueError):
        return _response(401, {"error": "bad_signature"})
    try:
        message = parse_message(body)
    except InvalidMessage as exc:
        log.error("Request %s: invalid batch message (%s)", headers.get("webhook-id", "?"), exc)
        return _response(400, {"error": "invalid_message"})
    if process_message(message, secret, headers.get("webhook-id", "request")):
        return _response(503, {"error": "retry_later"}, {"Retry-After": "30"})
    return _response(200, {"ok": True})
