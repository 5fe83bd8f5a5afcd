"""The demo outbox: a local SMTP sink that ``make run`` starts, keeping every
message it accepts as an ``.eml`` file under ``instance/outbox/``, and the
reading side the Outbox page (development only) uses.

Files are named ``<unix ms>-<random>.eml`` so a listing sorted by name is
newest last; the envelope (MAIL FROM, RCPT TO) goes in ``X-Outbox-*``
headers prepended to the message, as Mailpit shows it.
"""
from __future__ import annotations

import email
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage

from aiosmtpd.controller import Controller

FOLDER = "outbox"
NAME = re.compile(r"^\d{13}-[0-9a-f]{8}\.eml$")
#: the newest messages the Outbox page lists
LIST_LIMIT = 200


def folder(instance_path: str) -> str:
    return os.path.join(instance_path, FOLDER)


class _Handler:
    def __init__(self, path: str):
        self.path = path

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        head = (f"X-Outbox-From: {envelope.mail_from}\r\n"
                f"X-Outbox-To: {', '.join(envelope.rcpt_tos)}\r\n").encode()
        name = f"{int(time.time() * 1000):013d}-{secrets.token_hex(4)}.eml"
        tmp = os.path.join(self.path, f".{name}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(head + raw)
        os.replace(tmp, os.path.join(self.path, name))  # readers never see half a message
        return "250 Message accepted for delivery"


class OutboxSink:
    """An SMTP server on ``host:port`` (0: a free port) writing into ``instance/outbox``."""

    def __init__(self, instance_path: str, host: str = "127.0.0.1", port: int = 0):
        self.path = folder(instance_path)
        os.makedirs(self.path, exist_ok=True)
        self.host = host
        self.port = port or _free_port(host)
        self.controller = Controller(_Handler(self.path), hostname=host, port=self.port, ready_timeout=10)

    def start(self) -> OutboxSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Captured:
    """One message of the outbox, parsed."""

    id: str
    received_at: float
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message.get("Subject", ""))

    @property
    def to(self) -> str:
        return str(self.message.get("X-Outbox-To") or self.message.get("To", ""))

    @property
    def sender(self) -> str:
        return str(self.message.get("From", ""))

    def searchable(self) -> str:
        """The envelope and the To, Cc, From and Subject fields, lower case: what a search matches."""
        return " ".join(str(self.message.get(h, "")) for h in ("X-Outbox-From", "X-Outbox-To", "To", "Cc",
                                                               "From", "Subject")).lower()

    def headers(self) -> list[tuple[str, str]]:
        return [(k, str(v)) for k, v in self.message.items()]

    def part(self, kind: str) -> str | None:
        """The ``text/plain`` or ``text/html`` body, decoded."""
        body = self.message.get_body(preferencelist=(kind,))
        return None if body is None else body.get_content()

    def attachments(self) -> list[str]:
        return [a.get_filename() or "(unnamed)" for a in self.message.iter_attachments()]


def read(instance_path: str, message_id: str) -> Captured | None:
    if not NAME.match(message_id):
        return None
    path = os.path.join(folder(instance_path), message_id)
    if not os.path.exists(path):
        return None
    with open(path, "rb") as fh:
        message = email.message_from_binary_file(fh, policy=policy.default)
    return Captured(message_id, int(message_id[:13]) / 1000, message)


def listing(instance_path: str, limit: int = LIST_LIMIT) -> tuple[list[Captured], int]:
    """The newest ``limit`` messages (newest first) and how many there are."""
    found = search(instance_path, limit=limit)
    return found.messages, found.total


@dataclass
class Found:
    """A page of the Outbox: its messages (newest first), how many there are in all, and the
    ``before`` cursor of the next (older) page, or ``None``."""

    messages: list[Captured]
    total: int
    older: str | None


def search(instance_path: str, text: str = "", before: str | None = None, limit: int = LIST_LIMIT) -> Found:
    """The newest ``limit`` messages older than the message ``before`` (a keyset cursor: file names sort
    by arrival) whose envelope, To, From or Subject contain ``text`` (any case)."""
    path = folder(instance_path)
    names = sorted(n for n in os.listdir(path) if NAME.match(n)) if os.path.isdir(path) else []
    if before is not None:
        names = [n for n in names if n < before]
    wanted = text.strip().lower()
    page: list[Captured] = []
    older = None
    for name in reversed(names):
        message = read(instance_path, name)
        if message is None or (wanted and wanted not in message.searchable()):
            continue
        if len(page) == limit:
            older = page[-1].id
            break
        page.append(message)
    return Found(page, len(names), older)


def clear(instance_path: str) -> int:
    path = folder(instance_path)
    names = [n for n in os.listdir(path) if NAME.match(n)] if os.path.isdir(path) else []
    for name in names:
        os.remove(os.path.join(path, name))
    return len(names)
