"""PostgreSQL stops and starts in the middle of a job: the API answers 503
JSON while it is down and recovers by itself; the workers back off and
finish the job; no recipient fails because of the outage."""
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
DOWN_S = 4


def wait_api(client, path: str, headers: dict, status: int, timeout: float = 30) -> tuple:
    """Poll ``path`` until it answers ``status``; returns (response, seconds waited)."""
    started = time.monotonic()
    while True:
        resp = client.get(path, headers=headers)
        if resp.status_code == status or time.monotonic() - started > timeout:
            return resp, time.monotonic() - started
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_postgres_restart_mid_job(pg, app, client, make_company, ses, fleet, fault_report):
    company = make_company(**aws_settings(ses.url))
    workers = fleet(2)
    started = time.monotonic()
    job_id = submit(client, company, RECIPIENTS)
    wait_progress(job_id, 0.3, RECIPIENTS)
    path = f"/api/v1/jobs/{job_id}"

    pg.stop("fast")
    try:
        down = client.get(path, headers=company.auth)
        assert down.status_code == 503, down.get_data(as_text=True)
        assert down.is_json and down.json["error"] == "database_unavailable"
        time.sleep(DOWN_S)
    finally:
        pg.start()
    up, recovered_in = wait_api(client, path, company.auth, 200)
    assert up.status_code == 200 and up.json["id"] == job_id

    job = wait_final(job_id, 120, workers)
    wall = time.monotonic() - started
    got = delivered(ses.store())
    lost, duplicated = lost_and_duplicated({p["email"] for p in people(RECIPIENTS)}, got)
    fault_report("postgres_restart", recipients=RECIPIENTS, faults=1, lost=lost, duplicated=duplicated, wall=wall,
                 uncertain=job.emails_uncertain, api_recovered_in=f"{recovered_in:.1f}s",
                 worker_deaths=len(workers.exits))
    assert recipient_counts(job_id) == {"sent": RECIPIENTS}
    assert job.status == "completed" and job.emails_failed == 0
    assert lost == 0
    assert duplicated <= job.emails_uncertain <= workers.size * CHUNK
    assert workers.exits == [], workers.log_tail()
