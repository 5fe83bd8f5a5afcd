"""POST /api/v1/events: events stored in the database before their 202, windows closed by the real RQ
worker, sent through the SES emulator."""
from __future__ import annotations

import json
from datetime import UTC, timedelta

import pytest
from rq.registry import ScheduledJobRegistry
from sqlalchemy import select, text
from werkzeug.test import EnvironBuilder

from core import api_rate, crypto, events
from core.db import db
from core.models import Job, Recipient, WaitingEvent, utcnow
from core.queue import HIGH, connection
from dashboard.api.events import FastPath
from tasks.events import close_window, recover
from tasks.rq_queue import get_queue
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


def stored() -> list:
    db.session.rollback()
    return db.session.execute(select(WaitingEvent)).scalars().all()


def test_500_events_within_the_window_make_one_bulk_job_of_500(client, app, ses_company, ses_local):
    modes = []
    for i in range(500):
        resp = client.post("/api/v1/events", json=event(i), headers=ses_company.auth)
        assert resp.status_code == 202, resp.get_json()
        body = resp.get_json()
        assert body["accepted"] is True and body["job_id"] is None
        modes.append(body["mode"])
    assert modes[:10] == ["single"] * 10 and set(modes[10:]) == {"bulk"}

    # stored before the 202, encrypted: no address or password in the database's text; the closer has
    # no args, and it is the closer of every company's windows, one per tick at most (not one per event)
    raw = db.session.execute(text("SELECT payload FROM waiting_events")).scalars().all()
    assert len(raw) == 500 and not [p for p in raw if "S3cret-" in p or "learner" in p]
    assert len(stored()) == 500 and stored()[0].payload["email"] == "learner0@example.com"
    scheduled = ScheduledJobRegistry(queue=get_queue(HIGH)).get_job_ids()
    ticks = sorted(int(i.rpartition("-")[2]) for i in scheduled)
    assert 1 <= len(ticks) == len(set(ticks)) < 500
    for rq_id in scheduled:
        rq_job = get_queue(HIGH).fetch_job(rq_id)
        assert (rq_job.func_name, rq_job.args) == ("tasks.windows.close_windows", ())

    drain(app)

    jobs = db.session.execute(Job.scoped(ses_company.id)).scalars().all()
    assert [(j.type, j.source, j.email_count) for j in jobs] == [("csv_import", "event", 500)]
    assert jobs[0].status == "completed" and jobs[0].emails_sent == 500
    received = by_recipient(ses_local.store())
    assert received == {f"learner{i}@example.com": 1 for i in range(500)}
    assert stored() == []  # events deleted once they are a job


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
    assert stored() == []


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
    assert stored() == []


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
    assert stored() == []


def test_an_event_the_template_cannot_render_is_refused(client, ses_company):
    make_template(ses_company.id, "reengagement", subject="{{ firstname.__class__.__mro__ }}")
    resp = client.post("/api/v1/events", json=event(1, "reengagement_campaign_triggered"),
                       headers=ses_company.auth)
    assert resp.status_code == 400 and resp.get_json()["error"] == "template_error"
    # refused again for the next event (the process remembers the template failed, and renders to be sure)
    resp = client.post("/api/v1/events", json=event(2, "reengagement_campaign_triggered"),
                       headers=ses_company.auth)
    assert resp.status_code == 400 and resp.get_json()["error"] == "template_error"
    assert stored() == []


def test_an_event_without_a_field_the_template_needs_is_refused_naming_it(client, ses_company):
    body = event(1)
    del body["data"]["password"]
    resp = client.post("/api/v1/events", json=body, headers=ses_company.auth)
    assert resp.status_code == 400
    assert resp.get_json()["error"] == "missing_fields" and resp.get_json()["details"] == {"fields": ["password"]}
    assert stored() == []


def test_a_revoked_token_is_refused_at_once(client, app, ses_company):
    assert client.post("/api/v1/events", json=event(1), headers=ses_company.auth).status_code == 202
    db.session.execute(text("UPDATE api_tokens SET revoked_at = :now"), {"now": utcnow()})
    db.session.commit()
    # the process knew the token a moment ago; the writer checks it again as it stores
    resp = client.post("/api/v1/events", json=event(2), headers=ses_company.auth)
    assert resp.status_code == 401 and resp.get_json()["error"] == "unauthorized"
    assert len(stored()) == 1


def test_the_writer_counts_a_known_tokens_events_against_its_rate_limit(client, app, ses_company, set_settings):
    """A token the process knows is counted by the writer, a group at a time: past the limit a 429 with
    Retry-After, nothing stored; a bad body of that token still counts, and is a 429 once past it."""
    set_settings(api_rate_per_min=4)
    codes = [client.post("/api/v1/events", json=event(i), headers=ses_company.auth) for i in range(3)]
    assert [r.status_code for r in codes] == [202] * 3
    assert client.post("/api/v1/events", json={"event": "nope"}, headers=ses_company.auth).status_code == 400
    late = [client.post("/api/v1/events", json=event(i), headers=ses_company.auth) for i in range(3, 5)]
    assert [r.status_code for r in late] == [429, 429], [r.get_json() for r in late]
    assert late[0].get_json()["error"] == "rate_limited" and 1 <= int(late[0].headers["Retry-After"]) <= 60
    assert client.post("/api/v1/events", json={"event": "nope"}, headers=ses_company.auth).status_code == 429
    assert len(stored()) == 3


def test_a_closer_run_twice_makes_no_second_job(client, app, ses_company, set_settings):
    for i in range(12):
        client.post("/api/v1/events", json=event(i), headers=ses_company.auth)
    set_settings(bulk_window_s=0.0, bulk_max_hold_s=0.0)
    first = events.close_window(ses_company.id, "csv_import")
    assert [j.email_count for j in first.jobs] == [12] and first.events == 12
    assert close_window(ses_company.id, "csv_import") == {"events": 0, "jobs": []}
    assert db.session.execute(select(Job.id).where(Job.company_id == ses_company.id)).scalars().all() == \
        [first.jobs[0].id]
    assert db.session.query(Recipient).filter_by(job_id=first.jobs[0].id).count() == 12


def test_two_closers_at_once_make_one_job(app, ses_company, set_settings):
    """The second closer read the same events; its conditional delete finds them gone and makes nothing."""
    intake = events.Intake(db.engine)
    for i in range(12):
        intake.accept(ses_company.token, event(i))
    set_settings(bulk_window_s=0.0, bulk_max_hold_s=0.0)
    ids = [e.id for e in stored()]
    events._delete(ids)  # another closer took them (its transaction committed first)
    db.session.commit()
    assert events.close_window(ses_company.id, "csv_import").jobs == []
    assert db.session.execute(select(Job.id)).scalars().all() == []


def test_a_window_not_due_says_when_it_will_be(client, app, ses_company):
    client.post("/api/v1/events", json=event(1), headers=ses_company.auth)
    closed = events.close_window(ses_company.id, "csv_import")
    assert closed.jobs == [] and closed.due is not None and closed.due > utcnow()
    assert len(stored()) == 1


def test_an_event_after_the_window_closed_opens_a_new_window(client, app, ses_company, set_settings):
    client.post("/api/v1/events", json=event(1), headers=ses_company.auth)
    registry = ScheduledJobRegistry(queue=get_queue(HIGH))
    assert len(registry.get_job_ids()) == 1
    set_settings(bulk_window_s=0.0, bulk_max_hold_s=0.0)
    close_window(ses_company.id, "csv_import")  # the closer ran: the next event needs a closer of its own
    set_settings(bulk_window_s=1.0, bulk_max_hold_s=None)
    resp = client.post("/api/v1/events", json=event(2), headers=ses_company.auth)
    assert resp.status_code == 202 and resp.get_json()["mode"] == "single"
    [waiting] = stored()
    assert waiting.payload["email"] == "learner2@example.com"
    # a closer (of every window) is scheduled no earlier than the new window is due: its own, or the
    # first one's tick when that is late enough
    due = (waiting.received_at + timedelta(seconds=1.0)).replace(tzinfo=UTC).timestamp()
    ticks = [int(i.rpartition("-")[2]) for i in registry.get_job_ids()]
    assert ticks and max(ticks) >= due


def test_recovery_closes_a_window_whose_closer_was_lost(client, app, ses_company, ses_local, set_settings):
    client.post("/api/v1/events", json=event(7), headers=ses_company.auth)
    registry = ScheduledJobRegistry(queue=get_queue(HIGH))
    for rq_id in registry.get_job_ids():  # Redis lost the closer
        registry.remove(rq_id, delete_job=True)
    assert recover()["events_windows_recovered"] == 0  # not stale yet
    db.session.execute(text("UPDATE waiting_events SET received_at = :old"),
                       {"old": utcnow() - timedelta(hours=1)})
    db.session.commit()
    assert recover()["events_windows_recovered"] == 1
    assert recover()["events_windows_recovered"] == 0
    drain(app)
    assert by_recipient(ses_local.store()) == {"learner7@example.com": 1}


def test_events_an_earlier_version_held_in_redis_are_moved_and_sent(app, ses_company, ses_local):
    conn = connection()
    token = crypto.encrypt(json.dumps({"email": "old@example.com", "data": {"firstname": "Old", "password": "p"},
                                       "event": "user_created", "occurred_at": None}))
    conn.rpush(f"{events.PREFIX}buf:{ses_company.id}:csv_import", token)
    conn.zadd(events.LEGACY_OPEN, {f"{ses_company.id}:csv_import": 1})
    conn.rpush(f"{events.PREFIX}taken:w1", crypto.encrypt(json.dumps(
        {"email": "taken@example.com", "data": {"firstname": "T", "password": "p"}, "event": "user_created",
         "occurred_at": None})))
    conn.zadd(events.LEGACY_CLOSED, {f"{ses_company.id}:csv_import:w1": 1})
    assert recover()["events_moved_from_redis"] == 2
    assert list(conn.scan_iter(match=events.PREFIX + "*")) == []
    db.session.execute(text("UPDATE waiting_events SET received_at = :old"), {"old": utcnow() - timedelta(hours=1)})
    db.session.commit()
    recover()
    drain(app)
    assert by_recipient(ses_local.store()) == {"old@example.com": 1, "taken@example.com": 1}


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


@pytest.fixture
def flask_views(app, monkeypatch):
    """Counts the requests that reach the Flask view (the rest were answered by ``FastPath``)."""
    calls = []
    view = app.view_functions["api.post_event"]

    def counted(*args, **kwargs):
        calls.append(1)
        return view(*args, **kwargs)

    monkeypatch.setitem(app.view_functions, "api.post_event", counted)
    return calls


def test_a_known_tokens_event_skips_flask_with_the_same_answer_and_headers(client, ses_company, flask_views,
                                                                           set_settings):
    first = client.post("/api/v1/events", json=event(1), headers=ses_company.auth)  # the token: unknown
    second = client.post("/api/v1/events", json=event(2), headers=ses_company.auth)  # known now
    assert len(flask_views) == 1 and first.status_code == second.status_code == 202
    assert first.get_data() == second.get_data() == b'{"accepted":true,"job_id":null,"mode":"single"}\n'
    shown = ("Content-Type", "Content-Length", "X-Content-Type-Options", "Referrer-Policy",
             "Strict-Transport-Security", "Content-Security-Policy", "X-Frame-Options")
    assert {h: first.headers.get(h) for h in shown} == {h: second.headers.get(h) for h in shown}
    assert second.headers["X-Content-Type-Options"] == "nosniff" and "Strict-Transport-Security" not in second.headers

    set_settings(production=True)  # HSTS, as on every response in production
    third = client.post("/api/v1/events", json=event(3), headers=ses_company.auth)
    assert third.status_code == 202 and len(flask_views) == 1
    assert third.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert [e.payload["email"] for e in stored()] == [f"learner{i}@example.com" for i in (1, 2, 3)]


def test_what_the_fast_path_refuses_flask_answers_with_the_body_as_it_came(client, ses_company, flask_views,
                                                                            set_settings):
    assert client.post("/api/v1/events", json=event(1), headers=ses_company.auth).status_code == 202
    body = event(2)
    del body["data"]["password"]
    resp = client.post("/api/v1/events", json=body, headers=ses_company.auth)  # read, refused, handed on
    assert resp.status_code == 400 and resp.get_json()["details"] == {"fields": ["password"]}
    resp = client.post("/api/v1/events?x=1", json=event(3), headers=ses_company.auth)  # a query: Flask's
    assert resp.status_code == 202
    resp = client.post("/api/v1/events", data=json.dumps(event(4)), headers=ses_company.auth)  # no JSON type
    assert resp.status_code == 400 and resp.get_json()["error"] == "invalid_json"
    assert len(flask_views) == 4
    assert [e.payload["email"] for e in stored()] == [f"learner{i}@example.com" for i in (1, 3)]


def test_the_fast_path_leaves_a_host_not_served_to_flask_unread(app, client, ses_company, set_settings):
    assert client.post("/api/v1/events", json=event(1), headers=ses_company.auth).status_code == 202
    set_settings(allowed_hosts=("service.example",))  # Flask's host check answers it (a 400)
    handed = []
    fast = FastPath(app, lambda environ, start_response: handed.append(environ["wsgi.input"].read()) or [b""])
    builder = EnvironBuilder(path="/api/v1/events", method="POST", json=event(2), headers=ses_company.auth)
    fast(builder.get_environ(), lambda *args: None)
    assert [json.loads(b) for b in handed] == [event(2)]
    builder = EnvironBuilder(path="/api/v1/events", method="POST", json=event(3),
                             headers={**ses_company.auth, "Host": "service.example"})
    answered = []
    assert json.loads(b"".join(fast(builder.get_environ(), lambda status, headers: answered.append(status))))
    assert answered == ["202 ACCEPTED"] and len(handed) == 1 and len(stored()) == 2


def test_a_redis_connection_closed_under_the_rate_limit_lets_the_request_through(app, monkeypatch):
    """redis-py raises ValueError ("I/O operation on closed file") when another thread closed the connection
    as Redis went away: Redis unavailable, as for its own errors (it was a 500 while Redis restarted)."""

    class Closed:
        def pipeline(self, *args, **kwargs):
            raise ValueError("I/O operation on closed file.")

    monkeypatch.setattr(api_rate, "connection", lambda: Closed())
    assert api_rate.take("ab" * 32) is None and api_rate.take_many({"ab" * 32: 2}) is None
