"""Settling a batch and its job: fail what cannot be sent, pause, cancel, back off, finish.

A batch ends ``done``, ``failed`` or ``cancelled`` (``core.delivery.claims.release``); once a job
has no open batch and no open recipient, ``finish_job`` gives it its final status and exact
counts from its recipients (``completed``, ``partial_failure``, ``failed``, ``cancelled``). What is
left to retry waits with exponential back-off and full jitter (``backoff``). A job that cannot
go on by itself is paused with its reason in words (``pause_job``); a spent sending quota
(``QUOTA_PAUSE``) resumes by itself (``core.delivery.recovery.resume_quota_paused``).
"""
from __future__ import annotations

import logging
import random

from sqlalchemy import text, update

from core import sendstats
from core.db import db, rowcount
from core.delivery.claims import Claim
from core.models import (
    B_CANCELLED,
    B_SUBMITTED,
    BATCH_FINAL,
    BATCH_WAITING,
    CANCELLED,
    COMPLETED,
    FAILED,
    JOB_FINAL,
    PARTIAL,
    PAUSED,
    R_BOUNCED,
    R_CANCELLED,
    R_FAILED,
    R_SENT,
    R_SUPPRESSED,
    RECIPIENT_CLAIMABLE,
    RECIPIENT_OPEN,
    Batch,
    Job,
    sql_in,
    utcnow,
)

log = logging.getLogger(__name__)
#: a job paused with a reason that starts so resumes by itself after OFFLOAD_QUOTA_RESUME_S
QUOTA_PAUSE = "sending quota exhausted"


def fail_remaining(claim: Claim, reason: str) -> int:
    """Fail the batch's unsent recipients with ``reason`` (a permanent batch error)."""
    res = db.session.execute(text(
        f"UPDATE recipients SET status = '{R_FAILED}', error = :err, lease_until = NULL "
        f"WHERE job_id = :j AND id BETWEEN :a AND :b AND status IN {sql_in(RECIPIENT_CLAIMABLE)}"),
        {"err": reason[:2000], "j": claim.job_id, "a": claim.first_id, "b": claim.last_id})
    db.session.execute(update(Job).where(Job.id == claim.job_id)
                       .values(emails_failed=Job.emails_failed + rowcount(res)))
    sendstats.record(claim.company_id, claim.job_id, {R_FAILED: rowcount(res)})
    db.session.commit()
    return rowcount(res)


def log_job_error(job_id: int, line: str) -> None:
    """Append a line to the job's log (never recipient data)."""
    job = db.session.get(Job, job_id)
    if job is not None:
        job.log_error(line)
        db.session.commit()


def pause_job(job_id: int, reason: str) -> None:
    """Pause a job that cannot go on by itself (no sender, delivery disabled, quota spent);
    a resume (or, for a spent quota, the sweep) puts its batches back."""
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
    """Give the job its final status and exact counts once nothing is left to do
    (safe to call any time: every batch's end does).

    Returns the final status, or ``None`` while work remains.
    """
    status = _finish(job_id)
    if status:
        log.info("Job %s: %s", job_id, status)
    return status


def _finish(job_id: int) -> str | None:
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
    counts: dict[str, int] = dict(db.session.execute(text(
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
    if rowcount(res):  # what the counters missed, so the company's days agree with its jobs
        sendstats.correct(job.company_id, job_id, {R_FAILED: job.emails_failed, R_SUPPRESSED: job.emails_suppressed},
                          counts)
    db.session.commit()
    return status if rowcount(res) else db.session.get_one(Job, job_id).status


def backoff(attempt: int, base: float = 5.0, cap: float = 600.0) -> float:
    """Exponential back-off with full jitter for retry ``attempt`` (1-based)."""
    return random.uniform(base / 2, min(cap, base * (2 ** max(0, attempt - 1))))
