"""Jobs, their batches and recipients, and callback receipts."""
from __future__ import annotations

from sqlalchemy import Index, UniqueConstraint

from core.crypto import EncryptedJSON
from core.db import db
from core.models.base import TenantMixin, utcnow
from core.models.statuses import B_PENDING, JOB_FINAL, PENDING, R_PENDING


class Job(TenantMixin, db.Model):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_company_created", "company_id", "created_at"),
        Index("ix_jobs_status", "status"),
        UniqueConstraint("company_id", "idempotency_key"),
    )
    id = db.Column(db.Integer, primary_key=True)
    type = db.Column(db.String(32), nullable=False)
    status = db.Column(db.String(32), nullable=False, default=PENDING)
    source = db.Column(db.String(16), nullable=False, default="api")  # api | event | dashboard
    #: service class (CONTRACT §6): transactional | bulk; the type's default unless the request set it
    priority = db.Column(db.String(16), nullable=False, default="transactional", server_default="transactional")
    email_count = db.Column(db.Integer, nullable=False, default=0)
    emails_sent = db.Column(db.Integer, nullable=False, default=0)
    emails_failed = db.Column(db.Integer, nullable=False, default=0)
    emails_suppressed = db.Column(db.Integer, nullable=False, default=0)
    emails_bounced = db.Column(db.Integer, nullable=False, default=0)
    emails_uncertain = db.Column(db.Integer, nullable=False, default=0)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    started_at = db.Column(db.DateTime)
    completed_at = db.Column(db.DateTime)
    send_at = db.Column(db.DateTime)
    cancel_requested_at = db.Column(db.DateTime)
    paused_reason = db.Column(db.String(255))
    paused_at = db.Column(db.DateTime)
    data_purged_at = db.Column(db.DateTime)
    error_log = db.Column(db.Text)
    idempotency_key = db.Column(db.String(255))
    template_name = db.Column(db.String(100))
    subject = db.Column(db.Text, nullable=False, default="")
    body_text = db.Column(db.Text)
    body_html = db.Column(db.Text)
    created_by_user_id = db.Column(db.Integer, db.ForeignKey("users.id", ondelete="SET NULL"))
    #: job-level options from the request, e.g. {"certificate_delivery": "attachment"}
    options = db.Column(db.JSON)

    @property
    def is_final(self) -> bool:
        return self.status in JOB_FINAL

    def log_error(self, line: str) -> None:
        """Append one line to the job's error log (never recipient data)."""
        stamp = utcnow().strftime("%Y-%m-%d %H:%M:%S")
        self.error_log = ((self.error_log or "") + f"{stamp} {line}\n")[-20000:]


class Batch(TenantMixin, db.Model):
    __tablename__ = "batches"
    __table_args__ = (
        UniqueConstraint("job_id", "batch_number"),
        Index("ix_batches_status_lease", "status", "lease_until"),
    )
    id = db.Column(db.Integer, primary_key=True)
    job_id = db.Column(db.Integer, db.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True)
    batch_number = db.Column(db.Integer, nullable=False)
    status = db.Column(db.String(16), nullable=False, default=B_PENDING)
    route = db.Column(db.String(32))  # e.g. direct:aws, fallback:smtp, offload:sqs
    first_recipient_id = db.Column(db.Integer, nullable=False)
    last_recipient_id = db.Column(db.Integer, nullable=False)
    recipient_count = db.Column(db.Integer, nullable=False)
    attempts = db.Column(db.Integer, nullable=False, default=0)
    lease_until = db.Column(db.DateTime)
    leased_by = db.Column(db.String(100))
    next_attempt_at = db.Column(db.DateTime)
    submitted_at = db.Column(db.DateTime)
    callback_deadline = db.Column(db.DateTime)
    callback_received_at = db.Column(db.DateTime)
    completed_at = db.Column(db.DateTime)
    sent_count = db.Column(db.Integer, nullable=False, default=0)
    failed_count = db.Column(db.Integer, nullable=False, default=0)
    error = db.Column(db.Text)


class Recipient(TenantMixin, db.Model):
    __tablename__ = "recipients"
    __table_args__ = (
        Index("ix_recipients_job_status", "job_id", "status"),
        Index("ix_recipients_job_id_id", "job_id", "id"),
    )
    id = db.Column(db.Integer, primary_key=True)
    job_id = db.Column(db.Integer, db.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False)
    email = db.Column(db.String(320), nullable=False)
    data = db.Column(EncryptedJSON)
    status = db.Column(db.String(16), nullable=False, default=R_PENDING)
    error = db.Column(db.Text)
    attempts = db.Column(db.Integer, nullable=False, default=0)
    lease_until = db.Column(db.DateTime)
    sent_at = db.Column(db.DateTime)
    message_id = db.Column(db.String(255))
    route = db.Column(db.String(32))


class WebhookReceipt(TenantMixin, db.Model):
    """A callback's ``webhook-id``, kept so the same delivery applies once."""

    __tablename__ = "webhook_receipts"
    __table_args__ = (UniqueConstraint("company_id", "webhook_id"),)
    id = db.Column(db.Integer, primary_key=True)
    webhook_id = db.Column(db.String(255), nullable=False)
    received_at = db.Column(db.DateTime, nullable=False, default=utcnow, index=True)
