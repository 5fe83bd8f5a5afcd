"""The recovery sweep: the database is the truth, the queue is rebuilt from it.

Run every few seconds (``tasks.worker`` schedules it through RQ). It
re-queues batches whose holder's lease expired, batches the ready set lost
(Redis restart), wakes a worker when runnable entries have none queued,
re-plans jobs whose planning was lost, closes SMTP windows whose closer
was lost, and finishes jobs whose work is all done; offload batches whose callback is overdue are
reconciled by ``tasks.offload``.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select, text

from core.db import db
from core.models import B_SENDING, BATCH_FINAL, BATCH_REQUEUABLE, JOB_RUNNING, PAUSED, sql_in, utcnow
from core import queue, scheduler, settings
from core.queue import enqueue_fallback
from tasks.offload import reconcile
from tasks.sending import finish_job
from core.jobs import resume
from core.models import Job
from tasks.sending import QUOTA_PAUSE
from tasks.events import recover
from core.queue import connection
from tasks.purge import purge_recipient_data
from tasks import submissions

log = logging.getLogger(__name__)
GRACE_S = 10  # a queued batch younger than this is left alone


def expired_leases() -> list[tuple[int, int, str]]:
    """(batch id, attempts, company mode) of batches whose holder's lease ran out."""
    rows = db.session.execute(text(
        "SELECT b.id, b.attempts, CASE WHEN jb.source = 'lms' THEN 'direct' ELSE coalesce(ds.mode, 'direct') END "
        "AS mode FROM batches b JOIN jobs jb ON jb.id = b.job_id "
        "LEFT JOIN delivery_settings ds ON ds.company_id = b.company_id "
        f"WHERE b.status = '{B_SENDING}' AND b.lease_until < :now"), {"now": utcnow()}).all()
    return [(r.id, r.attempts, r.mode) for r in rows]


def waiting_batches() -> list[tuple[int, int]]:
    """Queued/retry batches that are due and have no ready-set entry (Redis lost it)."""
    due = utcnow() - timedelta(seconds=GRACE_S)
    rows = db.session.execute(text(
        "SELECT b.id, b.attempts, b.company_id, j.priority, j.settings_mode FROM batches b JOIN ("
        "  SELECT jobs.id AS jid, jobs.priority, CASE WHEN jobs.source = 'lms' THEN 'direct' "  # LMS jobs: sent here
        "  ELSE coalesce(ds.mode, 'direct') END AS settings_mode FROM jobs "
        "  LEFT JOIN delivery_settings ds ON ds.company_id = jobs.company_id "
        f"  WHERE jobs.status IN {sql_in(JOB_RUNNING)}) j ON j.jid = b.job_id "
        f"WHERE b.status IN {sql_in(BATCH_REQUEUABLE)} AND (b.next_attempt_at IS NULL OR b.next_attempt_at < :due)"),
        {"due": due}).all()
    conn = connection()
    return [(r.id, r.attempts) for r in rows if r.settings_mode != "offload"
            and not scheduler.contains(conn, scheduler.klass_of(r.priority), r.company_id, r.id)]


def wake_if_idle() -> int:
    """Runnable ready-set entries and no wake-up queued: queue one (1), else 0."""
    conn = connection()
    if scheduler.runnable(conn) and not conn.llen(f"rq:queue:{queue.SEND}"):
        queue.kick()
        return 1
    return 0


def unplanned_jobs() -> list[int]:
    """Jobs with pending recipients, no open batch and no live plan job."""
    now = utcnow()
    rows = db.session.execute(text(
        f"SELECT id FROM jobs WHERE status IN {sql_in(JOB_RUNNING)} AND (send_at IS NULL OR send_at <= :now) "
        "AND created_at < :old AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.job_id = jobs.id "
        f"  AND b.status NOT IN {sql_in(BATCH_FINAL)})"),
        {"now": now, "old": now - timedelta(seconds=GRACE_S)}).scalars().all()
    return [jid for jid in rows if not queue.is_live(f"plan-{jid}")]


def sweep() -> dict:
    """One pass; returns what it did (counts only)."""

    expired = expired_leases()
    for bid, attempts, mode in expired:  # the claim takes over the expired lease
        if mode == "offload":  # a fallback run that died: it goes on by the fallback
            enqueue_fallback(bid, attempts)
        else:
            queue.enqueue_batches([(bid, attempts)])
    lost = waiting_batches()
    queue.enqueue_batches(lost)
    replanned = 0
    for job_id in unplanned_jobs():
        if finish_job(job_id) is None:
            queue.enqueue_plan(job_id)
            replanned += 1
    woken = wake_if_idle()
    reconciled = _reconcile_offload()
    purged = _purge_if_due()
    windows = _recover_event_windows()
    resumed = resume_quota_paused()
    smtp_windows = submissions.recover()
    report = {"expired": len(expired), "requeued": len(lost), "replanned": replanned, "reconciled": reconciled,
              "purged": purged, "event_windows": windows, "smtp_windows": smtp_windows, "resumed": resumed,
              "woken": woken}
    if any(report.values()):
        log.info("sweep: %s", report)
    return report


def resume_quota_paused() -> int:
    """Jobs paused because the provider's quota was spent resume by themselves
    after OFFLOAD_QUOTA_RESUME_S (SES's daily quota rolls over); if the quota is
    still spent, the first call pauses them again."""
    due = utcnow() - timedelta(seconds=settings.current().quota_resume_s)
    jobs = db.session.execute(select(Job).where(
        Job.status == PAUSED, Job.paused_reason.like(QUOTA_PAUSE + "%"), Job.paused_at < due)).scalars().all()
    return sum(1 for job in jobs if resume(job))


def _recover_event_windows() -> int:
    """Event windows whose closer was lost (tasks.events)."""
    from redis import RedisError


    try:
        return sum(recover().values())
    except RedisError:
        return 0


def _purge_if_due() -> int:
    """Purge expired recipient data at most every ten minutes (across workers)."""
    from redis import RedisError


    try:
        if not connection().set("offload:purge-lock", 1, nx=True, ex=600):
            return 0
    except RedisError:
        return 0
    return purge_recipient_data(settings.current().data_retention_days)


def _reconcile_offload() -> int:
    return reconcile()
