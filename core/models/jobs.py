"""Jobs, their batches and recipients, and callback receipts."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from core.crypto import EncryptedJSON
from core.db import Model
from core.models.base import TenantMixin, utcnow
from core.models.statuses import B_PENDING, JOB_FINAL, PENDING, R_PENDING


class Job(TenantMixin, Model):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_company_created", "company_id", "created_at"),
        Index("ix_jobs_created", "created_at"),  # every company's, newest first (an admin's list)
        Index("ix_jobs_status", "status"),
        UniqueConstraint("company_id", "idempotency_key"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(String(32), nullable=False)
    status: Mapped[str] = mapped_column(String(32), nullable=False, default=PENDING)
    #: api | event | dashboard | lms | smtp
    source: Mapped[str] = mapped_column(String(16), nullable=False, default="api")
    #: service class (CONTRACT §6): transactional | bulk; the type's default unless the request set it
    priority: Mapped[str] = mapped_column(String(16), nullable=False, default="transactional",
                                          server_default="transactional")
    email_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    emails_sent: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    emails_failed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    emails_suppressed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    emails_bounced: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    emails_uncertain: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime)
    send_at: Mapped[datetime | None] = mapped_column(DateTime)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime)
    paused_reason: Mapped[str | None] = mapped_column(String(255))
    paused_at: Mapped[datetime | None] = mapped_column(DateTime)
    data_purged_at: Mapped[datetime | None] = mapped_column(DateTime)
    error_log: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    template_name: Mapped[str | None] = mapped_column(String(100))
    subject: Mapped[str] = mapped_column(Text, nullable=False, default="")
    body_text: Mapped[str | None] = mapped_column(Text)
    body_html: Mapped[str | None] = mapped_column(Text)
    created_by_user_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("users.id", ondelete="SET NULL"))
    #: job-level options from the request, e.g. {"certificate_delivery": "attachment"}
    options: Mapped[Any | None] = mapped_column(JSON)

    @property
    def is_final(self) -> bool:
        return self.status in JOB_FINAL

    def log_error(self, line: str) -> None:
        """Append one line to the job's error log (never recipient data)."""
        stamp = utcnow().strftime("%Y-%m-%d %H:%M:%S")
        self.error_log = ((self.error_log or "") + f"{stamp} {line}\n")[-20000:]


class Batch(TenantMixin, Model):
    __tablename__ = "batches"
    __table_args__ = (
        UniqueConstraint("job_id", "batch_number"),
        Index("ix_batches_status_lease", "status", "lease_until"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True)
    batch_number: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=B_PENDING)
    route: Mapped[str | None] = mapped_column(String(32))  # e.g. direct:ses, fallback:smtp, offload:sqs
    first_recipient_id: Mapped[int] = mapped_column(Integer, nullable=False)
    last_recipient_id: Mapped[int] = mapped_column(Integer, nullable=False)
    recipient_count: Mapped[int] = mapped_column(Integer, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime)
    leased_by: Mapped[str | None] = mapped_column(String(100))
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime)
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime)
    callback_deadline: Mapped[datetime | None] = mapped_column(DateTime)
    callback_received_at: Mapped[datetime | None] = mapped_column(DateTime)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime)
    sent_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    failed_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    error: Mapped[str | None] = mapped_column(Text)


class Recipient(TenantMixin, Model):
    __tablename__ = "recipients"
    __table_args__ = (
        # a job's recipients of some statuses in id order (the recipient list's filter, its failures)
        Index("ix_recipients_job_status_id", "job_id", "status", "id"),
        Index("ix_recipients_job_id_id", "job_id", "id"),
        # a company's last sends and its rates (core.counts), newest first; its recipients (company_id first)
        Index("ix_recipients_company_sent", "company_id", "sent_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: no index of its own: ix_recipients_company_sent starts with it (about 20 MB less a million recipients)
    company_id: Mapped[int] = mapped_column(Integer, ForeignKey("companies.id", ondelete="CASCADE"), nullable=False)
    job_id: Mapped[int] = mapped_column(Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False)
    email: Mapped[str] = mapped_column(String(320), nullable=False)
    data: Mapped[Any | None] = mapped_column(EncryptedJSON)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=R_PENDING)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime)
    message_id: Mapped[str | None] = mapped_column(String(255))
    route: Mapped[str | None] = mapped_column(String(32))


class WebhookReceipt(TenantMixin, Model):
    """A callback's ``webhook-id``, kept so the same delivery applies once."""

    __tablename__ = "webhook_receipts"
    __table_args__ = (UniqueConstraint("company_id", "webhook_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    webhook_id: Mapped[str] = mapped_column(String(255), nullable=False)
    received_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow, index=True)
