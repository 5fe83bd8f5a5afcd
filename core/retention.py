"""Recipient data (passwords, license codes) and the MIME of SMTP messages are deleted once a job is final
and its company's retention has passed; addresses and statuses stay for the
record."""
from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select, text, update

from core.db import db
from core.submissions import purge_raw
from core.models import JOB_FINAL, Company, Job, utcnow

log = logging.getLogger(__name__)


def purge_recipient_data(default_days: int) -> int:
    """Null ``recipients.data`` of final jobs past retention; returns jobs purged."""
    now = utcnow()
    retention = dict(db.session.execute(select(Company.id, Company.data_retention_days)).all())
    candidates = db.session.execute(
        select(Job.id, Job.company_id, Job.completed_at)
        .where(Job.status.in_(JOB_FINAL), Job.data_purged_at.is_(None), Job.completed_at.is_not(None))).all()
    purged = 0
    for job_id, company_id, completed_at in candidates:
        days = retention.get(company_id)
        if completed_at > now - timedelta(days=default_days if days is None else days):
            continue
        db.session.execute(text("UPDATE recipients SET data = NULL WHERE job_id = :j"), {"j": job_id})
        purge_raw(job_id)  # an SMTP job's messages as the LMS sent them
        db.session.execute(update(Job).where(Job.id == job_id).values(data_purged_at=now))
        db.session.commit()
        purged += 1
        log.info("Job %s: recipient data purged", job_id)
    return purged
