"""SMTP submission: ``flask --app wsgi smtp``, a process of its own serving ESMTP on ``OFFLOAD_SMTP_LISTEN``.

Any Moodle (any LMS) points its outgoing mail settings here and every
message it sends becomes a job (``core.submissions``). ``server`` is the
protocol (aiosmtpd) with the service's sign-in and limits, ``writer`` the
group commit that stores messages before they are answered. Run as many as
you like behind a TCP balancer: they share only the database and Redis.
Imports core only.
"""
from __future__ import annotations

import asyncio
import logging
import signal
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


async def start(s: settings.Settings, host: str, port: int) -> tuple[asyncio.base_events.Server, GroupWriter]:
    """Listen on ``host:port``; the server and its writer (the caller closes both)."""
    loop = asyncio.get_running_loop()
    # SQLite takes one writer at a time: a second writer would only wait for its lock
    writer = GroupWriter(loop, writers=WRITERS if db.engine.dialect.name == "postgresql" else 1).start()
    service = Service(s, writer, ThreadPoolExecutor(max_workers=8, thread_name_prefix="smtp-auth"), server_name(s))
    tls = tls_context(s)
    server = await loop.create_server(lambda: SubmissionSMTP(service, tls=tls, loop=loop), host, port,
                                      reuse_address=True, backlog=512)
    return server, writer


def serve(s: settings.Settings) -> None:
    """Serve on ``OFFLOAD_SMTP_LISTEN`` until SIGTERM or SIGINT."""
    if s.smtp_listen is None:
        raise SystemExit("OFFLOAD_SMTP_LISTEN is not set (host:port, e.g. 127.0.0.1:2525)")
    db.configure(s.database_url, **database_options(s.database_url))
    asyncio.run(_serve(s, *s.smtp_listen))


async def _serve(s: settings.Settings, host: str, port: int) -> None:
    server, writer = await start(s, host, port)
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
        writer.stop()
        log.info("SMTP submission stopped: %s messages stored in %s commits", writer.stored, writer.commits)
