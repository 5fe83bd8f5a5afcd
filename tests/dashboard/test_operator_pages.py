"""Operator pages through the test client: creating a company (no more
NOT NULL crash; token and secret shown once), users with a role and a
company, unlock and password reset, the first-run checklist, the Outbox
(development only, sandboxed preview), styled error pages, timestamps to
the second, and the audit log naming the API token."""
from __future__ import annotations

import re
import smtplib
from datetime import timedelta

from sqlalchemy import select

from core.db import db
from core.models import ApiToken, AuditLog, Company, User, utcnow
from dashboard.admin import delivery_configured
from dashboard.outbox import OutboxSink
from tests.support.app import csrf_from
from tests.support.servers import free_port

PASSWORD = "correct horse battery"


def admin_client(client, auth, make_user):
    make_user("root@service.test", role="admin")
    auth.login("root@service.test", PASSWORD)
    return client


def test_creating_a_company_shows_its_token_and_secret_once(client, auth, make_user):
    admin_client(client, auth, make_user)
    page = client.get("/admin/companies/new/").get_data(as_text=True)
    resp = client.post("/admin/companies/new/", data={"csrf_token": csrf_from(page), "name": "Gamma Learning"})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200 and resp.headers["Cache-Control"] == "no-store"
    token = re.search(r'id="new-api-token"[^>]*>(mro_[^<]+)<', html).group(1)
    secret = re.search(r'id="new-callback-secret"[^>]*>(whsec_[^<]+)<', html).group(1)
    company = db.session.execute(select(Company).where(Company.name == "Gamma Learning")).scalar_one()
    assert company.callback_secret == secret and company.settings is not None
    assert db.session.execute(select(ApiToken).where(ApiToken.company_id == company.id)).scalar_one()
    assert client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    listing = client.get("/admin/companies/").get_data(as_text=True)
    assert token not in listing and secret not in listing
    again = client.post("/admin/companies/new/", data={"csrf_token": csrf_from(page), "name": "Gamma Learning"})
    body = again.get_data(as_text=True)
    assert "exists" in body.lower() and "Integrity" not in body  # a field error, not a crash


def test_users_role_company_unlock_and_reset(client, auth, make_user, make_company):
    admin_client(client, auth, make_user)
    acme = make_company("Acme Users")
    page = client.get("/admin/users/new/").get_data(as_text=True)
    form = {"csrf_token": csrf_from(page), "email": "m@acme.test", "password": "long enough pw", "role": "manager",
            "company": "__None", "active": "y"}
    refused = client.post("/admin/users/new/", data=form).get_data(as_text=True)
    assert "A manager needs a company." in refused
    client.post("/admin/users/new/", data={**form, "company": str(acme.id)})
    user = db.session.execute(select(User).where(User.email == "m@acme.test")).scalar_one()
    assert (user.role, user.company_id) == ("manager", acme.id)

    user.failed_logins, user.locked_until = 5, utcnow() + timedelta(minutes=15)
    db.session.commit()
    listing = client.get("/admin/users/").get_data(as_text=True)
    assert "user-unlock" in listing and ".000" not in listing  # timestamps to the second
    client.post(f"/admin/users/{user.id}/unlock", data={"csrf_token": csrf_from(listing)})
    db.session.expire_all()
    assert db.session.get(User, user.id).locked_until is None and db.session.get(User, user.id).failed_logins == 0

    reset = client.post(f"/admin/users/{user.id}/reset-password", data={"csrf_token": csrf_from(listing)})
    new = re.search(r'id="new-password">([^<]+)<', reset.get_data(as_text=True)).group(1)
    db.session.expire_all()
    assert db.session.get(User, user.id).check_password(new)
    actions = set(db.session.execute(select(AuditLog.action)).scalars())
    assert {"user_created", "user_unlocked", "user_password_reset"} <= actions


def test_checklist_follows_the_first_steps(client, auth, make_user, make_company):
    acme = make_company("Acme Steps")
    make_user("boss@acme.test", company_id=acme.id)
    auth.login("boss@acme.test", PASSWORD)
    html = client.get("/admin/").get_data(as_text=True)
    assert html.count('data-step-done="0"') == 4 and html.count('data-step-done="1"') == 1  # only the token
    assert f'/admin/settings/{acme.id}/#section-general' in html


def test_delivery_configured_is_each_providers_own_answer(app, client, auth, make_user, make_company):
    """Every registered sender says when it can send (SendGrid and Mailgun too); offload mode
    also needs the queue its batches take."""
    done = {
        "sendgrid": make_company(provider="sendgrid", sendgrid_api_key="SG.key"),
        "mailgun": make_company(provider="mailgun", mailgun_api_key="key-1", mailgun_domain="mg.acme.test"),
        "aws": make_company(provider="aws", aws_access_key="AKIA1", aws_secret_key="s"),
        "aws role": make_company(provider="aws", aws_role_arn="arn:aws:iam::123456789012:role/x"),
        "cloudflare": make_company(provider="cloudflare", cloudflare_api_token="t", cloudflare_account_id="a"),
        "smtp": make_company(provider="smtp", smtp_host="mail.acme.test"),
        "cloudflare queue": make_company(provider="cloudflare", mode="offload", cloudflare_api_token="t",
                                         cloudflare_account_id="a", cloudflare_queue_id="q"),
        "https offload": make_company(provider="aws", mode="offload", aws_access_key="AKIA1", aws_secret_key="s",
                                      offload_url="https://abc.execute-api.eu-west-1.amazonaws.com/batches"),
    }
    not_done = {
        "sendgrid without key": make_company(provider="sendgrid"),
        "mailgun without domain": make_company(provider="mailgun", mailgun_api_key="key-1"),
        "aws half a key pair": make_company(provider="aws", aws_access_key="AKIA1"),
        "cloudflare without account": make_company(provider="cloudflare", cloudflare_api_token="t"),
        "smtp without host": make_company(provider="smtp"),
        "offload without a queue": make_company(provider="aws", mode="offload", aws_access_key="AKIA1",
                                                aws_secret_key="s"),
        "disabled": make_company(provider="sendgrid", sendgrid_api_key="SG.key", enabled="0"),
    }
    with app.test_request_context():
        assert {name: delivery_configured(c.company) for name, c in done.items()} == dict.fromkeys(done, True)
        assert {name: delivery_configured(c.company) for name, c in not_done.items()} == \
            dict.fromkeys(not_done, False)
    make_user("boss@sendgrid.test", company_id=done["sendgrid"].id)
    auth.login("boss@sendgrid.test", PASSWORD)
    html = client.get("/admin/").get_data(as_text=True)
    step = re.search(r'data-step-done="(\d)">\s*<span class="mark"[^>]*>.</span><strong>Delivery configured', html)
    assert step is not None and step.group(1) == "1"


def test_the_outbox_lists_captured_mail_with_a_sandboxed_preview(app, client, auth, make_user, tmp_path, set_settings):
    app.instance_path = str(tmp_path)
    sink = OutboxSink(str(tmp_path), port=free_port()).start()
    try:
        with smtplib.SMTP("127.0.0.1", sink.port) as smtp:
            smtp.sendmail("a@example.com", ["b@example.com"],
                          "Subject: Hello\r\nFrom: a@example.com\r\nTo: b@example.com\r\nMIME-Version: 1.0\r\n"
                          "Content-Type: text/html; charset=utf-8\r\n\r\n<p>Hi <script>alert(1)</script></p>\r\n")
    finally:
        sink.stop()
    admin_client(client, auth, make_user)
    listing = client.get("/admin/outbox/").get_data(as_text=True)
    message_id = re.search(r"/admin/outbox/([0-9]{13}-[0-9a-f]{8}\.eml)/", listing).group(1)
    assert "b@example.com" in listing and "Hello" in listing
    detail = client.get(f"/admin/outbox/{message_id}/").get_data(as_text=True)
    assert 'sandbox=""' in detail and "<script>alert" not in detail
    preview = client.get(f"/admin/outbox/{message_id}/preview")
    assert preview.headers["Content-Security-Policy"].startswith("sandbox;")
    assert client.get("/admin/outbox/..%2Fsecret-key/").status_code == 404
    set_settings(production=True)
    assert client.get("/admin/outbox/").status_code == 404  # development only


def test_error_pages_are_styled(client, auth, make_user):
    public = client.get("/verify/NOSUCHCODE")  # the verify page's own not-found, with its lookup form
    assert public.status_code == 404 and 'id="not-found"' in public.get_data(as_text=True)
    assert client.get("/no/such/page").status_code == 404
    admin_client(client, auth, make_user)
    dashboard = client.get("/admin/jobs/999999/").get_data(as_text=True)
    assert 'data-status="404"' in dashboard and 'href="/admin/"' in dashboard
    api = client.get("/api/v1/jobs/1")
    assert api.is_json  # the API keeps its JSON errors


def test_the_audit_log_names_the_api_token(client, company):
    resp = client.post("/api/v1/jobs", headers=company.auth, json={
        "type": "notification", "subject": "Hi", "body_text": "x", "recipients": [{"email": "a@example.com"}]})
    assert resp.status_code == 202
    entry = db.session.execute(select(AuditLog).where(AuditLog.action == "job_created")).scalar_one()
    assert entry.actor == f"API token LMS ({company.token[:12]}…)"
