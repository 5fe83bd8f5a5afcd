"""Certificate templates and issued certificates."""
from __future__ import annotations

from sqlalchemy import Column, DateTime, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint

from core.db import Model
from core.models.base import TenantMixin, utcnow


class CertificateTemplate(TenantMixin, Model):
    __tablename__ = "certificate_templates"
    __table_args__ = (UniqueConstraint("company_id", "name"),)
    id = Column(Integer, primary_key=True)
    name = Column(String(100), nullable=False)
    html = Column(Text, nullable=False)
    css = Column(Text, nullable=False, default="")
    logo = Column(LargeBinary)
    updated_at = Column(DateTime, nullable=False, default=utcnow, onupdate=utcnow)


class Certificate(TenantMixin, Model):
    __tablename__ = "certificates"
    id = Column(Integer, primary_key=True)
    code = Column(String(64), nullable=False, unique=True)
    job_id = Column(Integer, ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    recipient_id = Column(Integer, ForeignKey("recipients.id", ondelete="SET NULL"))
    learner_name = Column(String(255), nullable=False)
    learner_email = Column(String(320))
    course_name = Column(String(255), nullable=False)
    grade = Column(String(64))
    issued_at = Column(DateTime, nullable=False, default=utcnow)
    expires_at = Column(DateTime)
    storage = Column(String(16))  # s3 | r2
    object_key = Column(String(500))
    checksum = Column(String(64))
    revoked_at = Column(DateTime)
    revoked_reason = Column(String(255))
