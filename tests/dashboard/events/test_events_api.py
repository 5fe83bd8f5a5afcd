"""POST /api/v1/events: windows in the real Redis, closed by the real RQ worker,
sent through the SES emulator."""
from __future__ import annotations

import pytest
from rq.registry import ScheduledJobRegistry
from sqlalchemy import select

from core import events
from core.db import db
from core.models import Job, Recipient
from core.queue import HIGH, connection
from tasks.rq_queue import get_queue
from tasks.events import close_window, flush_window, recover
from tests.support.events import by_recipient, drain, make_template, ses_settings


@pytest.fixture
def ses_company(make_company, ses_local, app, set_settings):
    ses_local.clear()
    set_settings(bulk_window_s=1.0, bulk_threshold=10)
    company = make_company("Events Co", **ses_settings(ses_local))
    make_template(company.id, "csv_import")
    make_template(company.id, "license_allocation", subject="Your licence {{ license }}",
                  body_text="Code {{ license }}", body_html=None)
    return company


def event(i: int, name: str = "user_created", **data) -> dict:
    return {"event": name, "email": f"learner{i}@example.com",
            "data": {"firstname": f"Ann{i}", "password": f"S3cret-{i}!", **data},
            "occurred_at": "2026-11-22T10:30:00Z"}


def event_keys() -> list[bytes]:
    return list(connection().scan_iter(match=events.PREFIX + "*"))


def test_500_events_within_the_window_make_one_bulk_job_of_500(client, app, ses_company, ses_local):
    modes = []
    for i in range(500):
        resp = client.post("/api/v1/events", json=event(i), headers=ses_company.auth)
        assert resp.status_code == 202, resp.get_json()
        body = resp.get_json()
        assert body["accepted"] is True and body["job_id"] is None
        modes.append(body["mode"])
    assert modes[:10] == ["single"] * 10 and set(modes[10:]) == {"bulk"}

    # held encrypted: no address or password in Redis; the closer's RQ args are ids only
    conn = connection()
    raw = b"".join(conn.lrange(events.buf_key(ses_company.id, "csv_import"), 0, -1))
    assert b"S3cret-" not in raw and b"learner" not in raw
    (scheduled,) = ScheduledJobRegistry(queue=get_queue(HIGH)).get_job_ids()
    rq_job = get_queue(HIGH).fetch_job(scheduled)
    assert rq_job.func_name == "tasks.events.close_window"
    assert rq_job.args[:2] == (ses_company.id, "csv_import") and len(rq_job.args) == 3

    drain(app)

    jobs = db.session.execute(Job.scoped(ses_company.id)).scalars().all()
    assert [(j.type, j.source, j.email_count) for j in jobs] == [("csv_import", "event", 500)]
    assert jobs[0].status == "completed" and jobs[0].emails_sent == 500
    received = by_recipient(ses_local.store())
    assert received == {f"learner{i}@example.com": 1 for i in range(500)}
    assert event_keys() == []  # events deleted once they are a job


def test_three_events_are_three_single_sends(client, app, ses_company, ses_local):
    for i in range(3):
        resp = client.post("/api/v1/events", json=event(i, "license_allocated", license=f"LIC-{i}"),
                           headers=ses_company.auth)
        assert resp.status_code == 202 and resp.get_json()["mode"] == "single"

    drain(app)

    jobs = db.session.execute(Job.scoped(ses_company.id).order_by(Job.id)).scalars().all()
    assert [(j.type, j.email_count, j.status) for j in jobs] == [("license_allocation", 1, "completed")] * 3
    sent = ses_local.store()
    assert sorted(m["destination"]["to"][0] for m in sent) == [f"learner{i}@example.com" for i in range(3)]
    assert sorted(m["subject"] for m in sent) == ["Your licence LIC-0", "Your licence LIC-1", "Your licence LIC-2"]
    assert event_keys() == []


@pytest.mark.parametrize("body, code", [
    ({"event": "user_deleted", "email": "a@example.com"}, "unknown_event"),
    ({"event": "user_created", "email": "not an address"}, "invalid_email"),
    ({"event": "user_created", "email": "a@example.com\r\nBcc: x@evil.test"}, "invalid_email"),
    ({"event": "user_created", "email": "a@example.com", "data": ["x"]}, "invalid_data"),
    ({"event": "user_created", "email": "a@example.com", "occurred_at": "yesterday"}, "invalid_field"),
    (["user_created"], "invalid_json"),
])
def test_bad_events_are_400_with_a_reason_and_store_nothing(client, ses_company, body, code):
    resp = client.post("/api/v1/events", json=body, headers=ses_company.auth)
    assert resp.status_code == 400
    assert resp.get_json()["error"] == code and resp.get_json()["message"]
    assert event_keys() == []


def test_not_json_no_token_and_no_template(client, make_company, ses_company):
    resp = client.post("/api/v1/events", data="event=user_created", headers=ses_company.auth)
    assert resp.status_code == 400 and resp.get_json()["error"] == "invalid_json"
    assert client.post("/api/v1/events", json=event(1)).status_code == 401

    # the other company's template is not this company's: 400, nothing held
    other = make_company("No Templates Co")
    resp = client.post("/api/v1/events", json=event(1, "course_completed"), headers=other.auth)
    assert resp.status_code == 400
    assert resp.get_json() == {"error": "no_template", "message": "no template for certificate",
                               "details": {"job_type": "certificate"}}
    assert event_keys() == []


def test_an_event_the_template_cannot_render_is_refused(client, ses_company):
    make_template(ses_company.id, "reengagement", subject="{{ firstname.__class__.__mro__ }}")
    resp = client.post("/api/v1/events", json=event(1, "reengagement_campaign_triggered"),
                       headers=ses_company.auth)
    assert resp.status_code == 400 and resp.get_json()["error"] == "template_error"


def test_a_closer_run_twice_makes_no_second_job(client, app, ses_company):
    for i in range(12):
        client.post("/api/v1/events", json=event(i), headers=ses_company.auth)
    conn = connection()
    state = events.window_state(conn, ses_company.id, "csv_import")
    assert events.take_window(conn, ses_company.id, "csv_import", state.window_id)
    assert not events.take_window(conn, ses_company.id, "csv_import", state.window_id)  # only one taker
    # a worker made the job, then died before deleting the events: the retry finds the job
    taken = events.taken_events(conn, state.window_id)
    (first, created), = events.make_jobs(ses_company.id, "csv_import", state.window_id, taken, threshold=10,
                                         max_recipients=50_000)
    assert created
    again = close_window(ses_company.id, "csv_import", state.window_id)
    assert again["jobs"] == [first.id]
    assert flush_window(ses_company.id, "csv_import", state.window_id)["events"] == 0
    assert db.session.execute(select(Job.id).where(Job.company_id == ses_company.id)).scalars().all() == [first.id]
    assert db.session.query(Recipient).filter_by(job_id=first.id).count() == 12


def test_an_event_after_the_window_closed_opens_a_new_window(client, app, ses_company):
    client.post("/api/v1/events", json=event(1), headers=ses_company.auth)
    conn = connection()
    first = events.window_state(conn, ses_company.id, "csv_import").window_id
    assert events.take_window(conn, ses_company.id, "csv_import", first)
    client.post("/api/v1/events", json=event(2), headers=ses_company.auth)
    second = events.window_state(conn, ses_company.id, "csv_import").window_id
    assert second and second != first
    assert [e["email"] for e in events.taken_events(conn, first)] == ["learner1@example.com"]
    assert len(ScheduledJobRegistry(queue=get_queue(HIGH)).get_job_ids()) == 2  # one closer per window


def test_recovery_closes_a_window_whose_closer_was_lost(client, app, ses_company, ses_local, set_settings):
    set_settings(bulk_max_hold_s=0.1)
    client.post("/api/v1/events", json=event(7), headers=ses_company.auth)
    registry = ScheduledJobRegistry(queue=get_queue(HIGH))
    for rq_id in registry.get_job_ids():  # the web process died before scheduling
        registry.remove(rq_id, delete_job=True)
    conn = connection()
    conn.zadd(events.OPEN, {f"{ses_company.id}:csv_import": 1}, xx=True)  # opened long ago
    assert recover() == {"events_windows_recovered": 1}
    assert recover() == {"events_windows_recovered": 0}  # already queued
    drain(app)
    assert by_recipient(ses_local.store()) == {"learner7@example.com": 1}


def test_another_company_cannot_see_event_jobs(client, app, ses_company, make_company):
    client.post("/api/v1/events", json=event(1), headers=ses_company.auth)
    drain(app)
    (job_id,) = db.session.execute(select(Job.id).where(Job.company_id == ses_company.id)).scalars()
    other = make_company("Other Co")
    assert client.get(f"/api/v1/jobs/{job_id}", headers=other.auth).status_code == 404
    assert client.get(f"/api/v1/jobs/{job_id}", headers=ses_company.auth).status_code == 200


@pytest.mark.parametrize("name, jtype", [("user_created", "csv_import"), ("license_allocated", "license_allocation"),
                                         ("reengagement_campaign_triggered", "reengagement"),
                                         ("course_completed", "certificate")])
def test_each_event_maps_to_its_job_type(name, jtype):
    parsed = events.parse_event({"event": name, "email": " a@example.com ", "occurred_at": "2026-11-22T11:30:00+01:00"})
    assert (parsed.job_type, parsed.email, parsed.data, parsed.occurred_at) == (jtype, "a@example.com", {},
                                                                                "2026-11-22T10:30:00Z")
