"""Redis restarts with its data gone in the middle of a job: the database is
the truth, so the sweep rebuilds the queue and the job completes."""
from __future__ import annotations

import time

import pytest

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

RECIPIENTS = 5_000


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_redis_restart_with_data_loss_mid_job(app, client, make_company, ses, redis, fleet, fault_report):
    company = make_company(**aws_settings(ses.url))
    workers = fleet(2)
    started = time.monotonic()
    job_id = submit(client, company, RECIPIENTS)
    wait_progress(job_id, 0.3, RECIPIENTS)
    redis.restart_empty(down_s=2.0)
    job = wait_final(job_id, 120, workers)
    wall = time.monotonic() - started

    got = delivered(ses.store())
    lost, duplicated = lost_and_duplicated({p["email"] for p in people(RECIPIENTS)}, got)
    fault_report("redis_restart_data_loss", recipients=RECIPIENTS, faults=redis.restarts, lost=lost,
                 duplicated=duplicated, wall=wall, uncertain=job.emails_uncertain,
                 worker_deaths=len(workers.exits))
    assert recipient_counts(job_id) == {"sent": RECIPIENTS}
    assert job.status == "completed" and job.emails_failed == 0
    assert lost == 0
    assert duplicated <= job.emails_uncertain <= workers.size * CHUNK
    # the workers ride out the outage: none had to be restarted
    assert workers.exits == [], workers.log_tail()
