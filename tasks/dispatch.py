"""Putting work on the RQ queues. Every enqueue names ids only.

Send jobs have predictable RQ ids (``send-<batch>-<attempt>``, ``plan-<job>``)
so the sweep can tell whether the queue still holds the work the database
says is waiting, and rebuild it after Redis lost its data.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from redis import RedisError
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob

from dashboard.models import Job, utcnow
from dashboard.queue import DEFAULT, HIGH, connection, get_queue

log = logging.getLogger(__name__)
#: unexpected exceptions in a job (database outage, bug) are retried by RQ
JOB_RETRY = Retry(max=3, interval=[10, 30, 60])
JOB_KW = {"failure_ttl": 7 * 24 * 3600, "result_ttl": 300}
LIVE = ("queued", "scheduled", "started", "deferred")


def _safe(action: str, fn, *args, **kwargs):
    """Enqueue, logging (not raising) when Redis is down: the sweep rebuilds
    the queue from the database, which is the truth."""
    try:
        return fn(*args, **kwargs)
    except (RedisError, OSError) as exc:
        log.warning("could not enqueue %s: %s; the sweep will pick it up", action, type(exc).__name__)
        return None


def is_live(rq_id: str) -> bool:
    """True when RQ holds ``rq_id`` queued, scheduled or running."""
    try:
        status = RQJob.fetch(rq_id, connection=connection()).get_status(refresh=False)
    except NoSuchJobError:
        return False
    return str(getattr(status, "value", status)) in LIVE


def send_id(batch_id: int, attempt: int) -> str:
    return f"send-{batch_id}-{attempt}"


def enqueue_job(job: Job) -> None:
    """Queue a freshly created job's planning, now or at ``send_at``."""
    if job.send_at and job.send_at > utcnow():
        _safe(f"job {job.id}", get_queue(DEFAULT).enqueue_in, job.send_at - utcnow(),
              "tasks.sending.plan_job", job.id, job_id=f"plan-{job.id}", retry=JOB_RETRY, **JOB_KW)
    else:
        enqueue_plan(job.id)


def enqueue_plan(job_id: int) -> None:
    _safe(f"plan {job_id}", get_queue(DEFAULT).enqueue, "tasks.sending.plan_job", job_id,
          job_id=f"plan-{job_id}", retry=JOB_RETRY, **JOB_KW)


def enqueue_batches(batches: list[tuple[int, int]], delay: float = 0) -> None:
    """Queue ``send_batch`` for each ``(batch_id, attempts)``, in one Redis pipeline."""
    if not batches:
        return
    q = get_queue(DEFAULT)
    if delay > 0:
        for bid, attempt in batches:
            _safe(f"batch {bid}", q.enqueue_in, timedelta(seconds=delay), "tasks.sending.send_batch", bid,
                  job_id=send_id(bid, attempt), retry=JOB_RETRY, **JOB_KW)
        return
    datas = [Queue.prepare_data("tasks.sending.send_batch", args=(bid,), job_id=send_id(bid, attempt),
                                retry=JOB_RETRY, **JOB_KW) for bid, attempt in batches]
    _safe(f"{len(batches)} batches", q.enqueue_many, datas)


def enqueue_finish(job_id: int) -> None:
    _safe(f"finish {job_id}", get_queue(HIGH).enqueue, "tasks.sending.finish_job", job_id, **JOB_KW)


def enqueue_submit(batch_ids: list[int], delay: float = 0) -> None:
    """Queue offload submissions, grouped 10 batches to a job (SQS batch size)."""
    q = get_queue(DEFAULT)
    for start in range(0, len(batch_ids), 10):
        group = batch_ids[start:start + 10]
        if delay > 0:
            _safe("submit", q.enqueue_in, timedelta(seconds=delay), "tasks.offload.submit_batches", group,
                  retry=JOB_RETRY, **JOB_KW)
        else:
            _safe("submit", q.enqueue, "tasks.offload.submit_batches", group, retry=JOB_RETRY, **JOB_KW)


def requeue_open_batches(job_id: int) -> None:
    """Queue every waiting batch of a job again (after a resume); planning too,
    for a job paused before it was planned. The claims decide who sends."""
    from sqlalchemy import text

    from dashboard.extensions import db

    rows = db.session.execute(text(
        "SELECT b.id, b.attempts, coalesce(ds.mode, 'direct') AS mode FROM batches b "
        "LEFT JOIN delivery_settings ds ON ds.company_id = b.company_id "
        "WHERE b.job_id = :j AND b.status IN ('pending', 'queued', 'retry')"), {"j": job_id}).all()
    offload = [r.id for r in rows if r.mode == "offload"]
    enqueue_batches([(r.id, r.attempts) for r in rows if r.mode != "offload"])
    enqueue_submit(offload)
    if not rows:
        enqueue_plan(job_id)
