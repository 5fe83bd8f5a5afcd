"""SIGKILL workers in the middle of a big job: nothing is lost, and what is
sent twice is bounded by what was in flight and reported as uncertain."""
from __future__ import annotations

import random
import time

import pytest
from sqlalchemy import text

from core.db import db
from tests.support.faults import (
    CHUNK,
    delivered,
    lost_and_duplicated,
    people,
    recipient_counts,
    submit,
    wait_final,
    wait_progress,
)
from tests.support.jobs import aws_settings

RECIPIENTS = 20_000
KILLS = 10


def busy_worker(fleet, timeout: float = 5.0) -> int:
    """The pid of a live worker that holds a batch right now (any live one after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        live = set(fleet.pids())
        holders = db.session.execute(text("SELECT leased_by FROM batches WHERE status = 'sending'")).scalars().all()
        db.session.commit()
        busy = [int(h.rsplit(":", 1)[1]) for h in holders if h and int(h.rsplit(":", 1)[1]) in live]
        if busy:
            return random.choice(busy)
        if time.monotonic() > deadline and live:
            return random.choice(sorted(live))
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_workers_mid_job_loses_nothing(app, client, make_company, ses, fleet, fault_report):
    company = make_company(**aws_settings(ses.url))
    workers = fleet(2)
    started = time.monotonic()
    job_id = submit(client, company, RECIPIENTS)
    points = sorted(random.uniform(0.02, 0.85) for _ in range(KILLS))
    for point in points:
        wait_progress(job_id, point, RECIPIENTS, timeout=90)
        workers.kill(busy_worker(workers))
    job = wait_final(job_id, 180, workers)
    wall = time.monotonic() - started

    got = delivered(ses.store())
    lost, duplicated = lost_and_duplicated({p["email"] for p in people(RECIPIENTS)}, got)
    fault_report("worker_sigkill", recipients=RECIPIENTS, faults=workers.kills, lost=lost,
                 duplicated=duplicated, wall=wall, uncertain=job.emails_uncertain, worker_starts=workers.starts)
    assert workers.kills == KILLS
    assert recipient_counts(job_id) == {"sent": RECIPIENTS}
    assert job.status == "completed" and job.emails_sent == RECIPIENTS and job.emails_failed == 0
    assert lost == 0
    assert duplicated <= job.emails_uncertain <= KILLS * CHUNK
