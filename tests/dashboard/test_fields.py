"""Templates declare their fields (core.fields): a template is checked against its job type when it is
saved (API and dashboard), each recipient's data against the template and the type when a job is
submitted: a 400 naming the fields and the first recipients, or, with ``"on_missing": "fail_recipient"``,
that recipient alone fails with its reason and the rest are sent. Nothing is sent with a blank."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from core import companies, fields, labels
from core.db import db
from core.models import Job, Recipient, Template
from service.devserver import DEMO_TEMPLATES
from tests.support.app import csrf_from, run_worker_burst
from tests.support.servers import SmtpSink

PASSWORD_MAIL = {"type": "csv_import", "subject": "Welcome {{ firstname }}",
                 "body_text": "Hi {{ firstname }}, your password is {{ password }}."}


def rcpt(email: str, **data) -> dict:
    return {"email": email, "data": data}


@pytest.fixture
def sink(company):
    with SmtpSink() as server:
        companies.configure(company.company, {"smtp_host": "127.0.0.1", "smtp_port": str(server.port),
                                              "smtp_tls": "none"})
        db.session.commit()
        yield server


# -------------------------------------------------------------------- templates checked when saved

def test_a_password_template_that_does_not_use_the_password_is_refused_in_words(client, company):
    resp = client.put("/api/v1/templates/welcome", headers=company.auth,
                      json={"type": "csv_import", "subject": "Welcome {{ firstname }}", "body_text": "Hi!"})
    assert resp.status_code == 400 and resp.json["error"] == "template_fields"
    assert resp.json["details"] == {"fields": ["password"]}
    assert "must use {{ password }}" in resp.json["message"] and "New accounts" in resp.json["message"]
    assert "csv_import" not in resp.json["message"]  # words, not keys
    assert client.get("/api/v1/templates/welcome", headers=company.auth).status_code == 404


def test_a_name_the_type_does_not_know_is_saved_with_a_warning(client, company):
    resp = client.put("/api/v1/templates/cert", headers=company.auth,
                      json={"type": "certificate", "subject": "Your certificate for {{ course }}",
                            "body_text": "Well done {{ learner_name }}: {{ certificate_url }}"})
    assert resp.status_code == 201
    (warning,) = resp.json["warnings"]
    assert warning.startswith("course: not a field of Certificate") and "course_name" in warning
    known = client.put("/api/v1/templates/cert", headers=company.auth,
                       json={"type": "certificate", "subject": "Your certificate for {{ course_name }}",
                             "body_text": "Well done {{ learner_name }}: {{ certificate_url }}"})
    assert known.status_code == 200 and known.json["warnings"] == []


def test_every_demo_template_uses_its_types_fields_only():
    for job_type, (name, subject, body) in DEMO_TEMPLATES.items():
        check = fields.check_template(job_type, _variables(subject, body), labels.label("job_type", job_type))
        assert check.errors == [] and check.warnings == [], (name, check)


def _variables(*parts: str) -> tuple[str, ...]:
    from core.rendering import CompiledTemplate

    return CompiledTemplate(parts[0], parts[1], None).variables


def test_the_dashboard_refuses_a_password_template_without_the_password(client, company, make_user, auth):
    user, password = make_user("boss@acme.test", "manager", company.id)
    auth.login(user.email, password)
    page = client.get("/admin/templates/new/").get_data(as_text=True)
    form = {"csrf_token": csrf_from(page), "name": "welcome", "job_type": "csv_import",
            "subject": "Welcome {{ firstname }}", "body_text": "Hi {{ firstname }}", "body_html": ""}
    resp = client.post("/admin/templates/new/", data=form)
    html = resp.get_data(as_text=True)
    assert "must use {{ password }}" in html.replace("&#123;", "{").replace("&#125;", "}")
    assert db.session.execute(select(Template)).first() is None
    saved = client.post("/admin/templates/new/", data={**form, "body_text": "Hi, password {{ password }} {{ nick }}"},
                        follow_redirects=True)
    assert saved.status_code == 200 and db.session.execute(select(Template)).scalar_one().name == "welcome"
    assert "nick: not a field of New accounts" in saved.get_data(as_text=True)


# -------------------------------------------------------------------- recipients checked when submitted

def test_recipients_missing_a_field_are_a_400_naming_the_fields_and_the_first_recipients(client, company):
    people = [rcpt("ok@acme.test", firstname="Ok", password="pw")] + \
        [rcpt(f"u{i}@acme.test", firstname="U") for i in range(12)] + [rcpt("blank@acme.test", firstname="B",
                                                                            password="  ")]
    resp = client.post("/api/v1/jobs", headers=company.auth, json={**PASSWORD_MAIL, "recipients": people})
    assert resp.status_code == 400 and resp.json["error"] == "missing_fields"
    details = resp.json["details"]
    assert details["fields"] == ["password"] and details["count"] == 13
    assert len(details["recipients"]) == fields.NAMED_RECIPIENTS
    assert details["recipients"][0] == {"index": 1, "email": "u0@acme.test", "fields": ["password"]}
    assert "13 recipients lack password" in resp.json["message"] and "recipient 1 (u0@acme.test)" in \
        resp.json["message"] and "fail_recipient" in resp.json["message"]
    assert db.session.execute(select(Job)).first() is None

    nothing = client.post("/api/v1/jobs", headers=company.auth,
                          json={**PASSWORD_MAIL, "recipients": [{"email": "ann@acme.test"}]})
    assert nothing.status_code == 400 and nothing.json["details"]["fields"] == ["firstname", "password"]


def test_fail_recipient_fails_those_alone_and_sends_the_rest_with_no_blank(client, app, company, sink):
    people = [rcpt("ann@acme.test", firstname="Ann", password="Pw-1"), rcpt("bob@acme.test", firstname="Bob"),
              rcpt("cid@acme.test", firstname="Cid", password=""), rcpt("dee@acme.test", password="Pw-4")]
    resp = client.post("/api/v1/jobs", headers=company.auth,
                       json={**PASSWORD_MAIL, "recipients": people, "on_missing": "fail_recipient"})
    assert resp.status_code == 202 and resp.json["emails_failed"] == 3
    run_worker_burst(app)
    rows = dict(db.session.execute(select(Recipient.email, Recipient.error)).all())
    assert rows == {"ann@acme.test": None, "bob@acme.test": "missing_fields: password",
                    "cid@acme.test": "missing_fields: password", "dee@acme.test": "missing_fields: firstname"}
    assert sink.recipients() == ["ann@acme.test"]
    assert b"password is Pw-1." in sink.messages[0].data
    assert labels.error("missing_fields: password") == "Not sent: its data lacks fields the mail needs: password"
    job = db.session.get(Job, resp.json["id"])
    assert job.status == "partial_failure" and job.emails_sent == 1 and job.emails_failed == 3
    retried = client.post(f"/api/v1/jobs/{job.id}/retry", headers=company.auth)
    assert retried.status_code == 202 and retried.json["retried"] == 0  # the same data would lack the same


def test_on_missing_takes_two_words(client, company):
    resp = client.post("/api/v1/jobs", headers=company.auth, json={
        **PASSWORD_MAIL, "recipients": [rcpt("a@acme.test", firstname="A", password="p")], "on_missing": "skip"})
    assert resp.status_code == 400 and resp.json["error"] == "invalid_field"


def test_a_certificate_needs_the_course_and_the_learner_at_submit(client, company):
    mail = {"type": "certificate", "subject": "Your certificate", "body_text": "Download: {{ certificate_url }}"}
    resp = client.post("/api/v1/jobs", headers=company.auth, json={**mail, "recipients": [
        rcpt("a@acme.test", learner_name="Ann", course="Safety"),  # the demo's old name for it
        rcpt("b@acme.test", course_name="Safety"),
        rcpt("c@acme.test", firstname="Cid", lastname="Example", course_name="Safety")]})
    assert resp.status_code == 400 and resp.json["error"] == "missing_fields"
    assert [(r["email"], r["fields"]) for r in resp.json["details"]["recipients"]] == [
        ("a@acme.test", ["course_name"]), ("b@acme.test", ["learner_name"])]


def test_an_event_missing_a_required_field_is_a_400(client, company):
    db.session.add(Template(company_id=company.id, name="cert", job_type="certificate",
                            subject="Your certificate", body_text="{{ certificate_url }}"))
    db.session.commit()
    resp = client.post("/api/v1/events", headers=company.auth, json={
        "event": "course_completed", "email": "a@acme.test", "data": {"learner_name": "Ann", "course": "Safety"}})
    assert resp.status_code == 400 and resp.json["error"] == "missing_fields"
    assert resp.json["details"] == {"fields": ["course_name"]}


def test_the_openapi_document_lists_each_types_fields(client):
    doc = client.get("/api/v1/openapi.json").json
    schemas = doc["components"]["schemas"]
    assert schemas["Fields_csv_import"]["x-template-must-use"] == ["password"]
    assert schemas["Fields_certificate"]["required"] == ["course_name"]
    assert "learner_name" in schemas["Fields_certificate"]["properties"]
    assert schemas["Fields_certificate"]["x-added-by-the-service"] == ["certificate_url", "verify_url",
                                                                       "certificate_code"]
    assert doc["components"]["schemas"]["NewJob"]["properties"]["on_missing"]["enum"] == ["reject", "fail_recipient"]
    assert {f"Fields_{t}" for t in fields.TYPES} <= set(schemas)


def test_a_preview_missing_a_field_says_so_in_words_and_shows_no_blank(client, company, make_user, auth):
    db.session.add(Template(company_id=company.id, name="welcome", job_type="csv_import",
                            subject="Welcome {{ firstname }}", body_text="Your password is {{ password }}."))
    db.session.commit()
    tpl = db.session.execute(select(Template)).scalar_one()
    user, password = make_user("boss@acme.test", "manager", company.id)
    auth.login(user.email, password)
    page = client.get(f"/admin/templates/preview/{tpl.id}/").get_data(as_text=True)
    resp = client.post(f"/admin/templates/preview/{tpl.id}/",
                       data={"csrf_token": csrf_from(page), "sample": '{"firstname": "Ann", "password": ""}'})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400
    assert "The sample data has no password, which this mail needs" in html
    assert "Your password is ." not in html
