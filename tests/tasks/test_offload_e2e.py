"""Offload mode end to end, through real parts only.

AWS: the service submits batches to SQS (moto in server mode); the test
plays the Lambda event source mapping (ReceiveMessage → SQS event → the
handler of cloud_workers/aws/lambda_handler.py, in-process, as
tests/cloud_workers/test_lambda.py does); the handler sends through
aws-ses-v2-local and posts signed callbacks to the app served live by
werkzeug on a free port (OFFLOAD_PUBLIC_URL).

Cloudflare: miniflare does not serve the Queues REST API, so a small local
HTTP server plays it (``POST /accounts/{a}/queues/{q}/messages/batch`` with
the bearer token) and forwards each message body into miniflare's queue
through the harness endpoint; the Worker under miniflare sends through its
send_email binding and calls back to the live app.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from core import scheduler
from core.db import db
from core.delivery.recovery import reconcile, requeue_lost
from core.models import Company, Job, Recipient, utcnow
from core.queue import DEFAULT, SEND, connection
from providers.offload import delivery_id
from tasks.rq_queue import get_queue
from tasks.sweep import sweep
from tests.support.app import run_worker_burst
from tests.support.faulty_proxy import FaultyProxy
from tests.support.jobs import BODY, people, run_scheduled_now
from tests.support.offload import (
    CF_SECRET,
    CF_TOKEN,
    REGION,
    batches,
    job,
    recipient_statuses,
    ses_count,
    submit,
    wait_final,
)
from tests.support.servers import free_port

# --------------------------------------------------------------------------- fixtures



















# --------------------------------------------------------------------------- helpers













# --------------------------------------------------------------------------- AWS

def test_thousand_recipients_through_sqs_lambda_ses_and_callbacks(app, client, offload_company, aws_lambda,
                                                                  ses, live_url, caplog):
    recipients = people(1000)
    job_id = submit(client, offload_company, recipients)
    with caplog.at_level(logging.INFO):
        run_worker_burst(app)  # plan, then one submit job for the five batches
        submitted = batches(job_id)
        assert [b.status for b in submitted] == ["submitted"] * 5
        assert {b.route for b in submitted} == {"offload:sqs"}
        assert all(b.callback_deadline > b.submitted_at for b in submitted)
        assert job(job_id).status == "processing"
        assert ses.store() == []  # the service sent nothing itself

        assert aws_lambda.drain() == 5

    done = job(job_id)
    assert (done.status, done.emails_sent, done.emails_failed) == ("completed", 1000, 0)
    counts = ses_count(ses)
    assert len(counts) == 1000 and set(counts.values()) == {1}
    assert set(counts) == {r["email"] for r in recipients}
    mail = next(m for m in ses.store() if m["destination"]["to"] == ["user7@acme.test"])
    assert mail["subject"] == "Welcome Name7" and "your password is Pw-7-secret" in mail["body"]["text"]
    assert all(b.status == "done" and b.callback_received_at for b in batches(job_id))
    rows = db.session.execute(select(Recipient.route, Recipient.message_id).where(Recipient.job_id == job_id)).all()
    assert {r.route for r in rows} == {"offload:sqs"} and all(r.message_id for r in rows)
    # neither addresses nor passwords in the service's (or the Lambda's) logs
    assert "@acme.test" not in caplog.text and "Pw-" not in caplog.text


def test_a_rejected_recipient_fails_while_the_others_complete(app, client, offload_company, aws_lambda, ses,
                                                              live_url, monkeypatch):
    with FaultyProxy(ses.url, reject="blocked") as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SESV2", proxy.url)
        aws_lambda.module.ses_client.cache_clear()
        job_id = submit(client, offload_company, people(30) + people(1, prefix="blocked"))
        run_worker_burst(app)
        aws_lambda.drain()
    done = job(job_id)
    assert (done.status, done.emails_sent, done.emails_failed) == ("partial_failure", 30, 1)
    failed = db.session.execute(select(Recipient.email, Recipient.error).where(Recipient.status == "failed")).all()
    assert len(failed) == 1 and failed[0].email == "blocked0@acme.test"
    assert failed[0].error.startswith("MESSAGE_REJECTED")
    assert "blocked0@acme.test" not in ses_count(ses) and len(ses_count(ses)) == 30


@pytest.mark.parametrize("policy", ["fail", "resend"])
def test_a_lost_message_is_flagged_and_settled_by_reconcile(app, client, make_company, offload_company,
                                                            aws_lambda, ses, live_url, policy, set_settings):
    set_settings(batch_size=10, callback_timeout_s=0)
    offload_company.company.uncertain_policy = policy
    db.session.commit()
    job_id = submit(client, offload_company, people(20))
    run_worker_burst(app)
    first, second = sorted(aws_lambda.receive(), key=lambda m: json.loads(m["Body"])["batch_number"])
    aws_lambda.drop(second)
    assert aws_lambda.invoke([first]) == []
    assert job(job_id).status == "processing"
    assert [b.status for b in batches(job_id)] == ["done", "submitted"]

    assert reconcile() == 1
    flagged = job(job_id)
    assert "batch 2: no callback within 0 s" in flagged.error_log
    if policy == "fail":
        assert (flagged.status, flagged.emails_sent, flagged.emails_failed) == ("partial_failure", 10, 10)
        errors = db.session.execute(select(Recipient.error).where(Recipient.status == "failed")).scalars().all()
        assert errors == ["no_callback"] * 10
        assert batches(job_id)[1].status == "failed"
        assert aws_lambda.receive() == []
    else:
        assert "resubmitting (attempt 2 of" in flagged.error_log
        assert recipient_statuses(job_id) == Counter({"sent": 10, "uncertain": 10})
        run_worker_burst(app)  # the re-submission
        assert batches(job_id)[1].attempts == 2
        assert aws_lambda.drain() == 1
        done = job(job_id)
        assert (done.status, done.emails_sent, done.emails_uncertain) == ("completed", 20, 10)
        assert set(ses_count(ses).values()) == {1} and len(ses_count(ses)) == 20
    assert reconcile() == 0


def test_resend_gives_up_after_max_attempts(app, client, offload_company, aws_lambda, live_url, set_settings):
    set_settings(callback_timeout_s=0, max_attempts=2)
    job_id = submit(client, offload_company, people(3))
    for _ in range(2):
        run_worker_burst(app)
        [message] = aws_lambda.receive()
        aws_lambda.drop(message)
        assert sweep()["reconciled"] == 1  # the recovery sweep runs reconcile
    done = job(job_id)
    assert (done.status, done.emails_failed) == ("failed", 3)
    assert recipient_statuses(job_id) == Counter({"failed": 3})
    assert "3 recipients failed (no_callback)" in done.error_log


def test_an_unreachable_callback_url_is_resolved_by_reconcile(app, client, offload_company, aws_lambda, ses,
                                                              live_url, monkeypatch, set_settings):
    """The worker sends but cannot report: the batch is resubmitted (policy
    resend); the Lambda finds what it sent recorded in S3 and posts those
    results instead of sending again, so the job completes with everyone
    emailed once."""
    monkeypatch.setenv("CALLBACK_ATTEMPTS", "1")
    set_settings(callback_timeout_s=0, public_url=f"http://127.0.0.1:{free_port()}")
    job_id = submit(client, offload_company, people(5))
    run_worker_burst(app)
    messages = aws_lambda.receive()
    assert aws_lambda.invoke(messages) == [messages[0]["MessageId"]]  # the Lambda would retry it...
    aws_lambda.drop(messages[0])  # ...until its dead-letter queue takes it
    assert job(job_id).status == "processing"

    set_settings(public_url=live_url)
    assert reconcile() == 1
    run_worker_burst(app)
    aws_lambda.drain()
    done = job(job_id)
    assert (done.status, done.emails_sent, done.emails_uncertain) == ("completed", 5, 5)
    assert set(ses_count(ses).values()) == {1} and len(ses_count(ses)) == 5


def test_unreachable_queue_falls_back_to_smtp(app, client, make_company, smtp_sink, set_settings):
    set_settings(fallback_smtp=smtp_sink.config())
    dead = f"http://127.0.0.1:{free_port()}"
    company = make_company(provider="aws", mode="offload", sender="noreply@acme.test", aws_region=REGION,
                           aws_endpoint_url=dead, aws_access_key="testing", aws_secret_key="testing",
                           sqs_queue_url=f"{dead}/123456789012/offload", fallback_relay="1")
    job_id = submit(client, company, people(450))
    run_worker_burst(app)
    done = job(job_id)
    assert (done.status, done.emails_sent) == ("completed", 450)
    assert sorted(smtp_sink.recipients()) == sorted(p["email"] for p in people(450))
    assert {b.route for b in batches(job_id)} == {"fallback:smtp"}
    assert "using fallback:smtp" in done.error_log
    assert connection().get(f"offload:cb:{company.id}:sqs:fails") == b"1"


def test_unreachable_queue_and_fallback_go_back_to_the_queue_later(app, client, make_company, set_settings):
    dead = f"http://127.0.0.1:{free_port()}"
    set_settings(fallback_smtp={"smtp_host": "127.0.0.1", "smtp_port": free_port(), "smtp_tls": "none"})
    company = make_company(provider="aws", mode="offload", sender="noreply@acme.test", aws_region=REGION,
                           aws_endpoint_url=dead, aws_access_key="testing", aws_secret_key="testing",
                           sqs_queue_url=f"{dead}/123456789012/offload", fallback_relay="1")
    job_id = submit(client, company, people(5))
    run_worker_burst(app)  # plan, submit (queue unreachable), SMTP fallback (unreachable too)
    [batch] = batches(job_id)
    assert batch.status == "retry" and batch.next_attempt_at is not None
    assert recipient_statuses(job_id) == Counter({"pending": 5})
    # back in the ready set as a submission, due later, with a wake-up scheduled for then
    lane = connection().zrange(scheduler.lane_key("transactional", company.id), 0, -1, withscores=True)
    assert [(m, s > time.time() * 1000) for m, s in lane] == [(scheduler.member("s", batch.id).encode(), True)]
    [scheduled] = get_queue(SEND).scheduled_job_registry.get_job_ids()
    assert get_queue(SEND).fetch_job(scheduled).func_name == "tasks.scheduling.work_ready"


def test_unreachable_queue_without_fallback_retries(app, client, make_company):
    dead = f"http://127.0.0.1:{free_port()}"
    company = make_company(provider="aws", mode="offload", sender="noreply@acme.test", aws_region=REGION,
                           aws_endpoint_url=dead, aws_access_key="testing", aws_secret_key="testing",
                           sqs_queue_url=f"{dead}/123456789012/offload", fallback_relay="1")
    job_id = submit(client, company, people(5))
    run_worker_burst(app)
    [batch] = batches(job_id)
    assert (batch.status, batch.attempts) == ("retry", 1) and batch.next_attempt_at is not None
    assert "cannot reach the queue" in batch.error
    assert recipient_statuses(job_id) == Counter({"pending": 5})


def test_transient_queue_errors_retry_then_submit(app, client, make_company, moto_server, queue_url, aws_lambda,
                                                  live_url, monkeypatch):
    with FaultyProxy(moto_server.url, error_rate=1.0) as proxy:
        company = make_company(provider="aws", mode="offload", sender="noreply@acme.test", aws_region=REGION,
                               aws_endpoint_url=proxy.url, aws_access_key="testing", aws_secret_key="testing",
                               sqs_queue_url=queue_url)
        monkeypatch.setenv("CALLBACK_SECRET", company.secret)
        job_id = submit(client, company, people(5))
        run_worker_burst(app)
        assert batches(job_id)[0].status == "retry" and proxy.errors == 1
        proxy.error_rate = 0.0
        run_scheduled_now()
        run_worker_burst(app)
    assert batches(job_id)[0].status == "submitted" and batches(job_id)[0].attempts == 2
    aws_lambda.drain()
    assert job(job_id).status == "completed"


def test_a_queue_that_does_not_exist_fails_the_batch(app, client, make_company, moto_server):
    company = make_company(provider="aws", mode="offload", sender="noreply@acme.test", aws_region=REGION,
                           aws_endpoint_url=moto_server.url, aws_access_key="testing", aws_secret_key="testing",
                           sqs_queue_url=f"{moto_server.url}/123456789012/no-such-queue")
    job_id = submit(client, company, people(4))
    run_worker_burst(app)
    done = job(job_id)
    assert (done.status, done.emails_failed) == ("failed", 4)
    errors = set(db.session.execute(select(Recipient.error).where(Recipient.job_id == job_id)).scalars())
    assert len(errors) == 1 and "NonExistentQueue" in errors.pop()
    assert batches(job_id)[0].status == "failed"


def test_messages_follow_the_contract_and_rq_holds_only_ids(app, client, offload_company, aws_lambda, live_url,
                                                            set_settings):
    set_settings(batch_size=2)
    job_id = submit(client, offload_company, people(3))
    run_worker_burst(app, max_jobs=1)  # the plan only
    lane = connection().zrange(scheduler.lane_key("transactional", offload_company.id), 0, -1)
    assert lane == [scheduler.member("s", b.id).encode() for b in batches(job_id)]
    assert get_queue(DEFAULT).get_jobs() == []
    assert {(j.func_name, j.args) for j in get_queue(SEND).get_jobs()} == {("tasks.scheduling.work_ready", ())}
    run_worker_burst(app)
    bodies = sorted((json.loads(m["Body"]) for m in aws_lambda.receive()), key=lambda b: b["batch_number"])
    assert [b["batch_number"] for b in bodies] == [1, 2]
    first_ids = db.session.execute(select(Recipient.id).where(Recipient.job_id == job_id)
                                   .order_by(Recipient.id).limit(2)).scalars().all()
    assert bodies[0] == {
        "job_id": job_id, "batch_number": 1, "company_id": offload_company.id,
        "callback_url": f"{live_url}/callbacks/v1/batches?company={offload_company.id}",
        "sender": "noreply@acme.test",
        "template": {"subject": BODY["subject"], "text": BODY["body_text"], "html": BODY["body_html"]},
        "delivery_id": delivery_id(batches(job_id)[0].id, first_ids),
        "recipients": [{"email": f"user{i}@acme.test", "data": {"firstname": f"Name{i}", "password": f"Pw-{i}-secret"},
                        "rendered": {"subject": f"Welcome Name{i}",
                                     "text": f"Hi Name{i}, your password is Pw-{i}-secret",
                                     "html": f"<p>Hi Name{i}, your password is <b>Pw-{i}-secret</b></p>"}}
                       for i in range(2)],
    }
    dump = b"".join(v for key in connection().scan_iter() if connection().type(key) == b"hash"
                    for v in connection().hgetall(key).values())
    assert b"Pw-" not in dump and b"@acme.test" not in dump


def test_a_recipient_that_cannot_render_fails_alone(app, client, offload_company, aws_lambda, ses, live_url):
    """Rendering happens in the service now: a runtime template error fails that
    recipient (as in direct mode) and the others are offloaded."""
    recipients = people(2) + [{"email": "odd@acme.test", "data": {"firstname": "Odd", "password": "x", "n": 0}}]
    resp = client.post("/api/v1/jobs", json={**BODY, "body_text": "{{ firstname }} {{ 10 // (n | default(1)) }}",
                                             "recipients": recipients}, headers=offload_company.auth)
    assert resp.status_code == 202
    run_worker_burst(app)
    aws_lambda.drain()
    done = job(resp.json["id"])
    assert (done.status, done.emails_sent, done.emails_failed) == ("partial_failure", 2, 1)
    error = db.session.execute(select(Recipient.error).where(Recipient.email == "odd@acme.test")).scalar()
    assert error.startswith("render_error:")
    assert sorted(ses_count(ses)) == ["user0@acme.test", "user1@acme.test"]


def test_lost_submissions_are_queued_again(app, client, offload_company):
    job_id = submit(client, offload_company, people(3))
    run_worker_burst(app, max_jobs=1)  # plan
    connection().flushdb()  # Redis lost the submit job
    assert requeue_lost() == 0  # too recent to call lost
    db.session.execute(update(Job).where(Job.id == job_id).values(created_at=utcnow() - timedelta(minutes=5)))
    db.session.commit()
    assert requeue_lost() == 1
    assert requeue_lost() == 0  # now live in RQ
    run_worker_burst(app)
    assert batches(job_id)[0].status == "submitted"


# --------------------------------------------------------------------------- Cloudflare







def test_cloudflare_queue_worker_and_callbacks(app, client, make_company, miniflare, cloudflare_api, live_url,
                                               set_settings):
    set_settings(batch_size=10)
    company = make_company(provider="cloudflare", mode="offload", sender="noreply@acme.test",
                           cloudflare_api_token=CF_TOKEN, cloudflare_account_id="acct-1",
                           cloudflare_queue_id="queue-1", cloudflare_api_base=f"{cloudflare_api.url}/client/v4")
    db.session.execute(update(Company).where(Company.id == company.id).values(callback_secret=CF_SECRET))
    db.session.commit()
    recipients = people(25, prefix=f"cf{company.id}-")
    job_id = submit(client, company, recipients)
    run_worker_burst(app)
    assert len(cloudflare_api.requests) == 1  # three batches, one API call
    assert {b.route for b in batches(job_id)} == {"offload:cloudflare_queue"}

    done = wait_final(job_id)
    assert (done.status, done.emails_sent) == ("completed", 25)
    sent = Counter(e["to"] for e in miniflare.sent_emails() if e["to"].startswith(f"cf{company.id}-"))
    assert set(sent) == {r["email"] for r in recipients} and set(sent.values()) == {1}
    assert all(b.status == "done" for b in batches(job_id))


class ThrottleBurst(FaultyProxy):
    """SES throttles calls ``nth`` to ``nth + burst - 1`` (longer than the Lambda's
    own boto3 retries); every other call goes through."""

    def __init__(self, target: str, nth: int, burst: int = 4):
        super().__init__(target)
        self.nth, self.burst = nth, burst

    def _decide(self) -> str:
        with self.lock:
            self.calls += 1
            if self.nth <= self.calls < self.nth + self.burst:
                self.throttled += 1
                return "throttle"
        return "forward"


def test_a_worker_stopped_midway_hands_back_only_the_unsent(app, client, offload_company, aws_lambda, ses,
                                                            live_url, monkeypatch):
    """SES throttles the Lambda after 50 of a batch's 200 emails went out: the
    callback reports those 50 and hands back the other 150 as retryable; the
    service re-submits those alone; nobody gets a second email."""
    with ThrottleBurst(ses.url, nth=2) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SESV2", proxy.url)
        aws_lambda.module.ses_client.cache_clear()
        job_id = submit(client, offload_company, people(200))
        run_worker_burst(app)
        messages = aws_lambda.receive()
        assert len(messages) == 1 and len(json.loads(messages[0]["Body"])["recipients"]) == 200
        assert aws_lambda.invoke(messages) == []  # not redelivered: the record is done
        assert proxy.throttled == 4  # the first call and its three boto3 retries
        assert recipient_statuses(job_id) == Counter({"sent": 50, "pending": 150})
        (batch,) = batches(job_id)
        assert batch.status == "retry" and job(job_id).status == "processing"
        run_scheduled_now()
        run_worker_burst(app)  # the re-submission: the 150 unsent only
        again = aws_lambda.receive()
        assert len(again) == 1 and len(json.loads(again[0]["Body"])["recipients"]) == 150
        assert aws_lambda.invoke(again) == []
    done = job(job_id)
    assert (done.status, done.emails_sent, done.emails_failed, done.emails_uncertain) == ("completed", 200, 0, 0)
    counts = ses_count(ses)
    assert len(counts) == 200 and set(counts.values()) == {1}
