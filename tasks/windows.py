"""The RQ entry point that closes every company's due windows, LMS events and SMTP, in one pass
(``core.events.close_due_windows``, ``core.submissions.close_due_windows``).

One task a tick at most (``core.queue.schedule_windows_close``) instead of one per company, kind and
window: with a hundred companies sending, the closers no longer take the workers. A pass that left
windows open schedules the next at the first one's due time; a pass that stopped at its budget, at
once. The recovery sweep stays the backstop for a closer Redis lost.
"""
from __future__ import annotations

import logging

from core import events, queue, submissions
from core.models import utcnow
from core.queue import enqueue_job

log = logging.getLogger(__name__)


def close_windows() -> dict:
    """RQ job: one pass over every due window; safe to run twice (the conditional delete and update decide)."""
    now = utcnow()
    lms = events.close_due_windows(now=now)
    for job in lms.jobs:
        enqueue_job(job)
    smtp = submissions.close_due_windows(now=now)  # queues its jobs itself
    if lms.more or smtp.more:
        queue.schedule_windows_close(0, again=True)
    else:
        due = [d for d in (lms.next_due, smtp.next_due) if d is not None]
        if due:
            queue.schedule_windows_close(max(0.05, (min(due) - utcnow()).total_seconds()))
    return {"event_windows": lms.windows, "events": lms.taken, "smtp_windows": smtp.windows,
            "jobs": len(lms.jobs) + len(smtp.jobs)}
