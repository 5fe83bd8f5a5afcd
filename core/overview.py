"""The overview's figures: per company and per day of the last week, what was
sent, what failed, what bounced and what came into the queue, and what waits
in it now.

Each figure is read from the tables that hold it: sent = recipients the
provider took (sent or later bounced) by their ``sent_at`` day (as
``core.suppressions.rates`` counts them); failed = recipients that failed, by
their job's day; bounced = hard-bounce reports by the day they came;
queued = recipients accepted, by their job's day; waiting = recipients not
final now. Days are UTC.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from sqlalchemy import func, select

from core.db import db
from core.models import HARD, BounceEvent, Company, Job, Recipient, utcnow
from core.models.statuses import RECIPIENT_OPEN, R_FAILED
from core.suppressions import DELIVERED

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


def _day(value) -> date:
    """A ``date()`` result as the dialect returns it (SQLite: text)."""
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def _by_day(stmt, column) -> dict[tuple[int, date], int]:
    day = func.date(column)
    rows = db.session.execute(stmt.add_columns(day, func.count()).group_by(stmt.selected_columns[0], day)).all()
    return {(company, _day(when)): n for company, when, n in rows if when is not None}


def _scoped(stmt, model, company_id: int | None):
    return stmt if company_id is None else stmt.where(model.company_id == company_id)


def _series(company_id: int | None, since) -> dict[str, dict[tuple[int, date], int]]:
    """Each series' counts by (company, day) from ``since`` on."""
    sent = _scoped(select(Recipient.company_id), Recipient, company_id).where(
        Recipient.status.in_(DELIVERED), Recipient.sent_at >= since)
    of_jobs = _scoped(select(Recipient.company_id), Recipient, company_id).join(
        Job, Job.id == Recipient.job_id).where(Job.created_at >= since)
    bounced = _scoped(select(BounceEvent.company_id), BounceEvent, company_id).where(
        BounceEvent.kind == HARD, BounceEvent.created_at >= since)
    return {"sent": _by_day(sent, Recipient.sent_at),
            "failed": _by_day(of_jobs.where(Recipient.status == R_FAILED), Job.created_at),
            "bounced": _by_day(bounced, BounceEvent.created_at), "queued": _by_day(of_jobs, Job.created_at)}


def week(company_id: int | None, *, limit: int = 10, today: date | None = None) -> list[CompanyWeek]:
    """The last ``DAYS`` days (today included) of each company in scope (``None``: all, the busiest
    ``limit`` of them), most mail sent first."""
    today = today or utcnow().date()
    days = [today - timedelta(days=DAYS - 1 - i) for i in range(DAYS)]
    series = _series(company_id, datetime.combine(days[0], time()))
    waiting = dict(db.session.execute(_scoped(select(Recipient.company_id, func.count()), Recipient, company_id)
                                      .where(Recipient.status.in_(tuple(RECIPIENT_OPEN)))
                                      .group_by(Recipient.company_id)).all())
    companies = select(Company.id, Company.name)
    if company_id is not None:
        companies = companies.where(Company.id == company_id)
    found = []
    for cid, name in db.session.execute(companies).all():
        weekly = CompanyWeek(cid, name, days, waiting=waiting.get(cid, 0))
        for key, counts in series.items():
            weekly.counts[key] = [counts.get((cid, d), 0) for d in days]
        found.append(weekly)
    found.sort(key=lambda w: (-w.total("sent"), -w.total("queued"), w.name))
    return found[:limit] if company_id is None else found
