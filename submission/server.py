"""The ESMTP server: aiosmtpd's protocol, with the service's door, limits and durable acceptance.

Per session (``SubmissionSMTP``, one aiosmtpd ``SMTP`` protocol per connection):
- AUTH PLAIN and LOGIN only, refused before STARTTLS unless the client is on
  loopback or ``OFFLOAD_SMTP_ALLOW_PLAIN_AUTH`` is on; the check itself
  (``core.smtp_auth``) runs in a thread, after the slow-down the client's
  address has earned, so no session waits on another's database call.
- MAIL FROM at one of the account's sender domains (``550 5.7.1``), at most
  ``OFFLOAD_SMTP_MAX_RCPT`` RCPTs (``452``), ``SIZE`` advertised and enforced
  (``552``), lines of at most 1,000 bytes (aiosmtpd's ``500``).
- DATA: the message is checked (``core.submissions.take``: ``From:`` at the
  sender domains, ``X-Offload-Type``), handed to the group-commit writer and
  answered ``250`` only once it is committed; ``451`` when it could not be.
- Every read re-arms ``TCP_QUICKACK``: Moodle's PHPMailer writes DATA one line
  per write with Nagle's algorithm on, so each line waits for the ACK of the
  one before; Linux's delayed ACK would hold that ACK for up to 40 ms.

Anything unexpected in one session is answered ``451`` and logged by type
(never the message or the credentials); other sessions go on. aiosmtpd's own
log (``mail.log``) would write every command line, AUTH's base64 included, at
INFO (and warns at every sign-in about a deprecated attribute): it is kept at ERROR.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import ssl
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from sqlalchemy.exc import SQLAlchemyError

from core import settings, smtp_auth, submissions
from providers import ProviderError
from submission.writer import GroupWriter, StoreFailed

log = logging.getLogger(__name__)
logging.getLogger("mail.log").setLevel(logging.ERROR)

TEMPORARY = "451 4.3.0 Temporary failure, the message was not stored; please try again later"
AUTH_TEMPORARY = "454 4.7.0 Temporary authentication failure; please try again later"
AUTH_BUSY = "454 4.7.0 Too many sessions for this account; please try again later"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
TOO_MANY_RCPT = "452 4.5.3 Too many recipients"
_CHECKING = object()
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
#: ``<local@domain>`` (then the parameters), both dot-atoms: what every LMS sends, read without
#: the email package's full parser (aiosmtpd's ``_getaddr``, a fifth of a MAIL or RCPT)
_SIMPLE_PATH = re.compile(rf'[ \t]*<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(?:[ \t]+([^()"\\]*))?\Z',
                          re.DOTALL)
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


@dataclass
class Service:
    """What every session shares: the settings, the writer, the thread pool for blocking calls."""

    settings: settings.Settings
    writer: GroupWriter
    pool: ThreadPoolExecutor
    hostname: str

    async def blocking(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)


def server_name(s: settings.Settings) -> str:
    """The name the server gives itself: the host of ``OFFLOAD_PUBLIC_URL``."""
    return urlsplit(s.public_url).hostname or "localhost"


def tls_context(s: settings.Settings) -> ssl.SSLContext | None:
    if not s.smtp_tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(s.smtp_tls_cert, s.smtp_tls_key)
    return context


def is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class Handler:
    """aiosmtpd's hooks: the envelope's and the message's checks, and the durable store."""

    def __init__(self, service: Service):
        self.service = service

    async def handle_PROXY(self, server, session, envelope, proxy_data) -> bool:
        if not proxy_data.valid:
            return False
        server.client_address = str(proxy_data.src_addr) if proxy_data.src_addr else server.client_address
        server.set_auth_policy()
        return True

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        try:
            submissions.check_sender(session.auth_data, address)
        except submissions.Refused as exc:
            return exc.reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if any(address.lower() == given.lower() for given in envelope.rcpt_tos):
            return "250 2.1.5 OK"  # the same address twice is one recipient
        if len(envelope.rcpt_tos) >= self.service.settings.smtp_max_rcpt:
            return TOO_MANY_RCPT
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        received = submissions.received_line(helo=session.host_name or "", peer=server.client_address,
                                             by=self.service.hostname, tls=session.ssl is not None)
        try:
            taken = submissions.take(session.auth_data, envelope.mail_from, list(envelope.rcpt_tos),
                                     envelope.original_content, received, server.client_address)
        except submissions.Refused as exc:
            return exc.reply
        account = session.auth_data
        if account.storage and len(taken.raw) > submissions.LARGE_BYTES:
            try:
                taken.storage_key = await self.service.blocking(submissions.store_large, account, taken.raw)
            except (ProviderError, SQLAlchemyError, OSError) as exc:  # the database takes it instead
                log.warning("SMTP: a large message stays in the database: its storage failed (%s)",
                            type(exc).__name__)
        try:  # bounded by the database's own timeouts (submission.database_options)
            message_id = await self.service.writer.store(taken)
        except StoreFailed:
            return TEMPORARY
        server.renew_slot()
        return f"250 2.0.0 OK queued as {message_id}"

    async def handle_exception(self, error: Exception) -> str:
        log.error("SMTP session: unexpected %s; answered 451", type(error).__name__)
        return "451 4.3.0 Local error; please try again later"


class SubmissionSMTP(SMTP):
    """aiosmtpd's SMTP with the service's sign-in, its per-address policy and TCP_QUICKACK."""

    def __init__(self, service: Service, *, tls: ssl.SSLContext | None, loop: asyncio.AbstractEventLoop):
        s = service.settings
        super().__init__(Handler(service), data_size_limit=s.smtp_max_bytes, hostname=service.hostname,
                         ident="ManiReports Cloud Offload", tls_context=tls, auth_required=True,
                         auth_require_tls=True,
                         proxy_protocol_timeout=5 if s.smtp_proxy_protocol else None, loop=loop)
        self.service = service
        self.client_address: str | None = None
        self.session_id = uuid.uuid4().hex
        self._socket = None
        self._slot_company: int | None = None
        self._renewed = 0.0

    # -- the connection ---------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        first = self._original_transport is None and self.transport is None
        super().connection_made(transport)
        if first:
            wrapped = transport.get_extra_info("socket")  # asyncio's TransportSocket: the socket itself is cheaper
            self._socket = getattr(wrapped, "_sock", wrapped)
            peer = transport.get_extra_info("peername")
            self.client_address = peer[0] if peer else None
            self.set_auth_policy()

    def set_auth_policy(self) -> None:
        """AUTH in the clear only from loopback, or everywhere with OFFLOAD_SMTP_ALLOW_PLAIN_AUTH."""
        plain = self.service.settings.smtp_allow_plain_auth or is_loopback(self.client_address)
        self._auth_require_tls = not plain

    def data_received(self, data: bytes) -> None:
        if self._socket is not None and _QUICKACK is not None:
            try:
                self._socket.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            except OSError:
                self._socket = None
        super().data_received(data)

    def connection_lost(self, error) -> None:
        super().connection_lost(error)
        if self._slot_company is not None:
            company, self._slot_company = self._slot_company, None
            self.loop.run_in_executor(self.service.pool, smtp_auth.release_slot, company, self.session_id)

    def renew_slot(self) -> None:
        if self._slot_company is not None and time.monotonic() - self._renewed > smtp_auth.SLOT_RENEW_S:
            self._renewed = time.monotonic()
            self.loop.run_in_executor(self.service.pool, smtp_auth.renew_slot, self._slot_company, self.session_id)

    def _getaddr(self, arg: str):
        simple = _SIMPLE_PATH.match(arg) if arg else None
        if simple is None or (self.local_part_limit and len(simple[1].rpartition("@")[0]) > self.local_part_limit):
            return super()._getaddr(arg)  # anything else (quoted, comments, <>): aiosmtpd's own reading
        return simple[1], simple[2] or ""

    # -- AUTH ---------------------------------------------------------------------------------
    # aiosmtpd reads the credentials (its auth_PLAIN / auth_LOGIN) and calls _authenticate, which here
    # only hands them back; the check runs in a thread, after this address's slow-down.
    def _authenticate(self, mechanism: str, auth_data) -> AuthResult:
        return AuthResult(success=False, handled=True, auth_data=(_CHECKING, auth_data))

    async def auth_PLAIN(self, _, args) -> AuthResult:
        return await self._checked(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _, args) -> AuthResult:
        return await self._checked(await super().auth_LOGIN(_, args))

    async def _checked(self, read: AuthResult) -> AuthResult:
        data = read.auth_data
        if not (isinstance(data, tuple) and len(data) == 2 and data[0] is _CHECKING):
            return read  # aiosmtpd answered already (bad base64, aborted)
        credentials: LoginPassword = data[1]
        username = credentials.login.decode("utf-8", "replace")
        password = credentials.password.decode("utf-8", "replace")
        address = self.client_address or "unknown"
        wait, failures = await self.service.blocking(smtp_auth.backoff, address, username)
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            account = await self.service.blocking(_sign_in, address, username, password, failures)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("SMTP AUTH: the database did not answer (%s)", type(exc).__name__)
            return AuthResult(success=False, handled=False, message=AUTH_TEMPORARY)
        if account is None:
            return AuthResult(success=False, handled=False, message=AUTH_INVALID)
        limit = self.service.settings.smtp_max_connections
        if not await self.service.blocking(smtp_auth.take_slot, account.company_id, self.session_id, limit):
            return AuthResult(success=False, handled=False, message=AUTH_BUSY)
        self._slot_company, self._renewed = account.company_id, time.monotonic()
        return AuthResult(success=True, auth_data=account)


def _sign_in(address: str, username: str, password: str, failures: int) -> submissions.Account | None:
    account = smtp_auth.authenticate(username, password)
    if account is None:
        smtp_auth.record_failure(address, username)
        log.info("SMTP AUTH failed from %s", address)
    elif failures:
        smtp_auth.record_success(address, username)
    return account
