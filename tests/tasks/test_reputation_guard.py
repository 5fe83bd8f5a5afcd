"""The reputation guard (core.reputation) through the real path: a bulk job sent by an RQ worker
through an SMTP server that answers "550 5.1.1 user unknown" for one address in ten. Once the
company's last sends pass its bounce threshold, its bulk sending pauses itself between chunks with the
reason and figures, an audit entry is written, a bulk job that starts later is held, and transactional
mail keeps flowing; the banner shows it all with a Resume button, which resumes the job. A complaint
reported by the Cloudflare Worker's signed bounce webhook trips it too."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from core import companies, reputation
from core.db import db
from core.models import AuditLog, Company, Job
from providers.webhooks import sign_headers
from tests.support.app import csrf_from, run_worker_burst
from tests.support.servers import SmtpSink

BOUNCE = "550 5.1.1 user unknown"


def gone(i: int) -> bool:
    return i % 10 == 3


@pytest.fixture
def smtp():
    with SmtpSink(refuse={f"u{i}@example.com": BOUNCE for i in range(400) if gone(i)}) as sink:
        yield sink


@pytest.fixture
def guarded(make_company, smtp, set_settings):
    set_settings(batch_size=50)
    return make_company("Guarded Co", provider="smtp", sender="noreply@guarded.test", smtp_host="127.0.0.1",
                        smtp_port=smtp.port, smtp_tls="none")


def post(client, company, numbers, **extra) -> int:
    resp = client.post("/api/v1/jobs", headers=company.auth, json={
        "type": "notification", "subject": "News", "body_text": "Hello {{ name }}",
        "recipients": [{"email": f"u{i}@example.com", "data": {"name": "N"}} for i in numbers], **extra})
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["id"]


def test_bulk_pauses_itself_past_the_bounce_threshold_and_transactional_flows(app, client, guarded, smtp,
                                                                                make_user, auth):
    campaign = post(client, guarded, range(150), priority="bulk")
    run_worker_burst(app)

    company = db.session.get(Company, guarded.id)
    job = db.session.get(Job, campaign)
    # 50 a chunk: at 100 sends 10 had bounced (10% > 5%): the rest waits
    assert company.reputation_paused_at is not None
    assert company.reputation_reason == "bounce rate 10.00% over the last 100 sends (10 bounces) passed 5%"
    assert job.status == "paused" and job.paused_reason.startswith("reputation guard: bounce rate 10.00%")
    assert (job.emails_sent, job.emails_bounced) == (90, 10) and len(smtp.messages) == 90
    entry = db.session.execute(select(AuditLog).where(AuditLog.action == "reputation_paused")).scalar_one()
    assert (entry.company_id, entry.actor) == (guarded.id, "reputation guard")
    assert entry.details["sends"] == 100 and entry.details["bounces"] == 10 and entry.details["jobs_paused"] == 1

    # transactional mail keeps flowing; a bulk job that starts now is held
    password = post(client, guarded, range(1000, 1010), type="csv_import")
    later = post(client, guarded, range(2000, 2005), priority="bulk")
    run_worker_burst(app)
    assert db.session.get(Job, password).status == "completed" and len(smtp.messages) == 100
    held = db.session.get(Job, later)
    assert held.status == "paused" and held.paused_reason.startswith("reputation guard") and held.emails_sent == 0

    # the banner: reason, figures, Resume
    make_user("boss@guarded.test", company_id=guarded.id)
    auth.login("boss@guarded.test", "correct horse battery")
    page = client.get("/admin/").get_data(as_text=True)
    assert "Bulk sending is paused" in page and "bounce rate 10.00% over the last 100 sends (10 bounces)" in page
    assert f'id="resume-reputation-{guarded.id}"' in page
    form = client.get(f"/admin/settings/{guarded.id}/").get_data(as_text=True)  # where the thresholds are set
    assert 'id="section-reputation"' in form and 'id="f-reputation_bounce_pct"' in form
    resumed = client.post(f"/admin/settings/{guarded.id}/reputation/resume", data={"csrf_token": csrf_from(page)})
    assert resumed.status_code == 302
    after = client.get(resumed.headers["Location"]).get_data(as_text=True)
    assert "Bulk sending resumed: 2 paused jobs queued again." in after and "Bulk sending is paused" not in after
    assert db.session.execute(select(AuditLog).where(AuditLog.action == "reputation_resumed")).scalar_one()

    # judged only on the sends after the resume: fewer than 100 more, so both jobs finish
    run_worker_burst(app)
    db.session.expire_all()
    assert db.session.get(Job, campaign).status == "partial_failure"
    assert db.session.get(Job, later).status == "completed"
    assert db.session.get(Company, guarded.id).reputation_paused_at is None


def test_a_company_sets_its_threshold_and_other_companies_are_untouched(app, client, guarded, make_company, smtp):
    companies.configure(db.session.get(Company, guarded.id), {"reputation_bounce_pct": "20"})
    db.session.commit()
    assert reputation.thresholds(guarded.id) == reputation.Thresholds(20.0, 0.1)
    other = make_company("Quiet Co")
    campaign = post(client, guarded, range(200), priority="bulk")
    run_worker_burst(app)
    assert db.session.get(Job, campaign).status == "partial_failure"  # 10% is under its 20%
    assert reputation.tripped(None) == [] and reputation.thresholds(other.id) == reputation.Thresholds()


def test_a_complaint_from_the_webhook_trips_it(app, client, guarded):
    campaign = post(client, guarded, [i for i in range(170) if not gone(i)][:150], priority="bulk")
    run_worker_burst(app)
    assert db.session.get(Job, campaign).status == "completed" and reputation.tripped(guarded.id) == []
    # the Worker's report of a complaint, signed with the company's callback secret
    body = json.dumps({"events": [{"type": "complaint", "email": "u0@example.com"}]}).encode()
    resp = client.post(f"/callbacks/v1/bounces/cloudflare/{guarded.id}", data=body,
                       headers={**sign_headers(guarded.secret, "msg_complaint", body),
                                "Content-Type": "application/json"})
    assert resp.status_code == 200 and resp.get_json()["applied"] == 1
    found = db.session.get(Company, guarded.id)
    assert found.reputation_reason == "complaint rate 0.67% over the last 150 sends (1 complaint) passed 0.1%"
