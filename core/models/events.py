"""LMS events accepted by ``POST /api/v1/events``, until their window becomes jobs."""
from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, Integer, String

from core.crypto import EncryptedJSON
from core.db import Model
from core.models.base import TenantMixin, utcnow


class WaitingEvent(TenantMixin, Model):
    """One event, stored (group-committed) before its ``202``; deleted in the transaction that makes it
    a recipient. ``payload`` (the address, the data, the event's name and time) is encrypted like
    recipient data."""

    __tablename__ = "waiting_events"
    __table_args__ = (Index("ix_waiting_events_window", "company_id", "job_type", "id"),)
    id = Column(Integer, primary_key=True)
    job_type = Column(String(32), nullable=False)
    received_at = Column(DateTime, nullable=False, default=utcnow)
    payload = Column(EncryptedJSON, nullable=False)
