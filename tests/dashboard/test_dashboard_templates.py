"""Email templates in the dashboard: create and edit through Flask-Admin's
forms, compile errors and duplicate names shown on the form, a preview with
sample data in a sandboxed iframe, and a test send by a real worker."""
from __future__ import annotations

import html as htmllib
import re

import pytest
from sqlalchemy import select

from core.db import db
from core.models import AuditLog, Template
from tests.support.app import csrf_from, run_worker_burst
from tests.support.servers import SmtpSink


@pytest.fixture
def smtp():
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def manager(make_company, make_user, auth, smtp):
    acme = make_company("Acme Templates", provider="smtp", sender="noreply@acme.test", smtp_host="127.0.0.1",
                        smtp_port=smtp.port, smtp_tls="none")
    make_user("manager@acme.test", company_id=acme.id)
    auth.login("manager@acme.test", "correct horse battery")
    return acme


def create(client, **fields):
    page = client.get("/admin/templates/new/").get_data(as_text=True)
    data = {"csrf_token": csrf_from(page), "name": "welcome", "job_type": "csv_import",
            "subject": "Welcome {{ firstname }}", "body_text": "Hi {{ firstname }}, password {{ password }}",
            "body_html": "", **fields}
    return client.post("/admin/templates/new/", data=data)


def test_create_list_edit_and_audit(client, manager):
    resp = create(client, body_html="<p>Hi {{ firstname }}</p>")
    assert resp.status_code == 302
    tpl = db.session.execute(select(Template)).scalar_one()
    assert (tpl.company_id, tpl.name, tpl.job_type) == (manager.id, "welcome", "csv_import")
    listing = client.get("/admin/templates/").get_data(as_text=True)
    assert "welcome" in listing and f"/admin/templates/preview/{tpl.id}/" in listing

    page = client.get(f"/admin/templates/edit/?id={tpl.id}").get_data(as_text=True)
    resp = client.post(f"/admin/templates/edit/?id={tpl.id}", data={
        "csrf_token": csrf_from(page), "name": "welcome", "job_type": "", "subject": "Hello {{ firstname }}",
        "body_text": "Hi", "body_html": ""})
    assert resp.status_code == 302
    db.session.expire_all()
    tpl = db.session.get(Template, tpl.id)
    assert tpl.subject == "Hello {{ firstname }}" and tpl.job_type is None
    actions = db.session.execute(select(AuditLog.action).where(AuditLog.object_type == "template")).scalars().all()
    assert actions == ["template_created", "template_updated"]

    # the LMS can use it by name
    job = client.post("/api/v1/jobs", headers=manager.auth, json={
        "type": "csv_import", "template": "welcome", "recipients": [{"email": "a@example.com",
                                                                     "data": {"firstname": "Ann"}}]})
    assert job.status_code == 202


def test_compile_errors_and_duplicate_names_are_shown_on_the_form(client, manager):
    bad = create(client, subject="Hi {{ firstname ")
    assert bad.status_code == 200
    assert "Subject: template error" in htmllib.unescape(bad.get_data(as_text=True))
    assert db.session.execute(select(Template)).first() is None
    empty = create(client, body_text="", body_html="")
    assert "a text body or an HTML body is required" in empty.get_data(as_text=True)
    assert create(client).status_code == 302
    dup = create(client)
    assert dup.status_code == 200 and "a template with this name exists" in dup.get_data(as_text=True)
    assert len(db.session.execute(select(Template)).all()) == 1


def test_preview_renders_sample_data_escaped_in_a_sandboxed_iframe(client, manager):
    create(client, subject="Welcome {{ firstname }}", body_text="Password: {{ password }}",
           body_html="<p>Hi {{ firstname }}</p><script>alert(1)</script>")
    tpl = db.session.execute(select(Template)).scalar_one()
    page = client.get(f"/admin/templates/preview/{tpl.id}/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "Welcome Ann" in html and "Password: Sample-Pa55" in html
    iframe = re.search(r"<iframe[^>]*>", html).group(0)
    assert 'sandbox=""' in iframe
    # the rendered HTML is escaped into srcdoc, so the template's markup cannot break out of it
    assert "srcdoc=\"&lt;p&gt;Hi Ann&lt;/p&gt;&lt;script&gt;" in iframe

    resp = client.post(f"/admin/templates/preview/{tpl.id}/", data={
        "csrf_token": csrf_from(html), "sample": '{"firstname": "<b>Eve</b>\\"", "password": "x"}'})
    iframe = re.search(r"<iframe[^>]*>", resp.get_data(as_text=True)).group(0)
    # the value is autoescaped by the template renderer, then escaped again into the attribute
    assert "&amp;lt;b&amp;gt;Eve&amp;lt;/b&amp;gt;&amp;#34;" in iframe

    broken = client.post(f"/admin/templates/preview/{tpl.id}/", data={"csrf_token": csrf_from(html),
                                                                       "sample": "[1, 2"})
    assert "sample data is not valid JSON" in broken.get_data(as_text=True)


def test_send_a_test_of_the_template(client, app, manager, smtp):
    create(client, job_type="notification", subject="Welcome {{ firstname }}", body_text="Hi {{ firstname }}")
    tpl = db.session.execute(select(Template)).scalar_one()
    page = client.get(f"/admin/templates/preview/{tpl.id}/").get_data(as_text=True)
    resp = client.post(f"/admin/templates/send-test/{tpl.id}/", headers={"Accept": "application/json"}, data={
        "csrf_token": csrf_from(page), "to": "qa@example.com", "sample": '{"firstname": "Zed"}'})
    assert resp.status_code == 202
    run_worker_burst(app)
    result = client.get(resp.get_json()["result_url"]).get_json()
    assert result["ok"] is True
    message = smtp.messages[0].message
    assert message["Subject"] == "[TEST] Welcome Zed" and message["To"] == "qa@example.com"


def test_admin_creates_a_template_for_a_chosen_company(client, auth, make_company, make_user):
    one, two = make_company("One Co"), make_company("Two Co")
    make_user("root@service.test", role="admin")
    auth.login("root@service.test", "correct horse battery")
    page = client.get("/admin/templates/new/").get_data(as_text=True)
    assert "One Co" in page and "Two Co" in page
    resp = create(client, owner_company=str(two.id))
    assert resp.status_code == 302
    assert db.session.execute(select(Template.company_id)).scalar_one() == two.id
    # the same name is free in another company
    assert create(client, owner_company=str(one.id)).status_code == 302


def test_manager_form_has_no_company_field(client, manager):
    page = client.get("/admin/templates/new/").get_data(as_text=True)
    assert 'name="owner_company"' not in page
