"""Messages taken by SMTP submission (``submission``), until they are jobs and after."""
from __future__ import annotations

from sqlalchemy import JSON, Column, DateTime, ForeignKey, Index, Integer, String, Text

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
    id = Column(Integer, primary_key=True)
    received_at = Column(DateTime, nullable=False, default=utcnow)
    status = Column(String(16), nullable=False, default=WAITING)
    job_type = Column(String(32), nullable=False)
    job_id = Column(Integer, ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    mail_from = Column(String(320), nullable=False)
    #: the envelope recipients (RCPT TO), in order
    rcpt_to = Column(JSON, nullable=False)
    #: the decoded Subject, shown on the job
    subject = Column(Text, nullable=False, default="")
    size = Column(Integer, nullable=False)
    raw = Column(EncryptedBytes)
    storage_key = Column(String(512))
    #: the client's address and the token that signed in (its prefix), for the record
    peer = Column(String(64))
    token_prefix = Column(String(16))
