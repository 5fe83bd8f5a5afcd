"""Counts kept as sends happen (``core.sendstats``), so no page counts sent rows.

- ``JobSecond``: a job's sent recipients by the second they were sent (the job's chart, the rate
  behind its ETA); a row per second with sends, at most one per chunk.
- ``CompanyDay``: a company's outcomes per UTC day and route (the overview, the 30-day rates,
  ``/metrics``: ``core.counts``); a row per company, day and route.
"""
from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Date, DateTime, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Model


class JobSecond(Model):
    __tablename__ = "job_seconds"
    job_id: Mapped[int] = mapped_column(Integer, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    #: the second (naive UTC, truncated) the recipients were sent in
    second: Mapped[datetime] = mapped_column(DateTime, primary_key=True)
    company_id: Mapped[int] = mapped_column(Integer, nullable=False)
    sent: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class CompanyDay(Model):
    """``sent`` and ``bounced``: recipients in those statuses by the day they were handed to the
    provider (a bounce reported later moves one from ``sent`` to ``bounced`` on its send's day);
    ``failed`` and ``suppressed``: recipients that ended so, by the day they did."""

    __tablename__ = "company_days"
    company_id: Mapped[int] = mapped_column(Integer, ForeignKey("companies.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    #: the route that settled them (``direct:ses``, ``offload:sqs``...), ``""`` when none did
    route: Mapped[str] = mapped_column(String(32), primary_key=True)
    sent: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    failed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    bounced: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    suppressed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
