"""Recovery: the database is the truth, the queue is rebuilt from it.

``recover`` is the batch half of the sweep (run every few seconds): it puts
back batches whose holder's lease ran out, batches the ready set lost (a Redis
restart), jobs whose planning was lost, and wakes a worker when runnable
entries have none queued. ``reconcile`` settles offload batches whose callback
never came by the company's uncertain policy (``settle_overdue``), re-queues
submissions the queue lost (``requeue_lost``) and forgets old callback
receipts. ``resume_quota_paused`` resumes jobs paused on a spent quota
(``core.jobs.resume``, which puts their batches back through
``core.delivery.plan.requeue_open_batches``). Each batch goes back its way
(``core.delivery.routing.way``): sent here, submitted, or (a fallback run
that died) on the SMTP fallback.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import delete, select, text, update

from core import queue, scheduler, sendstats, settings
from core.db import db, rowcount
from core.delivery import routing
from core.delivery.settle import QUOTA_PAUSE, finish_job
from core.jobs import resume
from core.models import (
    B_FAILED,
    B_RETRY,
    B_SENDING,
    B_SUBMITTED,
    BATCH_FINAL,
    BATCH_REQUEUABLE,
    JOB_RUNNING,
    PAUSED,
    R_FAILED,
    R_PENDING,
    R_UNCERTAIN,
    RECIPIENT_CLAIMABLE,
    Batch,
    Job,
    WebhookReceipt,
    sql_in,
    utcnow,
)

log = logging.getLogger(__name__)
GRACE_S = 10  # a queued batch younger than this is left alone
#: webhook-ids are kept longer than any worker retries a callback
RECEIPT_TTL = timedelta(days=7)
#: a queued offload batch due for this long with no live submission was lost by the queue
LOST_GRACE_S = 60


def recover() -> dict[str, int]:
    """Put back what the queue lost; returns counts (``expired``, ``requeued``, ``replanned``, ``woken``)."""
    expired = expired_leases()
    for bid, attempts, way in expired:  # the claim takes over the expired lease
        if way == routing.SUBMIT:  # a fallback run that died: it goes on by the fallback
            queue.enqueue_fallback(bid, attempts)
        else:
            queue.enqueue_batches([(bid, attempts)])
    lost = waiting_batches()
    queue.enqueue_batches(lost)
    replanned = 0
    for job_id in unplanned_jobs():
        if finish_job(job_id) is None:
            queue.enqueue_plan(job_id)
            replanned += 1
    return {"expired": len(expired), "requeued": len(lost), "replanned": replanned, "woken": wake_if_idle()}


def expired_leases() -> list[tuple[int, int, str]]:
    """(batch id, attempts, way) of batches whose holder's lease ran out."""
    rows = db.session.execute(text(
        f"SELECT b.id, b.attempts, {routing.WAY_SQL} AS way {routing.BATCH_WAY_FROM} "
        f"WHERE b.status = '{B_SENDING}' AND b.lease_until < :now"), {"now": utcnow()}).all()
    return [(r.id, r.attempts, r.way) for r in rows]


def waiting_batches() -> list[tuple[int, int]]:
    """Due batches sent here, queued or backing off, that have no ready-set entry (Redis lost it)."""
    rows = db.session.execute(text(
        f"SELECT b.id, b.attempts, b.company_id, jb.priority, {routing.WAY_SQL} AS way {routing.BATCH_WAY_FROM} "
        f"WHERE jb.status IN {sql_in(JOB_RUNNING)} AND b.status IN {sql_in(BATCH_REQUEUABLE)} "
        "AND (b.next_attempt_at IS NULL OR b.next_attempt_at < :due)"),
        {"due": utcnow() - timedelta(seconds=GRACE_S)}).all()
    conn = queue.connection()
    return [(r.id, r.attempts) for r in rows if r.way == routing.SEND
            and not scheduler.contains(conn, scheduler.klass_of(r.priority), r.company_id, r.id)]


def wake_if_idle() -> int:
    """Runnable ready-set entries and no wake-up queued: queue one (1), else 0."""
    conn = queue.connection()
    if scheduler.runnable(conn) and not queue.port().queued([queue.SEND])[0]:
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
    live = queue.live_ids([f"plan-{jid}" for jid in rows])
    return [jid for jid in rows if f"plan-{jid}" not in live]


def resume_quota_paused() -> int:
    """Jobs paused because the provider's quota was spent resume by themselves
    after OFFLOAD_QUOTA_RESUME_S (SES's daily quota rolls over); if the quota is
    still spent, the first call pauses them again."""
    due = utcnow() - timedelta(seconds=settings.current().quota_resume_s)
    jobs = db.session.execute(select(Job).where(
        Job.status == PAUSED, Job.paused_reason.like(QUOTA_PAUSE + "%"), Job.paused_at < due)).scalars().all()
    return sum(1 for job in jobs if resume(job))


# -- offload batches -------------------------------------------------------------------

def reconcile() -> int:
    """Settle overdue and lost offload batches; returns how many were acted on."""
    acted = settle_overdue() + requeue_lost()
    purge_receipts()
    return acted


def settle_overdue() -> int:
    """Submitted batches past their callback deadline: flag them on the job, then
    re-submit (policy ``resend``, up to OFFLOAD_MAX_ATTEMPTS) or fail what is
    left of them with ``no_callback``."""
    cfg = settings.current()
    now = utcnow()
    rows = db.session.execute(text(
        "SELECT b.id, b.job_id, b.company_id, b.batch_number, b.attempts, b.first_recipient_id AS a, "
        "b.last_recipient_id AS b_, c.uncertain_policy AS policy FROM batches b "
        "JOIN companies c ON c.id = b.company_id "
        f"WHERE b.status = '{B_SUBMITTED}' AND b.callback_deadline < :now "
        "AND (b.lease_until IS NULL OR b.lease_until < :now) ORDER BY b.id"), {"now": now}).all()
    acted, finished_jobs = 0, set()
    for row in rows:
        give_up = row.policy == "fail" or row.attempts >= cfg.max_attempts
        if not _settle_one(row, give_up, now, cfg):
            continue
        if give_up:
            finished_jobs.add(row.job_id)
        else:
            queue.enqueue_resubmit(row.id, row.attempts)
        acted += 1
    for job_id in finished_jobs:
        finish_job(job_id)
    return acted


def _settle_one(row, give_up: bool, now, cfg) -> bool:
    """Settle one overdue batch by the uncertain policy; False when a callback (or a cancel) got there first."""
    values = {"status": B_FAILED if give_up else B_RETRY, "lease_until": None, "leased_by": None,
              "next_attempt_at": None, "error": "no callback before the deadline"}
    if give_up:
        values["completed_at"] = now
    res = db.session.execute(update(Batch).where(
        Batch.id == row.id, Batch.status == B_SUBMITTED, Batch.callback_deadline < now).values(**values))
    if rowcount(res) != 1:
        db.session.rollback()
        return False
    params = {"j": row.job_id, "a": row.a, "b": row.b_}
    line = f"batch {row.batch_number}: no callback within {cfg.callback_timeout_s} s of submission"
    if give_up:
        n = rowcount(db.session.execute(text(
            f"UPDATE recipients SET status = '{R_FAILED}', error = 'no_callback', lease_until = NULL "
            f"WHERE job_id = :j AND id BETWEEN :a AND :b AND status IN {sql_in(RECIPIENT_CLAIMABLE)}"),
            params))
        db.session.execute(update(Job).where(Job.id == row.job_id).values(emails_failed=Job.emails_failed + n))
        sendstats.record(row.company_id, row.job_id, {R_FAILED: n})
        line += f"; {n} recipients failed (no_callback)"
    else:
        # the worker may have sent some before it went quiet: uncertain, and sent again
        n = rowcount(db.session.execute(text(
            f"UPDATE recipients SET status = '{R_UNCERTAIN}' "
            f"WHERE job_id = :j AND id BETWEEN :a AND :b AND status = '{R_PENDING}'"), params))
        db.session.execute(update(Job).where(Job.id == row.job_id).values(
            emails_uncertain=Job.emails_uncertain + n))
        line += f"; resubmitting (attempt {row.attempts + 1} of {cfg.max_attempts})"
    db.session.get_one(Job, row.job_id).log_error(line)
    db.session.commit()
    log.warning("Job %s: %s", row.job_id, line)
    return True


def requeue_lost() -> int:
    """Offload batches waiting (queued/retry, due) with no submission in the queue.

    ``waiting_batches`` puts back what is sent here; this is its equivalent for
    what is submitted. A duplicate submission job is harmless: the claim decides.
    """
    old = utcnow() - timedelta(seconds=LOST_GRACE_S)
    rows = db.session.execute(text(
        f"SELECT b.id, b.attempts, b.company_id, jb.priority, {routing.WAY_SQL} AS way {routing.BATCH_WAY_FROM} "
        f"WHERE b.status IN {sql_in(BATCH_REQUEUABLE)} AND jb.status IN {sql_in(JOB_RUNNING)} "
        "AND jb.created_at < :old AND (b.next_attempt_at IS NULL OR b.next_attempt_at < :old)"), {"old": old}).all()
    lost = 0
    conn = queue.connection()
    rows = [row for row in rows if row.way == routing.SUBMIT]
    live = queue.live_ids([f"{kind}-{row.id}-{row.attempts}" for row in rows for kind in ("submit", "fallback")])
    for row in rows:
        if f"submit-{row.id}-{row.attempts}" in live or f"fallback-{row.id}-{row.attempts}" in live \
                or scheduler.contains(conn, scheduler.klass_of(row.priority), row.company_id, row.id):
            continue
        queue.enqueue_resubmit(row.id, row.attempts)
        lost += 1
    return lost


def purge_receipts() -> int:
    """Forget webhook-ids older than RECEIPT_TTL (no worker retries that long)."""
    res = db.session.execute(delete(WebhookReceipt).where(WebhookReceipt.received_at < utcnow() - RECEIPT_TTL))
    db.session.commit()
    return rowcount(res)
