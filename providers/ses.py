"""Amazon SES (API v2) as a direct-send provider.

Messages arrive already rendered, so bulk sends use ``SendBulkEmail`` with an
inline pass-through template: every part is a single triple-stash variable
(``{{{s}}}``, ``{{{t}}}``, ``{{{h}}}``) and each entry's
``ReplacementTemplateData`` carries that recipient's finished subject, text
and HTML. Triple braces never HTML-escape, and Handlebars does not re-read a
substituted value, so ``<``, ``&``, quotes and a literal ``{{`` in the user's
content arrive unchanged. Messages with attachments, and messages too big for
template data, go through ``SendEmail`` with ``Simple`` content; a message
taken by SMTP submission (``Message.raw``) with ``Raw`` content, as the LMS
wrote it. Such single sends in a row go ``SINGLE_CALLS_AT_ONCE`` at a time
(the chunk's tokens were taken for all of them before the call); a call that
fails settles the rest as one failing call does in a row of them.

botocore's own retries are off: the pipeline decides when to try again.
"""
from __future__ import annotations

import itertools
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from email.header import Header
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.parsers import ResponseParserError

from providers import mime, pinning, sns
from providers.aws import AWS_SETTINGS, aws_session, boto_sts_endpoint, has_credentials
from providers.base import (
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
    WebhookReply,
    for_field,
    guarded_url,
    header_problem,
    not_the_provider,
    register,
    results_after_error,
    safe_code,
    send_each,
)

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
DEFAULT_TIMEOUT = 10.0
#: ReplacementTemplateData's limit in the SES v2 model (characters)
MAX_TEMPLATE_DATA = 262144
#: single sends (raw MIME, attachments: one SendEmail each) a chunk makes at once: one by one they wait
#: for SES's answer to each in turn (tens of milliseconds each from a data centre, for a few of work)
SINGLE_CALLS_AT_ONCE = 8
_REASON_LIMIT = 300

# BulkEmailStatus values, from botocore's sesv2 service model.
_ENTRY_FAILED = frozenset({
    "MESSAGE_REJECTED", "MAIL_FROM_DOMAIN_NOT_VERIFIED", "CONFIGURATION_SET_NOT_FOUND",
    "TEMPLATE_NOT_FOUND", "ACCOUNT_SUSPENDED", "INVALID_SENDING_POOL_NAME", "INVALID_PARAMETER",
})
_ENTRY_RETRY = frozenset({
    "TRANSIENT_FAILURE", "FAILED", "ACCOUNT_THROTTLED", "ACCOUNT_DAILY_QUOTA_EXCEEDED",
    "ACCOUNT_SENDING_PAUSED", "CONFIGURATION_SET_SENDING_PAUSED",
})
# Statuses that describe the account, not the message: when every entry of a
# call that sent nothing reports the same one, the whole call raises.
_ENTRY_ACCOUNT_ERRORS: dict[str, type[ProviderError]] = {
    "ACCOUNT_THROTTLED": ThrottledError,
    "ACCOUNT_DAILY_QUOTA_EXCEEDED": QuotaExceededError,
    "ACCOUNT_SENDING_PAUSED": QuotaExceededError,
    "CONFIGURATION_SET_SENDING_PAUSED": QuotaExceededError,
    "ACCOUNT_SUSPENDED": PermanentError,
    "MAIL_FROM_DOMAIN_NOT_VERIFIED": PermanentError,
    "CONFIGURATION_SET_NOT_FOUND": PermanentError,
}

_THROTTLE_CODES = frozenset({
    "Throttling", "ThrottlingException", "TooManyRequestsException", "RequestLimitExceeded",
})
_QUOTA_CODES = frozenset({"LimitExceededException", "LimitExceeded"})
_PAUSED_CODES = frozenset({"SendingPausedException", "AccountSendingPausedException",
                           "ConfigurationSetSendingPausedException"})
_AUTH_CODES = frozenset({
    "InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch",
    "InvalidSignatureException", "IncompleteSignature", "MissingAuthenticationToken",
    "AccessDenied", "AccessDeniedException", "ExpiredToken", "ExpiredTokenException",
    "AuthFailure", "NotAuthorized",
})
_SERVER_CODES = frozenset({"InternalFailure", "InternalServerError", "ServiceUnavailable",
                           "ServiceUnavailableException"})
#: permanent errors that one message can cause: send the others one by one
_MESSAGE_CODES = frozenset({"MessageRejected", "BadRequestException", "InvalidParameterValue",
                            "ParamValidation"})


_KNOWN_CODES = _THROTTLE_CODES | _QUOTA_CODES | _PAUSED_CODES | _AUTH_CODES | _SERVER_CODES | _MESSAGE_CODES | {
    "UNKNOWN", "NotFoundException", "AccountSuspendedException", "MailFromDomainNotVerifiedException"}


class CredentialsRejected(PermanentError):
    """AWS refused or never got the credentials; a PermanentError to callers."""


#: fixed phrases for the codes a tenant meets most; a remote message is never shown (it may be
#: any body an endpoint chose to answer)
_PHRASES = {
    "MessageRejected": "SES rejected the message (is the sender a verified identity?)",
    "MailFromDomainNotVerifiedException": "the MAIL FROM domain is not verified",
    "MAIL_FROM_DOMAIN_NOT_VERIFIED": "the MAIL FROM domain is not verified",
    "MESSAGE_REJECTED": "SES rejected the message",
    "AccountSuspendedException": "the SES account is suspended",
    "ACCOUNT_SUSPENDED": "the SES account is suspended",
    "NotFoundException": "a named SES resource does not exist",
    "BadRequestException": "SES refused the request as malformed",
    "LimitExceededException": "an SES limit was exceeded",
    "TooManyRequestsException": "SES is throttling the account",
    "ACCOUNT_THROTTLED": "SES is throttling the account",
    "ACCOUNT_DAILY_QUOTA_EXCEEDED": "the daily sending quota is spent",
    "SendingPausedException": "sending is paused for the account",
    "ACCOUNT_SENDING_PAUSED": "sending is paused for the account",
    "CONFIGURATION_SET_NOT_FOUND": "the configuration set does not exist",
    "CONFIGURATION_SET_SENDING_PAUSED": "sending is paused for the configuration set",
    "TRANSIENT_FAILURE": "a transient SES failure",
}


def _known(code: str) -> bool:
    """Whether ``code`` is one SES (or AWS) gives: only those are ever shown."""
    return code in _PHRASES or code in _KNOWN_CODES or code in _ENTRY_FAILED or code in _ENTRY_RETRY


def _reason(code: str, status: int | str | None = None) -> str:
    """A short, storable reason: the error code, the HTTP status and a fixed phrase.

    The remote message is left out on purpose: a tenant-named endpoint can
    answer anything (an internal page's text), and it must not come back; so
    is a code SES does not have (botocore reads it from the body).
    """
    code = safe_code(code)
    phrase = _PHRASES.get(code)
    if phrase is None:
        phrase = "credentials refused" if code in _AUTH_CODES else "SES refused the request"
    where = f" (HTTP {status})" if status else ""
    shown = code if _known(code) else "SES error"
    return f"{shown}{where}: {phrase}"[:_REASON_LIMIT]


def known_code(code: str) -> bool:
    """True for a code SES gives (``code_reason`` then says what direct mode says)."""
    return _known(code) or code in _AUTH_CODES


def code_reason(code: str) -> str:
    """What direct mode stores for SES's ``code`` (without an HTTP status): a cloud worker's
    callback that reports the code gets the same words (``core.delivery.results``)."""
    return _reason(code)


def _client_error(exc: ClientError) -> ProviderError:
    """Map an error answer from AWS to our hierarchy."""
    error = exc.response.get("Error", {})
    meta = exc.response.get("ResponseMetadata", {})
    code = safe_code(error.get("Code") or "Unknown")
    message = str(error.get("Message") or "")  # only matched against, never shown
    status = int(meta.get("HTTPStatusCode") or 0)
    reason = _reason(code, status)
    lowered = message.lower()
    if "daily message quota" in lowered or code in _QUOTA_CODES:
        return QuotaExceededError(reason, code=code)
    if code in _THROTTLE_CODES or "maximum sending rate" in lowered or status == 429:
        return ThrottledError(reason, code=code, retry_after=_retry_after(meta))
    if code in _PAUSED_CODES:
        return QuotaExceededError(reason, code=code)
    if code in _AUTH_CODES or status in (401, 403):
        return CredentialsRejected(reason, code=code)
    if status >= 500 or code in _SERVER_CODES:
        return RetryableError(reason, code=code)
    if 400 <= status < 500:
        return PermanentError(reason, code=code)
    return RetryableError(reason, code=code)


def _retry_after(meta: dict) -> float | None:
    """The Retry-After header of a throttled answer, in seconds, when present."""
    value = meta.get("HTTPHeaders", {}).get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def classify(exc: Exception) -> ProviderError:
    """Translate a botocore exception into a ``ProviderError`` subclass."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, ClientError):
        return _client_error(exc)
    name = type(exc).__name__
    # every transport failure says the same (a closed port reads as an open one); the code keeps a read
    # timeout apart, since the call may have been taken (core.delivery: the chunk is uncertain)
    if isinstance(exc, ReadTimeoutError):
        return RetryableError(f"SES {pinning.UNREACHABLE}", code=name)
    if isinstance(exc, (ConnectTimeoutError, BotoConnectionError, ConnectionClosedError)):
        return ConnectionFailure(f"SES {pinning.UNREACHABLE}", code=pinning.UNREACHABLE_CODE)
    if isinstance(exc, HTTPClientError):
        return RetryableError(f"SES {pinning.UNREACHABLE}", code=pinning.UNREACHABLE_CODE)
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return CredentialsRejected("AWS credentials missing or incomplete", code=name)
    if isinstance(exc, ResponseParserError):  # its text quotes the raw body: never shown
        return RetryableError("SES answered with a body botocore could not parse", code="ResponseParserError")
    if isinstance(exc, ParamValidationError):
        # botocore's report may quote parameter values (message content): keep it out.
        return PermanentError("request rejected by botocore parameter validation", code="ParamValidation")
    return RetryableError(f"unexpected SES client error ({name})", code=name)


def _header_value(value: str) -> str:
    """SES header values must be printable ASCII: RFC 2047-encode anything else."""
    if value.isascii():
        return value
    return Header(value, "utf-8").encode(linesep="")


def ses_headers(headers: dict[str, str]) -> list[dict[str, str]]:
    """Extra headers in SES's ``MessageHeader`` shape (empty values dropped)."""
    return [{"Name": name, "Value": _header_value(value)} for name, value in headers.items() if value]


def _parts(message: Message) -> tuple[bool, bool]:
    """Which body parts the message has: (text, html); text when it has neither."""
    has_html = message.html is not None
    return (message.text is not None or not has_html, has_html)


def pass_through_template(parts: tuple[bool, bool]) -> dict[str, str]:
    """Inline template content whose parts are one raw variable each."""
    content = {"Subject": "{{{s}}}"}
    if parts[0]:
        content["Text"] = "{{{t}}}"
    if parts[1]:
        content["Html"] = "{{{h}}}"
    return content


def template_data(message: Message) -> str:
    """The entry's ReplacementTemplateData: the finished parts as JSON."""
    return json.dumps({"s": message.subject, "t": message.text or "", "h": message.html or ""},
                      ensure_ascii=False)


def _bulk_entry(message: Message) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "Destination": {"ToAddresses": [message.to]},
        "ReplacementEmailContent": {"ReplacementTemplate": {"ReplacementTemplateData": template_data(message)}},
    }
    if message.headers:
        entry["ReplacementHeaders"] = ses_headers(message.headers)
    return entry


def simple_content(message: Message) -> dict[str, Any]:
    """``Content.Simple`` for SendEmail: subject, bodies, headers, attachments."""
    text, html = _parts(message)
    body: dict[str, Any] = {}
    if text:
        body["Text"] = {"Data": message.text or "", "Charset": "UTF-8"}
    if html:
        body["Html"] = {"Data": message.html, "Charset": "UTF-8"}
    simple: dict[str, Any] = {"Subject": {"Data": message.subject, "Charset": "UTF-8"}, "Body": body}
    if message.headers:
        simple["Headers"] = ses_headers(message.headers)
    if message.attachments:
        simple["Attachments"] = [
            {"FileName": a.filename, "RawContent": a.content, "ContentType": a.content_type,
             "ContentDisposition": "ATTACHMENT", "ContentTransferEncoding": "BASE64"}
            for a in message.attachments
        ]
    return simple


def _entry_result(key: int, entry: dict) -> Result:
    """One BulkEmailEntryResult as our Result."""
    status = entry.get("Status", "")
    if status == "SUCCESS":
        return Result(key, ResultStatus.SENT, message_id=entry.get("MessageId"))
    error = _reason(status or "UNKNOWN")
    return Result(key, ResultStatus.FAILED if status in _ENTRY_FAILED else ResultStatus.RETRY, error=error)


def _account_error(entries: list[dict]) -> ProviderError | None:
    """The whole-call error when every entry reports the same account status."""
    statuses = {entry.get("Status") for entry in entries}
    if len(statuses) != 1:
        return None
    status = statuses.pop()
    cls = _ENTRY_ACCOUNT_ERRORS.get(status or "")
    if cls is None:
        return None
    return cls(_reason(str(status)), code=status)


@register
class SesProvider(Provider):
    """Send through SES v2: bulk template calls of up to 50, SendEmail otherwise.

    Config keys: ``aws_access_key``, ``aws_secret_key``, ``aws_region``,
    optional ``aws_endpoint_url``, ``aws_sts_endpoint_url``,
    ``configuration_set`` and ``timeout`` (seconds). Bounces and complaints
    come through SNS (``providers.sns``), from the topic ``sns_topic_arn``.
    """

    name = "ses"
    #: SES and SQS were both "aws" before each had a name of its own
    aliases = ("aws",)
    label = "Amazon SES"
    settings = AWS_SETTINGS
    cloud = "aws"
    timeout_s = DEFAULT_TIMEOUT
    chunk_size = 50
    webhook_path = "sns"
    webhook_max_bytes = sns.MAX_BODY_BYTES

    def __init__(self, config: dict):
        super().__init__(config)
        self.region = config.get("aws_region") or DEFAULT_REGION
        self.endpoint_url = config.get("aws_endpoint_url") or None
        self.timeout = float(config.get("timeout") or self.timeout_s)
        self._session: boto3.session.Session | None = None
        self._clients: dict[str, Any] = {}

    @classmethod
    def configured(cls, config: dict) -> bool:
        return has_credentials(config)

    @classmethod
    def read_webhook(cls, config: dict, headers, body: bytes, now: float) -> WebhookReply:
        """An SNS delivery from the company's topic: verified, then read (``providers.sns``)."""
        return sns.read(config.get("sns_topic_arn"), body)

    # -- clients -------------------------------------------------------------

    def _client(self, service: str, endpoint_url: str | None) -> Any:
        """A cached boto3 client; creating one is slow, so each is made once."""
        if service not in self._clients:
            if self._session is None:
                self._session = aws_session(self.config, self.region)
            endpoint_url = guarded_url(self.config, endpoint_url, "aws")
            config = Config(connect_timeout=min(self.timeout, 5.0), read_timeout=self.timeout,
                            retries={"mode": "standard", "total_max_attempts": 1},
                            max_pool_connections=SINGLE_CALLS_AT_ONCE + 2)
            self._clients[service] = pinning.pin(self._session.client(service, endpoint_url=endpoint_url,
                                                                      config=config))
        return self._clients[service]

    @property
    def ses(self) -> Any:
        """The sesv2 client (``aws_endpoint_url`` or boto3's own endpoint resolution)."""
        return self._client("sesv2", self.endpoint_url)

    def _call(self, operation: str, **params: Any) -> dict:
        """Run one SES operation, translating every botocore failure."""
        try:
            return getattr(self.ses, operation)(**params)
        except (ClientError, BotoCoreError, ResponseParserError) as exc:
            error = classify(exc)
            log.warning("SES %s failed: %s", operation, error.reason)
            raise error from exc
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # botocore choking on a non-AWS answer
            error = RetryableError(f"SES answered with something botocore could not read ({type(exc).__name__})",
                                   code="unreadable_answer")
            log.warning("SES %s failed: %s", operation, error.reason)
            raise error from None

    def close(self) -> None:
        """Drop the clients' pooled connections; the clients stay usable (they reconnect)."""
        for client in self._clients.values():
            client.close()

    # -- sending -------------------------------------------------------------

    def send(self, sender: str, messages: list[Message]) -> list[Result]:
        """Send ``messages``; one Result per message, in order."""
        outcome: dict[int, Result] = {}
        pending: list[int] = []
        for index, message in enumerate(messages):
            problem = header_problem(sender, message)
            if problem:
                outcome[index] = Result(message.key, ResultStatus.FAILED, error=problem)
            else:
                pending.append(index)
        units = self._plan(messages, pending)
        position = 0
        while position < len(units):
            bulk, indices = units[position]
            if bulk:
                step = [units[position]]
                calls = [lambda group=[messages[i] for i in indices]: self._send_bulk(sender, group)]
            else:  # single sends (raw MIME, attachments) in a row: several calls at once
                step = list(itertools.takewhile(lambda unit: not unit[0],
                                                units[position:position + SINGLE_CALLS_AT_ONCE]))
                calls = [lambda message=messages[unit[1][0]]: [self._send_single(sender, message)]
                         for unit in step]
            answers = self._run_calls(calls)
            error = next((a for a in answers if isinstance(a, ProviderError)), None)
            for (_, done), answer in zip(step, answers, strict=True):
                if not isinstance(answer, ProviderError):
                    outcome.update(zip(done, answer, strict=True))
            if error is not None:
                rest = [i for (_, done), answer in zip(step, answers, strict=True)
                        if isinstance(answer, ProviderError) for i in done]
                rest += [i for _, later in units[position + len(step):] for i in later]
                results = results_after_error(error, list(outcome.values()), [messages[i] for i in rest])
                outcome.update(zip(rest, results, strict=True))
                break
            position += len(step)
        return [outcome[i] for i in range(len(messages))]

    def _run_calls(self, calls: list) -> list:
        """Each call's results, or the ProviderError it raised; more than one call runs at once (the
        client is made first: boto3's clients are thread-safe, making one is not)."""
        def run(call):
            try:
                return call()
            except ProviderError as exc:
                return exc

        if len(calls) == 1:
            return [run(calls[0])]
        self.ses  # noqa: B018 - made here, before the threads share it
        with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="ses-send") as pool:
            return list(pool.map(run, calls))

    def _plan(self, messages: list[Message], indices: list[int]) -> list[tuple[bool, list[int]]]:
        """Group messages into units: bulk chunks of one shape, or single sends."""
        units: list[tuple[bool, list[int]]] = []
        groups: dict[tuple[bool, bool], list[int]] = {}
        for index in indices:
            message = messages[index]
            if message.raw is not None or message.attachments or len(template_data(message)) > MAX_TEMPLATE_DATA:
                units.append((False, [index]))
            else:
                groups.setdefault(_parts(message), []).append(index)
        for group in groups.values():
            for start in range(0, len(group), self.chunk_size):
                units.append((True, group[start:start + self.chunk_size]))
        return units

    def _send_bulk(self, sender: str, messages: list[Message]) -> list[Result]:
        """One SendBulkEmail call; a message-level rejection falls back to one-by-one."""
        try:
            return self._bulk_call(sender, messages)
        except PermanentError as exc:
            if exc.code not in _MESSAGE_CODES:
                raise
            if len(messages) == 1:
                return [Result(messages[0].key, ResultStatus.FAILED, error=exc.reason)]
            log.info("SES bulk call rejected (%s); sending %d messages one by one", exc.code, len(messages))
            return self._send_each(sender, messages)

    def _send_each(self, sender: str, messages: list[Message]) -> list[Result]:
        """SendEmail per message, settling a whole-call error part-way."""
        return send_each(messages, lambda message: self._send_single(sender, message))

    def _bulk_call(self, sender: str, messages: list[Message]) -> list[Result]:
        params: dict[str, Any] = {
            "FromEmailAddress": sender,
            "DefaultContent": {"Template": {"TemplateContent": pass_through_template(_parts(messages[0])),
                                            "TemplateData": "{}"}},
            "BulkEmailEntries": [_bulk_entry(m) for m in messages],
        }
        self._add_configuration_set(params)
        entries = self._call("send_bulk_email", **params).get("BulkEmailEntryResults", [])
        if len(entries) != len(messages):
            raise RetryableError(f"SES returned {len(entries)} results for {len(messages)} entries",
                                 code="ResultCountMismatch")
        error = _account_error(entries)
        if error is not None:
            raise error
        return [_entry_result(m.key, e) for m, e in zip(messages, entries, strict=True)]

    def _send_single(self, sender: str, message: Message) -> Result:
        """SendEmail with Simple content, or Raw for the LMS's own MIME (its From: is the sender);
        a message-level rejection fails only this one."""
        params: dict[str, Any] = {"Destination": {"ToAddresses": [message.to]}}
        if message.raw is not None:
            try:
                params["Content"] = {"Raw": {"Data": mime.outgoing(message.raw, message.headers)}}
            except ValueError:
                return Result(message.key, ResultStatus.FAILED, error="invalid_header")
        else:
            params.update(FromEmailAddress=sender, Content={"Simple": simple_content(message)})
        self._add_configuration_set(params)
        try:
            response = self._call("send_email", **params)
        except PermanentError as exc:
            if exc.code not in _MESSAGE_CODES:
                raise
            return Result(message.key, ResultStatus.FAILED, error=exc.reason)
        return Result(message.key, ResultStatus.SENT, message_id=response.get("MessageId"))

    def _add_configuration_set(self, params: dict[str, Any]) -> None:
        if self.config.get("configuration_set"):
            params["ConfigurationSetName"] = self.config["configuration_set"]

    # -- account -------------------------------------------------------------

    def account(self) -> dict:
        """GetAccount's answer (raises ProviderError)."""
        return self._call("get_account")

    def max_send_rate(self) -> float | None:
        """The account's MaxSendRate (emails per second), or None when unknown."""
        try:
            quota = self.account().get("SendQuota") or {}
        except ProviderError:
            return None
        rate = quota.get("MaxSendRate")
        return float(rate) if rate is not None else None

    def _sts_endpoint(self) -> tuple[bool, str | None]:
        """Whether to ask STS, and where.

        ``aws_sts_endpoint_url`` wins; boto3's own variables come next; a
        custom SES endpoint without either skips STS (an SES-only emulator
        does not answer it, and real STS would refuse local credentials).
        """
        if self.config.get("aws_sts_endpoint_url"):
            return True, self.config["aws_sts_endpoint_url"]
        if boto_sts_endpoint():
            return True, None
        return self.endpoint_url is None, None

    def _identity(self, facts: dict) -> None:
        """Add STS GetCallerIdentity's account and ARN to ``facts``."""
        ask, endpoint = self._sts_endpoint()
        if not ask:
            facts["notes"].append("STS skipped: custom SES endpoint and no aws_sts_endpoint_url")
            return
        try:
            identity = self._client("sts", endpoint).get_caller_identity()
        except (ClientError, BotoCoreError, ResponseParserError) as exc:
            error = classify(exc)
            if isinstance(error, CredentialsRejected):
                raise error from exc
            facts["notes"].append(f"STS GetCallerIdentity unavailable: {error.reason}")
            return
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # not an STS answer at all
            facts["notes"].append(f"STS GetCallerIdentity unavailable: botocore could not read the answer "
                                  f"({type(exc).__name__})")
            return
        facts["account_id"] = identity.get("Account")
        facts["arn"] = identity.get("Arn")

    def _where(self) -> str:
        """The setting that names where SES is asked: the endpoint URL when set, else the region."""
        return "aws_endpoint_url" if self.endpoint_url else "aws_region"

    def _quota(self, facts: dict) -> None:
        """Add GetAccount's send quota and status to ``facts``; anything but SES's own answer fails."""
        try:
            account = self.account()
        except CredentialsRejected as error:
            raise for_field(error, "aws_access_key") from None
        except ProviderError as error:
            raise for_field(error, self._where()) from None
        quota = account.get("SendQuota")
        numbers = ("Max24HourSend", "MaxSendRate", "SentLast24Hours")
        if not isinstance(quota, dict) or not all(isinstance(quota.get(n), (int, float)) for n in numbers) \
                or not isinstance(account.get("SendingEnabled"), bool):
            raise not_the_provider(self.label, self._where(), "GetAccount gave no send quota")
        facts.update({
            "max_24_hour_send": quota.get("Max24HourSend"),
            "max_send_rate": quota.get("MaxSendRate"),
            "sent_last_24_hours": quota.get("SentLast24Hours"),
            "production_access_enabled": account.get("ProductionAccessEnabled"),
            "sending_enabled": account.get("SendingEnabled"),
        })

    def test_connection(self) -> dict:
        """Identity (STS, a note when the endpoint does not answer it) and quota (GetAccount).

        Passes only on SES's own GetAccount answer (its send quota and sending
        state); anything else raises, naming the setting to fix: rejected
        credentials, an endpoint that cannot be reached, does not answer in
        time, or answers otherwise (an error page, a body of another shape).
        """
        facts: dict[str, Any] = {"provider": self.name, "region": self.region,
                                 "endpoint": self.endpoint_url or "default", "notes": []}
        self._identity(facts)
        self._quota(facts)
        return facts

