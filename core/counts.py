"""One source for each count a person sees.

The job page, the job list, the API's job object, the Suppressions page, the
overview and the reputation guard read their figures here, so no two of them
can disagree:

- a job's recipients by what became of them (``job_counts``): the job's
  counters, moved in the same transaction as each recipient's status
  (``core.delivery.results``) and made exact from the recipients when the job
  ends (``core.delivery.settle.finish_job``). ``sent`` are the recipients the
  provider took and that did not bounce; ``failed`` those that failed;
  ``bounced`` those that bounced (at send time or reported later); they never
  overlap, and ``failed`` never includes ``bounced``;
- bounce and complaint rates (``job_rates``, ``company_rates``): bounces ÷ the
  messages handed to the provider (sent or bounced); a job's from its
  counters, a company's from its recipients by the day they were handed over
  (``sent_at``; a send-time bounce has one too; whole UTC days, the first one
  included) and its complaint reports;
- each day of the overview (``days``): the same statuses by the same times;
- the company's last sends (``recent``): the reputation guard's rolling window.

Each function reads only what it names, and no sent rows: the jobs' counters,
the counts kept as sends happen (``core.sendstats``: a company's recipients per
day handed over), the reports; the guard's window reads the company's last
sends through the index by company and ``sent_at``, as many as it asks for.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import func, select

from core import sendstats
from core.db import db
from core.models import COMPLAINT, JOB_FINAL, R_BOUNCED, R_SENT, SOFT, BounceEvent, Job, Recipient, utcnow

#: recipients handed to the provider: taken (sent), or taken and bounced
HANDED = (R_SENT, R_BOUNCED)
BOUNCE_WARN = 0.02      # warn past 2 % hard bounces (what the seeds aim under)
COMPLAINT_WARN = 0.001  # warn past 0.1 % complaints
#: the days the company rates look back over
RATE_DAYS = 30


@dataclass(frozen=True)
class JobCounts:
    """A job's recipients by what became of them (disjoint; ``left`` is what is still to do)."""

    total: int
    sent: int
    failed: int
    bounced: int
    suppressed: int

    @property
    def done(self) -> int:
        return min(self.total, self.sent + self.failed + self.bounced + self.suppressed)

    @property
    def left(self) -> int:
        return max(0, self.total - self.done)

    @property
    def handed(self) -> int:
        """Handed to the provider: the denominator of the bounce rate."""
        return self.sent + self.bounced

    @property
    def not_delivered(self) -> int:
        """Failed or bounced: the recipients the job page lists as not delivered."""
        return self.failed + self.bounced


def job_counts(job: Job) -> JobCounts:
    """``job``'s counts, from its counters."""
    return JobCounts(total=job.email_count or 0, sent=job.emails_sent or 0, failed=job.emails_failed or 0,
                     bounced=job.emails_bounced or 0, suppressed=job.emails_suppressed or 0)


@dataclass(frozen=True)
class Rates:
    """Bounce and complaint rates: ``sent`` is what was handed to the provider (sent or bounced),
    ``bounces`` the hard bounces among them; ``period_days`` ``None`` for a job."""

    sent: int
    bounces: int
    soft_bounces: int
    complaints: int
    period_days: int | None

    @property
    def bounce_rate(self) -> float:
        return self.bounces / self.sent if self.sent else 0.0

    @property
    def complaint_rate(self) -> float:
        return self.complaints / self.sent if self.sent else 0.0

    def as_dict(self) -> dict:
        """The figures and the rates, with whether each passes its warning threshold."""
        return {**asdict(self), "bounce_rate": self.bounce_rate, "complaint_rate": self.complaint_rate,
                "bounce_warning": self.bounce_rate > BOUNCE_WARN,
                "complaint_warning": self.complaint_rate > COMPLAINT_WARN}


def _reports(company_id: int | None, **where) -> dict[str, int]:
    """Soft bounce and complaint reports by kind (``job_id=`` or ``since=``)."""
    stmt = BounceEvent.scoped(company_id).with_only_columns(BounceEvent.kind, func.count()) \
        .where(BounceEvent.kind.in_((SOFT, COMPLAINT))).group_by(BounceEvent.kind)
    if "job_id" in where:
        stmt = stmt.where(BounceEvent.job_id == where["job_id"])
    if "since" in where:
        stmt = stmt.where(BounceEvent.created_at >= where["since"])
    return dict(db.session.execute(stmt).all())


def job_rates(job: Job) -> Rates:
    """``job``'s rates: its counters and the reports about its recipients."""
    counts = job_counts(job)
    reports = _reports(job.company_id, job_id=job.id)
    return Rates(sent=counts.handed, bounces=counts.bounced, soft_bounces=reports.get(SOFT, 0),
                 complaints=reports.get(COMPLAINT, 0), period_days=None)


def company_rates(company_id: int | None, *, days: int = RATE_DAYS, now: datetime | None = None) -> Rates:
    """The rates of a company (``None``: every company) over the last ``days``: recipients handed
    to the provider in that time, those of them that bounced, the reports that came in it."""
    since = (now or utcnow()) - timedelta(days=days)
    sent, bounced = sendstats.handed_since(company_id, since.date())  # whole days, from the counts
    reports = _reports(company_id, since=since)
    return Rates(sent=sent + bounced, bounces=bounced, soft_bounces=reports.get(SOFT, 0),
                 complaints=reports.get(COMPLAINT, 0), period_days=days)


def rates(company_id: int | None, job_id: int | None = None, *, days: int = RATE_DAYS) -> dict:
    """What the pages show: a job's rates (``LookupError`` for a job ``company_id`` cannot see),
    else the company's over ``days`` (``Rates.as_dict``)."""
    if job_id is None:
        return company_rates(company_id, days=days).as_dict()
    job = db.session.execute(Job.scoped(company_id).where(Job.id == job_id)).scalar_one_or_none()
    if job is None:
        raise LookupError(f"no job {job_id}")
    return job_rates(job).as_dict()


# -- the overview's days ---------------------------------------------------------------------

def _day(value) -> date:
    """A ``date()`` result as the dialect returns it (SQLite: text)."""
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def _of(model, company_id: int | None):
    stmt = select(model.company_id)
    return stmt if company_id is None else stmt.where(model.company_id == company_id)


def _jobs_by_day(company_id: int | None, since: datetime, column) -> dict[tuple[int, date], int]:
    day = func.date(Job.created_at)
    rows = db.session.execute(_of(Job, company_id).add_columns(day, func.sum(column))
                              .where(Job.created_at >= since).group_by(Job.company_id, day)).all()
    return {(company, _day(when)): int(n) for company, when, n in rows if when is not None and n}


def days(company_id: int | None, since: datetime) -> dict[str, dict[tuple[int, date], int]]:
    """Counts by (company, UTC day) from ``since`` on: ``sent`` and ``bounced`` recipients by the day
    they were handed to the provider (the statuses the job page counts, kept as they were sent:
    ``core.sendstats``), ``failed`` recipients and ``queued`` (every recipient accepted) by their
    job's day (the jobs' counters)."""
    handed = sendstats.by_day(company_id, since.date())
    return {"sent": handed["sent"], "failed": _jobs_by_day(company_id, since, Job.emails_failed),
            "bounced": handed["bounced"], "queued": _jobs_by_day(company_id, since, Job.email_count)}


def waiting(company_id: int | None) -> dict[int, int]:
    """Recipients not final now, by company: what unfinished jobs have left, by their counters."""
    left = Job.email_count - Job.emails_sent - Job.emails_failed - Job.emails_bounced - Job.emails_suppressed
    rows = db.session.execute(_of(Job, company_id).add_columns(func.sum(left))
                              .where(Job.status.notin_(tuple(JOB_FINAL)), Job.cancel_requested_at.is_(None))
                              .group_by(Job.company_id)).all()
    return {company: int(n) for company, n in rows if n and n > 0}


# -- the reputation guard's window -------------------------------------------------------------

@dataclass(frozen=True)
class Window:
    """A company's last sends: how many, how many bounced, the complaints since the first of them."""

    sends: int
    bounces: int
    complaints: int

    @property
    def bounce_rate(self) -> float:
        return self.bounces / self.sends if self.sends else 0.0

    @property
    def complaint_rate(self) -> float:
        return self.complaints / self.sends if self.sends else 0.0


def recent(company_id: int, size: int, after: datetime | None = None) -> Window:
    """The company's last ``size`` messages handed to the provider (sent after ``after``, when
    given), the bounces among them and the complaint reports since the oldest of them."""
    query = (select(Recipient.status, Recipient.sent_at)
             .where(Recipient.company_id == company_id, Recipient.sent_at.is_not(None), Recipient.status.in_(HANDED))
             .order_by(Recipient.sent_at.desc()).limit(size))
    if after is not None:
        query = query.where(Recipient.sent_at > after)
    last = query.subquery()
    figures = select(func.count(), func.count().filter(last.c.status == R_BOUNCED), func.min(last.c.sent_at))
    sends, bounces, oldest = db.session.execute(figures.select_from(last)).one()
    if not sends:
        return Window(0, 0, 0)
    complaints = db.session.execute(
        BounceEvent.scoped(company_id).with_only_columns(func.count())
        .where(BounceEvent.kind == COMPLAINT, BounceEvent.created_at >= oldest)).scalar() or 0
    return Window(sends=sends, bounces=bounces, complaints=complaints)
