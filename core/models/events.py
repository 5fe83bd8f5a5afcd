"""LMS events accepted by ``POST /api/v1/events``, until their window becomes jobs."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from core.crypto import EncryptedJSON
from core.db import Model
from core.models.base import TenantMixin, utcnow


class WaitingEvent(TenantMixin, Model):
    """One event, stored (group-committed) before its ``202``; deleted in the transaction that makes it
    a recipient. ``payload`` (the address, the data, the event's name and time) is encrypted like
    recipient data."""

    __tablename__ = "waiting_events"
    __table_args__ = (Index("ix_waiting_events_window", "company_id", "job_type", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_type: Mapped[str] = mapped_column(String(32), nullable=False)
    received_at: Mapped[datetime] = mapped_column(DateTime, nullable=False, default=utcnow)
    payload: Mapped[Any] = mapped_column(EncryptedJSON, nullable=False)
