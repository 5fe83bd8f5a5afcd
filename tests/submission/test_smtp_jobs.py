"""Stored SMTP messages become jobs: a burst of one company is one job, a few messages one job each,
with the windows of LMS events; each RCPT a recipient of its own; source smtp in the API and the dashboard;
a job's recipients get the messages as the LMS wrote them (direct mode here; offload in
tests/tasks/test_smtp_offload_e2e.py)."""
from __future__ import annotations

import smtplib
from datetime import timedelta

import pytest
from sqlalchemy import select

from core import submissions
from core.db import db
from core.models import Job, Recipient, SmtpMessage, Suppression, utcnow
from core.queue import HIGH
from providers import mime
from tasks import submissions as closer
from tasks.rq_queue import get_queue
from tests.support.app import run_worker_burst
from tests.support.smtp_clients import message


def later(seconds: float = 3600):
    return utcnow() + timedelta(seconds=seconds)


def jobs() -> list[Job]:
    db.session.rollback()
    return list(db.session.execute(select(Job).order_by(Job.id)).scalars())


def recipients(job_id: int) -> list[tuple[str, str, dict | None]]:
    return [(r.email, r.status, r.data) for r in db.session.execute(
        select(Recipient).where(Recipient.job_id == job_id).order_by(Recipient.id)).scalars()]


def send(client, n: int, *, rcpt=None, **headers) -> None:
    for i in range(n):
        client.sendmail("noreply@acme.test", rcpt or [f"user{i}@example.com"],
                        message(f"Your account {i}", headers=headers or None))


@pytest.fixture
def threshold(set_settings):
    set_settings(bulk_threshold=3, bulk_window_s=5.0)


def test_a_burst_beyond_the_threshold_is_one_job(threshold, signed_in, smtp_company):
    send(signed_in(), 5, **{"X-Offload-Type": "csv_import"})
    # the writer scheduled the window's closer, a window from now (once for the window)
    scheduled = [get_queue(HIGH).fetch_job(i) for i in get_queue(HIGH).scheduled_job_registry.get_job_ids()]
    assert [(j.func_name, j.args) for j in scheduled] == [("tasks.windows.close_windows", ())]
    assert submissions.close_window(smtp_company.id, "csv_import").due is not None  # not due yet
    assert jobs() == []
    made = submissions.close_window(smtp_company.id, "csv_import", now=later()).jobs
    [job] = jobs()
    assert [j.id for j in made] == [job.id]
    assert (job.source, job.type, job.priority, job.email_count, job.subject) == (
        "smtp", "csv_import", "transactional", 5, "Your account 0")
    ids = [m.id for m in db.session.execute(select(SmtpMessage).order_by(SmtpMessage.id)).scalars()]
    assert recipients(job.id) == [(f"user{i}@example.com", "pending", {"smtp_message_id": ids[i]})
                                  for i in range(5)]
    assert {m.status for m in db.session.execute(select(SmtpMessage)).scalars()} == {"jobbed"}
    assert submissions.close_window(smtp_company.id, "csv_import", now=later()).jobs == []  # nothing twice


def test_a_few_messages_are_a_job_each_and_each_rcpt_a_recipient(threshold, signed_in, smtp_company):
    client = signed_in()
    send(client, 1, rcpt=["ann@example.com", "bob@example.com", "not an address@", "ann@example.com"])
    send(client, 1, rcpt=["cat@example.com"])
    submissions.close_window(smtp_company.id, "notification", now=later())
    first, second = jobs()
    assert first.type == second.type == "notification"
    statuses = [(email, status) for email, status, _ in recipients(first.id)]
    assert statuses == [("ann@example.com", "pending"), ("bob@example.com", "pending")]
    assert [e for e, _, _ in recipients(second.id)] == ["cat@example.com"]


def test_invalid_and_suppressed_recipients_are_kept_with_their_reason(threshold, signed_in, smtp_company):
    db.session.add(Suppression(company_id=smtp_company.id, email="gone@example.com", reason="bounce"))
    db.session.commit()
    signed_in().sendmail("noreply@acme.test", ["gone@example.com", "ok@example.com", "x@localhost"], message())
    submissions.close_window(smtp_company.id, "notification", now=later())
    [job] = jobs()
    assert [(e, s) for e, s, _ in recipients(job.id)] == [
        ("gone@example.com", "suppressed"), ("ok@example.com", "pending"), ("x@localhost", "failed")]
    assert (job.emails_suppressed, job.emails_failed) == (1, 1)


def test_two_closers_make_one_set_of_jobs(threshold, signed_in, smtp_company):
    send(signed_in(), 6)
    assert closer.close_window(smtp_company.id, "notification") == 0  # not due: it comes back
    made = [submissions.close_window(smtp_company.id, "notification", now=later()) for _ in range(2)]
    assert [len(m.jobs) for m in made] == [1, 0]
    assert len(jobs()) == 1


def test_the_sweep_closes_a_window_whose_closer_was_lost(threshold, set_settings, signed_in, smtp_company):
    set_settings(bulk_window_s=0.1, bulk_max_hold_s=0.2)
    send(signed_in(), 2)
    db.session.execute(SmtpMessage.__table__.update().values(received_at=utcnow() - timedelta(minutes=5)))
    db.session.commit()
    assert submissions.stale_windows() == [(smtp_company.id, "notification")]
    assert closer.recover() == 2
    assert [j.source for j in jobs()] == ["smtp", "smtp"]


def test_the_job_object_and_the_dashboard_say_smtp_and_show_the_subject(threshold, signed_in, smtp_company, client,
                                                                       make_user, auth):
    signed_in().sendmail("noreply@acme.test", ["ann@example.com"], message("Passwort zurücksetzen ✓"))
    submissions.close_window(smtp_company.id, "notification", now=later())
    [job] = jobs()
    body = client.get(f"/api/v1/jobs/{job.id}", headers=smtp_company.auth).json
    assert body["source"] == "smtp" and body["type"] == "notification"
    listed = client.get("/api/v1/jobs", headers=smtp_company.auth).json["jobs"]
    assert [j["source"] for j in listed] == ["smtp"]
    user, password = make_user("manager@acme.test", company_id=smtp_company.id)
    auth.login(user.email, password)
    page = client.get(f"/admin/jobs/{job.id}/").get_data(as_text=True)
    assert "SMTP submission · 1 message" in page and "Passwort zurücksetzen ✓" in page


def test_a_job_goes_out_as_the_lms_wrote_each_message(threshold, smtp_server, make_company, smtp_sink, app):
    """Direct mode on the company's own SMTP: each recipient gets the stored bytes, from the LMS's envelope
    sender; re-engagement mail gets its one-click unsubscribe on top, transactional mail nothing."""
    company = make_company("Acme Learning", sender="noreply@acme.test", provider="smtp", **smtp_sink.config())
    server = smtp_server()
    welcome = message("Willkommen, Jürgen ✓", body="Hallo Jürgen,\r\ndein Konto ist bereit.\r\n",
                      headers={"Bcc": "audit@acme.test"})
    nudge = message("We miss you", headers={"X-Offload-Type": "reengagement"})
    with smtplib.SMTP(server.host, server.port, timeout=30) as client:
        client.login(str(company.id), company.token)
        client.sendmail("bounces@acme.test", ["juergen@example.com", "ann@example.com"], welcome)
        client.sendmail("bounces@acme.test", ["bob@example.com"], nudge)
    for job_type in ("notification", "reengagement"):
        submissions.close_window(company.id, job_type, now=later())
    run_worker_burst(app)
    assert [(j.status, j.emails_sent) for j in jobs()] == [("completed", 2), ("completed", 1)]
    got = {m.rcpt_tos[0]: m for m in smtp_sink.messages}
    assert sorted(got) == ["ann@example.com", "bob@example.com", "juergen@example.com"]
    assert {m.mail_from for m in got.values()} == {"bounces@acme.test"}
    for to in ("juergen@example.com", "ann@example.com"):
        data = got[to].data.replace(b"\r\n", b"\n")
        assert data.startswith(b"Received: from ")
        assert mime.without(data, ["received"]) == mime.without(welcome, ["bcc"]).replace(b"\r\n", b"\n")
        assert b"list-unsubscribe" not in data.lower()
    nudged = got["bob@example.com"].data.replace(b"\r\n", b"\n")
    assert nudged.startswith(b"List-Unsubscribe: <") and b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in nudged
    assert mime.without(nudged, ["received", "list-unsubscribe", "list-unsubscribe-post"]) == mime.without(
        nudge, ["x-offload-type"]).replace(b"\r\n", b"\n")
