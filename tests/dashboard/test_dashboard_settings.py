"""Company settings in the dashboard: write-only secrets, field errors,
audit by field name, API tokens, callback secret rotation, and the
connection test / test email jobs run by a real worker against a real
SMTP server."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from core import audit
from core.db import db
from core.models import ApiToken, AuditLog, Company
from core.queue import HIGH, connection
from dashboard.admin.company_settings import labels
from tasks.rq_queue import get_queue
from tests.support.app import csrf_from, run_worker_burst
from tests.support.servers import SmtpSink

SECRET = "canary-secret-XYZ-0123456789"
# the loopback SMTP server below takes AUTH without TLS (aiosmtpd warns about it)
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


@pytest.fixture
def manager(company, make_user, auth):
    make_user("manager@acme.test", company_id=company.id)
    auth.login("manager@acme.test", "correct horse battery")
    return company


def settings_url(company) -> str:
    return f"/admin/settings/{company.id}/"


def save(client, company, section: str, **fields):
    page = client.get(settings_url(company)).get_data(as_text=True)
    data = {"csrf_token": csrf_from(page), "section": section, **fields}
    return client.post(f"/admin/settings/{company.id}/save", data=data)


def fresh(company_id: int) -> Company:
    db.session.expire_all()
    return db.session.get(Company, company_id)


AWS_FORM = {"aws_access_key": "AKIACANARY0000000001", "aws_secret_key": SECRET, "aws_role_arn": "",
            "aws_region": "eu-west-1", "aws_endpoint_url": "", "sqs_queue_url": "", "s3_bucket": ""}


def test_manager_is_sent_to_their_company_and_secrets_show_as_not_set(client, manager):
    resp = client.get("/admin/settings/")
    assert resp.status_code == 302 and resp.headers["Location"].endswith(settings_url(manager))
    html = client.get(settings_url(manager)).get_data(as_text=True)
    assert html.count("not set") >= 4 and 'type="password"' in html
    assert fresh(manager.id).settings.get_setting("aws_external_id") in html  # the role's external id is shown


def test_secrets_are_write_only_blank_keeps_and_clear_removes(client, manager):
    resp = save(client, manager, "aws", **AWS_FORM)
    assert resp.status_code == 302
    settings = fresh(manager.id).settings
    assert tuple(map(settings.get_setting, ("aws_access_key", "aws_secret_key", "aws_region"))) == \
        ("AKIACANARY0000000001", SECRET, "eu-west-1")
    html = client.get(settings_url(manager)).get_data(as_text=True)
    assert SECRET not in html and "AKIACANARY0000000001" not in html
    assert 'data-secret-state="aws_secret_key">set ••••' in html
    assert "aws: saved" in html.lower() or "saved (" in html

    # blank secret fields keep the stored values
    assert save(client, manager, "aws", **{**AWS_FORM, "aws_access_key": "", "aws_secret_key": "",
                                           "aws_region": "us-east-1"}).status_code == 302
    settings = fresh(manager.id).settings
    assert settings.get_setting("aws_secret_key") == SECRET and settings.get_setting("aws_region") == "us-east-1"

    # the clear box removes one
    assert save(client, manager, "aws", **{**AWS_FORM, "aws_access_key": "", "aws_secret_key": "",
                                           "aws_region": "us-east-1", "clear_aws_secret_key": "1"}).status_code == 302
    settings = fresh(manager.id).settings
    assert settings.get_setting("aws_secret_key") is None
    assert settings.get_setting("aws_access_key") == "AKIACANARY0000000001"

    entries = db.session.execute(select(AuditLog).where(AuditLog.action == "settings_changed")
                                 .order_by(AuditLog.id)).scalars().all()
    assert [e.details["fields"] for e in entries] == [
        ["aws_access_key", "aws_secret_key", "aws_region"], ["aws_region"], ["aws_secret_key"]]
    assert all(e.actor == "manager@acme.test" for e in entries)
    assert SECRET not in json.dumps([e.details for e in entries])


@pytest.mark.parametrize("section, fields, key", [
    ("smtp", {"smtp_host": "mail.acme.test", "smtp_port": "not-a-port", "smtp_username": "", "smtp_tls": "none"},
     "smtp_port"),
    ("smtp", {"smtp_host": "mail.acme.test", "smtp_port": "70000", "smtp_tls": "none"}, "smtp_port"),
    ("general", {"provider": "smtp", "mode": "direct", "enabled": "1", "sender": "not an address",
                 "max_send_rate": ""}, "sender"),
    ("general", {"provider": "smtp", "mode": "direct", "enabled": "1", "sender": "a@acme.test",
                 "max_send_rate": "-3"}, "max_send_rate"),
    ("aws", {**AWS_FORM, "aws_endpoint_url": "ftp://nope"}, "aws_endpoint_url"),
    ("advanced", {"uncertain_policy": "resend", "data_retention_days": "soon"}, "data_retention_days"),
])
def test_invalid_values_show_the_field_error_and_change_nothing(client, manager, section, fields, key):
    before = fresh(manager.id).settings.provider_config()
    resp = save(client, manager, section, **fields)
    assert resp.status_code == 303  # POST-redirect-GET: a reload does not post again
    assert resp.headers["Location"].endswith(f"#f-{key}")
    html = client.get(resp.headers["Location"]).get_data(as_text=True)
    label = labels()[key]
    assert f'data-error-for="{key}"' in html and f"{label}:" in html  # the field's label, not its key
    assert "Not saved" in html
    assert "Not saved" not in client.get(settings_url(manager)).get_data(as_text=True)  # shown once
    assert SECRET not in html
    assert fresh(manager.id).settings.provider_config() == before
    assert db.session.execute(select(AuditLog).where(AuditLog.action == "settings_changed")).first() is None


def test_general_section_and_checkbox(client, manager):
    assert save(client, manager, "general", provider="aws", mode="offload", sender="ops@acme.test",
                max_send_rate="12.5").status_code == 302  # enabled unticked → off
    settings = fresh(manager.id).settings
    assert (settings.provider, settings.mode, settings.enabled, settings.max_send_rate) == \
        ("ses", "offload", False, 12.5)  # aws: SES's old name, still taken
    html = client.get(settings_url(manager)).get_data(as_text=True)
    assert 'value="12.5"' in html and 'value="ops@acme.test"' in html


def test_forms_need_the_csrf_token(client, manager):
    resp = client.post(f"/admin/settings/{manager.id}/save", data={"section": "aws", **AWS_FORM})
    assert resp.status_code == 400
    assert fresh(manager.id).settings.get_setting("aws_secret_key") is None
    for path in ("tokens", "callback-secret/rotate", "test-connection", "test-email"):
        assert client.post(f"/admin/settings/{manager.id}/{path}").status_code == 400


def test_api_token_is_shown_once_works_and_revoked_gets_401(client, manager):
    page = client.get(settings_url(manager)).get_data(as_text=True)
    resp = client.post(f"/admin/settings/{manager.id}/tokens", data={"csrf_token": csrf_from(page), "name": "Moodle"})
    assert resp.status_code == 201 and resp.headers["Cache-Control"] == "no-store"
    html = resp.get_data(as_text=True)
    row = db.session.execute(ApiToken.scoped(manager.id).where(ApiToken.name == "Moodle")).scalar_one()
    token = html.split('id="new-token"', 1)[1].split("<code>", 1)[1].split("</code>", 1)[0]
    assert token.startswith(row.prefix) and len(token) > 30
    # never again: the page lists the prefix only
    later = client.get(settings_url(manager)).get_data(as_text=True)
    assert token not in later and f"{row.prefix}…" in later

    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/jobs", headers=headers).status_code == 200
    assert "never" not in client.get(settings_url(manager)).get_data(as_text=True).split(row.prefix, 1)[1][:200]

    revoke = client.post(f"/admin/settings/{manager.id}/tokens/{row.id}/revoke", data={"csrf_token": csrf_from(later)})
    assert revoke.status_code == 302
    assert client.get("/api/v1/jobs", headers=headers).status_code == 401
    assert client.get("/api/v1/jobs", headers=manager.auth).status_code == 200  # other tokens still work
    actions = db.session.execute(select(AuditLog.action)).scalars().all()
    assert "api_token_created" in actions and "api_token_revoked" in actions
    details = db.session.execute(select(AuditLog.details)).scalars().all()
    assert token not in json.dumps(details)


def test_callback_secret_rotation_shows_the_new_secret_once(client, manager):
    old = manager.secret
    page = client.get(settings_url(manager)).get_data(as_text=True)
    resp = client.post(f"/admin/settings/{manager.id}/callback-secret/rotate", data={"csrf_token": csrf_from(page)})
    assert resp.status_code == 200
    company = fresh(manager.id)
    new = company.callback_secret
    assert new != old and new.startswith("whsec_")
    html = resp.get_data(as_text=True)
    assert new in html and old not in html
    assert company.callback_secrets() == [new, old]  # the old one overlaps
    later = client.get(settings_url(manager)).get_data(as_text=True)
    assert new not in later and "previous secret is accepted until" in later
    entry = db.session.execute(select(AuditLog).where(AuditLog.action == "callback_secret_rotated")).scalar_one()
    assert new not in json.dumps(entry.details)


def test_admin_picks_a_company(client, auth, make_company, make_user):
    one, two = make_company("One Co"), make_company("Two Co")
    make_user("root@service.test", role="admin")
    auth.login("root@service.test", "correct horse battery")
    html = client.get("/admin/settings/").get_data(as_text=True)
    assert f"/admin/settings/{one.id}/" in html and f"/admin/settings/{two.id}/" in html
    assert save(client, two, "smtp", smtp_host="mail.two.test", smtp_port="2525", smtp_tls="none").status_code == 302
    assert fresh(two.id).settings.get_setting("smtp_host") == "mail.two.test"
    assert fresh(one.id).settings.get_setting("smtp_host") is None


# -- checks run by a worker ------------------------------------------------------------------

@pytest.fixture
def sink():
    with SmtpSink(users={"mailer": "smtp-canary-pass"}, auth_require_tls=False) as server:
        yield server


def test_connection_test_and_test_email_through_a_real_smtp_server(client, app, manager, sink):
    assert save(client, manager, "smtp", smtp_host="127.0.0.1", smtp_port=str(sink.port), smtp_username="mailer",
                smtp_password="smtp-canary-pass", smtp_tls="none").status_code == 302
    page = client.get(settings_url(manager)).get_data(as_text=True)
    resp = client.post(f"/admin/settings/{manager.id}/test-connection", data={"csrf_token": csrf_from(page)},
                       headers={"Accept": "application/json"})
    assert resp.status_code == 202
    check = resp.get_json()
    jobs = get_queue(HIGH).jobs
    assert [job.args for job in jobs] == [(manager.id, check["check_id"])]  # ids only
    assert client.get(check["result_url"]).get_json()["status"] == "pending"

    run_worker_burst(app)
    result = client.get(check["result_url"]).get_json()
    assert result["status"] == "done" and result["ok"] is True
    assert result["checks"][0]["name"] == "SMTP" and result["checks"][0]["facts"]["authenticated"] is True

    resp = client.post(f"/admin/settings/{manager.id}/test-email",
                       data={"csrf_token": csrf_from(page), "to": "ops@example.com"})
    assert resp.status_code == 302 and "check=" in resp.headers["Location"]
    check_id = resp.headers["Location"].split("check=", 1)[1].split("#", 1)[0]
    assert [job.args for job in get_queue(HIGH).jobs] == [(manager.id, check_id)]
    assert "ops@example.com" not in json.dumps([job.args for job in get_queue(HIGH).jobs])
    html = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert f"/checks/{check_id}.json" in html
    run_worker_burst(app)
    result = client.get(f"/admin/settings/{manager.id}/checks/{check_id}.json").get_json()
    assert result["ok"] is True and result["kind"] == "email"
    assert [m.rcpt_tos for m in sink.messages] == [["ops@example.com"]]
    # the request (with the address) is gone from Redis once used
    assert not any(b"check-request" in key for key in connection().keys("*"))


def test_wrong_smtp_password_is_a_clear_failed_check(client, app, manager, sink):
    save(client, manager, "smtp", smtp_host="127.0.0.1", smtp_port=str(sink.port), smtp_username="mailer",
         smtp_password="wrong-canary-pass", smtp_tls="none")
    page = client.get(settings_url(manager)).get_data(as_text=True)
    check = client.post(f"/admin/settings/{manager.id}/test-connection", data={"csrf_token": csrf_from(page)},
                        headers={"Accept": "application/json"}).get_json()
    run_worker_burst(app)
    result = client.get(check["result_url"]).get_json()
    assert result["ok"] is False and "authentication failed" in result["checks"][0]["error"].lower()
    assert "wrong-canary-pass" not in json.dumps(result)


def test_test_email_needs_a_valid_address(client, manager):
    page = client.get(settings_url(manager)).get_data(as_text=True)
    resp = client.post(f"/admin/settings/{manager.id}/test-email", data={"csrf_token": csrf_from(page), "to": "nope"})
    assert resp.status_code == 400 and "to: not a valid email address" in resp.get_data(as_text=True)
    assert get_queue(HIGH).jobs == []


def test_unknown_or_malformed_check_ids_are_404(client, manager):
    assert client.get(f"/admin/settings/{manager.id}/checks/{'a' * 24}.json").status_code == 404
    assert client.get(f"/admin/settings/{manager.id}/checks/x.json").status_code == 404


def test_audit_log_lists_the_company_entries(client, manager, make_company):
    other = make_company("Other Co")
    audit.record("settings_changed", company_id=other.id, details={"fields": ["smtp_host"]}, actor="x@other.test")
    db.session.commit()
    save(client, manager, "smtp", smtp_host="mail.acme.test", smtp_port="25", smtp_tls="none")
    html = client.get("/admin/audit/").get_data(as_text=True)
    assert "Settings changed" in html and "Fields: Host, Port" in html  # words, not keys
    assert "settings_changed" not in html and "smtp_host" not in html
    assert "x@other.test" not in html
    export = client.get("/admin/audit/export/csv/").get_data(as_text=True)
    assert "manager@acme.test" in export and "x@other.test" not in export


def test_audit_export_neutralises_formula_cells(client, manager):
    audit.record("login_failed", company_id=manager.id, actor="=HYPERLINK(\"http://evil\")", object_type="user")
    db.session.commit()
    export = client.get("/admin/audit/export/csv/")
    assert export.status_code == 200
    lines = export.get_data(as_text=True).splitlines()
    assert any(line.startswith("'=HYPERLINK") or ",'=HYPERLINK" in line or "\"'=HYPERLINK" in line
               for line in lines)
    assert not any(cell.startswith("=") for line in lines for cell in line.split(","))


def test_turned_off_model_views_answer_404(client, manager):
    assert client.get("/admin/audit/new/").status_code == 404
    assert client.get("/admin/templates/export/csv/").status_code == 404
