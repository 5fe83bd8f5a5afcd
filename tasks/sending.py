"""The RQ entry points of direct sending: ids in, ``core.delivery`` does the work."""
from __future__ import annotations

from core.delivery import plan, ready, settle


def plan_job(job_id: int) -> int:
    """RQ job: split a job into batches and queue them (``core.delivery.plan``); a transactional job's
    first batch is sent here at once (``core.delivery.ready.send_first``)."""
    return plan.plan_job(job_id, send_first=ready.send_first)


def finish_job(job_id: int) -> str | None:
    """RQ job: give the job its final status once nothing is left (``core.delivery.settle``)."""
    return settle.finish_job(job_id)
