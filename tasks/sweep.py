"""The recovery sweep: the database is the truth, the queue is rebuilt from it.

Run every few seconds (``tasks.worker`` schedules it through RQ). The batch
half is ``core.delivery.recovery``: batches whose holder's lease expired,
batches the ready set lost (Redis restart), a wake-up when runnable entries
have none queued, jobs whose planning was lost, offload batches whose
callback is overdue or whose submission was lost, jobs paused on a spent
quota. Besides, it closes LMS event windows and SMTP windows whose closer
was lost and purges expired recipient data (``core.retention``).
"""
from __future__ import annotations

import logging

from redis import RedisError

from core import retention, settings
from core.delivery import recovery
from core.queue import connection
from tasks import events, submissions

log = logging.getLogger(__name__)


def sweep() -> dict:
    """RQ job: one pass; returns what it did (counts only)."""
    report = recovery.recover()
    report["reconciled"] = recovery.reconcile()
    report["purged"] = _purge_if_due()
    report["event_windows"] = _recover_event_windows()
    report["resumed"] = recovery.resume_quota_paused()
    report["smtp_windows"] = submissions.recover()
    if any(report.values()):
        log.info("sweep: %s", report)
    return report


def _recover_event_windows() -> int:
    """Event windows whose closer was lost (tasks.events)."""
    try:
        return sum(events.recover().values())
    except RedisError:  # the windows wait for Redis: the events are in the database
        return 0


def _purge_if_due() -> int:
    """Purge expired recipient data at most every ten minutes (across workers)."""
    try:
        if not connection().set("offload:purge-lock", 1, nx=True, ex=600):
            return 0
    except RedisError:
        return 0
    return retention.purge_recipient_data(settings.current().data_retention_days)
