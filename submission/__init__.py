"""SMTP submission: ``flask --app wsgi smtp``, a process of its own serving ESMTP on ``OFFLOAD_SMTP_LISTEN``.

Any Moodle (any LMS) points its outgoing mail settings here and every
message it sends becomes a job (``core.submissions``). ``server`` is the
protocol (aiosmtpd) with the service's sign-in and limits, ``writer`` the
group commit that stores messages before they are answered. Run as many as
you like behind a TCP balancer: they share only the database and Redis.
On one machine, ``OFFLOAD_SMTP_PROCESSES`` (2) processes serve one listening
socket, bound before they are forked: the kernel hands each new connection to
whichever accepts it first, an idle one before a busy one. Each has its own
event loop and writers: one loop is one core at most, and a loop that also
waits for its writers' answers serves its clients one after another.
Imports core only.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor

from core import settings
from core.db import db
from submission.server import Service, SubmissionSMTP, server_name, tls_context
from submission.writer import WRITERS, GroupWriter

log = logging.getLogger(__name__)

__all__ = ["serve", "start"]


def database_options(url: str) -> dict:
    """The SMTP process's engine: SQL parameters (message content) never in an error's text, and a
    database that does not answer fails a commit in seconds (a 451), not minutes."""
    options: dict = {"hide_parameters": True}
    if url.startswith("postgresql"):
        options["connect_args"] = {"connect_timeout": 5, "options": "-c statement_timeout=20000"}
    return options


async def start(s: settings.Settings, host: str, port: int, *, sockets: list[socket.socket] | None = None
                ) -> tuple[asyncio.base_events.Server | Servers, GroupWriter]:
    """Listen on ``host:port`` (or serve ``sockets``, already listening); the server and its writer (the
    caller closes both)."""
    loop = asyncio.get_running_loop()
    writer = GroupWriter(loop, writers=WRITERS,
                         connect_args=database_options(s.database_url).get("connect_args")).start()
    service = Service(s, writer, ThreadPoolExecutor(max_workers=8, thread_name_prefix="smtp-auth"), server_name(s))
    tls = tls_context(s)
    def protocol() -> SubmissionSMTP:
        return SubmissionSMTP(service, tls=tls, loop=loop)

    if sockets:
        servers = [await loop.create_server(protocol, sock=sock, backlog=BACKLOG) for sock in sockets]
        return Servers(servers), writer
    return await loop.create_server(protocol, host, port, reuse_address=True, backlog=BACKLOG), writer


BACKLOG = 512


class Servers:
    """The servers of sockets bound before (one per address of the host name), closed together."""

    def __init__(self, servers: list[asyncio.base_events.Server]):
        self.servers = servers

    def close(self) -> None:
        for server in self.servers:
            server.close()

    async def wait_closed(self) -> None:
        for server in self.servers:
            await server.wait_closed()


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound and listening sockets for every address of ``host`` (as asyncio's ``create_server`` binds them)."""
    found: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                      flags=socket.AI_PASSIVE):
            sock = socket.socket(family, kind, proto)
            found.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in found:
            sock.close()
        raise
    return found


def serve(s: settings.Settings) -> None:
    """Serve on ``OFFLOAD_SMTP_LISTEN`` until SIGTERM or SIGINT, in ``OFFLOAD_SMTP_PROCESSES`` processes."""
    if s.smtp_listen is None:
        raise SystemExit("OFFLOAD_SMTP_LISTEN is not set (host:port, e.g. 127.0.0.1:2525)")
    host, port = s.smtp_listen
    if s.smtp_processes <= 1:
        db.configure(s.database_url, **database_options(s.database_url))
        asyncio.run(_serve(s, host, port))
        return
    sockets = listening_sockets(host, port)
    try:
        db.engine.dispose()  # a connection the app may have opened is not shared with the children
    except RuntimeError:  # no engine yet
        pass
    children = [_fork(s, host, port, sockets) for _ in range(s.smtp_processes)]
    for sock in sockets:
        sock.close()
    _supervise(children)


def _fork(s: settings.Settings, host: str, port: int, sockets: list[socket.socket]) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        _die_with_parent()
        db.configure(s.database_url, **database_options(s.database_url))
        asyncio.run(_serve(s, host, port, sockets=sockets))
        code = 0
    except BaseException:  # a child never returns into the parent's code
        log.exception("SMTP process %s stopped", os.getpid())
    finally:
        logging.shutdown()
        os._exit(code)


def _die_with_parent() -> None:
    """A child is sent SIGTERM when the parent dies, however it dies (Linux's PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _supervise(children: list[int]) -> None:
    """Wait for the children; SIGTERM or SIGINT is passed on to them. When one ends by itself, the others
    are stopped too and this exits non-zero: the supervisor (systemd) starts the whole server again."""
    stopping = False

    def stop(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    failed = False
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid in children:
            children.remove(pid)
            if not stopping:
                log.error("SMTP process %s ended (status %s): stopping the others", pid, status)
                failed = True
                stop(signal.SIGTERM, None)
    if failed:
        raise SystemExit(1)


async def _serve(s: settings.Settings, host: str, port: int, *, sockets: list[socket.socket] | None = None) -> None:
    server, writer = await start(s, host, port, sockets=sockets)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    shown = f"[{host}]" if ":" in host else host
    tls = "STARTTLS" if s.smtp_tls_cert else "no TLS (AUTH from loopback only)" if not s.smtp_allow_plain_auth \
        else "no TLS, AUTH in the clear allowed"
    log.info("SMTP submission on %s:%s (%s)", shown, port, tls)
    print(f" * SMTP submission on {shown}:{port} ({tls})", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
        await writer.close()
        log.info("SMTP submission stopped: %s messages stored in %s commits", writer.stored, writer.commits)
