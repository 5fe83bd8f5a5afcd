"""Recipient data (passwords, license codes) and the MIME of SMTP messages are deleted once a job is final
and its company's retention (its own, else `OFFLOAD_DATA_RETENTION_DAYS`, 30 days) has passed; addresses,
statuses and the counts kept as they were sent stay for the
record."""
from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select, text, update

from core.db import db
from core.models import JOB_FINAL, Company, Job, utcnow
from core.submissions import purge_raw

log = logging.getLogger(__name__)


#: recipients whose data one transaction purges (a 100k job is 20 short transactions, not one long one)
PURGE_CHUNK = 5000


def _purge_job(job_id: int) -> None:
    """Null the data of a job's recipients that still have some, by id ranges, committing each."""
    low, high = db.session.execute(text("SELECT min(id), max(id) FROM recipients WHERE job_id = :j"),
                                   {"j": job_id}).one()
    for start in range(low or 0, (high or -1) + 1, PURGE_CHUNK):
        db.session.execute(text("UPDATE recipients SET data = NULL WHERE job_id = :j AND id BETWEEN :a AND :b "
                                "AND data IS NOT NULL"), {"j": job_id, "a": start, "b": start + PURGE_CHUNK - 1})
        db.session.commit()


def purge_recipient_data(default_days: int) -> int:
    """Null ``recipients.data`` of final jobs past retention; returns jobs purged."""
    now = utcnow()
    retention = dict(db.session.execute(select(Company.id, Company.data_retention_days)).all())
    shortest = min([default_days, *(d for d in retention.values() if d is not None)])
    candidates = db.session.execute(  # only jobs past the shortest retention: not every finished job each time
        select(Job.id, Job.company_id, Job.completed_at)
        .where(Job.status.in_(JOB_FINAL), Job.data_purged_at.is_(None),
               Job.completed_at <= now - timedelta(days=shortest))).all()
    purged = 0
    for job_id, company_id, completed_at in candidates:
        days = retention.get(company_id)
        if completed_at is None or completed_at > now - timedelta(days=default_days if days is None else days):
            continue
        _purge_job(job_id)
        purge_raw(job_id)  # an SMTP job's messages as the LMS sent them
        db.session.execute(update(Job).where(Job.id == job_id).values(data_purged_at=now))
        db.session.commit()
        purged += 1
        log.info("Job %s: recipient data purged", job_id)
    return purged
