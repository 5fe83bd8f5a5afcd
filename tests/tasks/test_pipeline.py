"""The sending pipeline end to end, through real servers: aws-ses-v2-local
(SES v2 SendBulkEmail), aiosmtpd, a fault-injecting HTTP proxy."""
from __future__ import annotations

from collections import Counter
from datetime import timedelta

from sqlalchemy import select

from core.companies import configure
from core.db import db
from core.delivery import ready
from core.delivery.plan import plan_job
from core.delivery.recovery import resume_quota_paused
from core.delivery.routing import Route, provider_for
from core.delivery.settle import QUOTA_PAUSE, pause_job
from core.models import Batch, Company, Job, Recipient, utcnow
from core.queue import connection
from tests.support.app import run_worker_burst
from tests.support.faulty_proxy import FaultyProxy
from tests.support.jobs import BODY, aws_settings, people, run_scheduled_now
from tests.support.servers import free_port


def submit(client, company, recipients, **extra) -> int:
    resp = client.post("/api/v1/jobs", json={**BODY, "recipients": recipients, **extra}, headers=company.auth)
    assert resp.status_code == 202, resp.json
    return resp.json["id"]


def job(job_id: int) -> Job:
    db.session.expire_all()
    return db.session.get(Job, job_id)


def statuses(job_id: int) -> Counter:
    return Counter(db.session.execute(select(Recipient.status).where(Recipient.job_id == job_id)).scalars())


def test_ses_bulk_each_recipient_gets_exactly_their_own_message(app, client, make_company, ses):
    company = make_company(**aws_settings(ses.url))
    job_id = submit(client, company, people(1000))
    run_worker_burst(app)
    done = job(job_id)
    assert done.status == "completed" and done.emails_sent == 1000 and done.emails_failed == 0
    store = ses.store()
    by_address = Counter(addr for mail in store for addr in mail["destination"]["to"])
    assert len(store) == 1000 and set(by_address.values()) == {1}
    for mail in store:
        i = int(mail["destination"]["to"][0].removeprefix("user").split("@")[0])
        assert mail["subject"] == f"Welcome Name{i}"
        assert f"your password is Pw-{i}-secret" in mail["body"]["text"]
        assert f"<b>Pw-{i}-secret</b>" in mail["body"]["html"]
    assert db.session.execute(select(Batch.route).distinct()).scalars().all() == ["direct:ses"]
    assert done.emails_sent == len(store)


def test_smtp_delivers_each_recipient_once_and_records_refusals(app, client, make_company, smtp_sink):
    smtp_sink.refuse = {f"refuse{i}@acme.test": "554 5.7.1 message refused" for i in range(3)}
    company = make_company(provider="smtp", sender="noreply@acme.test", **smtp_sink.config())
    job_id = submit(client, company, people(250) + people(3, prefix="refuse") + [{"email": "broken@"}])
    run_worker_burst(app)
    done = job(job_id)
    assert done.status == "partial_failure"
    assert (done.emails_sent, done.emails_failed, done.email_count) == (250, 4, 254)
    assert sorted(smtp_sink.recipients()) == sorted(p["email"] for p in people(250))
    failed = dict(db.session.execute(select(Recipient.email, Recipient.error)
                                     .where(Recipient.status == "failed")).all())
    assert failed["broken@"] == "invalid_email"
    assert all("554" in failed[f"refuse{i}@acme.test"] for i in range(3))


def test_html_is_escaped_and_headers_cannot_be_injected(app, client, make_company, ses):
    company = make_company(**aws_settings(ses.url))
    evil = {"email": "ann@acme.test", "data": {"firstname": "Ann\r\nBcc: victim@evil.test\r\n<script>x</script>",
                                               "password": "pw"}}
    job_id = submit(client, company, [evil])
    run_worker_burst(app)
    assert job(job_id).status == "completed"
    (mail,) = ses.store()
    assert mail["destination"] == {"to": ["ann@acme.test"], "cc": [], "bcc": []}
    assert "\n" not in mail["subject"] and "\r" not in mail["subject"]
    assert "<script>" not in mail["body"]["html"] and "&lt;script&gt;" in mail["body"]["html"]


def test_throttling_slows_down_and_marks_nothing_failed(app, client, make_company, ses):
    with FaultyProxy(ses.url, throttle_rate=0.3) as proxy:
        company = make_company(**aws_settings(proxy.url))
        job_id = submit(client, company, people(400))
        run_worker_burst(app)
        done = job(job_id)
        assert proxy.throttled > 0
    assert done.status == "completed" and done.emails_failed == 0
    assert Counter(a for m in ses.store() for a in m["destination"]["to"]).most_common(1)[0][1] == 1
    assert len(ses.store()) == 400


def test_permanent_rejections_fail_only_those_recipients(app, client, make_company, ses):
    with FaultyProxy(ses.url, reject="blocked") as proxy:
        company = make_company(**aws_settings(proxy.url))
        job_id = submit(client, company, people(60) + people(2, prefix="blocked"))
        run_worker_burst(app)
    done = job(job_id)
    assert done.status == "partial_failure" and done.emails_sent == 60 and done.emails_failed == 2
    errors = db.session.execute(select(Recipient.error).where(Recipient.status == "failed")).scalars().all()
    assert len(errors) == 2 and all("MESSAGE_REJECTED" in e or "rejected" in e.lower() for e in errors)


def test_unreachable_provider_falls_back_to_smtp(app, client, make_company, smtp_sink, set_settings):
    set_settings(fallback_smtp=smtp_sink.config())
    # nothing listens there; the operator enabled its relay for the company
    company = make_company(**aws_settings(f"http://127.0.0.1:{free_port()}"), fallback_relay="1")
    job_id = submit(client, company, people(450))
    run_worker_burst(app)
    done = job(job_id)
    assert done.status == "completed" and done.emails_sent == 450
    assert sorted(smtp_sink.recipients()) == sorted(p["email"] for p in people(450))
    routes = db.session.execute(select(Batch.route).where(Batch.job_id == job_id)).scalars().all()
    assert routes and set(routes) == {"fallback:smtp"}
    assert "unreachable" in (done.error_log or "")


def test_cancel_mid_job_sends_nothing_after_the_cancel(app, client, make_company, ses, monkeypatch):
    monkeypatch.setattr(ready, "MAX_RUNS", 1)  # one batch per wake-up
    company = make_company(**aws_settings(ses.url))
    job_id = submit(client, company, people(1000))
    run_worker_burst(app, max_jobs=3)  # plan + two wake-ups of one batch of 200
    sent_before = len(ses.store())
    assert sent_before == 400
    assert client.post(f"/api/v1/jobs/{job_id}/cancel", headers=company.auth).status_code == 202
    run_worker_burst(app)
    done = job(job_id)
    assert done.status == "cancelled"
    assert len(ses.store()) == sent_before
    assert statuses(job_id) == Counter({"sent": 400, "cancelled": 600})


def test_retryable_failures_give_up_then_retry_failed_recipients(app, client, make_company, ses, set_settings):
    set_settings(max_attempts=2)
    with FaultyProxy(ses.url, error_rate=1.0) as proxy:
        company = make_company(**aws_settings(proxy.url))
        job_id = submit(client, company, people(30))
        # each retry is scheduled with back-off; run the due ones without waiting
        for _ in range(6):
            run_worker_burst(app)
            run_scheduled_now()
        failed = job(job_id)
        assert failed.status == "failed" and failed.emails_failed == 30
        assert ses.store() == []
        proxy.error_rate = 0.0
        resp = client.post(f"/api/v1/jobs/{job_id}/retry", headers=company.auth)
        assert resp.status_code == 202 and resp.json["retried"] == 30
        run_worker_burst(app)
    done = job(job_id)
    assert done.status == "completed" and done.emails_sent == 30
    assert len(ses.store()) == 30


def test_quota_exhaustion_pauses_the_job(app, client, make_company, ses):
    class QuotaProxy(FaultyProxy):
        def _decide(self):
            return "quota"

    with QuotaProxy(ses.url) as proxy:
        proxy.throttle_rate = 0
        company = make_company(**aws_settings(proxy.url))
        proxy._decide = lambda: "throttle"  # replaced below by a quota answer
        original = proxy.server.RequestHandlerClass._reply

        def quota_reply(handler, status, body, headers=None):
            if status == 400:
                body = b'{"message":"Daily message quota exceeded."}'
                headers = {"x-amzn-ErrorType": "LimitExceededException", "Content-Type": "application/json"}
            return original(handler, status, body, headers)

        proxy.server.RequestHandlerClass._reply = quota_reply
        job_id = submit(client, company, people(10))
        run_worker_burst(app)
    paused = job(job_id)
    assert paused.status == "paused" and "quota" in paused.paused_reason
    assert statuses(job_id) == Counter({"pending": 10})


def test_no_secret_is_left_in_redis(app, client, make_company, ses):
    company = make_company(**aws_settings(ses.url))
    job_id = submit(client, company, people(50))
    run_worker_burst(app)
    assert job(job_id).status == "completed"
    conn = connection()
    dump = []
    for key in conn.scan_iter(count=1000):
        kind = conn.type(key)
        if kind == b"string":
            dump.append(conn.get(key) or b"")
        elif kind == b"hash":
            dump.extend(v for pair in conn.hgetall(key).items() for v in pair)
        elif kind == b"list":
            dump.extend(conn.lrange(key, 0, -1))
        elif kind in (b"set", b"zset"):
            dump.extend(conn.zrange(key, 0, -1) if kind == b"zset" else conn.smembers(key))
        dump.append(key)
    blob = b"\n".join(dump)
    import zlib

    blob += b"".join(_maybe_inflate(zlib, chunk) for chunk in dump)
    for i in range(50):
        assert f"Pw-{i}-secret".encode() not in blob
        assert f"user{i}@acme.test".encode() not in blob
    assert b"test-secret" not in blob


def _maybe_inflate(zlib, chunk: bytes) -> bytes:
    try:
        return zlib.decompress(chunk)
    except zlib.error:
        return b""


def test_a_paused_job_resumes_and_completes(app, client, make_company, ses):
    company = make_company(**aws_settings(ses.url))
    job_id = submit(client, company, people(250))
    run_worker_burst(app, max_jobs=1)  # planned: two batches queued
    pause_job(job_id, "sending quota exhausted: test")
    run_worker_burst(app)  # the batches see the pause and wait
    assert job(job_id).status == "paused" and ses.store() == []
    assert client.post(f"/api/v1/jobs/{job_id}/resume", headers=company.auth).status_code == 202
    run_worker_burst(app)
    done = job(job_id)
    assert done.status == "completed" and done.paused_reason is None and len(ses.store()) == 250
    assert client.post(f"/api/v1/jobs/{job_id}/resume", headers=company.auth).status_code == 409


def test_a_quota_pause_resumes_by_itself_later(app, client, make_company, ses):
    company = make_company(**aws_settings(ses.url))
    job_id = submit(client, company, people(30))
    other_id = submit(client, company, people(5, prefix="other"))
    plan_job(job_id)  # both planned, nothing sent yet (the plan task would send a small job's batch)
    plan_job(other_id)
    pause_job(job_id, f"{QUOTA_PAUSE}: Daily message quota exceeded.")
    pause_job(other_id, "no sender address is configured for the company")  # needs a person
    assert resume_quota_paused() == 0  # not yet: the quota has not rolled over
    db.session.execute(Job.__table__.update().values(paused_at=utcnow() - timedelta(hours=2)))
    db.session.commit()
    assert resume_quota_paused() == 1
    run_worker_burst(app)
    assert job(job_id).status == "completed" and len(ses.store()) == 30
    assert job(other_id).status == "paused"


def test_a_long_provider_outage_fails_nobody_and_the_job_finishes_after(app, client, make_company, ses, set_settings):
    set_settings(max_attempts=2)
    company = make_company(**aws_settings(f"http://127.0.0.1:{free_port()}"))  # SES down, no fallback
    job_id = submit(client, company, people(60))
    for _ in range(8):  # many more rounds than attempts allowed
        run_worker_burst(app)
        connection().delete(f"offload:cb:{company.id}:ses:open")  # time passing: the circuit half-opens
        run_scheduled_now()
    assert statuses(job_id) == Counter({"pending": 60}) and job(job_id).status == "processing"
    assert min(db.session.execute(select(Batch.attempts)).scalars()) > 2 + 2  # well past any give-up
    configure(db.session.get(Company, company.id), {"aws_endpoint_url": ses.url})  # SES is back
    db.session.commit()
    for _ in range(3):
        run_worker_burst(app)
        run_scheduled_now()
        if job(job_id).is_final:
            break
    done = job(job_id)
    assert done.status == "completed" and done.emails_failed == 0 and len(ses.store()) == 60


def test_the_operators_provider_timeout_reaches_the_providers(app, company, set_settings):
    config = {"provider": "smtp", "smtp_host": "127.0.0.1", "smtp_port": "2525", "sender": "noreply@acme.test"}
    assert provider_for(company.id, Route("direct", "smtp", config), "v1").timeout == 20.0  # SMTP's own
    set_settings(provider_timeout_s=2.5)
    assert provider_for(company.id, Route("direct", "smtp", config), "v2").timeout == 2.5
