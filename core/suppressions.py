"""The suppression list, bounce and complaint reports, and their rates.

A hard bounce or a complaint suppresses the address (reason ``bounce`` /
``complaint``); a soft bounce is only counted. The matching recipient (by
message id, else the latest one sent to the address) becomes ``bounced`` on a
hard bounce and its job's counters move. Each report applies once
(``BounceEvent.event_key``). ``rates`` gives the bounce and complaint rates
the dashboard shows, with the warning thresholds.
"""
from __future__ import annotations

import hashlib
from datetime import timedelta
from email.utils import parseaddr

from sqlalchemy import func, update
from sqlalchemy.exc import IntegrityError

from core.db import db
from core.models import (COMPLAINT, HARD, R_BOUNCED, R_SENT, SOFT, BounceEvent, Job, Recipient, Suppression,
                         utcnow)
from core.rendering import valid_email

#: recipients a bounce report may be about: handed to the provider (and maybe already bounced)
DELIVERED = (R_SENT, R_BOUNCED)
BOUNCE_WARN = 0.02      # warn past 2 % hard bounces
COMPLAINT_WARN = 0.001  # warn past 0.1 % complaints


# -- the suppression list -----------------------------------------------------
def normalize_email(address: str) -> str:
    return parseaddr(address or "")[1].strip().lower()


def is_suppressed(company_id: int, email: str) -> bool:
    stmt = Suppression.scoped(company_id).where(Suppression.email == normalize_email(email))
    return db.session.execute(stmt).first() is not None


def suppress(company_id: int, email: str, reason: str) -> bool:
    """Add the address to the company's suppression list and commit; False if it was there."""
    email = normalize_email(email)
    if is_suppressed(company_id, email):
        return False
    db.session.add(Suppression(company_id=company_id, email=email, reason=reason))
    try:
        db.session.commit()
    except IntegrityError:  # added concurrently
        db.session.rollback()
        return False
    return True


# -- applying a report ------------------------------------------------------------
def event_key(source: str, *parts: str) -> str:
    return f"{source}:" + hashlib.sha256("|".join(parts).encode()).hexdigest()


def match_recipient(company_id: int, email: str, message_id: str | None):
    """(id, job_id, status, email) of the recipient a report is about, or ``None``."""
    base = Recipient.scoped(company_id).with_only_columns(Recipient.id, Recipient.job_id, Recipient.status,
                                                          Recipient.email)
    if message_id:
        rows = db.session.execute(base.where(Recipient.message_id == message_id)).all()
        for row in rows:
            if len(rows) == 1 or normalize_email(row.email) == email:
                return row
    return db.session.execute(
        base.where(func.lower(Recipient.email) == email, Recipient.status.in_(DELIVERED))
        .order_by(Recipient.id.desc()).limit(1)).first()


def record_event(company_id: int, *, source: str, key: str, kind: str, email: str,
                 message_id: str | None = None, detail: str | None = None) -> bool:
    """Apply one bounce/complaint report once; True when it was new."""
    email = normalize_email(email)
    if not valid_email(email):
        return False
    for _ in range(2):  # a concurrent delivery of the same report or address: look again
        try:
            applied = _apply(company_id, source, key, kind, email, message_id, detail)
            db.session.commit()
            return applied
        except IntegrityError:
            db.session.rollback()
    return False


def _apply(company_id, source, key, kind, email, message_id, detail) -> bool:
    seen = BounceEvent.scoped(company_id).with_only_columns(BounceEvent.id).where(BounceEvent.event_key == key)
    if db.session.execute(seen).first() is not None:
        return False
    found = match_recipient(company_id, email, message_id)
    db.session.add(BounceEvent(company_id=company_id, event_key=key, source=source, kind=kind, email=email,
                               message_id=(message_id or None) and message_id[:255],
                               job_id=found.job_id if found else None, recipient_id=found.id if found else None,
                               detail=(detail or "")[:255] or None))
    if kind == HARD and found is not None:
        res = db.session.execute(update(Recipient).where(Recipient.id == found.id, Recipient.status == R_SENT)
                                 .values(status=R_BOUNCED, error=f"bounce: {detail or 'hard'}"[:2000]))
        if res.rowcount:
            db.session.execute(update(Job).where(Job.id == found.job_id).values(
                emails_bounced=Job.emails_bounced + 1, emails_sent=Job.emails_sent - 1))
    if kind in (HARD, COMPLAINT) and not is_suppressed(company_id, email):
        db.session.add(Suppression(company_id=company_id, email=email,
                                   reason="bounce" if kind == HARD else "complaint"))
    db.session.flush()
    return True


# -- rates ------------------------------------------------------------------------
def rates(company_id: int | None, job_id: int | None = None, *, days: int = 30) -> dict:
    """Bounce and complaint rates of one job, or of a company over the last ``days``.

    ``company_id`` ``None`` means every company (admins). Keys: ``sent``
    (messages delivered to the provider, bounced ones included), ``bounces``
    (hard), ``soft_bounces``, ``complaints``, ``bounce_rate``,
    ``complaint_rate`` (fractions), ``bounce_warning`` (> 2 %),
    ``complaint_warning`` (> 0.1 %), ``period_days`` (``None`` for a job).
    Raises ``LookupError`` for a job the company cannot see.
    """
    events = BounceEvent.scoped(company_id).with_only_columns(BounceEvent.kind, func.count()) \
        .group_by(BounceEvent.kind)
    if job_id is not None:
        job = db.session.execute(Job.scoped(company_id).where(Job.id == job_id)).scalar_one_or_none()
        if job is None:
            raise LookupError(f"no job {job_id}")
        counts = dict(db.session.execute(events.where(BounceEvent.job_id == job_id)).all())
        sent, bounces, period = job.emails_sent + job.emails_bounced, job.emails_bounced, None
    else:
        since = utcnow() - timedelta(days=days)
        counts = dict(db.session.execute(events.where(BounceEvent.created_at >= since)).all())
        stmt = Recipient.scoped(company_id).with_only_columns(func.count()) \
            .where(Recipient.status.in_(DELIVERED), Recipient.sent_at >= since)
        sent, bounces, period = db.session.execute(stmt).scalar(), counts.get(HARD, 0), days
    complaints = counts.get(COMPLAINT, 0)
    bounce_rate = bounces / sent if sent else 0.0
    complaint_rate = complaints / sent if sent else 0.0
    return {"sent": sent, "bounces": bounces, "soft_bounces": counts.get(SOFT, 0), "complaints": complaints,
            "bounce_rate": bounce_rate, "complaint_rate": complaint_rate,
            "bounce_warning": bounce_rate > BOUNCE_WARN, "complaint_warning": complaint_rate > COMPLAINT_WARN,
            "period_days": period}
