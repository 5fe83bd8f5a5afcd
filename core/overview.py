"""The overview's figures: per company and per day of the last week, what was
sent, what failed, what bounced and what came into the queue, and what waits
in it now.

Each figure is counted where every other page counts it (``core.counts``):
sent and bounced = recipients in those statuses by the day they were handed to
the provider; failed = recipients that failed, by their job's day; queued =
recipients accepted, by their job's day; waiting = recipients not final now.
Days are UTC.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from sqlalchemy import select

from core import counts
from core.db import db
from core.models import Company, utcnow

DAYS = 7
SERIES = ("sent", "failed", "bounced", "queued")


@dataclass
class CompanyWeek:
    company_id: int
    name: str
    days: list[date]
    #: series → one count per day of ``days``
    counts: dict[str, list[int]] = field(default_factory=dict)
    waiting: int = 0

    def total(self, series: str) -> int:
        return sum(self.counts[series])

    @property
    def active(self) -> bool:
        return self.waiting > 0 or any(self.total(s) for s in SERIES)


def week(company_id: int | None, *, limit: int = 10, today: date | None = None) -> list[CompanyWeek]:
    """The last ``DAYS`` days (today included) of each company in scope (``None``: all, the busiest
    ``limit`` of them), most mail sent first."""
    today = today or utcnow().date()
    days = [today - timedelta(days=DAYS - 1 - i) for i in range(DAYS)]
    series = counts.days(company_id, datetime.combine(days[0], time()))
    waiting = counts.waiting(company_id)
    companies = select(Company.id, Company.name)
    if company_id is not None:
        companies = companies.where(Company.id == company_id)
    found = []
    for cid, name in db.session.execute(companies).all():
        weekly = CompanyWeek(cid, name, days, waiting=waiting.get(cid, 0))
        for key, found_days in series.items():
            weekly.counts[key] = [found_days.get((cid, d), 0) for d in days]
        found.append(weekly)
    found.sort(key=lambda w: (-w.total("sent"), -w.total("queued"), w.name))
    return found[:limit] if company_id is None else found
