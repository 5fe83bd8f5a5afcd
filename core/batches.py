"""What the send jobs need from the database besides the claims
(``core.delivery.claims``) and the results (``core.delivery.results``): fail recipients, pause, cancel
and finish the job, plan its batches, back off. The database is the truth.
"""
from __future__ import annotations

import random

from sqlalchemy import text, update

from core.db import db
from core.delivery.claims import Claim
from core.models import (B_CANCELLED, B_QUEUED, B_SUBMITTED, BATCH_FINAL, BATCH_WAITING, CANCELLED, COMPLETED,
                         FAILED, JOB_FINAL, PARTIAL, PAUSED, R_BOUNCED, R_CANCELLED, R_FAILED, R_SENT, R_SUPPRESSED,
                         RECIPIENT_CLAIMABLE, RECIPIENT_OPEN, Batch, Job, Recipient, sql_in, utcnow)


def fail_remaining(claim: Claim, reason: str) -> int:
    """Fail the batch's unsent recipients with ``reason`` (a permanent batch error)."""
    res = db.session.execute(text(
        f"UPDATE recipients SET status = '{R_FAILED}', error = :err, lease_until = NULL "
        f"WHERE job_id = :j AND id BETWEEN :a AND :b AND status IN {sql_in(RECIPIENT_CLAIMABLE)}"),
        {"err": reason[:2000], "j": claim.job_id, "a": claim.first_id, "b": claim.last_id})
    db.session.execute(update(Job).where(Job.id == claim.job_id)
                       .values(emails_failed=Job.emails_failed + res.rowcount))
    db.session.commit()
    return res.rowcount


def fail_recipients(claim: Claim, failures: list[tuple[int, str]]) -> int:
    """Fail single unsent recipients of the batch, each with its own reason
    (a render error in offload mode); counts them on the job and the batch."""
    table = Recipient.__table__
    n = 0
    for rid, reason in failures:
        n += db.session.execute(table.update().where(
            table.c.id == rid, table.c.job_id == claim.job_id, table.c.status.in_(RECIPIENT_CLAIMABLE)).values(
            status=R_FAILED, error=reason[:2000], lease_until=None)).rowcount
    db.session.execute(update(Job).where(Job.id == claim.job_id).values(emails_failed=Job.emails_failed + n))
    db.session.execute(update(Batch).where(Batch.id == claim.batch_id).values(failed_count=Batch.failed_count + n))
    db.session.commit()
    return n


def log_job_error(job_id: int, line: str) -> None:
    job = db.session.get(Job, job_id)
    if job is not None:
        job.log_error(line)
        db.session.commit()


def pause_job(job_id: int, reason: str) -> None:
    db.session.execute(update(Job).where(Job.id == job_id, Job.status.notin_(JOB_FINAL))
                       .values(status=PAUSED, paused_reason=reason[:255], paused_at=utcnow()))
    db.session.commit()
    log_job_error(job_id, f"paused: {reason}")


def cancel_unsent(job_id: int) -> None:
    """A cancelled job: unsent recipients end ``cancelled``, idle batches too."""
    db.session.execute(text(
        f"UPDATE recipients SET status = '{R_CANCELLED}', error = 'cancelled', lease_until = NULL "
        f"WHERE job_id = :j AND status IN {sql_in(RECIPIENT_CLAIMABLE)}"), {"j": job_id})
    db.session.execute(update(Batch).where(
        Batch.job_id == job_id, Batch.status.in_((*BATCH_WAITING, B_SUBMITTED)))
        .values(status=B_CANCELLED, completed_at=utcnow(), lease_until=None))
    db.session.commit()


def finish_job(job_id: int) -> str | None:
    """Give the job its final status and exact counts once nothing is left to do.

    Returns the final status, or ``None`` while work remains.
    """
    job = db.session.get(Job, job_id)
    if job is None or job.status in JOB_FINAL:
        return None if job is None else job.status
    if job.cancel_requested_at is not None:
        cancel_unsent(job_id)
    open_batches = db.session.execute(text(
        f"SELECT count(*) FROM batches WHERE job_id = :j AND status NOT IN {sql_in(BATCH_FINAL)}"),
        {"j": job_id}).scalar()
    if open_batches:  # the cheap check first: every batch's end calls this
        db.session.rollback()
        return None
    counts = dict(db.session.execute(text(
        "SELECT status, count(*) FROM recipients WHERE job_id = :j GROUP BY status"), {"j": job_id}).all())
    if sum(counts.get(s, 0) for s in RECIPIENT_OPEN):
        db.session.rollback()
        return None
    sent, bad = counts.get(R_SENT, 0), counts.get(R_FAILED, 0) + counts.get(R_BOUNCED, 0)
    if job.cancel_requested_at is not None:
        status = CANCELLED
    elif bad and not sent:
        status = FAILED
    elif bad:
        status = PARTIAL
    else:
        status = COMPLETED
    res = db.session.execute(update(Job).where(Job.id == job_id, Job.status.notin_(JOB_FINAL)).values(
        status=status, completed_at=utcnow(), emails_sent=sent, emails_failed=counts.get(R_FAILED, 0),
        emails_bounced=counts.get(R_BOUNCED, 0), emails_suppressed=counts.get(R_SUPPRESSED, 0)))
    db.session.commit()
    return status if res.rowcount else db.session.get(Job, job_id).status


def create_batches(job_id: int, batch_size: int) -> list[int]:
    """Split the job's pending recipients into batches (keyset ranges of ids).

    Idempotent: nothing is created while the job has an unfinished batch.
    """
    job = db.session.get(Job, job_id)
    open_batches = db.session.execute(text(
        f"SELECT id FROM batches WHERE job_id = :j AND status NOT IN {sql_in(BATCH_FINAL)} ORDER BY id"),
        {"j": job_id}).scalars().all()
    if open_batches:
        return []
    ids = db.session.execute(text(
        f"SELECT id FROM recipients WHERE job_id = :j AND status IN {sql_in(RECIPIENT_CLAIMABLE)} ORDER BY id"),
        {"j": job_id}).scalars().all()
    number = db.session.execute(text("SELECT coalesce(max(batch_number), 0) FROM batches WHERE job_id = :j"),
                                {"j": job_id}).scalar()
    rows = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        number += 1
        rows.append({"company_id": job.company_id, "job_id": job_id, "batch_number": number, "status": B_QUEUED,
                     "first_recipient_id": chunk[0], "last_recipient_id": chunk[-1],
                     "recipient_count": len(chunk), "attempts": 0, "sent_count": 0, "failed_count": 0})
    if rows:
        db.session.execute(Batch.__table__.insert(), rows)
    db.session.commit()
    return list(db.session.execute(text(
        f"SELECT id FROM batches WHERE job_id = :j AND status = '{B_QUEUED}' ORDER BY batch_number"),
        {"j": job_id}).scalars())


def backoff(attempt: int, base: float = 5.0, cap: float = 600.0) -> float:
    """Exponential back-off with full jitter for retry ``attempt`` (1-based)."""
    return random.uniform(base / 2, min(cap, base * (2 ** max(0, attempt - 1))))
