"""Messages taken by SMTP submission (``submission``), until they are jobs and after."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.crypto import EncryptedBytes
from core.db import Model
from core.models.base import TenantMixin, utcnow

#: a stored message waiting for its window to close
WAITING = "waiting"
#: a message that is (part of) a job: ``job_id``
JOBBED = "jobbed"


class SmtpMessage(TenantMixin, Model):
    """One message as the LMS sent it, stored before its ``250``.

    ``raw`` is the MIME message as received (the service's ``Received:`` line
    first; ``Bcc:`` and ``X-Offload-Type:`` taken out), encrypted like
    recipient data; a large one lives in the company's storage instead
    (``storage_key``). Each envelope recipient becomes a recipient of the
    job the message lands in, with ``{"smtp_message_id": id}`` as its data.
    """

    __tablename__ = "smtp_messages"
    __table_args__ = (Index("ix_smtp_messages_waiting", "status", "company_id", "job_type", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=WAITING)
    job_type: Mapped[str] = mapped_column(String(32), nullable=False)
    job_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    mail_from: Mapped[str] = mapped_column(String(320), nullable=False)
    #: the envelope recipients (RCPT TO), in order
    rcpt_to: Mapped[Any] = mapped_column(JSON, nullable=False)
    #: the decoded Subject, shown on the job
    subject: Mapped[str] = mapped_column(Text, nullable=False, default="")
    size: Mapped[int] = mapped_column(Integer, nullable=False)
    raw: Mapped[bytes | None] = mapped_column(EncryptedBytes)
    storage_key: Mapped[str | None] = mapped_column(String(512))
    #: the client's address and the token that signed in (its prefix), for the record
    peer: Mapped[str | None] = mapped_column(String(64))
    token_prefix: Mapped[str | None] = mapped_column(String(16))
