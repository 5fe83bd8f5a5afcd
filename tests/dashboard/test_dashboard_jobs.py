"""The dashboard's jobs: list, polling JSON, detail, chart, CSV downloads,
retry and cancel, with jobs sent for real through an SMTP server by an RQ
worker."""
from __future__ import annotations

import csv
import io

import pytest
from sqlalchemy import select

from core.db import db
from core.models import AuditLog, BounceEvent, Job
from dashboard.csvexport import csv_lines, neutralise
from tests.support.app import csrf_from, run_worker_burst
from tests.support.servers import SmtpSink

REFUSED = "refused-1@example.com"


@pytest.fixture
def smtp():
    with SmtpSink(refuse={REFUSED: "554 5.7.1 message refused"}) as sink:
        yield sink


@pytest.fixture
def acme(make_company, smtp):
    return make_company("Acme Jobs", provider="smtp", sender="noreply@acme.test", smtp_host="127.0.0.1",
                        smtp_port=smtp.port, smtp_tls="none")


@pytest.fixture
def manager(acme, make_user, auth):
    make_user("manager@acme.test", company_id=acme.id)
    auth.login("manager@acme.test", "correct horse battery")
    return acme


def create_job(client, company, recipients, **extra) -> int:
    body = {"type": "csv_import", "subject": "Welcome {{ firstname }}",
            "body_text": "Hi {{ firstname }}, your password is {{ password }}", "recipients": recipients, **extra}
    resp = client.post("/api/v1/jobs", json=body, headers=company.auth)
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["id"]


def people(n: int, prefix: str = "user") -> list[dict]:
    return [{"email": f"{prefix}{i}@example.com", "data": {"firstname": f"P{i}", "password": f"pw-secret-{i}"}}
            for i in range(n)]


def read_csv(resp) -> list[list[str]]:
    return list(csv.reader(io.StringIO(resp.get_data(as_text=True))))


# -- CSV neutralisation ------------------------------------------------------------

@pytest.mark.parametrize("raw, shown", [
    ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"), ("+1+1", "'+1+1"), ("-2", "'-2"),
    ("@SUM(A1)", "'@SUM(A1)"), ("\tcmd", "'\tcmd"), ("\rcmd", "'\rcmd"), ("plain@example.com", "plain@example.com"),
    ("a=b", "a=b"), (None, ""), (3, "3"),
])
def test_neutralise(raw, shown):
    assert neutralise(raw) == shown


def test_csv_lines_streams_in_chunks_and_neutralises_every_cell():
    rows = [(i, f"=cmd{i}") for i in range(1200)]
    chunks = list(csv_lines(["id", "=header"], rows))
    assert len(chunks) >= 3  # streamed, not built in one piece
    parsed = list(csv.reader(io.StringIO("".join(chunks))))
    assert parsed[0] == ["id", "'=header"]
    assert parsed[1] == ["0", "'=cmd0"] and len(parsed) == 1201


# -- list, polling and detail -----------------------------------------------------------

def test_job_list_json_and_detail_follow_a_real_send(client, manager, smtp):
    recipients = people(30) + [{"email": REFUSED, "data": {"firstname": "R", "password": "pw"}},
                               {"email": "not-an-address"}]
    job_id = create_job(client, manager, recipients)

    page = client.get("/admin/jobs/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and f'data-job-id="{job_id}"' in html and "jobs.js" in html
    before = client.get("/admin/jobs/data.json").get_json()
    assert before["jobs"][0]["id"] == job_id and before["jobs"][0]["is_final"] is False

    run_worker_burst(client.application)
    after = client.get("/admin/jobs/data.json").get_json()["jobs"][0]
    assert after["status"] == "partial_failure" and after["progress"]["percent"] == 100
    assert (after["emails_sent"], after["emails_failed"], after["email_count"]) == (30, 2, 32)
    assert len(smtp.messages) == 30

    detail = client.get(f"/admin/jobs/{job_id}/")
    html = detail.get_data(as_text=True)
    assert detail.status_code == 200
    assert "Direct · SMTP" in html and "Not a valid email address" in html and "554 5.7.1 transaction failed" in html
    assert "direct:smtp" not in html and "invalid_email" not in html  # words, not keys
    assert "pw-secret" not in html  # recipient data never reaches the page
    data = client.get(f"/admin/jobs/{job_id}/data.json").get_json()
    assert data["batches"][0]["route"] == "direct:smtp" and data["batches"][0]["status"] == "done"
    assert data["progress"]["success_rate"] == pytest.approx(93.8, abs=0.1)
    chart = client.get(f"/admin/jobs/{job_id}/chart.json").get_json()
    assert chart["total"] == 30 and sum(b["sent"] for b in chart["buckets"]) == 30


def test_list_filters_and_pagination(client, manager, app):
    ids = [create_job(client, manager, people(1, f"j{i}-")) for i in range(27)]
    notification = create_job(client, manager, people(1, "n-"), type="notification")
    first = client.get("/admin/jobs/data.json").get_json()
    assert first["total"] == 28 and len(first["jobs"]) == 25
    assert first["jobs"][0]["id"] == notification  # newest first
    second = client.get("/admin/jobs/data.json?page=2").get_json()
    assert [j["id"] for j in second["jobs"]] == sorted(ids[:3], reverse=True)
    only = client.get("/admin/jobs/data.json?type=notification").get_json()
    assert [j["id"] for j in only["jobs"]] == [notification]
    assert client.get("/admin/jobs/data.json?status=completed").get_json()["total"] == 0
    html = client.get("/admin/jobs/?page=2").get_data(as_text=True)
    assert "Page 2 of 2" in html


def test_csv_downloads_neutralise_cells_and_never_export_data(client, manager):
    recipients = [{"email": "=HYPERLINK@example.com", "data": {"firstname": "A", "password": "data-canary-1"}},
                  {"email": "+plus@example.com", "data": {"firstname": "B", "password": "data-canary-2"}},
                  {"email": "@evil"}, {"email": "\tcmd"},
                  {"email": REFUSED, "data": {"firstname": "C", "password": "p"}}]
    job_id = create_job(client, manager, recipients)
    run_worker_burst(client.application)

    resp = client.get(f"/admin/jobs/{job_id}/recipients.csv")
    assert resp.status_code == 200 and resp.mimetype == "text/csv" and resp.is_streamed
    assert "attachment" in resp.headers["Content-Disposition"]
    text = resp.get_data(as_text=True)
    assert "data-canary" not in text
    rows = read_csv(resp)
    assert rows[0] == ["id", "email", "status", "error", "attempts", "sent_at", "route", "message_id"]
    emails = {r[1]: r for r in rows[1:]}
    assert "'=HYPERLINK@example.com" in emails and "'+plus@example.com" in emails
    assert "'@evil" in emails and "'\tcmd" in emails
    assert emails["'=HYPERLINK@example.com"][2] == "sent"
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows for cell in row)

    errors = read_csv(client.get(f"/admin/jobs/{job_id}/errors.csv"))
    assert {r[1] for r in errors[1:]} == {"'@evil", "'\tcmd", REFUSED}
    assert {r[3] for r in errors[1:]} >= {"invalid_email"}


def test_retry_failed_recipients_through_the_dashboard(client, manager, smtp):
    job_id = create_job(client, manager, people(5) + [{"email": REFUSED, "data": {"firstname": "R", "password": "p"}},
                                                      {"email": "bad"}])
    run_worker_burst(client.application)
    html = client.get(f"/admin/jobs/{job_id}/").get_data(as_text=True)
    assert 'id="retry-failed"' in html

    # without the CSRF token the action is refused and nothing happens
    assert client.post(f"/admin/jobs/{job_id}/retry").status_code == 400

    smtp.refuse.clear()  # the mailbox works now
    resp = client.post(f"/admin/jobs/{job_id}/retry", data={"csrf_token": csrf_from(html)})
    assert resp.status_code == 302 and resp.headers["Location"].endswith(f"/admin/jobs/{job_id}/#job-actions")
    assert "1 failed recipient(s) queued again" in client.get(f"/admin/jobs/{job_id}/").get_data(as_text=True)
    run_worker_burst(client.application)
    job = db.session.get(Job, job_id)
    db.session.refresh(job)
    assert (job.status, job.emails_sent, job.emails_failed) == ("partial_failure", 6, 1)
    entry = db.session.execute(select(AuditLog).where(AuditLog.action == "job_retried")).scalar_one()
    assert entry.actor == "manager@acme.test" and entry.details == {"recipients": 1}


def test_cancel_a_queued_job(client, manager):
    job_id = create_job(client, manager, people(3))
    html = client.get(f"/admin/jobs/{job_id}/").get_data(as_text=True)
    resp = client.post(f"/admin/jobs/{job_id}/cancel", data={"csrf_token": csrf_from(html)})
    assert resp.status_code == 302
    run_worker_burst(client.application)
    data = client.get(f"/admin/jobs/{job_id}/data.json").get_json()
    assert data["status"] == "cancelled" and data["can_cancel"] is False
    assert db.session.execute(select(AuditLog).where(AuditLog.action == "job_cancelled")).scalar_one().actor \
        == "manager@acme.test"
    # cancelling again is harmless
    again = client.post(f"/admin/jobs/{job_id}/cancel", data={"csrf_token": csrf_from(html)})
    assert again.status_code == 302


def test_admin_sees_every_company_and_filters_by_company(client, auth, make_company, make_user, manager):
    other = make_company("Other Co")
    mine = create_job(client, manager, people(1))
    theirs = create_job(client, other, people(1, "o"))
    auth.logout()
    make_user("root@service.test", role="admin")
    auth.login("root@service.test", "correct horse battery")
    everything = client.get("/admin/jobs/data.json").get_json()
    assert {j["id"] for j in everything["jobs"]} == {mine, theirs}
    assert {j["company"] for j in everything["jobs"]} == {"Acme Jobs", "Other Co"}
    only = client.get(f"/admin/jobs/data.json?company_id={other.id}").get_json()
    assert [j["id"] for j in only["jobs"]] == [theirs]
    assert client.get(f"/admin/jobs/{theirs}/").status_code == 200


def test_job_detail_and_overview_show_bounce_and_complaint_rates(client, manager, acme):
    job_id = create_job(client, acme, people(40))
    job = db.session.get(Job, job_id)
    job.emails_sent, job.emails_bounced, job.status = 37, 3, "completed"
    db.session.add_all([BounceEvent(company_id=acme.id, event_key=f"k{i}", source="ses", kind="hard",
                                    email=f"user{i}@acme.test", job_id=job_id) for i in range(3)]
                       + [BounceEvent(company_id=acme.id, event_key="c1", source="ses", kind="complaint",
                                      email="user9@acme.test", job_id=job_id)])
    db.session.commit()
    page = client.get(f"/admin/jobs/{job_id}/").get_data(as_text=True)
    assert "7.50%" in page and "Bounce rate above 2%" in page  # 3 of 40
    assert "2.50%" in page and "Complaint rate above 0.1%" in page  # 1 of 40
    overview = client.get("/admin/").get_data(as_text=True)
    assert "Bounces" in overview and "complaints" in overview
