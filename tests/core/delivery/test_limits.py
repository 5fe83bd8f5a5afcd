"""Rate limits hold across workers; SES's own MaxSendRate is honoured;
the circuit breaker opens after repeated connection failures."""
from __future__ import annotations

import threading
import time

from sqlalchemy import select

from core import scheduler
from core.db import db
from core.delivery import limits
from core.models import Batch, Job
from core.queue import connection
from tests.support.app import run_worker_burst
from tests.support.faulty_proxy import FaultyProxy
from tests.support.jobs import aws_settings
from tests.support.servers import SesLocal


def test_rate_holds_across_concurrent_workers(app, redis_server):
    import redis

    stamps: list[tuple[float, int]] = []
    lock = threading.Lock()

    def worker():
        conn = redis.Redis.from_url(redis_server)  # each worker its own connection
        for _ in range(12):
            while True:
                granted, wait, why = limits.take(conn, 99, 5, 40)
                if granted:
                    break
                assert why == "rate" and 0 < wait <= 5 / 40 + 0.01
                time.sleep(wait)
            with lock:
                stamps.append((time.monotonic(), 5))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sum(n for _, n in stamps) == 4 * 12 * 5
    stamps.sort()
    # a token bucket of one second's sends: in any window of T seconds, at most 40 + 40 * T
    for i, (start, _) in enumerate(stamps):
        in_window = sum(n for t, n in stamps[i:] if t - start <= 1.0)
        assert in_window <= 40 + 40 * 1.0 + 5
    assert stamps[-1][0] - stamps[0][0] >= (240 - 40) / 40 * 0.9  # the rate, not a burst, set the pace


def test_bucket_size_and_chunks():
    assert limits.capacity(0.5) == 1 and limits.capacity(14) == 14
    assert limits.chunk_limit(14, 50) == 14 and limits.chunk_limit(None, 50) == 50


def test_a_company_out_of_tokens_is_blocked_in_the_ready_set(app):
    conn = connection()
    assert limits.take(conn, 5, 10, 10) == (True, 0.0, "ok")
    granted, wait, why = limits.take(conn, 5, 10, 10)
    assert not granted and why == "rate" and 0.5 < wait <= 1.0
    assert scheduler.blocked_until(conn, 5) is not None and scheduler.blocked_until(conn, 6) is None
    scheduler.add(conn, [scheduler.Entry("bulk", 5, 1, 200)])
    assert not scheduler.runnable(conn)  # its only entry needs the tokens it does not have
    assert isinstance(scheduler.pop(conn), float)


def test_bulk_yields_the_tokens_to_its_own_companys_transactional_mail(app):
    conn = connection()
    scheduler.add(conn, [scheduler.Entry("transactional", 8, 1, 5)])
    granted, wait, why = limits.take(conn, 8, 5, 50, "bulk")
    assert (granted, why) == (False, "yield") and wait == limits.YIELD_S
    assert limits.take(conn, 9, 5, 50, "bulk")[0]  # another company's bulk mail is not held
    assert scheduler.pop(conn).batch_ids == [1]
    assert limits.take(conn, 8, 5, 50, "bulk")[0]  # nothing transactional left: bulk goes on


def test_ses_account_max_send_rate_is_honoured(app, client, make_company):
    quota = {"DedicatedIpAutoWarmupEnabled": False, "EnforcementStatus": "HEALTHY", "ProductionAccessEnabled": True,
             "SendingEnabled": True, "SendQuota": {"Max24HourSend": 50000, "MaxSendRate": 25, "SentLast24Hours": 0},
             "SuppressionAttributes": {"SuppressedReasons": []},
             "Details": {"AdditionalContactEmailAddresses": [], "ContactLanguage": "EN", "MailType": "TRANSACTIONAL",
                         "ReviewDetails": {"CaseId": "1", "Status": "GRANTED"}, "UseCaseDescription": "x",
                         "WebsiteURL": "https://acme.test"}}
    with SesLocal(account=quota) as ses, FaultyProxy(ses.url) as proxy:
        company = make_company(**aws_settings(proxy.url))
        resp = client.post("/api/v1/jobs", headers=company.auth, json={
            "type": "notification", "subject": "Hi", "body_text": "Hello",
            "recipients": [{"email": f"u{i}@acme.test"} for i in range(100)]})
        run_worker_burst(app)
        assert db.session.get(Job, resp.json["id"]).status == "completed"
        assert len(ses.store()) == 100
        bulk_calls = proxy.calls
    assert bulk_calls == 4  # 100 recipients in chunks of 25 (the account's MaxSendRate), not 2 of 50
    assert connection().get(f"offload:account-rate:{company.id}:ses") == b"25.0"


def test_circuit_breaker_opens_after_repeated_connection_failures(app):
    conn = connection()
    assert not limits.breaker_is_open(conn, 7, "aws")
    opened = [limits.breaker_failure(conn, 7, "aws") for _ in range(limits.BREAKER_THRESHOLD)]
    assert opened == [False] * (limits.BREAKER_THRESHOLD - 1) + [True]
    assert limits.breaker_is_open(conn, 7, "aws") and not limits.breaker_is_open(conn, 7, "smtp")


def test_open_circuit_routes_batches_straight_to_fallback(app, client, make_company, smtp_sink, ses, set_settings):
    set_settings(fallback_smtp=smtp_sink.config())
    company = make_company(**aws_settings(ses.url), fallback_relay="1")
    for _ in range(limits.BREAKER_THRESHOLD):
        limits.breaker_failure(connection(), company.id, "ses")
    resp = client.post("/api/v1/jobs", headers=company.auth, json={
        "type": "notification", "subject": "Hi", "body_text": "Hello",
        "recipients": [{"email": f"u{i}@acme.test"} for i in range(20)]})
    run_worker_burst(app)
    assert db.session.get(Job, resp.json["id"]).status == "completed"
    assert ses.store() == [] and len(smtp_sink.recipients()) == 20
    assert db.session.execute(select(Batch.route)).scalars().all() == ["fallback:smtp"]


def test_a_batch_run_reads_the_account_rate_once_not_once_per_chunk(app):
    """The account's own rate (Redis, ten minutes) is read once per batch run; every chunk used to GET it."""
    from types import SimpleNamespace

    from core.delivery.send import BatchRun

    asked = []
    gets = []

    class Provider:
        name = "ses"

        def max_send_rate(self):
            asked.append(1)
            return 40.0

    class CountingRedis:
        def __init__(self, conn):
            self.conn = conn

        def get(self, key):
            gets.append(key)
            return self.conn.get(key)

        def set(self, *args, **kwargs):
            return self.conn.set(*args, **kwargs)

    run = object.__new__(BatchRun)
    run.config, run.account_rates = {"max_send_rate": 100}, {}
    run.company, run.redis = SimpleNamespace(id=4242), CountingRedis(connection())
    rates = [run.send_rate(Provider()) for _ in range(5)]
    assert rates == [40.0] * 5  # the account's 40/s caps the company's 100/s on every chunk
    assert (len(asked), len(gets)) == (1, 1)
    assert connection().get("offload:account-rate:4242:ses") == b"40.0"
    other = object.__new__(BatchRun)  # the next run reads Redis's copy, and does not ask the provider again
    other.config, other.account_rates = {}, {}
    other.company, other.redis = SimpleNamespace(id=4242), CountingRedis(connection())
    assert other.send_rate(Provider()) == 40.0 and (len(asked), len(gets)) == (1, 2)
