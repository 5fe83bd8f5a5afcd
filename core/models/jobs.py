"""Jobs, their batches and recipients, and callback receipts."""
from __future__ import annotations

from sqlalchemy import Column, DateTime, ForeignKey, Index, Integer, JSON, String, Text, UniqueConstraint

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
    id = Column(Integer, primary_key=True)
    type = Column(String(32), nullable=False)
    status = Column(String(32), nullable=False, default=PENDING)
    source = Column(String(16), nullable=False, default="api")  # api | event | dashboard | lms | smtp
    #: service class (CONTRACT §6): transactional | bulk; the type's default unless the request set it
    priority = Column(String(16), nullable=False, default="transactional", server_default="transactional")
    email_count = Column(Integer, nullable=False, default=0)
    emails_sent = Column(Integer, nullable=False, default=0)
    emails_failed = Column(Integer, nullable=False, default=0)
    emails_suppressed = Column(Integer, nullable=False, default=0)
    emails_bounced = Column(Integer, nullable=False, default=0)
    emails_uncertain = Column(Integer, nullable=False, default=0)
    created_at = Column(DateTime, nullable=False, default=utcnow)
    started_at = Column(DateTime)
    completed_at = Column(DateTime)
    send_at = Column(DateTime)
    cancel_requested_at = Column(DateTime)
    paused_reason = Column(String(255))
    paused_at = Column(DateTime)
    data_purged_at = Column(DateTime)
    error_log = Column(Text)
    idempotency_key = Column(String(255))
    template_name = Column(String(100))
    subject = Column(Text, nullable=False, default="")
    body_text = Column(Text)
    body_html = Column(Text)
    created_by_user_id = Column(Integer, ForeignKey("users.id", ondelete="SET NULL"))
    #: job-level options from the request, e.g. {"certificate_delivery": "attachment"}
    options = Column(JSON)

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
    id = Column(Integer, primary_key=True)
    job_id = Column(Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True)
    batch_number = Column(Integer, nullable=False)
    status = Column(String(16), nullable=False, default=B_PENDING)
    route = Column(String(32))  # e.g. direct:ses, fallback:smtp, offload:sqs
    first_recipient_id = Column(Integer, nullable=False)
    last_recipient_id = Column(Integer, nullable=False)
    recipient_count = Column(Integer, nullable=False)
    attempts = Column(Integer, nullable=False, default=0)
    lease_until = Column(DateTime)
    leased_by = Column(String(100))
    next_attempt_at = Column(DateTime)
    submitted_at = Column(DateTime)
    callback_deadline = Column(DateTime)
    callback_received_at = Column(DateTime)
    completed_at = Column(DateTime)
    sent_count = Column(Integer, nullable=False, default=0)
    failed_count = Column(Integer, nullable=False, default=0)
    error = Column(Text)


class Recipient(TenantMixin, Model):
    __tablename__ = "recipients"
    __table_args__ = (
        # a job's recipients of some statuses in id order (the recipient list's filter, its failures)
        Index("ix_recipients_job_status_id", "job_id", "status", "id"),
        Index("ix_recipients_job_id_id", "job_id", "id"),
        # a company's last sends and its rates (core.counts), newest first
        Index("ix_recipients_company_sent", "company_id", "sent_at"),
    )
    id = Column(Integer, primary_key=True)
    job_id = Column(Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False)
    email = Column(String(320), nullable=False)
    data = Column(EncryptedJSON)
    status = Column(String(16), nullable=False, default=R_PENDING)
    error = Column(Text)
    attempts = Column(Integer, nullable=False, default=0)
    lease_until = Column(DateTime)
    sent_at = Column(DateTime)
    message_id = Column(String(255))
    route = Column(String(32))


class WebhookReceipt(TenantMixin, Model):
    """A callback's ``webhook-id``, kept so the same delivery applies once."""

    __tablename__ = "webhook_receipts"
    __table_args__ = (UniqueConstraint("company_id", "webhook_id"),)
    id = Column(Integer, primary_key=True)
    webhook_id = Column(String(255), nullable=False)
    received_at = Column(DateTime, nullable=False, default=utcnow, index=True)
