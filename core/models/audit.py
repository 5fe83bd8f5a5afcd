"""The audit log."""
from __future__ import annotations

from sqlalchemy import Index

from core.db import db
from core.models.base import utcnow


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
