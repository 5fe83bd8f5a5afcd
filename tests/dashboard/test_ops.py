"""Operations endpoints: /healthz, /readyz against a real Redis that is
stopped and started again and a real worker process, and /metrics scraped
after a real job went through an SMTP sink, parsed with prometheus_client's
own parser."""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core import settings
from core.db import db
from core.models import Job, Suppression
from tasks.sending import plan_job
from tests.support.app import run_worker_burst
from tests.support.servers import RedisServer, SmtpSink

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def scrape(client) -> dict:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.mimetype == "text/plain"
    found = {}
    for family in text_string_to_metric_families(resp.get_data(as_text=True)):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_healthz(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200 and resp.get_json() == {"status": "ok"}


def test_metrics_after_a_real_job(app, client, make_company):
    with SmtpSink(refuse={"gone@example.com": "550 5.1.1 mailbox unavailable"}) as sink:
        acme = make_company("Acme Metrics", provider="smtp", sender="noreply@acme.test", smtp_host="127.0.0.1",
                            smtp_port=str(sink.port), smtp_tls="none")
        body = {"type": "csv_import", "subject": "Hi {{ firstname }}", "body_text": "Hello {{ firstname }}",
                "recipients": [{"email": "ann@example.com", "data": {"firstname": "Ann"}},
                               {"email": "bob@example.com", "data": {"firstname": "Bob"}},
                               {"email": "gone@example.com", "data": {"firstname": "Gone"}}]}
        resp = client.post("/api/v1/jobs", json=body, headers=acme.auth)
        assert resp.status_code == 202
        run_worker_burst(app)
    refused = client.post(f"/callbacks/v1/batches?company={acme.id}", data=b"{}", headers={
        "webhook-id": "msg_1", "webhook-timestamp": str(int(time.time())), "webhook-signature": "v1,AAAA"})
    assert refused.status_code == 401

    m = scrape(client)
    assert m[("offload_jobs", (("status", "partial_failure"),))] == 1
    # the 550 "mailbox unavailable" is a hard bounce: counted as failed here, bounced on the job, suppressed
    job = db.session.get(Job, resp.get_json()["id"])
    assert (job.emails_sent, job.emails_failed, job.emails_bounced) == (2, 0, 1)
    assert [s.email for s in db.session.query(Suppression).filter_by(company_id=acme.id)] == ["gone@example.com"]
    assert m[("offload_recipients_total", (("outcome", "sent"), ("provider", "smtp"), ("route", "direct")))] == 2
    assert m[("offload_recipients_total", (("outcome", "failed"), ("provider", "smtp"), ("route", "direct")))] == 1
    assert m[("offload_callback_verification_failures_total", (("endpoint", "batches"),))] == 1
    calls = m[("offload_provider_call_seconds_count", (("provider", "smtp"),))]
    assert calls >= 1
    assert m[("offload_provider_call_seconds_bucket", (("le", "+Inf"), ("provider", "smtp")))] == calls
    assert m[("offload_provider_call_seconds_sum", (("provider", "smtp"),))] > 0
    for name in ("offload-high", "offload-default", "offload-low"):
        assert m[("offload_queue_depth", (("queue", name), ("state", "queued")))] == 0
    assert m[("offload_ready_batches", (("class", "transactional"),))] == 0  # all sent: nothing waits
    assert m[("offload_ready_batches", (("class", "bulk"),))] == 0


def test_ready_batches_are_counted_per_service_class(app, client, make_company):
    """Work waiting in the scheduler's ready set shows per class before any worker runs."""
    acme = make_company("Acme Depth", provider="smtp", sender="noreply@acme.test", smtp_host="127.0.0.1",
                        smtp_port="2525", smtp_tls="none")
    job_ids = []
    for kind, n in (("csv_import", 3), ("reengagement", 2)):
        resp = client.post("/api/v1/jobs", json={"type": kind, "subject": "Hi", "body_text": "Hello",
                                                 "recipients": [{"email": f"{kind}{i}@example.com"}
                                                                for i in range(n)]}, headers=acme.auth)
        assert resp.status_code == 202
        job_ids.append(resp.get_json()["id"])
    for job_id in job_ids:  # what the planning RQ job does; no worker sends meanwhile
        plan_job(job_id)
    m = scrape(client)
    assert m[("offload_ready_batches", (("class", "transactional"),))] == 1
    assert m[("offload_ready_batches", (("class", "bulk"),))] == 1
    assert m[("offload_redis_up", ())] == 1


def test_metrics_need_a_token_or_an_allowed_network_in_production(app, client, set_settings):
    set_settings(production=True, metrics_token="s3cret-metrics", metrics_networks=())
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret-metrics"}).status_code == 200
    set_settings(metrics_token=None, metrics_networks=(ipaddress.ip_network("127.0.0.0/8"),))
    assert client.get("/metrics").status_code == 200  # the test client's address is 127.0.0.1


def start_worker(app, redis_url: str, log_path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("OFFLOAD_ENCRYPTION_KEYS", "FLASK_ENV", "OFFLOAD_ENV")}
    env.update(DATABASE_URL=settings.current().database_url, REDIS_URL=redis_url, OFFLOAD_SWEEP_S="2")
    with open(log_path, "wb") as log:
        return subprocess.Popen([os.path.join(ROOT, ".venv", "bin", "flask"), "--app", "wsgi", "worker"], cwd=ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(client, want: int, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        resp = client.get("/readyz")
        if resp.status_code == want or time.monotonic() > deadline:
            assert resp.status_code == want, resp.get_data(as_text=True)
            return resp.get_json()
        time.sleep(0.3)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_readyz_follows_redis_and_the_worker(app, client, tmp_path, set_settings):
    redis = RedisServer().start()
    set_settings(redis_url=redis.url)
    worker = None
    try:
        body = wait_ready(client, 503)
        assert body["failing"] == ["worker"] and body["checks"]["database"] == "ok"
        worker = start_worker(app, redis.url, tmp_path / "worker.log")
        assert wait_ready(client, 200)["checks"] == {"database": "ok", "redis": "ok", "worker": "ok"}

        redis.stop()
        body = wait_ready(client, 503)
        assert "redis" in body["failing"] and body["checks"]["redis"].startswith("unavailable")
        json.dumps(body)  # plain JSON, no remote text

        redis = RedisServer(port=redis.port).start()  # the same address comes back, empty
        assert wait_ready(client, 200)["status"] == "ok"
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
        redis.stop()
