"""RQ jobs that close LMS event windows and turn their events into jobs.

The buffer itself is ``core.events``; these functions take ids only
(company id, job type, window id) — the events stay encrypted in Redis.
"""
from __future__ import annotations

import logging
import time

from core import events, queue, settings
from core.queue import connection, enqueue_job

log = logging.getLogger(__name__)
RECOVER_GRACE_S = 30  # a window this much past its latest possible end has lost its closer


def max_hold_s(s: settings.Settings) -> float:
    """Longest a window stays open however busy it is (default: 6 windows)."""
    return float(s.bulk_max_hold_s or 6 * s.bulk_window_s)


def close_window(company_id: int, job_type: str, window_id: str) -> dict:
    """RQ job: close the window when due (else come back at its new end), then make its jobs.

    Safe to run more than once for a window: only one run takes it, and the
    jobs are made with idempotency keys.
    """
    cfg = settings.current()
    conn = connection()
    state = events.window_state(conn, company_id, job_type)
    if state.window_id == window_id:
        wait = state.due_at(cfg.bulk_window_s, max_hold_s(cfg)) - time.time()
        if wait > 0.05:
            queue.schedule_close(company_id, job_type, window_id, wait)
            return {"window": window_id, "rescheduled_in_s": round(wait, 3)}
        events.take_window(conn, company_id, job_type, window_id)
    return flush_window(company_id, job_type, window_id)


def flush_window(company_id: int, job_type: str, window_id: str) -> dict:
    """Make the jobs of a taken window, delete its events, queue the new jobs."""
    cfg = settings.current()
    conn = connection()
    taken = events.taken_events(conn, window_id)
    made = events.make_jobs(company_id, job_type, window_id, taken, threshold=cfg.bulk_threshold,
                            max_recipients=cfg.max_recipients)
    events.forget_taken(conn, company_id, job_type, window_id)
    for job, created in made:
        if created:
            enqueue_job(job)
    if taken:
        log.info("Window %s: %s %s events of company %s became %s job(s)", window_id, len(taken), job_type,
                 company_id, len(made))
    return {"window": window_id, "events": len(taken), "jobs": [job.id for job, _ in made]}


def recover() -> dict:
    """For the recovery sweep: close windows whose closer was lost (a web process
    died between accepting the first event and scheduling), and finish taken
    windows whose jobs were never made (a worker died mid-way)."""
    cfg = settings.current()
    conn = connection()
    now_ms = int(time.time() * 1000)
    overdue = events.open_windows(conn, now_ms - int((max_hold_s(cfg) + RECOVER_GRACE_S) * 1000))
    queued = 0
    for company_id, job_type, _opened in overdue:
        window_id = events.window_state(conn, company_id, job_type).window_id
        if window_id:
            queued += queue.enqueue_close_recovery(company_id, job_type, window_id)
    for company_id, job_type, window_id in events.closed_windows(conn, now_ms - RECOVER_GRACE_S * 1000):
        queued += queue.enqueue_close_recovery(company_id, job_type, window_id)
    return {"events_windows_recovered": queued}
