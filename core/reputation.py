"""The reputation guard: a company's bulk sending pauses itself before its provider reviews it.

SES reviews an account at 5 % bounces or 0.1 % complaints. After every result that brings a bounce
or a complaint (a hard bounce at send time, a cloud worker's callback, a bounce webhook's report),
``judge`` reads the company's rolling window (its last ``WINDOW`` sends, ``core.counts.recent``: the
bounces among them and the complaints since the oldest). Once the window holds at least
``MIN_SENDS`` sends and a rate passes the company's threshold (the settings ``reputation_bounce_pct``
and ``reputation_complaint_pct``, defaults 5 and 0.1), the guard trips: the company's reason and
figures are kept (``Company.reputation_paused_at``, ``reputation_reason``), every live bulk and
re-engagement job is paused with them, an audit entry is written, and bulk work that starts later is
held as it starts (``holds``). Transactional mail (passwords, accounts, licences, IOMAD's mail) keeps
flowing. A person resumes it (``core.jobs.resume_reputation``, the banner's Resume button): the guard
then judges only the sends after that moment, so the list can be cleaned and sending go on.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import and_, or_, select, update

from core import audit, counts
from core.db import db, rowcount
from core.models import JOB_FINAL, PAUSED, Company, DeliverySettings, Job, JobType, Priority, utcnow
from providers.registry import Setting, SettingsGroup

log = logging.getLogger(__name__)

#: the sends the rolling rates are taken over, and how many the window needs before it judges
WINDOW = 1000
MIN_SENDS = 100
DEFAULT_BOUNCE_PCT = 5.0
DEFAULT_COMPLAINT_PCT = 0.1
#: the start of a job's pause reason when the guard paused it (what its resume looks for)
PAUSE_PREFIX = "reputation guard"


def _percent(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a percentage, such as 5 or 0.1") from None
    if not 0 < value <= 100:
        raise ValueError("must be above 0 and at most 100")
    return value


SETTINGS = SettingsGroup(
    "reputation", "Reputation guard", f"Bulk and re-engagement sending pauses itself when the bounce or complaint "
    f"rate of the company's last {WINDOW:,} sends passes these (once at least {MIN_SENDS} were sent); "
    "transactional mail keeps flowing. SES reviews an account at 5% bounces or 0.1% complaints.", (
        Setting("reputation_bounce_pct", "Pause bulk mail past this bounce rate (%)", "number", parse=_percent,
                placeholder=str(DEFAULT_BOUNCE_PCT), default=DEFAULT_BOUNCE_PCT),
        Setting("reputation_complaint_pct", "Pause bulk mail past this complaint rate (%)", "number", parse=_percent,
                placeholder=str(DEFAULT_COMPLAINT_PCT), default=DEFAULT_COMPLAINT_PCT),
    ))


@dataclass(frozen=True)
class Thresholds:
    bounce_pct: float = DEFAULT_BOUNCE_PCT
    complaint_pct: float = DEFAULT_COMPLAINT_PCT


def thresholds(company_id: int) -> Thresholds:
    """The company's thresholds (its settings, else the defaults)."""
    row = db.session.execute(select(DeliverySettings).where(DeliverySettings.company_id == company_id)) \
        .scalar_one_or_none()
    if row is None:
        return Thresholds()
    return Thresholds(float(row.get_setting("reputation_bounce_pct") or DEFAULT_BOUNCE_PCT),
                      float(row.get_setting("reputation_complaint_pct") or DEFAULT_COMPLAINT_PCT))


def _bulk():
    """Jobs the guard pauses: bulk and re-engagement mail (``core.models.is_bulk``)."""
    return or_(Job.priority == Priority.BULK, Job.type == JobType.REENGAGEMENT)


def verdict(window: counts.Window, limits: Thresholds) -> str | None:
    """The reason in words, with the figures, when the window passes a threshold; else ``None``."""
    if window.sends < MIN_SENDS:
        return None
    if window.bounce_rate * 100 > limits.bounce_pct:
        return (f"bounce rate {window.bounce_rate * 100:.2f}% over the last {window.sends:,} sends "
                f"({_many(window.bounces, 'bounce')}) passed {limits.bounce_pct:g}%")
    if window.complaint_rate * 100 > limits.complaint_pct:
        return (f"complaint rate {window.complaint_rate * 100:.2f}% over the last {window.sends:,} sends "
                f"({_many(window.complaints, 'complaint')}) passed {limits.complaint_pct:g}%")
    return None


def _many(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def judge(company_id: int) -> str | None:
    """Look at the company's window after a bounce or complaint; trip the guard when it passes a
    threshold. Returns the reason when it tripped now. Commits when it trips."""
    company = db.session.get(Company, company_id)
    if company is None or company.reputation_paused_at is not None:
        return None
    window = counts.recent(company_id, WINDOW, after=company.reputation_resumed_at)
    reason = verdict(window, thresholds(company_id))
    if reason is None:
        return None
    trip(company, reason, window)
    return reason


def trip(company: Company, reason: str, window: counts.Window) -> int:
    """Pause the company's bulk sending with ``reason``; returns how many live jobs were paused."""
    now = utcnow()
    moved = rowcount(db.session.execute(update(Company).where(Company.id == company.id,
                                                              Company.reputation_paused_at.is_(None))
                                        .values(reputation_paused_at=now, reputation_reason=reason[:255])))
    if not moved:  # another process tripped it first
        db.session.rollback()
        return 0
    paused = pause_live(company.id, reason, now)
    audit.record("reputation_paused", company_id=company.id, object_type="company", object_id=company.id,
                 actor="reputation guard",
                 details={"reason": reason, "sends": window.sends, "bounces": window.bounces,
                          "complaints": window.complaints, "jobs_paused": len(paused)})
    for job_id in paused:
        db.session.get_one(Job, job_id).log_error(f"paused: {PAUSE_PREFIX}: {reason}")
    db.session.commit()
    log.warning("Company %s: reputation guard paused bulk sending (%s); %d jobs", company.id, reason, len(paused))
    return len(paused)


def pause_live(company_id: int, reason: str, now) -> list[int]:
    """Pause the company's live bulk jobs with the guard's reason (in the caller's transaction)."""
    ids = list(db.session.execute(select(Job.id).where(
        Job.company_id == company_id, _bulk(), Job.status.notin_(JOB_FINAL), Job.status != PAUSED)).scalars())
    if ids:
        db.session.execute(update(Job).where(Job.id.in_(ids), Job.status.notin_(JOB_FINAL), Job.status != PAUSED)
                           .values(status=PAUSED, paused_reason=f"{PAUSE_PREFIX}: {reason}"[:255], paused_at=now))
    return ids


def holds(job_id: int) -> bool:
    """Whether the guard holds this job back (bulk, of a company whose guard is tripped): it is paused
    with the guard's reason, and committed. A batch run or a submission asks as it starts."""
    row = db.session.execute(
        select(Company.id, Company.reputation_reason).join(Job, Job.company_id == Company.id)
        .where(Job.id == job_id, Company.reputation_paused_at.is_not(None), _bulk())).first()
    if row is None:
        return False
    db.session.execute(update(Job).where(Job.id == job_id, Job.status.notin_(JOB_FINAL), Job.status != PAUSED)
                       .values(status=PAUSED, paused_at=utcnow(),
                               paused_reason=f"{PAUSE_PREFIX}: {row.reputation_reason or ''}"[:255]))
    db.session.commit()
    return True


def tripped(company_id: int | None) -> list[Company]:
    """The companies in scope whose guard is tripped (the banner's), first tripped first."""
    stmt = select(Company).where(Company.reputation_paused_at.is_not(None)).order_by(Company.reputation_paused_at)
    if company_id is not None:
        stmt = stmt.where(Company.id == company_id)
    return list(db.session.execute(stmt.limit(20)).scalars())


def paused_by_guard(company_id: int):
    """A select of the company's jobs the guard paused (what a resume resumes)."""
    return select(Job).where(and_(Job.company_id == company_id, Job.status == PAUSED,
                                  Job.paused_reason.like(PAUSE_PREFIX + "%")))
