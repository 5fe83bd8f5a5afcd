"""Plain SMTP as a direct-send provider (also the fallback for cloud providers).

One connection per provider instance: opened on the first message, reused
for the whole batch, closed by ``close()``; when the server has dropped it,
it is reopened once. Messages are built with ``email.message.EmailMessage``
under the SMTP policy (``mime.SMTP``: List-Unsubscribe is never folded or
encoded). Text that could start a new header line (CR, LF, NUL) is never
emitted: such a message gets a failed result instead.
"""
from __future__ import annotations

import logging
import re
import smtplib
import socket
import ssl
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid, parseaddr
from urllib.parse import parse_qs, unquote, urlsplit

from providers import guard, mime
from providers.base import (
    OPERATOR_ENDPOINT,
    ConnectionFailure,
    Message,
    PermanentError,
    Provider,
    ProviderError,
    Result,
    ResultStatus,
    RetryableError,
    ThrottledError,
    for_field,
    header_problem,
    not_the_provider,
    register,
    send_each,
)
from providers.registry import Setting, SettingsGroup, whole_number

log = logging.getLogger(__name__)

TLS_MODES = ("none", "starttls", "tls")
SMTP_SETTINGS = SettingsGroup(
    "smtp", "SMTP", "A mail server of the company's own; with another provider it is the fallback.",
    (
        Setting("smtp_host", "Host", placeholder="smtp.example.com"),
        Setting("smtp_port", "Port", "number", placeholder="587", parse=whole_number(1, 65535)),
        Setting("smtp_username", "User"),
        Setting("smtp_password", "Password", "secret"),
        Setting("smtp_tls", "TLS", "select", choices=TLS_MODES, required=True, default="starttls"),
    ))
DEFAULT_PORTS = {"none": 25, "starttls": 587, "tls": 465}
DEFAULT_TIMEOUT = 20.0
#: headers the provider writes itself; an extra header may not set them
RESERVED_HEADERS = frozenset({
    "from", "to", "cc", "bcc", "subject", "date", "message-id", "mime-version",
    "content-type", "content-transfer-encoding", "content-disposition",
})
_REASON_LIMIT = 300


#: the EHLO keywords a connection test names (the server's lines themselves are never shown: after the
#: keyword a server may write anything, its banner, host names, versions)
KNOWN_EXTENSIONS = ("STARTTLS", "AUTH", "SIZE", "8BITMIME", "SMTPUTF8", "PIPELINING", "CHUNKING", "DSN",
                    "ENHANCEDSTATUSCODES", "BINARYMIME", "REQUIRETLS")
AUTH_MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "OAUTHBEARER", "SCRAM-SHA-1", "SCRAM-SHA-256")


def known_features(features: dict) -> dict:
    """The server's EHLO extensions as our own words: known keywords, the AUTH mechanisms we know and
    SIZE's number; nothing else of what the server wrote."""
    found: dict = {}
    for keyword, value in (features or {}).items():
        name = str(keyword).upper()
        if name not in KNOWN_EXTENSIONS:
            continue
        if name == "AUTH":
            found["auth"] = " ".join(m for m in AUTH_MECHANISMS if m in str(value).upper().split())
        elif name == "SIZE":
            found["size"] = str(value).strip() if str(value).strip().isdigit() else ""
        else:
            found[name.lower()] = ""
    return found


class SmtpReply(Exception):
    """Internal: one message got a final answer (failed or retry) from the server."""

    def __init__(self, status: ResultStatus, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class EndpointRefusedOSError(OSError):
    """The endpoint guard refused the SMTP host (an OSError, as smtplib's own failures are)."""


def _guarded_socket(host: str, port: int, timeout: float, operator: bool) -> socket.socket:
    """A TCP connection to an address the guard checked (the operator's own relay: as given)."""
    if operator:
        return socket.create_connection((host, port), timeout)
    try:
        return guard.connect(host, port, timeout)
    except guard.EndpointRefused as exc:
        raise EndpointRefusedOSError(0, f"endpoint refused ({exc.rule}): {exc}") from None


class GuardedSMTP(smtplib.SMTP):
    """``smtplib.SMTP`` connecting through the endpoint guard; STARTTLS still checks the name."""

    operator = False
    _host: str  # smtplib's own: the host given to connect (STARTTLS's name)

    def _get_socket(self, host, port, timeout):
        return _guarded_socket(host, port, timeout, self.operator)


class GuardedSMTP_SSL(smtplib.SMTP_SSL):  # noqa: N801 - mirrors smtplib's name
    """``smtplib.SMTP_SSL`` through the guard; the TLS server_hostname stays the configured name."""

    operator = False
    _host: str  # smtplib's own: the host given to connect (the TLS name)

    def _get_socket(self, host, port, timeout):
        sock = _guarded_socket(host, port, timeout, self.operator)
        return self.context.wrap_socket(sock, server_hostname=self._host)


# -- URL setting ---------------------------------------------------------------

def parse_smtp_url(url: str) -> dict:
    """Parse ``smtp://[user:pass@]host:port[?tls=starttls|tls]`` into provider config.

    User and password are URL-decoded. The port defaults to 25, 587 or 465
    by TLS mode. Raises ``ValueError`` naming what is wrong (never echoing
    the URL, which may hold a password).
    """
    parts = urlsplit((url or "").strip())
    if parts.scheme not in ("smtp", "smtps"):
        raise ValueError("SMTP URL must start with smtp://")
    if not parts.hostname:
        raise ValueError("SMTP URL has no host")
    if parts.path not in ("", "/") or parts.fragment:
        raise ValueError("SMTP URL must not have a path or fragment")
    tls = _url_tls(parts.query, "tls" if parts.scheme == "smtps" else "none")
    try:
        port = parts.port or DEFAULT_PORTS[tls]
    except ValueError:
        raise ValueError("SMTP URL port must be a number from 1 to 65535") from None
    username = unquote(parts.username) if parts.username else ""
    password = unquote(parts.password) if parts.password else ""
    if password and not username:
        raise ValueError("SMTP URL has a password but no user")
    return {"smtp_host": parts.hostname, "smtp_port": port, "smtp_username": username,
            "smtp_password": password, "smtp_tls": tls}


def _url_tls(query: str, default: str) -> str:
    """The ``tls`` query parameter, checked; no other parameter is allowed."""
    try:
        params = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError("SMTP URL query is malformed") from None
    unknown = sorted(set(params) - {"tls"})
    if unknown:
        raise ValueError(f"SMTP URL has unknown parameter(s): {', '.join(unknown)}")
    tls = params.get("tls", [default])[-1]
    if tls not in TLS_MODES:
        raise ValueError("SMTP URL tls must be one of: none, starttls, tls")
    return tls


# -- messages ------------------------------------------------------------------

def single_address(value: str) -> str | None:
    """The addr-spec of ``value`` when it names exactly one address, else None."""
    found = getaddresses([value])
    if len(found) != 1:
        return None
    address = found[0][1]
    if "@" not in address or any(ch.isspace() for ch in address):
        return None
    return address


def build_message(sender: str, message: Message, msgid_domain: str | None = None) -> EmailMessage:
    """A complete MIME message: text/html alternative, attachments, extra headers.

    The caller has already refused CR/LF/NUL (``header_problem``); the email
    package would raise ``ValueError`` on them anyway.
    """
    msg = EmailMessage(policy=mime.SMTP)  # List-Unsubscribe as written: never encoded words
    msg["From"] = sender
    msg["To"] = message.to
    msg["Subject"] = message.subject
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(domain=msgid_domain)
    for name, value in message.headers.items():
        msg[name] = value
    if message.text is not None or message.html is None:
        msg.set_content(message.text or "")
        if message.html is not None:
            msg.add_alternative(message.html, subtype="html")
    else:
        msg.set_content(message.html, subtype="html")
    for attachment in message.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        if not subtype:
            maintype, subtype = "application", "octet-stream"
        msg.add_attachment(attachment.content, maintype=maintype, subtype=subtype,
                           filename=attachment.filename)
    return msg


def _refusal(sender: str, message: Message) -> str | None:
    """Why ``message`` must not be sent at all, or None."""
    problem = header_problem(sender, message)
    if problem:
        return problem
    # (the LMS's own MIME takes ours in place of its fields of the same names: the relay's From)
    if message.raw is None and any(name.lower() in RESERVED_HEADERS for name in message.headers):
        return "invalid_header"
    if single_address(message.to) is None:
        return "invalid_address"
    return None


# -- error classification --------------------------------------------------------

def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


_ENHANCED = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\b")
#: fixed phrases per reply code: the server's own text is never shown (it may be any banner)
_PHRASES = {
    421: "service not available, closing the session", 450: "mailbox unavailable (try later)",
    451: "local error in processing", 452: "insufficient storage or too many recipients",
    454: "temporary authentication failure", 500: "command not recognised", 501: "syntax error in parameters",
    502: "command not implemented", 503: "bad sequence of commands", 504: "parameter not implemented",
    530: "authentication required", 534: "authentication mechanism too weak", 535: "authentication failed",
    550: "mailbox unavailable or message refused", 551: "user not local", 552: "message too large or storage "
    "exceeded", 553: "mailbox name not allowed", 554: "transaction failed",
}


def reply_reason(code: int, reply: bytes | str) -> str:
    """What a reply is stored as (``_reply_reason``; a cloud worker's bounce reply too)."""
    return _reply_reason(code, reply)


def _reply_reason(code: int, reply: bytes | str) -> str:
    """The reply code, its enhanced status code when given, and a fixed phrase."""
    match = _ENHANCED.match(_text(reply))
    enhanced = f" {match.group(1)}" if match else ""
    try:
        number = int(code)
    except (TypeError, ValueError):
        number = -1
    if number < 200 or number > 599:
        return "the server did not answer as an SMTP server"
    phrase = _PHRASES.get(number) or ("temporary failure" if number < 500 else "permanent failure")
    return f"{number}{enhanced} {phrase}"[:_REASON_LIMIT]


def _throttling(code: int, reply: bytes | str) -> bool:
    return code == 452 or "too many" in _text(reply).lower()


#: the setting a failed connection test names, by its error code
_CHECK_FIELDS = {"auth_failed": "smtp_password", "auth_temporary": "smtp_password", "not_supported": "smtp_tls",
                 "tls": "smtp_tls", "config": "smtp_host"}


def classify(exc: BaseException, *, connecting: bool = False) -> ProviderError:
    """Map an smtplib/socket/ssl failure to our hierarchy.

    ``connecting`` says the error happened while opening the session, where a
    timeout means the server could not be reached at all.
    """
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        reason = _reply_reason(exc.smtp_code, exc.smtp_error)
        if 400 <= exc.smtp_code < 500:
            return RetryableError(f"SMTP authentication temporarily failed: {reason}", code="auth_temporary")
        return PermanentError(f"SMTP authentication failed: {reason}", code="auth_failed")
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return PermanentError("SMTP server lacks a needed extension (STARTTLS, AUTH or SMTPUTF8)",
                              code="not_supported")
    if isinstance(exc, smtplib.SMTPConnectError):  # its text is the server's greeting (any banner)
        return ConnectionFailure(f"SMTP server refused the session: {_reply_reason(exc.smtp_code, exc.smtp_error)}",
                                 code="disconnected")
    if isinstance(exc, smtplib.SMTPServerDisconnected):  # smtplib's own words, never the server's
        return ConnectionFailure("SMTP connection lost" + (" (timed out)" if "timed out" in str(exc) else ""),
                                 code="disconnected")
    if isinstance(exc, smtplib.SMTPResponseException):
        return _response_error(exc.smtp_code, exc.smtp_error)
    if isinstance(exc, (ssl.SSLError, ssl.CertificateError)):
        return ConnectionFailure(f"SMTP TLS failure ({getattr(exc, 'reason', None) or type(exc).__name__})"
                                 [:_REASON_LIMIT], code="tls")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        if connecting:
            return ConnectionFailure("SMTP connect timed out", code="timeout")
        return RetryableError("SMTP server timed out", code="timeout")
    if isinstance(exc, OSError):
        # errno and its local text (refused, unreachable); the guard's refusal names its rule
        detail = (exc.strerror or type(exc).__name__) if exc.errno is not None else type(exc).__name__
        return ConnectionFailure(f"SMTP server unreachable: {detail}"[:_REASON_LIMIT], code="unreachable")
    return RetryableError(f"SMTP error: {type(exc).__name__}", code="smtp")


def _response_error(code: int, reply: bytes | str) -> ProviderError:
    """A whole-call error for an SMTP reply code."""
    reason = _reply_reason(code, reply)
    if code == 421:
        return ConnectionFailure(reason, code="421")
    if _throttling(code, reply):
        return ThrottledError(reason, code=str(code))
    if 400 <= code < 500:
        return RetryableError(reason, code=str(code))
    return PermanentError(reason, code=str(code))


def _message_reply(code: int, reply: bytes | str) -> SmtpReply:
    """What a reply to RCPT or DATA means for that one message.

    Raises the whole-call error for 421 (server going away) and for
    throttling (452, "too many"), which are not about the message.
    """
    if code == 421 or _throttling(code, reply):
        raise _response_error(code, reply)
    status = (ResultStatus.BOUNCED if hard_bounce(code, reply) else ResultStatus.FAILED if code >= 500
              else ResultStatus.RETRY)
    return SmtpReply(status, _reply_reason(code, reply))


#: RFC 3463 enhanced codes (5.1.x: bad address) and phrases of a mailbox that does not exist
_NO_MAILBOX = re.compile(r"\b5\.1\.[0-9]\b|mailbox (is )?unavailable|user unknown|no such (user|mailbox)|"
                         r"mailbox not found|does not exist|recipient rejected", re.IGNORECASE)


def hard_bounce(code: int, reply: bytes | str) -> bool:
    """A permanent refusal of the mailbox itself (550/551/553 saying it does not
    exist): a hard bounce, which suppresses the address, not a plain failure."""
    return code in (550, 551, 553) and bool(_NO_MAILBOX.search(_text(reply)))


def _reply_code(exc: OSError) -> int | None:
    """The SMTP reply code an smtplib exception carries, if any."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused) and exc.recipients:
        return next(iter(exc.recipients.values()))[0]
    return getattr(exc, "smtp_code", None)


def _session_lost(exc: OSError) -> bool:
    """True when the server closed the session (dropped, reset, or said 421)."""
    if isinstance(exc, (smtplib.SMTPServerDisconnected, ConnectionError)):
        return True
    return _reply_code(exc) == 421


# -- provider --------------------------------------------------------------------

@register
class SmtpProvider(Provider):
    """Send over one reused SMTP connection.

    Config keys: ``smtp_host``, ``smtp_port``, ``smtp_username``,
    ``smtp_password``, ``smtp_tls`` (``none``, ``starttls``, ``tls``), and
    optionally ``timeout`` (seconds), ``smtp_ca_file`` (PEM bundle to trust)
    and ``smtp_tls_verify`` (``0`` turns certificate checks off).
    """

    name = "smtp"
    label = "SMTP"
    settings = SMTP_SETTINGS
    timeout_s = DEFAULT_TIMEOUT
    chunk_size = 100
    fallback = True

    @classmethod
    def configured(cls, config: dict) -> bool:
        return bool(config.get("smtp_host"))

    def __init__(self, config: dict):
        super().__init__(config)
        self.host = config.get("smtp_host") or ""
        self.tls = str(config.get("smtp_tls") or "none").lower()
        self.port = 0
        self.timeout = float(config.get("timeout") or self.timeout_s)
        self.username = config.get("smtp_username") or ""
        #: a settings problem, raised (as PermanentError) on first use rather than here
        self.config_error = self._check_settings()
        self._conn: smtplib.SMTP | None = None
        #: how many sessions this instance opened (reconnects included)
        self.connections_opened = 0

    def _check_settings(self) -> PermanentError | None:
        """Validate host, TLS mode and port (setting ``self.port``); the problem or None."""
        if not self.host:
            return PermanentError("smtp_host is not set", code="config")
        if self.tls not in TLS_MODES:
            return PermanentError("smtp_tls must be one of: none, starttls, tls", code="config")
        try:
            self.port = int(self.config.get("smtp_port") or DEFAULT_PORTS[self.tls])
        except (TypeError, ValueError):
            return PermanentError("smtp_port must be a number", code="config")
        return None

    # -- connection ------------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.config.get("smtp_ca_file") or None)
        if str(self.config.get("smtp_tls_verify", "1")).lower() in ("0", "false", "no", "off"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _open(self) -> smtplib.SMTP:
        """Connect, EHLO, STARTTLS and AUTH as configured."""
        if self.config_error is not None:
            raise PermanentError(self.config_error.reason, code="config")
        conn: smtplib.SMTP | None = None
        try:
            operator = bool(self.config.get(OPERATOR_ENDPOINT))
            if self.tls == "tls":
                conn = GuardedSMTP_SSL(timeout=self.timeout, context=self._tls_context())
            else:
                conn = GuardedSMTP(timeout=self.timeout)
            conn.operator = operator
            conn._host = self.host
            code, reply = conn.connect(self.host, self.port)
            if code != 220:
                raise smtplib.SMTPConnectError(code, reply)
            conn.ehlo()
            if self.tls == "starttls":
                conn.starttls(context=self._tls_context())
                conn.ehlo()
            if self.username:
                conn.login(self.username, self.config.get("smtp_password") or "")
        except (OSError, smtplib.SMTPException) as exc:
            if conn is not None:
                conn.close()
            error = classify(exc, connecting=True)
            log.warning("SMTP %s:%s: connect failed: %s", self.host, self.port, error.reason)
            raise error from exc
        self.connections_opened += 1
        return conn

    def _connection(self) -> smtplib.SMTP:
        """The open session, opened on first use."""
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    def _drop(self) -> None:
        """Forget a session the server has closed."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        """QUIT and close the session; safe to call twice."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.quit()
        except (OSError, smtplib.SMTPException):
            conn.close()

    # -- sending -----------------------------------------------------------------

    def send(self, sender: str, messages: list[Message]) -> list[Result]:
        """Send each message over the shared session; one Result per message, in order."""
        return send_each(messages, lambda message: self._send_one(sender, message))

    def _send_one(self, sender: str, message: Message) -> Result:
        refusal = _refusal(sender, message)
        if refusal:
            return Result(message.key, ResultStatus.FAILED, error=refusal)
        if message.raw is not None:
            return self._send_raw(sender, message)
        envelope_from = parseaddr(sender)[1] or sender
        try:
            msg = build_message(sender, message, envelope_from.rpartition("@")[2] or None)
        except (ValueError, TypeError):
            return Result(message.key, ResultStatus.FAILED, error="invalid_header")
        try:
            self._deliver(msg, envelope_from, single_address(message.to) or message.to)
        except SmtpReply as reply:
            return Result(message.key, reply.status, error=reply.reason)
        return Result(message.key, ResultStatus.SENT, message_id=msg["Message-ID"])

    def _send_raw(self, sender: str, message: Message) -> Result:
        """The LMS's MIME as it came (with our headers on top), from its own envelope sender."""
        if message.raw is None:
            raise ValueError("a raw send needs the message's MIME")
        try:
            data = mime.outgoing(message.raw, message.headers)
        except ValueError:
            return Result(message.key, ResultStatus.FAILED, error="invalid_header")
        envelope_from = message.envelope_from or parseaddr(sender)[1] or sender
        try:
            self._deliver(data, envelope_from, single_address(message.to) or message.to)
        except SmtpReply as reply:
            return Result(message.key, reply.status, error=reply.reason)
        found = mime.header_values(message.raw, "message-id")
        return Result(message.key, ResultStatus.SENT, message_id=found[0] if found else None)

    def _deliver(self, msg: EmailMessage | bytes, envelope_from: str, to_addr: str) -> None:
        """MAIL/RCPT/DATA for one message (built, or MIME bytes), reopening the session once if it was lost."""
        for attempt in (1, 2):
            conn = self._connection()
            try:
                if isinstance(msg, bytes):
                    options = ["BODY=8BITMIME"] if not msg.isascii() and conn.has_extn("8bitmime") else []
                    conn.sendmail(envelope_from, [to_addr], msg, mail_options=options)
                else:
                    conn.send_message(msg, from_addr=envelope_from, to_addrs=[to_addr])
                return
            except OSError as exc:  # smtplib.SMTPException is an OSError
                if not _session_lost(exc):
                    self._handle_failure(exc)
                self._drop()
                if attempt == 2:
                    raise classify(exc) from exc
                log.info("SMTP %s:%s: session lost, reconnecting", self.host, self.port)

    def _handle_failure(self, exc: OSError) -> None:
        """Raise the SmtpReply (this message) or ProviderError (whole call) for ``exc``."""
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            code, reply = next(iter(exc.recipients.values()))
            raise _message_reply(code, reply) from exc
        if isinstance(exc, smtplib.SMTPDataError):
            raise _message_reply(exc.smtp_code, exc.smtp_error) from exc
        if isinstance(exc, smtplib.SMTPSenderRefused):
            if exc.smtp_code == 552:  # SIZE refused at MAIL FROM: this message is too big
                raise SmtpReply(ResultStatus.FAILED, _reply_reason(exc.smtp_code, exc.smtp_error)) from exc
            raise _response_error(exc.smtp_code, exc.smtp_error) from exc
        if isinstance(exc, smtplib.SMTPNotSupportedError):  # SMTPUTF8 needed, not offered
            raise SmtpReply(ResultStatus.FAILED, "smtputf8_unsupported") from exc
        error = classify(exc)
        if isinstance(error, ConnectionFailure) or error.code == "timeout":
            self._drop()
        raise error from exc

    # -- checks ------------------------------------------------------------------

    def test_connection(self) -> dict:
        """Connect, EHLO, TLS and AUTH as configured; report the server's EHLO features. Passes only
        on an SMTP server's own answers: its 220 greeting, a 250 to EHLO, and AUTH accepted when a
        user is set (a refusal names the setting to fix; no banner or reply text is shown)."""
        try:
            conn = self._open()
        except ProviderError as exc:
            raise for_field(exc, _CHECK_FIELDS.get(exc.code or "", "smtp_host")) from None
        try:
            if not conn.does_esmtp:  # EHLO was not answered 250
                raise not_the_provider(self.label, "smtp_host", "no 250 answer to EHLO")
            features = known_features(conn.esmtp_features)
        finally:
            try:
                conn.quit()
            except (OSError, smtplib.SMTPException):
                conn.close()
        return {"provider": self.name, "host": self.host, "port": self.port, "tls": self.tls,
                "authenticated": bool(self.username), "features": features}
