"""Planning: a job's recipients become keyset batches, and each batch goes its way.

``plan_job`` (queued by id when a job is created, retried, resumed or found
unplanned by the sweep) waits for a certificate job's PDFs
(``core.certificate_issue.awaiting_issue``), cuts the job's sendable
recipients into batches of ``OFFLOAD_BATCH_SIZE`` ids (``create_batches``:
idempotent while a batch is open) and puts each in the ready set, to be sent
here or submitted to the company's cloud queue (``core.delivery.routing.way``).
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import text

from core import certificate_issue, queue, settings
from core.db import db
from core.delivery import routing
from core.delivery.settle import finish_job
from core.models import (
    B_QUEUED,
    BATCH_FINAL,
    BATCH_WAITING,
    PAUSED,
    RECIPIENT_CLAIMABLE,
    Batch,
    Company,
    Job,
    Priority,
    sql_in,
)

log = logging.getLogger(__name__)


def plan_job(job_id: int, send_first: Callable[[int], object] | None = None) -> int:
    """Split a job into batches and queue them; returns how many were queued.

    ``send_first(batch_id)`` (the plan task's: ``core.delivery.ready.send_first``): a small transactional
    job sent here (one batch: most of them) has its batch sent by the planning worker at once. The ready
    set serves transactional batches first anyway; this spares it the wait for a wake-up while plans
    keep the workers busy, and the ready set's round trips."""
    job = db.session.get(Job, job_id)
    if job is None or job.is_final or job.status == PAUSED:
        return 0
    if job.cancel_requested_at is not None:
        queue.enqueue_finish(job_id)
        return 0
    if certificate_issue.awaiting_issue(job):  # certificate jobs: PDFs first
        return 0
    batch_ids = create_batches(job_id, settings.current().batch_size)
    if not batch_ids:
        finish_job(job_id)
        return 0
    if routing.way_of(job.source, db.session.get_one(Company, job.company_id).settings) == routing.SUBMIT:
        queue.enqueue_submit(batch_ids)
        log.info("Job %s: planned %s batches", job_id, len(batch_ids))
        return len(batch_ids)
    small = len(batch_ids) == 1 and job.priority != Priority.BULK
    first = batch_ids[0] if send_first is not None and small else None
    queue.enqueue_batches([(bid, 0) for bid in batch_ids if bid != first])
    log.info("Job %s: planned %s batches", job_id, len(batch_ids))
    if first is not None and send_first is not None:
        send_first(first)
    return len(batch_ids)


def create_batches(job_id: int, batch_size: int) -> list[int]:
    """Split the job's pending recipients into batches (keyset ranges of ids).

    Idempotent: nothing is created while the job has an unfinished batch.
    """
    job = db.session.get_one(Job, job_id)
    open_batches = db.session.execute(text(
        f"SELECT id FROM batches WHERE job_id = :j AND status NOT IN {sql_in(BATCH_FINAL)} ORDER BY id"),
        {"j": job_id}).scalars().all()
    if open_batches:
        return []
    ids = db.session.execute(text(
        f"SELECT id FROM recipients WHERE job_id = :j AND status IN {sql_in(RECIPIENT_CLAIMABLE)} ORDER BY id"),
        {"j": job_id}).scalars().all()
    number = db.session.execute(text("SELECT coalesce(max(batch_number), 0) FROM batches WHERE job_id = :j"),
                                {"j": job_id}).scalar_one()
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




def requeue_open_batches(job_id: int) -> None:
    """Queue every waiting batch of a job again, each its way (after a resume); planning
    too, for a job paused before it was planned. The claims decide who sends."""
    rows = db.session.execute(text(
        f"SELECT b.id, b.attempts, {routing.WAY_SQL} AS way {routing.BATCH_WAY_FROM} "
        f"WHERE b.job_id = :j AND b.status IN {sql_in(BATCH_WAITING)}"), {"j": job_id}).all()
    queue.enqueue_batches([(r.id, r.attempts) for r in rows if r.way == routing.SEND])
    queue.enqueue_submit([r.id for r in rows if r.way == routing.SUBMIT])
    if not rows:
        queue.enqueue_plan(job_id)


def run_now(batch: Batch, source: str) -> None:
    """Have a waiting batch of a job of ``source`` go now, its way ("retry now")."""
    delivery = db.session.get_one(Company, batch.company_id).settings
    queue.enqueue_batch_now(batch.id, routing.way_of(source, delivery) == routing.SUBMIT)
