"""The data model: companies, their delivery settings, users, tokens, jobs,
batches, recipients, templates, suppressions, certificates and the audit log.

Every tenant-owned table carries ``company_id`` and is read through
``TenantMixin.scoped`` / ``dashboard.tenancy.get_or_404``. Secrets and
recipient data are encrypted at rest (``dashboard.crypto``).
"""
from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, UTC

from flask_login import UserMixin
from sqlalchemy import Index, UniqueConstraint, select
from werkzeug.security import check_password_hash, generate_password_hash

from dashboard.crypto import EncryptedJSON, EncryptedText
from dashboard.extensions import db

JOB_TYPES = ("csv_import", "license_allocation", "reengagement", "notification", "certificate")
# job statuses
PENDING, QUEUED, PROCESSING, COMPLETED, PARTIAL, FAILED, CANCELLED, PAUSED = (
    "pending", "queued", "processing", "completed", "partial_failure", "failed", "cancelled", "paused")
JOB_FINAL = (COMPLETED, PARTIAL, FAILED, CANCELLED)
# recipient statuses; "sending" is claimed and handed (or about to be handed) to a provider
R_PENDING, R_SENDING, R_SENT, R_FAILED, R_BOUNCED, R_SUPPRESSED, R_UNCERTAIN, R_CANCELLED = (
    "pending", "sending", "sent", "failed", "bounced", "suppressed", "uncertain", "cancelled")
RECIPIENT_FINAL = (R_SENT, R_FAILED, R_BOUNCED, R_SUPPRESSED, R_CANCELLED)
# batch statuses
B_PENDING, B_QUEUED, B_SENDING, B_RETRY, B_SUBMITTED, B_DONE, B_FAILED, B_CANCELLED = (
    "pending", "queued", "sending", "retry", "submitted", "done", "failed", "cancelled")
BATCH_FINAL = (B_DONE, B_FAILED, B_CANCELLED)


def utcnow() -> datetime:
    """Naive UTC now: every timestamp in the database is naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class TenantMixin:
    """Rows owned by one company; read them only through ``scoped``."""

    company_id = db.Column(db.Integer, db.ForeignKey("companies.id", ondelete="CASCADE"),
                           nullable=False, index=True)

    @classmethod
    def scoped(cls, company_id: int | None):
        """A ``select`` of this model limited to ``company_id`` (``None``: every company)."""
        stmt = select(cls)
        if company_id is not None:
            stmt = stmt.where(cls.company_id == company_id)
        return stmt


class Company(db.Model):
    __tablename__ = "companies"
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(200), nullable=False, unique=True)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    callback_secret = db.Column(EncryptedText, nullable=False)
    callback_secret_previous = db.Column(EncryptedText)
    callback_secret_previous_until = db.Column(db.DateTime)
    # what to do with recipients whose delivery is uncertain after a crash: resend | fail
    uncertain_policy = db.Column(db.String(16), nullable=False, default="resend")
    data_retention_days = db.Column(db.Integer)
    moodle_db_url = db.Column(EncryptedText)
    sns_topic_arn = db.Column(db.String(255))

    settings = db.relationship("DeliverySettings", uselist=False, back_populates="company",
                               cascade="all, delete-orphan")

    def callback_secrets(self, now: datetime | None = None) -> list[str]:
        """The secrets a callback may be signed with: the current one, and the
        previous one while its overlap lasts."""
        now = now or utcnow()
        found = [self.callback_secret]
        if self.callback_secret_previous and self.callback_secret_previous_until \
                and self.callback_secret_previous_until > now:
            found.append(self.callback_secret_previous)
        return found

    def __str__(self):
        return self.name


# delivery settings keys of CONTRACT §1 `company configure`
SECRET_SETTINGS = ("aws_access_key", "aws_secret_key", "cloudflare_api_token", "smtp_password")
PROVIDERS = ("aws", "cloudflare", "smtp")
MODES = ("direct", "offload")
ROLES = ("admin", "manager")
SMTP_TLS = ("none", "starttls", "tls")


class DeliverySettings(TenantMixin, db.Model):
    __tablename__ = "delivery_settings"
    __table_args__ = (UniqueConstraint("company_id"),)
    id = db.Column(db.Integer, primary_key=True)
    provider = db.Column(db.String(16), nullable=False, default="smtp")
    mode = db.Column(db.String(16), nullable=False, default="direct")
    enabled = db.Column(db.Boolean, nullable=False, default=True)
    sender = db.Column(db.String(320))
    aws_access_key = db.Column(EncryptedText)
    aws_secret_key = db.Column(EncryptedText)
    aws_region = db.Column(db.String(32))
    aws_endpoint_url = db.Column(db.String(500))
    aws_role_arn = db.Column(db.String(300))
    aws_external_id = db.Column(db.String(100))
    sqs_queue_url = db.Column(db.String(500))
    s3_bucket = db.Column(db.String(255))
    s3_endpoint_url = db.Column(db.String(500))  # S3/R2 endpoint, when not the AWS default
    cloudflare_api_token = db.Column(EncryptedText)
    cloudflare_account_id = db.Column(db.String(64))
    cloudflare_queue_id = db.Column(db.String(64))
    cloudflare_api_base = db.Column(db.String(500))
    cloudflare_worker_url = db.Column(db.String(500))
    smtp_host = db.Column(db.String(255))
    smtp_port = db.Column(db.Integer)
    smtp_username = db.Column(db.String(255))
    smtp_password = db.Column(EncryptedText)
    smtp_tls = db.Column(db.String(16), nullable=False, default="starttls")
    max_send_rate = db.Column(db.Float)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow, onupdate=utcnow)

    company = db.relationship("Company", back_populates="settings")

    def provider_config(self) -> dict:
        """Plain dict of every setting, secrets decrypted, for ``providers``."""
        cols = [c.name for c in self.__table__.columns if c.name not in ("id", "company_id", "updated_at")]
        return {name: getattr(self, name) for name in cols}

    def has_smtp(self) -> bool:
        return bool(self.smtp_host)


class User(UserMixin, db.Model):
    __tablename__ = "users"
    id = db.Column(db.Integer, primary_key=True)
    email = db.Column(db.String(320), nullable=False, unique=True)
    password_hash = db.Column(db.String(255), nullable=False)
    role = db.Column(db.String(16), nullable=False)  # admin | manager
    company_id = db.Column(db.Integer, db.ForeignKey("companies.id", ondelete="CASCADE"), index=True)
    active = db.Column(db.Boolean, nullable=False, default=True)
    failed_logins = db.Column(db.Integer, nullable=False, default=0)
    locked_until = db.Column(db.DateTime)
    last_login_at = db.Column(db.DateTime)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    # changes when the password changes, so old sessions stop working
    session_token = db.Column(db.String(64), nullable=False, default=lambda: secrets.token_hex(16))

    company = db.relationship("Company")

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password)
        self.session_token = secrets.token_hex(16)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)

    def get_id(self) -> str:
        return f"{self.id}:{self.session_token}"

    @property
    def is_active(self) -> bool:
        return bool(self.active)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def scope(self) -> int | None:
        """The company this user may see, ``None`` for admins (all)."""
        return None if self.is_admin else self.company_id


class ApiToken(TenantMixin, db.Model):
    __tablename__ = "api_tokens"
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(100), nullable=False, default="LMS")
    prefix = db.Column(db.String(16), nullable=False, index=True)
    token_hash = db.Column(db.String(64), nullable=False, unique=True)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    last_used_at = db.Column(db.DateTime)
    revoked_at = db.Column(db.DateTime)

    @classmethod
    def issue(cls, company_id: int, name: str = "LMS") -> tuple[ApiToken, str]:
        """A new token row and the plaintext token (shown once, stored hashed)."""
        plain = "mro_" + secrets.token_urlsafe(32)
        return cls(company_id=company_id, name=name, prefix=plain[:12], token_hash=sha256_hex(plain)), plain


class Template(TenantMixin, db.Model):
    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("company_id", "name"),)
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(100), nullable=False)
    job_type = db.Column(db.String(32))
    subject = db.Column(db.Text, nullable=False)
    body_text = db.Column(db.Text)
    body_html = db.Column(db.Text)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow, onupdate=utcnow)


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


class Suppression(TenantMixin, db.Model):
    __tablename__ = "suppressions"
    __table_args__ = (UniqueConstraint("company_id", "email"),)
    id = db.Column(db.Integer, primary_key=True)
    email = db.Column(db.String(320), nullable=False)
    reason = db.Column(db.String(32), nullable=False, default="manual")  # manual|unsubscribe|bounce|complaint
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)


class WebhookReceipt(TenantMixin, db.Model):
    """A callback's ``webhook-id``, kept so the same delivery applies once."""

    __tablename__ = "webhook_receipts"
    __table_args__ = (UniqueConstraint("company_id", "webhook_id"),)
    id = db.Column(db.Integer, primary_key=True)
    webhook_id = db.Column(db.String(255), nullable=False)
    received_at = db.Column(db.DateTime, nullable=False, default=utcnow, index=True)


class CertificateTemplate(TenantMixin, db.Model):
    __tablename__ = "certificate_templates"
    __table_args__ = (UniqueConstraint("company_id", "name"),)
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(100), nullable=False)
    html = db.Column(db.Text, nullable=False)
    css = db.Column(db.Text, nullable=False, default="")
    logo = db.Column(db.LargeBinary)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow, onupdate=utcnow)


class Certificate(TenantMixin, db.Model):
    __tablename__ = "certificates"
    id = db.Column(db.Integer, primary_key=True)
    code = db.Column(db.String(64), nullable=False, unique=True)
    job_id = db.Column(db.Integer, db.ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    recipient_id = db.Column(db.Integer, db.ForeignKey("recipients.id", ondelete="SET NULL"))
    learner_name = db.Column(db.String(255), nullable=False)
    learner_email = db.Column(db.String(320))
    course_name = db.Column(db.String(255), nullable=False)
    grade = db.Column(db.String(64))
    issued_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    expires_at = db.Column(db.DateTime)
    storage = db.Column(db.String(16))  # s3 | r2
    object_key = db.Column(db.String(500))
    checksum = db.Column(db.String(64))
    revoked_at = db.Column(db.DateTime)
    revoked_reason = db.Column(db.String(255))


class AuditLog(db.Model):
    """Who did what, to which object, when and from where. ``details`` holds
    field names and counts, never values of secrets or recipient data."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_company_created", "company_id", "created_at"),)
    id = db.Column(db.Integer, primary_key=True)
    company_id = db.Column(db.Integer, db.ForeignKey("companies.id", ondelete="CASCADE"))
    user_id = db.Column(db.Integer, db.ForeignKey("users.id", ondelete="SET NULL"))
    actor = db.Column(db.String(320), nullable=False)
    action = db.Column(db.String(64), nullable=False)
    object_type = db.Column(db.String(32))
    object_id = db.Column(db.String(64))
    details = db.Column(db.JSON)
    ip = db.Column(db.String(64))
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
