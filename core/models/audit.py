"""The audit log."""
from __future__ import annotations

from sqlalchemy import Column, DateTime, ForeignKey, Index, Integer, JSON, String

from core.db import Model
from core.models.base import utcnow


class AuditLog(Model):
    """Who did what, to which object, when and from where. ``details`` holds
    field names and counts, never values of secrets or recipient data."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_company_created", "company_id", "created_at"),
                      Index("ix_audit_created", "created_at"))
    id = Column(Integer, primary_key=True)
    company_id = Column(Integer, ForeignKey("companies.id", ondelete="CASCADE"))
    user_id = Column(Integer, ForeignKey("users.id", ondelete="SET NULL"))
    actor = Column(String(320), nullable=False)
    action = Column(String(64), nullable=False)
    object_type = Column(String(32))
    object_id = Column(String(64))
    details = Column(JSON)
    ip = Column(String(64))
    created_at = Column(DateTime, nullable=False, default=utcnow)
