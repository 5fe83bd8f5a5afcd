"""Rate limits hold across workers; SES's own MaxSendRate is honoured;
the circuit breaker opens after repeated connection failures."""
from __future__ import annotations

import threading
from collections import Counter

from sqlalchemy import select

from core.db import db
from core.models import Job
from core.queue import connection
from tasks import limits
from tests.support.app import run_worker_burst
from tests.support.faulty_proxy import FaultyProxy
from tests.support.servers import SesLocal
from tests.support.jobs import aws_settings


def test_rate_holds_across_concurrent_workers(app, redis_server):
    import redis

    per_slot: Counter = Counter()
    lock = threading.Lock()

    def worker():
        conn = redis.Redis.from_url(redis_server)  # each worker its own connection
        for _ in range(12):
            slot = limits.acquire(conn, 99, 5, 40)
            with lock:
                per_slot[slot] += 5

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sum(per_slot.values()) == 4 * 12 * 5
    assert max(per_slot.values()) <= 40  # never more than the rate in any one-second window
    assert len(per_slot) >= 6  # 240 sends at 40/s need at least six windows


def test_fractional_rates_use_longer_windows():
    assert limits._window(0.5) == (2, 1)
    assert limits._window(14) == (1, 14)
    assert limits.chunk_limit(14, 50) == 14 and limits.chunk_limit(None, 50) == 50


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
    assert connection().get(f"offload:account-rate:{company.id}:aws") == b"25.0"


def test_circuit_breaker_opens_after_repeated_connection_failures(app):
    conn = connection()
    assert not limits.breaker_is_open(conn, 7, "aws")
    opened = [limits.breaker_failure(conn, 7, "aws") for _ in range(limits.BREAKER_THRESHOLD)]
    assert opened == [False] * (limits.BREAKER_THRESHOLD - 1) + [True]
    assert limits.breaker_is_open(conn, 7, "aws") and not limits.breaker_is_open(conn, 7, "smtp")


def test_open_circuit_routes_batches_straight_to_fallback(app, client, make_company, smtp_sink, ses):
    from core.models import Batch

    app.config["OFFLOAD_FALLBACK_SMTP"] = smtp_sink.config()
    company = make_company(**aws_settings(ses.url), fallback_relay="1")
    for _ in range(limits.BREAKER_THRESHOLD):
        limits.breaker_failure(connection(), company.id, "aws")
    resp = client.post("/api/v1/jobs", headers=company.auth, json={
        "type": "notification", "subject": "Hi", "body_text": "Hello",
        "recipients": [{"email": f"u{i}@acme.test"} for i in range(20)]})
    run_worker_burst(app)
    assert db.session.get(Job, resp.json["id"]).status == "completed"
    assert ses.store() == [] and len(smtp_sink.recipients()) == 20
    assert db.session.execute(select(Batch.route)).scalars().all() == ["fallback:smtp"]
