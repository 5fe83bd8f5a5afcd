"""The job list and detail say why a live job waits, and show its ETA (recipients left ÷ the rate it
gets, after its next attempt when it backs off); a job that cannot move by itself (paused, scheduled,
its provider's circuit open) has no ETA but "waiting: <reason>", a scheduled one its start time in the
viewer's timezone (a <time> with UTC on hover)."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from core import scheduler
from core.db import db
from core.delivery import limits
from core.delivery.plan import plan_job
from core.models import Batch, Job, utcnow
from core.queue import connection
from core.waiting import describe, fmt_eta


def post(client, company, n: int, **extra) -> int:
    resp = client.post("/api/v1/jobs", headers=company.auth, json={
        "type": "csv_import", "subject": "Hi", "body_text": "Hello",
        "recipients": [{"email": f"u{i}@acme.test"} for i in range(n)], **extra})
    assert resp.status_code == 202, resp.json
    return resp.json["id"]


def test_reasons_and_eta(app, client, make_company, set_settings):
    set_settings(batch_size=50)
    company = make_company(provider="smtp", sender="noreply@acme.test", smtp_host="127.0.0.1", smtp_port=1,
                           max_send_rate=10)
    waits = post(client, company, 100)
    assert describe([db.session.get(Job, waits)])[waits]["waiting"] == "worker"  # not planned yet
    plan_job(waits)
    job = db.session.get(Job, waits)
    info = describe([job])[waits]
    assert (info["waiting"], info["waiting_text"]) == ("worker", "waiting for a worker")
    assert info["rate"] == 10 and info["eta"] == "~10s"  # 100 left at the company's 10/s

    connection().set(scheduler.block_key(company.id), scheduler.now_ms() + 5000, px=5000)
    assert describe([job])[waits]["waiting_text"] == "waiting for its send rate"
    connection().delete(scheduler.block_key(company.id))

    soon = utcnow() + timedelta(seconds=60)
    db.session.execute(update(Batch).where(Batch.job_id == waits).values(status="retry", next_attempt_at=soon))
    db.session.commit()
    info = describe([job])[waits]
    assert info["waiting"] == "backoff" and 60 < info["eta_s"] <= 70  # the next attempt, then 100 at 10/s

    job.status, job.paused_reason = "paused", "no sender address is configured for the company"
    db.session.commit()
    info = describe([job])[waits]
    assert info["waiting_text"] == "paused: no sender address is configured for the company"
    assert (info["eta"], info["eta_s"]) == ("waiting: paused", None)

    job.status = "completed"
    db.session.commit()
    assert describe([job])[waits] == {"waiting": None, "waiting_text": "", "rate": None, "eta_s": None, "eta": "—",
                                      "starts_at": None, "starts_at_utc": ""}


def test_an_open_circuit_without_a_fallback_is_a_wait_not_an_eta(client, make_company):
    company = make_company(provider="ses", sender="noreply@acme.test", aws_access_key="AKIDWAIT",
                           aws_secret_key="wait-secret", aws_region="us-east-1", max_send_rate=10)
    job_id = post(client, company, 30)
    plan_job(job_id)
    job = db.session.get(Job, job_id)
    assert describe([job])[job_id]["eta"] == "~3s"
    for _ in range(limits.BREAKER_THRESHOLD):
        limits.breaker_failure(connection(), company.id, "ses")
    info = describe([job])[job_id]
    assert (info["waiting"], info["eta"], info["eta_s"]) == ("circuit", "waiting: the provider is unavailable "
                                                                        "(circuit open)", None)
    assert info["waiting_text"] == "the provider is unavailable (circuit open) and there is no fallback"


def test_eta_formats():
    assert [fmt_eta(s) for s in (None, 0.2, 42, 125, 7300)] == ["—", "~1s", "~42s", "~2m 05s", "~2h 01m"]


def test_list_and_detail_show_the_reason_and_eta(client, make_company, make_user, auth):
    company = make_company(provider="smtp", sender="noreply@acme.test", smtp_host="127.0.0.1", smtp_port=1,
                           max_send_rate=5)
    make_user("boss@acme.test", company_id=company.id)
    auth.login("boss@acme.test", "correct horse battery")
    starts = (utcnow() + timedelta(hours=1)).replace(microsecond=0)
    job_id = post(client, company, 20, send_at=starts.isoformat())
    row = client.get("/admin/jobs/data.json").get_json()["jobs"][0]
    assert (row["id"], row["waiting"], row["waiting_text"]) == (job_id, "scheduled", "scheduled, starts at")
    assert (row["eta"], row["eta_s"], row["starts_at"]) == ("waiting: starts at", None, starts.isoformat() + "Z")
    utc = starts.strftime("%Y-%m-%d %H:%M UTC")
    moment = f'<time data-field="starts_at" data-local datetime="{starts.isoformat()}Z" title="{utc}">{utc}</time>'
    page = client.get("/admin/jobs/").get_data(as_text=True)
    assert f'<span data-field="waiting_text">scheduled, starts at</span> {moment}' in page
    assert "~4s" not in page  # 20 at 5/s, but it has not started
    detail = client.get(f"/admin/jobs/{job_id}/").get_data(as_text=True)
    assert f'<span data-field="eta">waiting: starts at</span> {moment}' in detail and "~4s" not in detail
    assert 'src="/static/time.js"' in detail
    assert client.get(f"/admin/jobs/{job_id}/data.json").get_json()["waiting"] == "scheduled"
