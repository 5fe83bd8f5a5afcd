"""The RQ entry points of direct sending: ids in, ``core.delivery`` does the work."""
from __future__ import annotations

from core.delivery import plan, settle


def plan_job(job_id: int) -> int:
    """RQ job: split a job into batches and queue them (``core.delivery.plan``)."""
    return plan.plan_job(job_id)


def finish_job(job_id: int) -> str | None:
    """RQ job: give the job its final status once nothing is left (``core.delivery.settle``)."""
    return settle.finish_job(job_id)
