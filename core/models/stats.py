"""Counts kept as sends happen (``core.sendstats``), so no page counts sent rows.

- ``JobSecond``: a job's sent recipients by the second they were sent (the job's chart, the rate
  behind its ETA); a row per second with sends, at most one per chunk.
- ``CompanyDay``: a company's outcomes per UTC day and route (the overview, the 30-day rates,
  ``/metrics``: ``core.counts``); a row per company, day and route.
"""
from __future__ import annotations

from sqlalchemy import Column, Date, DateTime, ForeignKey, Integer, String

from core.db import Model


class JobSecond(Model):
    __tablename__ = "job_seconds"
    job_id = Column(Integer, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    #: the second (naive UTC, truncated) the recipients were sent in
    second = Column(DateTime, primary_key=True)
    company_id = Column(Integer, nullable=False)
    sent = Column(Integer, nullable=False, default=0)


class CompanyDay(Model):
    """``sent`` and ``bounced``: recipients in those statuses by the day they were handed to the
    provider (a bounce reported later moves one from ``sent`` to ``bounced`` on its send's day);
    ``failed`` and ``suppressed``: recipients that ended so, by the day they did."""

    __tablename__ = "company_days"
    company_id = Column(Integer, ForeignKey("companies.id", ondelete="CASCADE"), primary_key=True)
    day = Column(Date, primary_key=True)
    #: the route that settled them (``direct:ses``, ``offload:sqs``...), ``""`` when none did
    route = Column(String(32), primary_key=True)
    sent = Column(Integer, nullable=False, default=0)
    failed = Column(Integer, nullable=False, default=0)
    bounced = Column(Integer, nullable=False, default=0)
    suppressed = Column(Integer, nullable=False, default=0)
