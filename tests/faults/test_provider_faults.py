"""The provider misbehaves: it throttles 30% of calls, or it hangs (accepts
and never answers). Jobs still complete, in bounded time, and no recipient
ends failed because of it."""
from __future__ import annotations

import time
from collections import Counter

import pytest
from sqlalchemy import select

from core.db import db
from core.delivery import limits
from core.models import Batch
from core.queue import connection
from tests.support.app import run_worker_burst
from tests.support.faults import (
    CHUNK,
    delivered,
    load_job,
    lost_and_duplicated,
    people,
    recipient_counts,
    submit,
    wait_final,
    wait_progress,
)
from tests.support.faulty_proxy import FaultyProxy
from tests.support.jobs import aws_settings

THROTTLED_RECIPIENTS = 3_000


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_throttling_30_percent_of_calls(app, client, make_company, ses, fleet, fault_report):
    with FaultyProxy(ses.url, throttle_rate=0.3) as proxy:
        company = make_company(**aws_settings(proxy.url))
        workers = fleet(2)
        started = time.monotonic()
        job_id = submit(client, company, THROTTLED_RECIPIENTS)
        job = wait_final(job_id, 150, workers)
        wall = time.monotonic() - started
    got = delivered(ses.store())
    lost, duplicated = lost_and_duplicated({p["email"] for p in people(THROTTLED_RECIPIENTS)}, got)
    fault_report("provider_throttle_30pct", recipients=THROTTLED_RECIPIENTS, faults=proxy.throttled, lost=lost,
                 duplicated=duplicated, wall=wall, calls=proxy.calls)
    assert proxy.throttled > 0
    assert recipient_counts(job_id) == {"sent": THROTTLED_RECIPIENTS}
    assert job.status == "completed" and job.emails_failed == 0
    assert lost == 0 and duplicated == 0


HUNG_RECIPIENTS = 3_000
#: a hung call times out after HANG_TIMEOUT_S, well inside the lease, as in production (10 s against 120 s)
HANG_TIMEOUT_S = 3
HANG_LEASE_S = 8


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_hung_provider_times_out_and_falls_back_to_smtp(app, client, make_company, ses, smtp_sink, fleet,
                                                        fault_report):
    """The chosen answer to a hang: the read timeout makes the chunk uncertain
    (the call may have been acted on) and the provider unavailable; the batch
    goes on through OFFLOAD_FALLBACK_SMTP, and the circuit breaker sends the
    next batches there directly."""
    with FaultyProxy(ses.url) as proxy:
        company = make_company(**aws_settings(proxy.url), fallback_relay="1")
        workers = fleet(2, OFFLOAD_LEASE_S=HANG_LEASE_S, OFFLOAD_PROVIDER_TIMEOUT_S=HANG_TIMEOUT_S,
                        OFFLOAD_FALLBACK_SMTP=f"smtp://127.0.0.1:{smtp_sink.port}?tls=none")
        started = time.monotonic()
        job_id = submit(client, company, HUNG_RECIPIENTS)
        wait_progress(job_id, 0.2, HUNG_RECIPIENTS)
        proxy.hang = True
        job = wait_final(job_id, 150, workers)
        wall = time.monotonic() - started
        hung = len(proxy._hung)
    got = delivered(ses.store()) + Counter(smtp_sink.recipients())
    lost, duplicated = lost_and_duplicated({p["email"] for p in people(HUNG_RECIPIENTS)}, got)
    fault_report("provider_hang_fallback_smtp", recipients=HUNG_RECIPIENTS, faults=hung, lost=lost,
                 duplicated=duplicated, wall=wall, uncertain=job.emails_uncertain,
                 via_smtp=len(smtp_sink.recipients()))
    assert hung > 0 and smtp_sink.recipients()
    assert recipient_counts(job_id) == {"sent": HUNG_RECIPIENTS}
    assert job.status == "completed" and job.emails_failed == 0
    assert lost == 0 and duplicated <= job.emails_uncertain


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_hung_provider_without_fallback_resumes_when_the_hang_ends(app, client, make_company, ses, fleet,
                                                                   fault_report):
    """No fallback: a timed-out chunk is uncertain, its batch backs off, and the
    job completes once the provider answers again; nothing fails."""
    recipients = 1_000
    with FaultyProxy(ses.url) as proxy:
        company = make_company(**aws_settings(proxy.url))
        workers = fleet(2, OFFLOAD_LEASE_S=HANG_LEASE_S, OFFLOAD_PROVIDER_TIMEOUT_S=HANG_TIMEOUT_S)
        started = time.monotonic()
        proxy.hang = True
        job_id = submit(client, company, recipients)
        deadline = time.monotonic() + 60
        while load_job(job_id).emails_uncertain < CHUNK:  # a send call timed out
            assert time.monotonic() < deadline, "no send call timed out"
            time.sleep(0.2)
        proxy.hang = False
        hung = len(proxy._hung)
        job = wait_final(job_id, 120, workers)
        wall = time.monotonic() - started
    got = delivered(ses.store())
    lost, duplicated = lost_and_duplicated({p["email"] for p in people(recipients)}, got)
    fault_report("provider_hang_then_recovers", recipients=recipients, faults=hung, lost=lost,
                 duplicated=duplicated, wall=wall, uncertain=job.emails_uncertain)
    assert recipient_counts(job_id) == {"sent": recipients}
    assert job.status == "completed" and job.emails_failed == 0
    assert lost == 0 and duplicated <= job.emails_uncertain


@pytest.mark.timeout(60)
def test_open_circuit_without_fallback_backs_off_instead_of_pausing(app, client, make_company, ses):
    """Three connection failures open the provider's circuit; with no fallback
    the batch waits for it to close (retry), and the job is not paused."""
    company = make_company(**aws_settings(ses.url))
    for _ in range(limits.BREAKER_THRESHOLD):
        limits.breaker_failure(connection(), company.id, "ses")
    job_id = submit(client, company, 10)
    run_worker_burst(app)
    job = load_job(job_id)
    [batch] = db.session.execute(select(Batch).where(Batch.job_id == job_id)).scalars()
    assert job.status == "processing" and job.paused_reason is None
    assert batch.status == "retry" and "circuit open" in batch.error and batch.next_attempt_at is not None
    assert recipient_counts(job_id) == {"pending": 10} and ses.store() == []
