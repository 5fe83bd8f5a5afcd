"""Offload transports: put batch messages on a company's own cloud queue.

In ``offload`` mode the service does not send email itself: each batch
becomes one message (CONTRACT §5) on the company's queue, and the company's
cloud worker sends it and posts a signed callback (CONTRACT §4). A transport
only delivers those messages to the queue; it knows nothing of jobs,
templates or callbacks, and imports nothing from ``dashboard`` or ``tasks``.

``submit`` takes ``(key, message)`` pairs and returns one ``SubmitResult``
per pair, in order. A failure of the very first queue call is raised as a
``providers.base.ProviderError`` subclass (``ConnectionFailure`` lets the
caller take the SMTP fallback); once some messages are on the queue, a later
call's failure is reported per message instead of raised, so the caller
never re-submits messages that were already accepted.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from providers import guard, pinning, registry, ses, smtp, webhooks
from providers.aws import AWS_SETTINGS, aws_session, has_credentials
from providers.base import (
    ConnectionFailure,
    PermanentError,
    ProviderError,
    RetryableError,
    ThrottledError,
    for_field,
    guarded_url,
    not_the_provider,
    safe_code,
)
from providers.cloudflare import CLOUDFLARE_SETTINGS

log = logging.getLogger(__name__)

#: SQS's classic cap, per message and per SendMessageBatch call (queues may be
#: configured up to 1 MiB since 2025; 256 KiB is safe for every queue).
MAX_BATCH_BYTES = 256 * 1024


@dataclass(frozen=True)
class SubmitResult:
    """The outcome for one message.

    ``ok`` is True when the queue accepted it (``message_id`` when the queue
    returns one); otherwise ``error`` says why and ``retryable`` whether the
    same message may be submitted again later.
    """

    key: str
    ok: bool
    error: str | None = None
    retryable: bool = False
    message_id: str | None = None
    #: the endpoint refused the message for good (HTTPS 4xx): pause, do not fail
    pause: bool = False
    #: the message's encoded bytes, as the queue billed them (0 when it never reached the queue)
    size: int = field(default=0, compare=False)


class EndpointRejected(PermanentError):
    """The company's HTTPS endpoint refused a batch (4xx) or its URL is not allowed:
    the job pauses with ``reason`` until the company fixes its endpoint."""


def encode_message(message: dict) -> bytes:
    """Serialise a batch message compactly, as it will travel on the queue.

    Non-ASCII text is escaped (``\\uXXXX``): SQS refuses some code points
    (U+FFFE, U+FFFF) and lone surrogates, and escaped JSON always passes.
    """
    return json.dumps(message, separators=(",", ":")).encode("ascii")


def delivery_id(batch_id: int, recipient_ids: list[int]) -> str:
    """The key of one batch message: the batch and the exact recipients it carries.

    A cloud worker records what it sent under this key. Sending the same
    recipients of the same batch again (a retry after a timeout, a re-submit
    after a lost callback) gives the same key, so the worker re-posts what it
    already sent instead of sending twice; a re-submit of the unsent rest of a
    batch carries other recipients, hence another key.
    """
    digest = hashlib.sha256(",".join(map(str, recipient_ids)).encode()).hexdigest()[:24]
    return f"b{batch_id}-{digest}"


def split_recipients(envelope: dict, entries: list[dict], limit: int) -> tuple[list[list[int]], list[int]]:
    """Pack recipient entries into as few messages as fit in ``limit`` encoded bytes.

    ``envelope`` is the message without its recipients (with a ``delivery_id``
    of the final length). Returns the parts as lists of indexes into
    ``entries``, in order, and the indexes of entries too large for any message.
    """
    base = len(encode_message({**envelope, "recipients": []}))
    parts: list[list[int]] = []
    too_large: list[int] = []
    current: list[int] = []
    size = base
    for index, entry in enumerate(entries):
        length = len(encode_message(entry))
        if base + length > limit:
            too_large.append(index)
            continue
        extra = length + (1 if current else 0)  # the comma between entries
        if current and size + extra > limit:
            parts.append(current)
            current, size, extra = [], base, length
        current.append(index)
        size += extra
    if current:
        parts.append(current)
    return parts, too_large


class OffloadTransport:
    """Base class: subclasses set ``name`` and implement ``_send_call``.

    ``label`` names the queue in the connection test; ``queue_setting`` is
    the setting whose presence asks for that test outside offload mode;
    ``settings`` is the group of settings it reads (``providers.registry``);
    ``cloud`` is the endpoint guard's name for the hosts it calls.
    """

    name: ClassVar[str] = ""
    #: older names it still answers to (``registry.canonical``)
    aliases: ClassVar[tuple[str, ...]] = ()
    label: ClassVar[str] = ""
    cloud: ClassVar[str] = ""
    queue_setting: ClassVar[str] = ""
    settings: ClassVar[registry.SettingsGroup | None] = None
    #: messages per queue API call
    max_batch: ClassVar[int] = 10
    #: bytes per message, and per call in total
    max_message_bytes: ClassVar[int] = MAX_BATCH_BYTES
    max_call_bytes: ClassVar[int] = MAX_BATCH_BYTES

    def __init__(self, config: dict):
        self.config = config

    @classmethod
    def configured(cls, config: dict) -> bool:
        """Whether ``config`` holds what submitting needs (the onboarding checklist asks)."""
        return bool(config.get(cls.queue_setting))

    def submit(self, messages: list[tuple[str, dict]]) -> list[SubmitResult]:
        """Put ``messages`` on the queue; one ``SubmitResult`` per message, same order."""
        results: dict[int, SubmitResult] = {}
        encoded: list[tuple[int, str, bytes]] = []
        for index, (key, message) in enumerate(messages):
            body = encode_message(message)
            if len(body) > self.max_message_bytes:
                results[index] = SubmitResult(key, False, error=(
                    f"message too large: {len(body)} bytes, the {self.name} queue takes at most "
                    f"{self.max_message_bytes}; lower OFFLOAD_BATCH_SIZE or shorten the template"))
            else:
                encoded.append((index, key, body))
        accepted_any = False
        calls = list(self._calls(encoded))
        for number, call in enumerate(calls):
            try:
                call_results = self._send_call([(key, body) for _, key, body in call])
            except ProviderError as exc:
                if not accepted_any:
                    raise
                log.warning("Offload %s: call %d of %d failed after earlier calls succeeded: %s",
                            self.name, number + 1, len(calls), exc.reason)
                self._fail_rest(calls[number:], exc, results)
                break
            for (index, _, body), result in zip(call, call_results, strict=True):
                results[index] = replace(result, size=len(body))
                accepted_any = accepted_any or result.ok
        return [results[index] for index in range(len(messages))]

    @staticmethod
    def _fail_rest(calls: list[list[tuple[int, str, bytes]]], exc: ProviderError,
                   results: dict[int, SubmitResult]) -> None:
        retryable = isinstance(exc, RetryableError)
        pause = isinstance(exc, EndpointRejected)
        for call in calls:
            for index, key, _ in call:
                results[index] = SubmitResult(key, False, error=exc.reason, retryable=retryable, pause=pause)

    def _calls(self, encoded: list[tuple[int, str, bytes]]) -> Iterator[list[tuple[int, str, bytes]]]:
        """Group messages into calls of at most ``max_batch`` messages and ``max_call_bytes``."""
        call: list[tuple[int, str, bytes]] = []
        size = 0
        for item in encoded:
            body_size = self._wire_size(item[2])
            if call and (len(call) == self.max_batch or size + body_size > self.max_call_bytes):
                yield call
                call, size = [], 0
            call.append(item)
            size += body_size
        if call:
            yield call

    def _wire_size(self, body: bytes) -> int:
        """Bytes a message counts towards the per-call limit."""
        return len(body)

    def _send_call(self, batch: list[tuple[str, bytes]]) -> list[SubmitResult]:
        """Send one API call's worth of messages; raise ``ProviderError`` if the call fails."""
        raise NotImplementedError

    def test_connection(self) -> dict:
        """Check credentials and the queue; return facts to show the operator."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections; safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def register_transport(cls: type[OffloadTransport]) -> type[OffloadTransport]:
    """Class decorator: make ``cls`` available under ``cls.name`` (``registry``, kind ``transport``)."""
    return registry.add(registry.TRANSPORT, cls.name, cls)


def get_transport(name: str, config: dict) -> OffloadTransport:
    """Build the transport ``name`` (``sqs``, ``cloudflare_queue`` or ``https``) from ``config``."""
    try:
        return registry.create(registry.TRANSPORT, name, config)
    except registry.UnknownBackend:
        raise PermanentError(f"no offload transport for provider {name!r}") from None


def _require(config: dict, *keys: str) -> None:
    missing = [key for key in keys if not config.get(key)]
    if missing:
        raise PermanentError(f"offload settings missing: {', '.join(missing)}", code="config")


# --------------------------------------------------------------------------- AWS SQS

_SQS_THROTTLING = {
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequestsException", "RequestLimitExceeded",
    "AWS.SimpleQueueService.RequestThrottled", "KmsThrottled", "KMS.ThrottlingException",
}
_SQS_TRANSIENT = {
    "InternalError", "InternalFailure", "ServiceUnavailable", "RequestTimeout",
    "RequestTimeoutException", "AWS.SimpleQueueService.ServiceUnavailable",
}
_SQS_AUTH_CODES = {"InvalidClientTokenId", "SignatureDoesNotMatch", "AccessDenied", "AccessDeniedException",
                   "UnrecognizedClientException", "ExpiredToken", "InvalidSecurity", "config"}
_SQS_REGION = re.compile(r"^https://sqs[.-]([a-z0-9-]+)\.amazonaws\.com")


#: what the cloud workers' own result codes mean (the Lambda's others are SES's codes)
WORKER_PHRASES = {
    "invalid_raw_message": "the LMS's message could not be read, or is larger than the provider takes",
    "transient_failure": "a transient failure; sent again later",
    "send_refused": "the email service refused the message",
}
_WORKER_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_SMTP_REPLY = re.compile(r"\s*([245]\d\d)\b[ -]?(.*)", re.S)
#: what an unknown code says, by the result's word
_UNKNOWN = {"retry": "not sent yet; sent again later", "suppressed": "on the provider's suppression list"}


def worker_reason(error: str | None, word: str = "failed") -> str | None:
    """What a recipient stores for a cloud worker's result ``error``: its code in the same fixed words
    as direct mode (SES's codes as ``providers.ses`` words them, an SMTP reply as ``providers.smtp``
    does), never remote text. Workers send a code; an older one sent ``"CODE: provider text"``, of
    which only the code is kept."""
    if not error:
        return None
    reply = _SMTP_REPLY.fullmatch(str(error))
    if reply:  # a receiving server's reply (a bounce): its codes, in the SMTP backend's words
        return smtp.reply_reason(int(reply.group(1)), reply.group(2))
    head = str(error).split(":", 1)[0].strip().replace(" ", "_")
    code = head if _WORKER_CODE.fullmatch(head) else "Unknown"
    if code in WORKER_PHRASES:
        return f"{code}: {WORKER_PHRASES[code]}"
    if ses.known_code(code):  # the SES backend's words for SES's codes (the Lambda sends them)
        return ses.code_reason(code)
    return f"{code}: {_UNKNOWN.get(word, 'the provider refused the message')}"


def classify_aws_error(exc: Exception) -> ProviderError:
    """Map a botocore exception to the providers.base hierarchy (no secrets in the reason)."""
    from botocore import exceptions as bce

    if isinstance(exc, ProviderError):  # no credentials, a refused endpoint: already ours
        return exc
    if isinstance(exc, bce.ClientError):
        error = exc.response.get("Error", {})
        code = safe_code(error.get("Code", "Unknown"))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        reason = f"{code} (HTTP {status}): the queue refused the request" if status else \
            f"{code}: the queue refused the request"
        if code in _SQS_THROTTLING or status == 429:
            return ThrottledError(reason, code=code)
        if code in _SQS_TRANSIENT or status >= 500:
            return RetryableError(reason, code=code)
        return PermanentError(reason, code=code)
    # every transport failure says the same: a closed port reads as an open one
    if isinstance(exc, (bce.EndpointConnectionError, bce.ConnectTimeoutError,
                        bce.ConnectionClosedError, bce.ProxyConnectionError, bce.SSLError, bce.HTTPClientError)):
        return ConnectionFailure(f"cannot reach the queue: {pinning.UNREACHABLE}", code="connection")
    if isinstance(exc, bce.ReadTimeoutError):
        return RetryableError(f"cannot reach the queue: {pinning.UNREACHABLE}", code="timeout")
    if isinstance(exc, bce.ResponseParserError):  # its text quotes the raw body: never shown
        return RetryableError("the queue's answer could not be read as SQS's", code="unreadable")
    if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError, bce.NoRegionError,
                        bce.ParamValidationError)):
        return PermanentError(f"{type(exc).__name__}: the queue settings are incomplete or invalid", code="config")
    # anything else (ResponseParserError quotes the raw body): the exception type only
    return RetryableError(f"{type(exc).__name__}: unexpected error talking to the queue", code="unknown")


@register_transport
class SqsTransport(OffloadTransport):
    """AWS SQS ``SendMessageBatch``: 10 messages per call.

    Config keys: ``sqs_queue_url`` (required), ``aws_access_key``,
    ``aws_secret_key`` (else boto3's default credential chain),
    ``aws_region`` (else taken from the queue URL), ``aws_endpoint_url``
    (else boto3's ``AWS_ENDPOINT_URL_SQS``/``AWS_ENDPOINT_URL``). botocore's
    own retries are off: the caller's retry policy is the only one.
    """

    name = "sqs"
    #: SES and SQS were both "aws" before each had a name of its own
    aliases = ("aws",)
    label = "Amazon SQS queue"
    cloud = "aws"
    queue_setting = "sqs_queue_url"
    settings = AWS_SETTINGS
    max_batch = 10

    @classmethod
    def configured(cls, config: dict) -> bool:
        return bool(config.get(cls.queue_setting)) and has_credentials(config)

    def __init__(self, config: dict):
        super().__init__(config)
        _require(config, "sqs_queue_url")
        self.queue_url: str = config["sqs_queue_url"]
        self.fifo = self.queue_url.endswith(".fifo")
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The boto3 SQS client, built on first use."""
        if self._client is None:
            self._client = self._build_client()
        return self._client

    def _build_client(self) -> Any:
        from botocore.config import Config

        match = _SQS_REGION.match(self.queue_url)
        region = self.config.get("aws_region") or (match.group(1) if match else None)
        guarded_url(self.config, self.queue_url, "aws")
        endpoint_url = guarded_url(self.config, self.config.get("aws_endpoint_url"), "aws")
        try:
            return pinning.pin(aws_session(self.config, region).client(
                "sqs",
                region_name=region,
                endpoint_url=endpoint_url,
                config=Config(retries={"mode": "standard", "total_max_attempts": 1},
                              connect_timeout=5, read_timeout=float(self.config.get("timeout") or 15)),
            ))
        except ProviderError:
            raise
        except Exception as exc:  # botocore raises NoRegionError etc. here
            raise classify_aws_error(exc) from exc

    def _entry(self, number: int, key: str, body: bytes) -> dict:
        entry = {"Id": f"m{number}", "MessageBody": body.decode("utf-8")}
        if self.fifo:
            # A group per batch keeps batches independent (no head-of-line blocking);
            # the key also dedupes a resubmit within SQS's five-minute window.
            token = re.sub(r"[^A-Za-z0-9!-/:-@\[-`{-~]", "_", key)[:128]
            entry["MessageGroupId"] = token
            entry["MessageDeduplicationId"] = token
        return entry

    def _send_call(self, batch: list[tuple[str, bytes]]) -> list[SubmitResult]:
        entries = [self._entry(number, key, body) for number, (key, body) in enumerate(batch)]
        try:
            response = self.client.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
        except Exception as exc:
            raise classify_aws_error(exc) from exc
        return self._map_results(batch, response)

    @staticmethod
    def _map_results(batch: list[tuple[str, bytes]], response: dict) -> list[SubmitResult]:
        ok = {item["Id"]: item.get("MessageId") for item in response.get("Successful", [])}
        failed = {item["Id"]: item for item in response.get("Failed", [])}
        results = []
        for number, (key, _) in enumerate(batch):
            entry_id = f"m{number}"
            if entry_id in ok:
                results.append(SubmitResult(key, True, message_id=ok[entry_id]))
                continue
            failure = failed.get(entry_id, {"Code": "Missing", "SenderFault": False,
                                             "Message": "no result for this entry"})
            error = f"{failure.get('Code')}: the queue refused this message"
            results.append(SubmitResult(key, False, error=error,
                                        retryable=not failure.get("SenderFault", False)))
        return results

    def test_connection(self) -> dict:
        """``GetQueueAttributes``: message count, dead-letter queue, encryption. Passes only on SQS's
        own answer (the queue's attributes, its ARN among them)."""
        field = "aws_endpoint_url" if self.config.get("aws_endpoint_url") else "sqs_queue_url"
        try:
            attrs = self.client.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["All"])
        except Exception as exc:
            error = classify_aws_error(exc)
            credentials = error.code in _SQS_AUTH_CODES
            raise for_field(error, "aws_access_key" if credentials else field) from None
        attrs = attrs.get("Attributes") if isinstance(attrs, dict) else None
        if not isinstance(attrs, dict) or not str(attrs.get("QueueArn") or "").startswith("arn:"):
            raise not_the_provider(self.label, field, "GetQueueAttributes gave no queue ARN")
        redrive = json.loads(attrs["RedrivePolicy"]) if attrs.get("RedrivePolicy") else None
        encrypted = attrs.get("SqsManagedSseEnabled") == "true" or bool(attrs.get("KmsMasterKeyId"))
        warnings = []
        if redrive is None:
            warnings.append("the queue has no dead-letter queue (RedrivePolicy)")
        if not encrypted:
            warnings.append("the queue is not encrypted at rest; batch data may carry secrets")
        return {
            "queue_url": self.queue_url,
            "queue_arn": attrs.get("QueueArn"),
            "approximate_messages": int(attrs.get("ApproximateNumberOfMessages", 0)),
            "dead_letter_queue": redrive is not None,
            "dead_letter_target_arn": redrive and redrive.get("deadLetterTargetArn"),
            "max_receive_count": redrive and int(redrive.get("maxReceiveCount", 0)),
            "encrypted": encrypted,
            "warnings": warnings,
        }

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


# --------------------------------------------------------------------------- Cloudflare Queues

DEFAULT_CLOUDFLARE_API = "https://api.cloudflare.com/client/v4"


def _cloudflare_reason(response: Any) -> tuple[str, str]:
    """Return ``(code, reason)`` from a Cloudflare v4 error envelope, never echoing the token."""
    try:
        errors = response.json().get("errors") or []
    except ValueError:
        errors = []
    if errors and isinstance(errors[0], dict) and str(errors[0].get("code", "")).isdigit():
        code = str(errors[0]["code"])[:12]  # the code only: the message is the remote's text
        return code, f"Cloudflare HTTP {response.status_code} (error {code}): the API refused the request"
    return str(response.status_code), f"Cloudflare HTTP {response.status_code}: the API refused the request"


def classify_cloudflare_response(response: Any) -> ProviderError:
    """Map a failed Cloudflare API response to the providers.base hierarchy."""
    code, reason = _cloudflare_reason(response)
    status = response.status_code
    if status == 429:
        retry_after = response.headers.get("Retry-After")
        seconds = float(retry_after) if retry_after and retry_after.isdigit() else None
        return ThrottledError(reason, code=code, retry_after=seconds)
    if status >= 500 or status in (408, 409):
        return RetryableError(reason, code=code)
    return PermanentError(reason, code=code)


@register_transport
class CloudflareQueueTransport(OffloadTransport):
    """Cloudflare Queues REST API: ``POST .../queues/{id}/messages/batch``.

    Config keys: ``cloudflare_api_token`` (needs Queues Write),
    ``cloudflare_account_id``, ``cloudflare_queue_id`` (the queue's id, not
    its name), ``cloudflare_api_base`` (default the public API). Limits per
    call: 100 messages and 256 KB in total; 128 KB per message.
    """

    name = "cloudflare_queue"
    #: the Cloudflare sender's name, which the queue shared before it had its own
    aliases = ("cloudflare",)
    label = "Cloudflare Queue"
    cloud = "cloudflare"
    queue_setting = "cloudflare_queue_id"
    settings = CLOUDFLARE_SETTINGS
    max_batch = 100
    # Cloudflare counts decimal kilobytes (as miniflare's queue broker does).
    max_message_bytes = 128_000
    max_call_bytes = 256_000
    #: (connect, read) seconds
    timeout: tuple[float, float] = (5, 30)

    @classmethod
    def configured(cls, config: dict) -> bool:
        return all(config.get(key) for key in ("cloudflare_api_token", "cloudflare_account_id", cls.queue_setting))

    def __init__(self, config: dict):
        super().__init__(config)
        _require(config, "cloudflare_api_token", "cloudflare_account_id", "cloudflare_queue_id")
        self.api_base = (config.get("cloudflare_api_base") or DEFAULT_CLOUDFLARE_API).rstrip("/")
        if config.get("timeout"):
            self.timeout = (min(5.0, float(config["timeout"])), float(config["timeout"]))
        self._session: Any = None

    @property
    def session(self) -> Any:
        """A ``requests.Session`` carrying the bearer token, built on first use."""
        if self._session is None:
            self._session = pinning.session()
            self._session.headers.update({
                "Authorization": f"Bearer {self.config['cloudflare_api_token']}",
                "User-Agent": "manireports-offload",
            })
        return self._session

    @property
    def queue_path(self) -> str:
        account, queue = self.config["cloudflare_account_id"], self.config["cloudflare_queue_id"]
        return f"{self.api_base}/accounts/{account}/queues/{queue}"

    def _wire_size(self, body: bytes) -> int:
        # Each message travels wrapped as {"body": ..., "content_type": "json"}.
        return len(body) + 40

    def _request(self, method: str, url: str, **kwargs: Any) -> dict:
        """One API call; the parsed envelope on success, else a ``ProviderError``."""
        import requests

        guarded_url(self.config, self.api_base, "cloudflare")
        try:  # no redirects: a Location could name a host the guard never saw
            response = self.session.request(method, url, timeout=self.timeout, allow_redirects=False, **kwargs)
        except (requests.exceptions.ConnectTimeout, requests.ConnectionError):
            raise ConnectionFailure(f"cannot reach Cloudflare: {pinning.UNREACHABLE}", code="connection") from None
        except requests.Timeout:
            # Read timeout: the batch may or may not have been enqueued.
            raise RetryableError(f"cannot reach Cloudflare: {pinning.UNREACHABLE}", code="timeout") from None
        except requests.RequestException:
            raise RetryableError(f"cannot reach Cloudflare: {pinning.UNREACHABLE}", code="request") from None
        if response.status_code >= 300:
            raise classify_cloudflare_response(response)
        try:
            envelope = response.json()
        except ValueError:
            raise RetryableError(f"Cloudflare {response.status_code}: body is not JSON",
                                 code="bad_response") from None
        if not envelope.get("success", False):
            raise classify_cloudflare_response(response)
        return envelope

    def _send_call(self, batch: list[tuple[str, bytes]]) -> list[SubmitResult]:
        # The bodies are already-encoded JSON objects: splice them in rather than re-encode.
        parts = [b'{"body":' + body + b',"content_type":"json"}' for _, body in batch]
        payload = b'{"messages":[' + b",".join(parts) + b"]}"
        self._request("POST", f"{self.queue_path}/messages/batch", data=payload,
                      headers={"Content-Type": "application/json"})
        return [SubmitResult(key, True) for key, _ in batch]

    def test_connection(self) -> dict:
        """Verify the token (``GET /user/tokens/verify``), then read the queue's details. Passes only
        on Cloudflare's own answers: an active token, and the queue the settings name."""
        where = "cloudflare_api_base" if self.config.get("cloudflare_api_base") else "cloudflare_api_token"
        try:
            token = self._request("GET", f"{self.api_base}/user/tokens/verify").get("result")
        except ProviderError as exc:
            refused = isinstance(exc, PermanentError) and exc.code in ("1000", "401", "403")
            raise for_field(exc, "cloudflare_api_token" if refused else where) from None
        if not isinstance(token, dict) or "status" not in token:
            raise not_the_provider(self.label, where, "no token state in its answer")
        if token.get("status") != "active":
            status = token.get("status") if token.get("status") in ("disabled", "expired") else "not active"
            raise PermanentError(f"Cloudflare API token is {status}", code="token", field="cloudflare_api_token")
        try:
            queue = self._request("GET", self.queue_path).get("result")
        except ProviderError as exc:
            raise for_field(exc, "cloudflare_queue_id") from None
        if not isinstance(queue, dict) or queue.get("queue_id") != self.config["cloudflare_queue_id"]:
            raise not_the_provider(self.label, "cloudflare_queue_id", "it did not name the queue")
        return {
            "token_status": token.get("status", "active"),
            "token_expires_on": token.get("expires_on"),
            "queue_id": queue.get("queue_id", self.config["cloudflare_queue_id"]),
            "queue_name": queue.get("queue_name"),
            "consumers": len(queue.get("consumers") or []),
            "warnings": [] if queue.get("consumers") else ["the queue has no consumer worker"],
        }

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


# --------------------------------------------------------------------------- HTTPS (API Gateway, Worker fetch)

HTTPS_SETTINGS = registry.SettingsGroup(
    "offload", "HTTPS offload",
    "Offload mode without a queue: each batch is POSTed, signed with the callback secret, to the company's "
    "endpoint (an API Gateway in front of its Lambda, or its Worker's /batches). Blank: batches go to the SQS "
    "queue or Cloudflare Queue above.", (
        registry.Setting("offload_url", "Endpoint URL", "url",
                         placeholder="https://abc123.execute-api.eu-west-1.amazonaws.com/batches"),
        registry.Setting("offload_auth_token", "Authentication token", "secret",
                         help="optional; sent as Authorization: Bearer <token>"),
    ))


@register_transport
class HttpsTransport(OffloadTransport):
    """POST each batch message to the company's HTTPS endpoint.

    The endpoint is an API Gateway HTTP API in front of the company's Lambda,
    or the Cloudflare Worker's ``POST /batches``. Each request is signed per
    Standard Webhooks with the company's callback secret (``webhook-id`` is
    the message's ``delivery_id``, so a retried POST keeps its id) and
    carries ``Authorization: Bearer <offload_auth_token>`` when one is set.

    A 2xx means accepted; a 5xx, 408, 429 or timeout is retryable (the
    endpoint records what it sends per ``delivery_id``, so the same message
    again never sends twice); any other 4xx raises ``EndpointRejected``
    (``HTTP <status>`` and a fixed phrase: the remote body is never kept).
    The URL passes ``providers.guard.check_url`` first.

    Config keys: ``offload_url`` (required), ``callback_secret`` (required),
    ``offload_auth_token``, ``provider`` (the sender, whose cloud the URL must belong to).
    """

    name = "https"
    label = "HTTPS offload endpoint"
    queue_setting = "offload_url"
    settings = HTTPS_SETTINGS
    max_batch = 1
    #: as SQS: well under API Gateway's 10 MB and Lambda's 6 MB, and what the workers expect
    max_message_bytes = MAX_BATCH_BYTES
    #: (connect, read) seconds: the endpoint sends the batch before it answers
    timeout: tuple[float, float] = (5, 60)

    def __init__(self, config: dict):
        super().__init__(config)
        _require(config, "offload_url", "callback_secret")
        if config.get("timeout"):
            self.timeout = (min(5.0, float(config["timeout"])), float(config["timeout"]))
        self._session: Any = None

    @property
    def url(self) -> str:
        """``offload_url``, once the guard accepts it as a host of the company's sender's cloud."""
        try:
            cloud = registry.cloud(registry.SENDER, str(self.config.get("provider") or ""))
            return guard.check_url(self.config["offload_url"], cloud)
        except guard.EndpointRefused as exc:
            raise EndpointRejected(f"offload_url refused: {exc}", code="endpoint_refused") from None

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = pinning.session()
            self._session.headers["User-Agent"] = "manireports-offload"
            if self.config.get("offload_auth_token"):
                self._session.headers["Authorization"] = f"Bearer {self.config['offload_auth_token']}"
        return self._session

    def _headers(self, key: str, body: bytes) -> dict[str, str]:
        import time

        timestamp = int(time.time())
        msg_id = f"msg_{key}" if key else f"msg_{uuid.uuid4().hex}"
        # during a rotation's overlap, signed with the new and the previous secret (space-separated, as
        # Standard Webhooks allows): a worker that still has the old one verifies it until it is updated
        secrets = self.config.get("callback_secrets") or [self.config["callback_secret"]]
        return {"Content-Type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(timestamp),
                "webhook-signature": " ".join(webhooks.sign(secret, msg_id, timestamp, body) for secret in secrets)}

    def _send_call(self, batch: list[tuple[str, bytes]]) -> list[SubmitResult]:
        import requests

        [(key, body)] = batch
        url = self.url
        try:
            response = self.session.post(url, data=body, headers=self._headers(key, body), timeout=self.timeout,
                                         allow_redirects=False)
        except (requests.exceptions.ConnectTimeout, requests.ConnectionError):
            raise ConnectionFailure(f"the offload endpoint: {pinning.UNREACHABLE}", code="connection") from None
        except requests.Timeout:
            raise RetryableError(f"the offload endpoint: {pinning.UNREACHABLE}", code="https_timeout") from None
        except requests.RequestException:
            raise RetryableError(f"the offload endpoint: {pinning.UNREACHABLE}", code="request") from None
        status = response.status_code
        response.close()  # the body is never read: nothing of it reaches the tenant
        if 200 <= status < 300:
            return [SubmitResult(key, True)]
        if status >= 500 or status in (408, 429):
            raise RetryableError(f"HTTP {status}: the offload endpoint is unavailable", code=str(status))
        raise EndpointRejected(f"HTTP {status}: the offload endpoint refused the batch", code=str(status))

    def test_connection(self) -> dict:
        """POST a signed probe that is not a batch: the company's Lambda or Worker checks the token and
        the signature, then refuses the body as ``invalid_message`` (400), sending nothing. Only that
        answer passes; the refusals the workers give are said in words, anything else is not them."""
        import requests

        url, body = self.url, b'{"probe":true}'
        try:
            response = self.session.post(url, data=body, headers=self._headers("", body), timeout=self.timeout,
                                         allow_redirects=False)
        except requests.exceptions.ConnectTimeout:
            raise ConnectionFailure("cannot reach the offload endpoint: connect timeout", code="connection",
                                    field="offload_url") from None
        except requests.ConnectionError:
            raise ConnectionFailure("cannot reach the offload endpoint", code="connection",
                                    field="offload_url") from None
        except requests.Timeout:
            raise RetryableError("the offload endpoint did not answer in time", code="https_timeout",
                                 field="offload_url") from None
        except requests.RequestException as exc:
            raise RetryableError(f"offload endpoint request failed ({type(exc).__name__})", code="request",
                                 field="offload_url") from None
        status, answer = response.status_code, _json_error(response)
        if status == 400 and answer == "invalid_message":
            return {"offload_url": url, "authentication_token": bool(self.config.get("offload_auth_token")),
                    "signature": "accepted", "warnings": []}
        raise _probe_refusal(status, answer, self.label)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


def _json_error(response: Any) -> str | None:
    """The ``error`` word of a cloud worker's JSON answer (read, never shown), else ``None``."""
    try:
        body = response.json() if len(response.content) <= 4096 else None
    except ValueError:
        body = None
    finally:
        response.close()
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, str) else None


#: what the cloud workers answer a probe they refuse, in words (``cloud_workers``: POST /batches)
_PROBE_REFUSALS = {
    (401, "unauthorized"): ("the endpoint refused the authentication token", "offload_auth_token"),
    (401, "bad_signature"): ("the endpoint refused the signature: its CALLBACK_SECRET is not this company's "
                             "callback secret", "offload_url"),
    (503, "not_configured"): ("the Worker is not set up: its CALLBACK_SECRET or ALLOWED_CALLBACK_PREFIX is "
                              "missing", "offload_url"),
}


def _probe_refusal(status: int, answer: str | None, label: str) -> ProviderError:
    known = _PROBE_REFUSALS.get((status, answer or ""))
    if known is not None:
        return PermanentError(known[0], code=answer, field=known[1])
    if status >= 500:
        return RetryableError(f"HTTP {status}: the offload endpoint is unavailable", code=str(status),
                              field="offload_url")
    return not_the_provider(label, "offload_url", f"HTTP {status}, no refusal of the probe")
