"""SMTP clients as an LMS drives them, and the submission server run inside a test process.

``LineClient`` writes as Moodle's PHPMailer does: every command and every
DATA line is its own ``send()`` on a socket with Nagle's algorithm on (Moodle
never sets TCP_NODELAY), AUTH LOGIN, a keep-alive session with RSET after
each message. smtplib writes DATA in one go and so hides what a server's
delayed ACK costs such a client. ``InProcessServer`` runs
``submission.start`` on its own event loop thread, on the test's database
and Redis.
"""
from __future__ import annotations

import asyncio
import base64
import smtplib
import socket
import threading
import time
from dataclasses import dataclass, field

from core import settings
from submission import start
from tests.support.servers import free_port


class SmtpError(Exception):
    def __init__(self, reply: bytes):
        super().__init__(reply.decode("utf-8", "replace"))
        self.code = int(reply[:3]) if reply[:3].isdigit() else 0
        self.reply = reply


@dataclass
class LineClient:
    """One SMTP session written line by line, Nagle on."""

    host: str
    port: int
    helo: str = "moodle.example.com"
    proxy_line: bytes | None = None
    timeout: float = 30.0
    sock: socket.socket | None = field(default=None, init=False)

    def __post_init__(self):
        self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self._file = self.sock.makefile("rb")
        if self.proxy_line:
            self.sock.send(self.proxy_line)
        self.expect(220)
        self.command(f"EHLO {self.helo}", 250)

    def read(self) -> bytes:
        """One reply (the last line of a multi-line one)."""
        while True:
            line = self._file.readline()
            if not line:
                raise SmtpError(b"000 connection closed")
            if line[3:4] != b"-":
                return line.rstrip(b"\r\n")

    def expect(self, code: int) -> bytes:
        reply = self.read()
        if not reply.startswith(str(code).encode()):
            raise SmtpError(reply)
        return reply

    def command(self, line: str | bytes, code: int) -> bytes:
        self.sock.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.expect(code)

    def login(self, user: str, password: str) -> None:
        """AUTH LOGIN, as Moodle's ``smtpauthtype = LOGIN``."""
        self.command("AUTH LOGIN", 334)
        self.command(base64.b64encode(user.encode()), 334)
        self.command(base64.b64encode(password.encode()), 235)

    def send(self, mail_from: str, rcpt: list[str], message: bytes) -> bytes:
        """MAIL, RCPT, DATA one line per write, then RSET (PHPMailer's keep-alive); the 250 after DATA."""
        self.command(f"MAIL FROM:<{mail_from}>", 250)
        for address in rcpt:
            self.command(f"RCPT TO:<{address}>", 250)
        self.command("DATA", 354)
        for line in message.split(b"\r\n")[:-1] if message.endswith(b"\r\n") else message.split(b"\r\n"):
            self.sock.send((b"." + line if line.startswith(b".") else line) + b"\r\n")
        self.sock.send(b".\r\n")
        reply = self.expect(250)
        self.command("RSET", 250)
        return reply

    def quit(self) -> None:
        try:
            self.command("QUIT", 221)
        except (SmtpError, OSError):
            pass
        self.close()

    def close(self) -> None:
        self._file.close()
        self.sock.close()


class ProxiedSMTP(smtplib.SMTP):
    """smtplib behind a TCP balancer that speaks the PROXY protocol: ``proxy_line`` goes first."""

    def __init__(self, proxy_line: bytes, *args, **kwargs):
        self.proxy_line = proxy_line
        super().__init__(*args, **kwargs)

    def _get_socket(self, host, port, timeout):
        sock = super()._get_socket(host, port, timeout)
        sock.sendall(self.proxy_line)
        return sock


class InProcessServer:
    """``submission.start`` on a loop thread of this process (the current settings; port free)."""

    def __init__(self, host: str = "127.0.0.1"):
        self.host, self.port = host, free_port()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="smtp-test-loop", daemon=True)
        self.server = self.writer = None

    def start(self) -> InProcessServer:
        self._thread.start()
        made = asyncio.run_coroutine_threadsafe(start(settings.current(), self.host, self.port), self.loop)
        self.server, self.writer = made.result(10)
        return self

    def stop(self) -> None:
        async def close():
            self.server.close()
            await self.server.wait_closed()
            await self.writer.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def message(subject: str = "Hello", *, sender: str = "Moodle <noreply@acme.test>", to: str = "ann@example.com",
            body: str = "Hi Ann,\r\nyour account is ready.\r\n", headers: dict[str, str] | None = None) -> bytes:
    """A small plain-text message as PHPMailer writes one (CRLF lines)."""
    lines = [f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}", f"To: {to}",
             f"From: {sender}", f"Subject: {subject}", "Message-ID: <m" + str(time.monotonic_ns()) + "@acme.test>",
             "MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8",
             "Content-Transfer-Encoding: 8bit", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


class Burst:
    """Client threads sending ``total`` messages, each to an address of its own, in keep-alive sessions
    of ``per_session``, as many Moodle cron runs at once would. A message is ``acked`` when it got its
    250, ``refused`` with the reply code when it got a 4xx/5xx, ``unanswered`` when the connection
    broke first; nothing is sent again (Moodle never retries). A broken session is reopened."""

    def __init__(self, port: int, user: str, password: str, total: int, *, clients: int = 4, per_session: int = 50,
                 sender: str = "noreply@acme.test", prefix: str = "burst"):
        self.port, self.user, self.password = port, user, password
        self.total, self.clients, self.per_session = total, clients, per_session
        self.sender, self.prefix = sender, prefix
        self.acked: list[str] = []
        self.refused: list[tuple[str, int]] = []
        self.unanswered: list[str] = []
        self._next = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    @property
    def done(self) -> int:
        with self._lock:
            return len(self.acked) + len(self.refused) + len(self.unanswered)

    def address(self, n: int) -> str:
        return f"{self.prefix}{n}@example.com"

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= self.total:
                return None
            self._next += 1
            return self._next - 1

    def _session(self) -> smtplib.SMTP:
        deadline = time.monotonic() + 60
        while True:
            try:
                client = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
                client.login(self.user, self.password)
                return client
            except (OSError, smtplib.SMTPException):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _run(self) -> None:
        client, in_session = None, 0
        while (n := self._take()) is not None:
            to = self.address(n)
            try:
                if client is None or in_session >= self.per_session:
                    if client is not None:
                        client.quit()
                    client, in_session = self._session(), 0
                in_session += 1
                client.sendmail(self.sender, [to], message(f"Burst {n}", to=to))
            except smtplib.SMTPResponseException as exc:
                with self._lock:
                    self.refused.append((to, exc.smtp_code))
                continue
            except (OSError, smtplib.SMTPException):
                with self._lock:
                    self.unanswered.append(to)
                client = None
                continue
            with self._lock:
                self.acked.append(to)
        if client is not None:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                pass

    def start(self) -> Burst:
        for thread in self._threads:
            thread.start()
        return self

    def wait(self, timeout: float = 300) -> Burst:
        for thread in self._threads:
            thread.join(timeout)
        return self

    def wait_done(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.done < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.done} of {count} messages answered after {timeout} s")
            time.sleep(0.01)
