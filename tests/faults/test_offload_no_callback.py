"""Offload mode, and the cloud worker never calls back (no Lambda runs): the
sweep's reconciliation flags each overdue batch on its job and settles it by
the company's uncertain policy (resend: submitted again, up to
OFFLOAD_MAX_ATTEMPTS; fail: failed ``no_callback``), so every job ends final."""
from __future__ import annotations

import time
import uuid
from collections import Counter

import boto3
import pytest
from sqlalchemy import text

from core.db import db
from tests.support.faults import submit, wait_final

REGION = "us-east-1"
RECIPIENTS = 400   # two batches per job; SQS under moto is kept to hundreds of messages
TIMEOUT_S = 5      # OFFLOAD_CALLBACK_TIMEOUT_S (the settings' floor)
MAX_ATTEMPTS = 2


def offload_settings(moto_url: str, queue_url: str, **extra) -> dict:
    return {"provider": "aws", "mode": "offload", "sender": "noreply@acme.test", "aws_region": REGION,
            "aws_endpoint_url": moto_url, "aws_access_key": "testing", "aws_secret_key": "testing",
            "sqs_queue_url": queue_url, **extra}


def errors_of(job_id: int) -> Counter:
    rows = db.session.execute(text("SELECT status, error FROM recipients WHERE job_id = :j"), {"j": job_id}).all()
    db.session.commit()
    return Counter((r.status, r.error) for r in rows)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_callbacks_that_never_come_are_reconciled(app, client, make_company, moto_server, fleet, fault_report):
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=moto_server.url, aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    queues = {policy: sqs.create_queue(QueueName=f"offload-{policy}-{uuid.uuid4().hex[:8]}")["QueueUrl"]
              for policy in ("resend", "fail")}
    resend = make_company(**offload_settings(moto_server.url, queues["resend"]))
    fail = make_company(**offload_settings(moto_server.url, queues["fail"], uncertain_policy="fail"))
    workers = fleet(2, OFFLOAD_CALLBACK_TIMEOUT_S=TIMEOUT_S, OFFLOAD_MAX_ATTEMPTS=MAX_ATTEMPTS)
    started = time.monotonic()
    resend_job = submit(client, resend, RECIPIENTS, prefix="r")
    fail_job = submit(client, fail, RECIPIENTS, prefix="f")
    done_resend = wait_final(resend_job, 90, workers)
    done_fail = wait_final(fail_job, 90, workers)
    wall = time.monotonic() - started

    def queued(url: str) -> int:
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
        return int(attrs["Attributes"]["ApproximateNumberOfMessages"])

    submissions = {policy: queued(url) for policy, url in queues.items()}
    fault_report("offload_no_callback", recipients=2 * RECIPIENTS, faults=submissions["resend"] + submissions["fail"],
                 lost=0, duplicated=0, wall=wall, resubmitted=submissions["resend"] - 2,
                 uncertain=done_resend.emails_uncertain)
    # resend: flagged (uncertain), submitted again, then given up after MAX_ATTEMPTS
    assert submissions["resend"] == 2 * MAX_ATTEMPTS
    assert done_resend.emails_uncertain == RECIPIENTS
    assert "no callback within" in done_resend.error_log and "resubmitting" in done_resend.error_log
    assert errors_of(resend_job) == {("failed", "no_callback"): RECIPIENTS}
    assert done_resend.status == "failed" and done_resend.emails_failed == RECIPIENTS
    # fail: flagged and failed at the first deadline, never submitted again
    assert submissions["fail"] == 2
    assert "no callback within" in done_fail.error_log
    assert errors_of(fail_job) == {("failed", "no_callback"): RECIPIENTS}
    assert done_fail.status == "failed" and done_fail.emails_failed == RECIPIENTS
