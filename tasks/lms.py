"""RQ entry points of the LMS connector (``core.lms``): every
``OFFLOAD_LMS_POLL_S`` seconds the worker's scheduler thread queues
``poll_all`` (one per time slot, deduplicated by its RQ id across workers),
which queues ``poll_company`` for each company with the email queue or
completions switched on. ``mark_rows`` writes ``sent`` on the IOMAD rows of
finished recipients (queued after each batch of an LMS job). Arguments are
company ids only.
"""
from __future__ import annotations

import logging

from sqlalchemy import or_, select

from core.db import db
from core.lms import marking
from core.lms.connection import config_for
from core.lms.poller import poll_once
from core.models import CampaignSettings, Company
from core.queue import enqueue_lms_polls

log = logging.getLogger(__name__)


def poll_company(company_id: int) -> dict:
    """RQ job: one poll of one company (reading on from where its last poll stopped)."""
    found = poll_once(company_id, full=False)
    if found.get("taken") or found.get("jobs"):
        log.info("Company %s: LMS poll took %s rows into %s jobs", company_id, found.get("taken"), found.get("jobs"))
    if found.get("backlog") == "yes":  # stopped at OFFLOAD_LMS_MAX_ROWS: read on now (the lock is free again)
        enqueue_lms_polls([company_id])
    return found


def poll_all() -> int:
    """RQ job: queue a poll of every company that has the connector switched on."""
    ids = db.session.execute(select(CampaignSettings.company_id).where(or_(
        CampaignSettings.iomad_email_queue.is_(True), CampaignSettings.lms_completions.is_(True)))).scalars().all()
    enqueue_lms_polls(list(ids))
    return len(ids)


def mark_rows(company_id: int) -> int:
    """RQ job: write ``sent`` on the company's IOMAD rows whose recipients are final."""
    company = db.session.get(Company, company_id)
    if company is None:
        return 0
    cfg = config_for(company)
    if not cfg.url:
        return 0
    return marking.mark_finished(company_id, cfg)
