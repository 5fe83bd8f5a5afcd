"""One poll of a company's LMS: IOMAD's email queue, then course completions.

Used by the RQ job ``tasks.lms.poll_company`` and ``flask --app wsgi lms poll ID``.
A Redis lock keeps two pollers off one company at once; the unique
``lms_email_rows`` / ``lms_completions`` rows keep a row from being taken
twice even without it.
"""
from __future__ import annotations

import logging

from redis.exceptions import LockError

from core import settings
from core.db import db
from core.lms import completions, email_queue
from core.lms.connection import LmsError, config_for
from core.models import Company
from core.queue import connection

log = logging.getLogger(__name__)


def lock_for(company_id: int, poll_s: float):
    """The company's poll lock. It expires after four poll intervals (at least 10 s) so a
    killed poller does not stall the company for long; a longer poll overlapping the next
    one is safe (the unique rows stop the second), only wasted work."""
    return connection().lock(f"offload:lms-poll:{company_id}", timeout=max(10.0, 4 * poll_s), blocking_timeout=0)


def poll_once(company_id: int, *, full: bool = True) -> dict:
    """One poll of the company's email queue and completions; ``key: value`` facts.

    ``full``: look at IOMAD's whole queue (the CLI); a worker's poll reads on
    from where the last one stopped (``core.lms.email_queue``).

    Errors of one part (a refusal, an unreachable database) are reported in
    ``email_error`` / ``completions_error`` and do not stop the other part.
    """
    company = db.session.get(Company, company_id)
    if company is None:
        raise LmsError(f"no company with id {company_id}")
    cfg = config_for(company)
    s = settings.current()
    found: dict = {"taken": 0, "jobs": 0}
    lock = lock_for(company_id, s.lms_poll_s)
    if not lock.acquire():
        found["busy"] = "another poll of this company is running"
        return found
    try:
        if cfg.email_queue:
            try:
                res = email_queue.poll(company, force=s.lms_force, chunk=s.lms_chunk, max_rows=s.lms_max_rows,
                                       full=full)
                found.update(res.lines())
            except LmsError as exc:
                db.session.rollback()
                found["email_error"] = str(exc)
        else:
            found["email_queue"] = "off"
        if cfg.completions:
            try:
                done = completions.poll(company, chunk=s.lms_chunk, max_rows=s.lms_max_rows)
                found.update(done.lines())
                found["jobs"] += done.jobs
            except LmsError as exc:
                db.session.rollback()
                found["completions_error"] = str(exc)
        else:
            found["completions"] = "off"
    finally:
        try:
            lock.release()
        except LockError:
            pass
    for key in ("email_error", "completions_error"):
        if key in found:
            log.warning("Company %s: LMS poll: %s", company_id, found[key])
    return found
