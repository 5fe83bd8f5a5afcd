"""The LMS jobs API (CONTRACT §3): validation, tenancy, idempotency."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from core.db import db
from core.models import ApiToken, Job, Recipient, Template, utcnow
from core.queue import connection

JOB = {"type": "csv_import", "subject": "Welcome {{ firstname }}",
       "body_text": "Hi {{ firstname }}, your password is {{ password }}", "body_html": "<p>Hi {{ firstname }}</p>"}


def recipients(n: int, domain: str = "acme.test") -> list[dict]:
    return [{"email": f"user{i}@{domain}", "data": {"firstname": f"U{i}", "password": f"pw{i}"}} for i in range(n)]


def post_job(client, company, body=None, **headers):
    return client.post("/api/v1/jobs", json=body or {**JOB, "recipients": recipients(3)},
                       headers={**company.auth, **headers})


def test_create_returns_202_with_the_job_and_queues_it(client, company):
    resp = post_job(client, company)
    assert resp.status_code == 202
    job = resp.json
    assert job["status"] == "queued" and job["email_count"] == 3 and job["company_id"] == company.id
    assert job["created_at"].endswith("Z")
    assert connection().llen("rq:queue:offload-default") == 1  # planned by a worker, not in the request


def test_invalid_addresses_are_kept_as_failed(client, company):
    body = {**JOB, "recipients": [{"email": "ok@acme.test", "data": {"firstname": "Ok", "password": "pw"}},
                                  {"email": "not-an-address"},
                                  {"email": "evil@acme.test\r\nBcc: x@y.test"}, {"email": 42}, "junk"]}
    resp = post_job(client, company, body)
    assert resp.status_code == 202 and resp.json["email_count"] == 5 and resp.json["emails_failed"] == 4
    rows = db.session.execute(select(Recipient.email, Recipient.status, Recipient.error).order_by(Recipient.id)).all()
    assert [r.status for r in rows] == ["pending", "failed", "failed", "failed", "failed"]
    assert rows[1].error == "invalid_email" and rows[2].error == "invalid_email"
    assert "\r" not in rows[2].email and "\n" not in rows[2].email


@pytest.mark.parametrize("body,code", [
    ({**JOB, "type": "spam", "recipients": recipients(1)}, "invalid_type"),
    ({**JOB, "recipients": []}, "no_recipients"),
    ({**JOB}, "no_recipients"),
    ({**JOB, "subject": "{{ broken ", "recipients": recipients(1)}, "template_error"),
    ({**JOB, "body_html": "{% for %}", "recipients": recipients(1)}, "template_error"),
    ({"type": "csv_import", "template": "nope", "recipients": recipients(1)}, "template_not_found"),
    ({**JOB, "send_at": "tomorrow", "recipients": recipients(1)}, "invalid_field"),
    ([1, 2], "invalid_json"),
])
def test_bad_requests_are_400_with_a_reason(client, company, body, code):
    resp = post_job(client, company, body)
    assert resp.status_code == 400 and resp.json["error"] == code and resp.json["message"]
    assert db.session.execute(select(Job)).first() is None


def test_non_json_body_is_400(client, company):
    resp = client.post("/api/v1/jobs", data="hello", headers=company.auth)
    assert resp.status_code == 400 and resp.json["error"] == "invalid_json"


def test_stored_template_is_used(client, company):
    db.session.add(Template(company_id=company.id, name="welcome", job_type="csv_import",
                            subject="Hello {{ firstname }}", body_text="pw {{ password }}"))
    db.session.commit()
    resp = post_job(client, company, {"type": "csv_import", "template": "welcome", "recipients": recipients(2)})
    assert resp.status_code == 202
    assert db.session.get(Job, resp.json["id"]).subject == "Hello {{ firstname }}"


@pytest.mark.parametrize("header", [None, "Bearer nope", "Basic abc", "Bearer "])
def test_missing_or_wrong_token_is_401(client, header):
    resp = client.get("/api/v1/jobs", headers={"Authorization": header} if header else {})
    assert resp.status_code == 401 and resp.json["error"] == "unauthorized"


def test_revoked_token_is_401(client, company):
    token = db.session.execute(select(ApiToken)).scalar_one()
    token.revoked_at = utcnow()
    db.session.commit()
    assert client.get("/api/v1/jobs", headers=company.auth).status_code == 401


def test_another_companys_job_is_404_everywhere(client, company, make_company):
    other = make_company("Globex", sender="x@globex.test")
    job_id = post_job(client, company).json["id"]
    for method, path in [("get", f"/api/v1/jobs/{job_id}"), ("get", f"/api/v1/jobs/{job_id}/recipients"),
                         ("post", f"/api/v1/jobs/{job_id}/retry"), ("post", f"/api/v1/jobs/{job_id}/cancel")]:
        resp = getattr(client, method)(path, headers=other.auth)
        assert resp.status_code == 404, path
        assert resp.json["error"] == "not_found"
    listing = client.get("/api/v1/jobs", headers=other.auth).json
    assert listing["jobs"] == [] and listing["total"] == 0
    assert client.get(f"/api/v1/jobs/{job_id}", headers=company.auth).status_code == 200


def test_list_filters_and_pages_newest_first(client, company):
    ids = [post_job(client, company).json["id"] for _ in range(3)]
    post_job(client, company, {**JOB, "type": "reengagement", "recipients": recipients(1)})
    listing = client.get("/api/v1/jobs?type=csv_import", headers=company.auth).json
    assert [j["id"] for j in listing["jobs"]] == list(reversed(ids)) and listing["total"] == 3
    assert client.get("/api/v1/jobs?status=completed", headers=company.auth).json["total"] == 0
    assert client.get("/api/v1/jobs?page=0", headers=company.auth).status_code == 400
    assert client.get("/api/v1/jobs?type=nope", headers=company.auth).status_code == 400


def test_recipients_never_show_data(client, company):
    job_id = post_job(client, company).json["id"]
    resp = client.get(f"/api/v1/jobs/{job_id}/recipients", headers=company.auth)
    assert resp.status_code == 200
    body = resp.get_data(as_text=True)
    assert "pw0" not in body and "data" not in resp.json["recipients"][0]
    assert {r["status"] for r in resp.json["recipients"]} == {"pending"}
    assert client.get(f"/api/v1/jobs/{job_id}/recipients?status=failed", headers=company.auth).json["recipients"] == []
    assert client.get(f"/api/v1/jobs/{job_id}/recipients?status=bogus", headers=company.auth).status_code == 400


def test_idempotency_key_returns_the_first_job(client, company, make_company):
    first = post_job(client, company, **{"Idempotency-Key": "import-42"})
    again = post_job(client, company, {**JOB, "recipients": recipients(7)}, **{"Idempotency-Key": "import-42"})
    assert first.status_code == again.status_code == 202
    assert again.json["id"] == first.json["id"] and again.json["email_count"] == 3
    assert again.headers["Idempotent-Replayed"] == "true"
    assert db.session.execute(select(Job)).scalars().all().__len__() == 1
    # the same key from another company is another job
    other = make_company("Globex", sender="x@globex.test")
    assert post_job(client, other, **{"Idempotency-Key": "import-42"}).json["id"] != first.json["id"]


def test_idempotency_key_expires_after_24_hours(client, company):
    first = post_job(client, company, **{"Idempotency-Key": "k"}).json["id"]
    job = db.session.get(Job, first)
    job.created_at = utcnow().replace(year=utcnow().year - 1)
    db.session.commit()
    second = post_job(client, company, **{"Idempotency-Key": "k"}).json["id"]
    assert second != first


def test_cancel_before_sending_cancels_everything(app, client, company):
    from tests.support.app import run_worker_burst

    job_id = post_job(client, company).json["id"]
    resp = client.post(f"/api/v1/jobs/{job_id}/cancel", headers=company.auth)
    assert resp.status_code == 202
    run_worker_burst(app)
    db.session.expire_all()
    assert db.session.get(Job, job_id).status == "cancelled"
    statuses = set(db.session.execute(select(Recipient.status)).scalars())
    assert statuses == {"cancelled"}
    assert client.post(f"/api/v1/jobs/{job_id}/cancel", headers=company.auth).status_code == 409


def test_send_at_schedules_the_job(client, company):
    resp = post_job(client, company, {**JOB, "recipients": recipients(1), "send_at": "2099-01-01T08:00:00Z"})
    assert resp.status_code == 202 and resp.json["send_at"] == "2099-01-01T08:00:00Z"
    assert connection().llen("rq:queue:offload-default") == 0
    assert connection().zcard("rq:scheduled:offload-default") == 1
