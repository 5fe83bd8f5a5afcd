"""The pages that must stay fast at millions of sent rows read no big table in full, on PostgreSQL.

The database is seeded the way a busy service looks (a company with a 20,000-recipient job among
2,000 small ones, 120,000 recipients in all, mostly sent; their batches, seconds and days; an audit
log of 20,000 entries), ``ANALYZE``d, and every statement the job list, a job's page (its chart, its
recipients filtered and searched), the overview, the audit log, the suppressions page, ``/metrics``
and the API's job reads run is captured as the page runs it and ``EXPLAIN``ed with the planner
left free (no ``enable_seqscan``): a ``Seq Scan`` on a big table fails the test, naming the page
and the statement. ``jobs`` (a row per job) and ``company_days`` (a row per company, day and route:
the aggregate itself) are not big tables: summing them is what the pages are for.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager

import pytest
from sqlalchemy import event, text

from core.db import db
from tests.support.app import AuthActions

pytestmark = pytest.mark.skipif(os.environ.get("OFFLOAD_TEST_DB") != "postgresql",
                                reason="the plans are PostgreSQL's (OFFLOAD_TEST_DB=postgresql)")

BIG = {"recipients", "batches", "job_seconds", "audit_log", "bounce_events", "waiting_events", "smtp_messages"}
SMALL_JOBS, SMALL_SIZE, BIG_JOB = 2000, 50, 20_000


def seed(company_id: int, other_id: int) -> int:
    """The busy database; returns the big job's id."""
    run = db.session.execute
    big = run(text("INSERT INTO jobs (company_id, type, status, source, priority, email_count, emails_sent, "
                   "emails_failed, emails_suppressed, emails_bounced, emails_uncertain, created_at, started_at, "
                   "subject) VALUES (:c, 'reengagement', 'processing', 'api', 'bulk', :n, :n - 20, 20, 0, 0, 0, "
                   "now() - interval '1 hour', now() - interval '1 hour', 'Big') RETURNING id"),
              {"c": company_id, "n": BIG_JOB}).scalar()
    run(text("INSERT INTO jobs (company_id, type, status, source, priority, email_count, emails_sent, emails_failed, "
             "emails_suppressed, emails_bounced, emails_uncertain, created_at, completed_at, subject) "
             "SELECT CASE WHEN g % 2 = 0 THEN :c ELSE :o END, 'notification', 'completed', 'api', 'transactional', "
             ":s, :s, 0, 0, 0, 0, now() - g * interval '1 minute', now() - g * interval '1 minute', 'Small' "
             "FROM generate_series(1, :k) g"), {"c": company_id, "o": other_id, "s": SMALL_SIZE, "k": SMALL_JOBS})
    run(text("INSERT INTO recipients (company_id, job_id, email, status, attempts, sent_at, message_id, route) "
             "SELECT :c, :j, 'learner' || g || '@school.test', CASE WHEN g % 1000 = 0 THEN 'failed' ELSE 'sent' END, "
             "1, now() - (g % 3600) * interval '1 second', 'msg-' || g, 'direct:ses' "
             "FROM generate_series(1, :n) g"), {"c": company_id, "j": big, "n": BIG_JOB})
    run(text("INSERT INTO recipients (company_id, job_id, email, status, attempts, sent_at, message_id, route) "
             "SELECT j.company_id, j.id, 'user' || g || '.' || j.id || '@example.com', 'sent', 1, j.created_at, "
             "'m-' || j.id || '-' || g, 'direct:ses' FROM jobs j CROSS JOIN generate_series(1, :s) g "
             "WHERE j.id <> :j"), {"s": SMALL_SIZE, "j": big})
    run(text("INSERT INTO batches (company_id, job_id, batch_number, status, first_recipient_id, last_recipient_id, "
             "recipient_count, attempts, sent_count, failed_count) "
             "SELECT company_id, job_id, 0, 'done', min(id), max(id), count(*), 1, count(*), 0 FROM recipients "
             "GROUP BY job_id, company_id"))
    run(text("INSERT INTO job_seconds (job_id, second, company_id, sent) SELECT job_id, date_trunc('second', "
             "sent_at), min(company_id), count(*) FROM recipients GROUP BY job_id, date_trunc('second', sent_at)"))
    run(text("INSERT INTO company_days (company_id, day, route, sent, failed, bounced, suppressed) "
             "SELECT company_id, date(sent_at), route, count(*), 0, 0, 0 FROM recipients "
             "GROUP BY company_id, date(sent_at), route"))
    run(text("INSERT INTO audit_log (company_id, actor, action, object_type, object_id, created_at) "
             "SELECT CASE WHEN g % 2 = 0 THEN :c ELSE :o END, 'api', 'job_created', 'job', g::text, "
             "now() - g * interval '1 second' FROM generate_series(1, 20000) g"), {"c": company_id, "o": other_id})
    run(text("INSERT INTO bounce_events (company_id, event_key, source, kind, email, job_id, created_at) "
             "SELECT CASE WHEN g % 2 = 0 THEN :c ELSE :o END, 'k' || g, 'ses', CASE WHEN g % 3 = 0 THEN 'soft' "
             "ELSE 'hard' END, 'learner' || g || '@school.test', CASE WHEN g <= 100 THEN :j END, "
             "now() - (g % 365) * interval '1 day' FROM generate_series(1, 20000) g"),
        {"c": company_id, "o": other_id, "j": big})
    db.session.commit()
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    return big


@contextmanager
def captured():
    """The SELECT statements run meanwhile, with their parameters."""
    seen: list[tuple[str, object]] = []

    def before(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT") and not executemany:
            seen.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", before)


def seq_scans(plan: dict) -> list[str]:
    found = [plan["Relation Name"]] if plan.get("Node Type") == "Seq Scan" and plan.get("Relation Name") in BIG \
        else []
    for child in plan.get("Plans", ()):
        found += seq_scans(child)
    return found


def explain(statement: str, parameters) -> dict:
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("EXPLAIN (FORMAT JSON) " + statement, parameters)
        plan = cursor.fetchone()[0]
    finally:
        raw.close()
    return (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]


def test_the_hot_pages_scan_no_big_table(app, client, make_company, make_user):
    company = make_company("Busy Co", provider="smtp", sender="noreply@busy.test")
    other = make_company("Other Co")
    big = seed(company.id, other.id)
    make_user("admin@busy.test", role="admin")
    make_user("m@busy.test", company_id=company.id)
    auth = AuthActions(client)
    pages = [f"/admin/jobs/{big}/", f"/admin/jobs/{big}/data.json", f"/admin/jobs/{big}/chart.json",
             f"/admin/jobs/{big}/?rstatus=failed", f"/admin/jobs/{big}/?q=learner19",
             f"/admin/jobs/{big}/?rstatus=sent&after=500", "/admin/jobs/", "/admin/jobs/data.json",
             "/admin/jobs/data.json?status=completed", "/admin/", "/admin/audit/", "/admin/suppressions/"]
    problems, statements = [], 0
    for who in ("m@busy.test", "admin@busy.test"):
        auth.login(who, "correct horse battery")
        for url in pages + ["/metrics"]:
            with captured() as seen:
                resp = client.get(url)
            assert resp.status_code == 200, (who, url, resp.status_code)
            for statement, parameters in seen:
                statements += 1
                scanned = seq_scans(explain(statement, parameters))
                if scanned:
                    problems.append(f"{who} {url}: Seq Scan on {', '.join(scanned)}: {' '.join(statement.split())}")
        auth.logout()
    for url in ("/api/v1/jobs", f"/api/v1/jobs/{big}"):
        with captured() as seen:
            assert client.get(url, headers=company.auth).status_code == 200
        for statement, parameters in seen:
            statements += 1
            if scanned := seq_scans(explain(statement, parameters)):
                problems.append(f"API {url}: Seq Scan on {', '.join(scanned)}: {' '.join(statement.split())}")
    assert statements > 50  # the pages' statements were seen
    assert problems == [], "\n".join(problems)
    with captured() as seen:  # and the check sees a scan: a count of every sent row
        db.session.execute(text("SELECT count(*) FROM recipients WHERE status = 'sent'"))
    assert [seq_scans(explain(s, p)) for s, p in seen] == [["recipients"]]

