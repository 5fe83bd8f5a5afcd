"""Certificate templates and issued certificates."""
from __future__ import annotations

from sqlalchemy import UniqueConstraint

from core.db import db
from core.models.base import TenantMixin, utcnow


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
