"""Helpers for the events and campaigns tests: templates, an SES-backed
company, and running the real RQ worker (with its scheduler) until the
event windows are closed and their jobs sent."""
from __future__ import annotations

import time

from rq.registry import ScheduledJobRegistry
from sqlalchemy import func, select

from core.db import db
from core.models import Template, WaitingEvent
from core.queue import QUEUE_NAMES, connection
from tasks.rq_queue import get_queue
from tasks.worker import AppWorker

WELCOME = {"subject": "Welcome {{ firstname }}",
           "body_text": "Hi {{ firstname }}, your password is {{ password }}",
           "body_html": "<p>Hi {{ firstname }}</p>"}


def make_template(company_id: int, job_type: str, name: str | None = None, **fields):
    """Store a template of ``job_type`` for the company."""
    tpl = Template(company_id=company_id, name=name or f"{job_type} template", job_type=job_type,
                   **{**WELCOME, **fields})
    db.session.add(tpl)
    db.session.commit()
    return tpl


def ses_settings(ses_local) -> dict:
    """Company settings that send through the SES emulator."""
    return {"provider": "aws", "aws_endpoint_url": ses_local.url, "aws_region": "us-east-1",
            "aws_access_key": "AKIDEVENTS", "aws_secret_key": "dummy-secret", "sender": "noreply@acme.test"}


def worker_pass(app) -> None:
    """One burst of the real worker, its scheduler first moving every due job."""
    AppWorker.app = app
    worker = AppWorker([get_queue(n) for n in QUEUE_NAMES], connection=connection())
    worker.work(burst=True, with_scheduler=True, logging_level="WARNING")


def busy(app) -> bool:
    """True while an event waits in a window or RQ holds queued or scheduled work."""
    waiting = db.session.execute(select(func.count()).select_from(WaitingEvent)).scalar()
    db.session.rollback()
    if waiting:
        return True
    for name in QUEUE_NAMES:
        queue = get_queue(name)
        if len(queue) or ScheduledJobRegistry(queue=queue).count:
            return True
    return False


def drain(app, timeout: float = 90) -> None:
    """Run the worker until every window is closed and every job it made is done."""
    deadline = time.monotonic() + timeout
    while busy(app):
        assert time.monotonic() < deadline, "event windows or jobs still pending"
        worker_pass(app)
        time.sleep(0.1)


def by_recipient(store: list[dict]) -> dict[str, int]:
    """How many emails the SES emulator received per address."""
    counts: dict[str, int] = {}
    for email in store:
        for to in email["destination"]["to"]:
            counts[to] = counts.get(to, 0) + 1
    return counts
