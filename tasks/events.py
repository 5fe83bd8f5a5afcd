"""RQ jobs that turn due LMS event windows into jobs (``core.events``): company id and job type only,
the events stay encrypted in the database until they are recipients."""
from __future__ import annotations

import logging

from core import events, queue
from core.models import utcnow
from core.queue import connection, enqueue_job

log = logging.getLogger(__name__)


def close_window(company_id: int, job_type: str, window_id: str | None = None) -> dict:
    """RQ job: make the jobs of the company's window of ``job_type`` if it is due, else have the closer of
    every window (``tasks.windows``) come when it is (a closer of one window is the sweep's, or one
    queued by an earlier version). Safe to run twice: the events' conditional delete decides.
    (``window_id``: a closer queued by the version that kept windows in Redis.)"""
    closed = events.close_window(company_id, job_type)
    if closed.due is not None:  # the closer of every window (tasks.windows) closes it when due
        queue.schedule_windows_close(max(0.05, (closed.due - utcnow()).total_seconds()))
    elif closed.more:  # more events than one close takes: the rest at once
        queue.schedule_windows_close(0, again=True)
    for job in closed.jobs:
        enqueue_job(job)
    return {"events": closed.events, "jobs": [job.id for job in closed.jobs]}


def recover() -> dict:
    """For the recovery sweep: close the windows whose closer was lost (Redis lost it, or the web process
    died between storing and scheduling), after moving in any events an earlier version left in Redis."""
    moved = events.import_legacy(connection())
    closed = 0
    for company_id, job_type in events.stale_windows(events.stale_before()):
        log.warning("Company %s: event window (%s) had no closer; closing it", company_id, job_type)
        closed += len(close_window(company_id, job_type)["jobs"])
    return {"events_windows_recovered": closed, "events_moved_from_redis": moved}
