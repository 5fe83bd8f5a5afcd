"""What each job used of the cloud, counted as it ran (``core.usage``)."""
from __future__ import annotations

from datetime import date

from sqlalchemy import Date, Float, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Model
from core.models.base import TenantMixin


class JobUsage(TenantMixin, Model):
    """One meter of one job on one UTC day: emails sent by a provider, bytes of attachments,
    queue requests, deliveries a cloud worker made, certificate writes... (``core.usage.METERS``)."""

    __tablename__ = "job_usage"
    __table_args__ = (
        UniqueConstraint("job_id", "day", "meter"),
        Index("ix_job_usage_company_day", "company_id", "day"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False)
    day: Mapped[date] = mapped_column(Date, nullable=False)
    meter: Mapped[str] = mapped_column(String(48), nullable=False)
    quantity: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
