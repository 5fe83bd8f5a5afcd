"""Counts kept as sends happen, in the transaction that changes the recipients' statuses.

Pages never count sent rows: a job's chart and the rate behind its ETA read ``job_seconds``
(its sent recipients per second), the overview's days, a company's 30-day rates (``core.counts``)
and ``/metrics`` read ``company_days`` (a company's outcomes per UTC day and route). Every change of a recipient's
status to a final one goes through ``record`` with the numbers that moved: ``apply_results``
(every provider answer, callback and bounce report), the failures of a batch or a lost callback,
the addresses refused at acceptance, a retry of failed recipients (which takes them back).
``finish_job`` recounts a job from its rows once, when it ends, and ``record``s what the
counts were off by (``correct``), so a day's figures and the job's agree.

Rows are upserted (``INSERT ... ON CONFLICT DO UPDATE``, on PostgreSQL and SQLite): a chunk
adds to its second's row and its company's day, nothing reads back.
"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.dialects import postgresql, sqlite

from core.db import db
from core.models import R_BOUNCED, R_FAILED, R_SENT, R_SUPPRESSED, CompanyDay, JobSecond, utcnow

#: a recipient status → the ``company_days`` column it counts in
COLUMNS: dict[str, str] = {R_SENT: "sent", R_FAILED: "failed", R_BOUNCED: "bounced", R_SUPPRESSED: "suppressed"}


#: the upsert of each (dialect, table, key columns, counted columns), built once: every chunk's results
#: run one or two, and building and keying a fresh statement each time cost more than running it
_UPSERTS: dict[tuple, Any] = {}


def _upsert(dialect_name: str, table, keys: tuple[str, ...], counts: tuple[str, ...]):
    found = _UPSERTS.get((dialect_name, table.name, keys, counts))
    if found is None:
        dialect = postgresql if dialect_name == "postgresql" else sqlite
        stmt = dialect.insert(table).values({column: bindparam(f"v_{column}") for column in (*keys, *counts)})
        found = stmt.on_conflict_do_update(index_elements=list(keys), set_={
            column: getattr(table.c, column) + getattr(stmt.excluded, column) for column in counts})
        _UPSERTS[(dialect_name, table.name, keys, counts)] = found
    return found


def _add(table, keys: dict, counts: dict) -> None:
    stmt = _upsert(db.session.get_bind().dialect.name, table, tuple(keys), tuple(counts))
    db.session.execute(stmt, {f"v_{column}": value for column, value in (*keys.items(), *counts.items())})


def record(company_id: int, job_id: int, moved: Mapping[str, int], *, route: str | None = None, unsent: int = 0,
           handed_at: datetime | None = None) -> None:
    """Count recipients that moved to final statuses (``moved``: status → how many; negative takes
    back), in the caller's transaction, on today's row. ``unsent``: recipients counted sent before
    that a report now says bounced (their ``bounced`` is in ``moved``): they move from ``sent`` to
    ``bounced`` on the day and second they were handed over (``handed_at``)."""
    counts = {COLUMNS[status]: n for status, n in moved.items() if status in COLUMNS and n}
    if not counts:
        return
    now = utcnow()
    at = handed_at if unsent and handed_at is not None else now
    if unsent:
        counts["sent"] = counts.get("sent", 0) - unsent
    full = {column: counts.get(column, 0) for column in ("sent", "failed", "bounced", "suppressed")}
    _add(CompanyDay.__table__, {"company_id": company_id, "day": at.date(), "route": (route or "")[:32]}, full)
    if counts.get("sent"):
        _add(JobSecond.__table__, {"job_id": job_id, "second": at.replace(microsecond=0)},
             {"sent": counts["sent"], "company_id": company_id})


def correct(company_id: int, job_id: int, counted: Mapping[str, int], exact: Mapping[str, int]) -> None:
    """Record the difference between a job's counters (``counted``) and its rows' ``exact`` counts
    (both by status), as ``finish_job`` finds it: failures and suppressions some path counted
    only on the job."""
    off: dict[str, int] = {status: exact.get(status, 0) - counted.get(status, 0) for status in (R_FAILED, R_SUPPRESSED)}
    record(company_id, job_id, off)


# -- reads -----------------------------------------------------------------------------------------

def job_seconds(job_id: int):
    """``(second, sent)`` rows of a job, oldest first."""
    return db.session.execute(select(JobSecond.second, JobSecond.sent).where(JobSecond.job_id == job_id)
                              .order_by(JobSecond.second)).all()


def sent_since(job_ids: list[int], since: datetime) -> dict[int, int]:
    """Recipients each job sent from ``since`` on (whole seconds)."""
    if not job_ids:
        return {}
    return dict(db.session.execute(
        select(JobSecond.job_id, func.sum(JobSecond.sent)).where(
            JobSecond.job_id.in_(job_ids), JobSecond.second >= since.replace(microsecond=0))
        .group_by(JobSecond.job_id)).all())


def _days(company_id: int | None, *columns):
    stmt = select(CompanyDay.company_id, CompanyDay.day, *columns)
    return stmt if company_id is None else stmt.where(CompanyDay.company_id == company_id)


def by_day(company_id: int | None, since: date) -> dict[str, dict[tuple[int, date], int]]:
    """``sent`` and ``bounced`` recipients by (company, day handed over) from ``since`` on."""
    rows = db.session.execute(_days(company_id, func.sum(CompanyDay.sent), func.sum(CompanyDay.bounced))
                              .where(CompanyDay.day >= since).group_by(CompanyDay.company_id, CompanyDay.day)).all()
    found: dict[str, dict[tuple[int, date], int]] = {"sent": {}, "bounced": {}}
    for company, day, sent, bounced in rows:
        for key, n in (("sent", sent), ("bounced", bounced)):
            if n:
                found[key][(company, day)] = int(n)
    return found


def handed_since(company_id: int | None, since: date) -> tuple[int, int]:
    """(sent, bounced) recipients handed over from the day ``since`` on."""
    stmt = select(func.coalesce(func.sum(CompanyDay.sent), 0), func.coalesce(func.sum(CompanyDay.bounced), 0)) \
        .where(CompanyDay.day >= since)
    if company_id is not None:
        stmt = stmt.where(CompanyDay.company_id == company_id)
    sent, bounced = db.session.execute(stmt).one()
    return int(sent), int(bounced)


def by_route() -> list[tuple[str, int, int, int, int]]:
    """Every company's totals per route: ``(route, sent, failed, bounced, suppressed)``."""
    c = CompanyDay
    rows = db.session.execute(
        select(c.route, func.sum(c.sent), func.sum(c.failed), func.sum(c.bounced), func.sum(c.suppressed))
        .group_by(c.route).order_by(c.route)).tuples()
    return [(route, sent, failed, bounced, suppressed) for route, sent, failed, bounced, suppressed in rows]
