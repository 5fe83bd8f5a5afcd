"""The RQ entry point that turns a due SMTP window into jobs (``core.submissions``)."""
from __future__ import annotations

import logging

from core import queue, submissions
from core.models import utcnow

log = logging.getLogger(__name__)


def close_window(company_id: int, job_type: str) -> int:
    """RQ job: close the company's SMTP window of ``job_type`` if it is due (else the closer of every
    window, ``tasks.windows``, comes when it is; this one is the sweep's, or an earlier version's);
    returns how many jobs it made. Safe to run twice: the messages' conditional update decides."""
    queue.release_smtp_closer(company_id, job_type)
    closed = submissions.close_window(company_id, job_type)
    if closed.due is not None:  # the closer of every window (tasks.windows) closes it when due
        queue.schedule_windows_close(max(0.05, (closed.due - utcnow()).total_seconds()))
    elif closed.more:  # more messages than one close takes: the rest at once
        queue.schedule_windows_close(0, again=True)
    return len(closed.jobs)


def recover() -> int:
    """Close the windows whose closer was lost (Redis lost it, or the SMTP process died before
    scheduling it); the sweep runs this. Returns the jobs made."""
    made = 0
    for company_id, job_type in submissions.stale_windows():
        log.warning("Company %s: SMTP window (%s) had no closer; closing it", company_id, job_type)
        made += close_window(company_id, job_type)
    return made



