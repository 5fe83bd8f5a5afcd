"""One-click unsubscribe (RFC 8058) for bulk and re-engagement mail, end to end
through the real worker and an aiosmtpd server; transactional mail carries
none and an unsubscribe never stops it (bounces and complaints do)."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from core import companies, settings
from core.db import db
from core.delivery.messages import extra_headers
from core.delivery.results import record_event
from core.models import Recipient, Suppression
from core.unsubscribe import make_token, read_token
from tests.support.app import run_worker_burst
from tests.support.servers import SmtpSink

CAMPAIGN = {"type": "reengagement", "subject": "We miss you {{ firstname }}", "body_text": "Come back!"}


@pytest.fixture
def sink(company):
    with SmtpSink() as server:
        companies.configure(company.company, {"smtp_host": "127.0.0.1", "smtp_port": str(server.port),
                                              "smtp_tls": "none"})
        db.session.commit()
        yield server


def send(client, app, company, emails, jtype="reengagement", **extra):
    body = {**CAMPAIGN, "type": jtype, "recipients": [{"email": e, "data": {"firstname": "A"}} for e in emails],
            **extra}
    resp = client.post("/api/v1/jobs", json=body, headers=company.auth)
    assert resp.status_code == 202
    run_worker_burst(app)
    return resp.get_json()["id"]


@pytest.mark.parametrize("jtype, priority, carries", [
    ("reengagement", "bulk", True), ("reengagement", "transactional", True), ("notification", "bulk", True),
    ("notification", "transactional", False), ("csv_import", "transactional", False),
    ("license_allocation", "transactional", False), ("certificate", "transactional", False)])
def test_only_bulk_mail_carries_list_unsubscribe(app, company, jtype, priority, carries):
    headers = extra_headers(company.company, jtype, priority, 1, "Ann@Example.com")
    if not carries:
        assert headers == {}
        return
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = re.fullmatch(r"<(.+)>", headers["List-Unsubscribe"]).group(1)
    assert url.startswith(settings.current().public_url + "/u/")
    assert read_token(url.rsplit("/", 1)[1]) == (company.id, "ann@example.com")


def test_one_click_post_without_cookies_suppresses_and_the_next_job_skips(client, app, company, sink):
    send(client, app, company, ["ann@example.com", "bob@example.com"])
    mail = next(m for m in sink.messages if m.rcpt_tos == ["ann@example.com"])
    assert mail.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = re.fullmatch(r"<(.+)>", mail.message["List-Unsubscribe"]).group(1)
    path = url[len(settings.current().public_url):]

    mail_client = app.test_client(use_cookies=False)  # a mail provider's one-click POST
    resp = mail_client.post(path, data="List-Unsubscribe=One-Click",
                            content_type="application/x-www-form-urlencoded")
    assert resp.status_code == 200 and "Set-Cookie" not in resp.headers
    assert "You are unsubscribed" in resp.get_data(as_text=True)
    assert mail_client.post(path, data="List-Unsubscribe=One-Click").status_code == 200  # idempotent
    rows = db.session.execute(select(Suppression.email, Suppression.reason)
                              .where(Suppression.company_id == company.id)).all()
    assert [tuple(r) for r in rows] == [("ann@example.com", "unsubscribe")]

    sink.messages.clear()
    job_id = send(client, app, company, ["Ann@Example.com", "bob@example.com"])
    statuses = dict(db.session.execute(select(Recipient.email, Recipient.status)
                                       .where(Recipient.job_id == job_id)).all())
    assert statuses == {"Ann@Example.com": "suppressed", "bob@example.com": "sent"}
    assert [m.rcpt_tos for m in sink.messages] == [["bob@example.com"]]


def test_transactional_mail_has_no_unsubscribe_header(client, app, company, sink):
    send(client, app, company, ["ann@example.com"], jtype="csv_import")
    send(client, app, company, ["bob@example.com"], jtype="notification")
    for mail in sink.messages:
        assert mail.message["List-Unsubscribe"] is None and mail.message["List-Unsubscribe-Post"] is None


def test_an_unsubscribe_stops_bulk_mail_only_and_a_bounce_stops_everything(client, app, company, auth,
                                                                            make_user, sink):
    token = make_token(company.id, "ann@example.com")
    assert client.post(f"/u/{token}").status_code == 200
    bulk = send(client, app, company, ["ann@example.com"])
    notice = send(client, app, company, ["ann@example.com"], jtype="notification", priority="bulk")
    password = send(client, app, company, ["Ann@Example.com"], jtype="csv_import")
    status = {job: db.session.execute(select(Recipient.status, Recipient.error).where(Recipient.job_id == job))
              .one() for job in (bulk, notice, password)}
    assert status[bulk] == status[notice] == ("suppressed", "suppressed (unsubscribe list)")
    assert status[password] == ("sent", None)
    assert [m.rcpt_tos for m in sink.messages] == [["Ann@Example.com"]]

    # a hard bounce goes on the bounce list too, and that list stops the password mail
    assert record_event(company.id, source="ses", key="b1", kind="hard", email="ann@example.com")
    lists = set(db.session.execute(select(Suppression.reason).where(Suppression.company_id == company.id)).scalars())
    assert lists == {"unsubscribe", "bounce"}
    again = send(client, app, company, ["ann@example.com"], jtype="csv_import")
    assert db.session.execute(select(Recipient.status, Recipient.error).where(Recipient.job_id == again)).one() == \
        ("suppressed", "suppressed (bounce list)")
    assert len(sink.messages) == 1

    # the dashboard says which list stopped the recipient, and what each list stops
    admin, password_ = make_user("root@offload.test", "admin")
    auth.login(admin.email, password_)
    page = client.get(f"/admin/jobs/{again}/").get_data(as_text=True)
    assert "suppressed (bounce list)" in page
    lists_page = client.get(f"/admin/suppressions/?company_id={company.id}").get_data(as_text=True)
    assert "Hard bounce: stops all mail" in lists_page
    assert "Unsubscribed: stops bulk and re-engagement mail only" in lists_page


def test_get_shows_a_confirm_page_and_changes_nothing(client, company):
    token = make_token(company.id, "ann@example.com")
    resp = client.get(f"/u/{token}")
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200 and "Stop campaign emails from Acme Learning" in html
    assert '<form method="post">' in html and "ann@example.com" in html
    assert db.session.execute(select(Suppression)).first() is None
    assert client.post(f"/u/{token}").status_code == 200  # the button: a plain POST, no CSRF token
    assert "You are unsubscribed" in client.get(f"/u/{token}").get_data(as_text=True)


def test_tampered_or_foreign_tokens_are_404(client, company, make_company):
    token = make_token(company.id, "ann@example.com")
    payload, sig = token.rsplit(".", 1)
    tampered = [payload + "." + sig[:-2] + ("AA" if sig[-2:] != "AA" else "BB"),
                make_token(company.id, "ann@example.com").replace(payload, make_token(99, "x@example.com")
                                                                  .rsplit(".", 1)[0]),
                "garbage", "a" * 2000]
    for bad in tampered:
        assert client.get(f"/u/{bad}").status_code == 404
        assert client.post(f"/u/{bad}").status_code == 404
    gone = make_token(424242, "ann@example.com")  # genuine signature, no such company
    assert client.post(f"/u/{gone}").status_code == 404
    assert db.session.execute(select(Suppression)).first() is None


def test_tokens_survive_a_key_rotation(app, company, set_settings):
    from cryptography.fernet import Fernet

    token = make_token(company.id, "ann@example.com")
    set_settings(encryption_keys=(Fernet.generate_key(), *settings.current().encryption_keys))
    assert read_token(token) == (company.id, "ann@example.com")
    assert make_token(company.id, "ann@example.com") != token  # new links use the new key
    set_settings(encryption_keys=settings.current().encryption_keys[:1])
    assert read_token(token) is None
