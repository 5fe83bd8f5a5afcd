"""Logins: fresh session at login, CSRF required, back-off, logout."""
from __future__ import annotations

from sqlalchemy import select

from core import settings
from core.db import db
from core.models import AuditLog, User
from service import create_app
from tests.support.app import csrf_from


def session_cookie(client) -> str | None:
    cookie = client.get_cookie("session")
    return cookie.value if cookie else None


def test_login_page_renders(client):
    page = client.get("/login")
    assert page.status_code == 200
    assert b'name="csrf_token"' in page.data and b"Sign in" in page.data


def test_login_renews_session_and_logout_ends_it(client, auth, company, make_user):
    make_user("ann@acme.test", company_id=company.id)
    client.get("/login")
    with client.session_transaction() as sess:
        sess["planted"] = "attacker"  # a pre-login value must not survive login
    before = session_cookie(client)
    resp = auth.login("ann@acme.test", "correct horse battery")
    assert resp.status_code == 302
    after = session_cookie(client)
    assert after and after != before
    with client.session_transaction() as sess:
        assert "planted" not in sess and sess.get("sid")
    assert client.get("/admin/").status_code == 200
    assert auth.logout().status_code == 302
    assert client.get("/admin/").status_code == 302  # back to the login page
    actions = db.session.execute(select(AuditLog.action)).scalars().all()
    assert "login" in actions and "logout" in actions


def test_login_without_csrf_token_is_refused(client, company, make_user):
    make_user("ann@acme.test", company_id=company.id)
    resp = client.post("/login", data={"email": "ann@acme.test", "password": "correct horse battery"})
    assert resp.status_code in (400, 401)
    assert client.get("/admin/").status_code == 302


def test_wrong_passwords_back_off_that_address_without_locking_the_account(client, auth, company, make_user):
    user, password = make_user("ann@acme.test", company_id=company.id)
    codes = [auth.login("ann@acme.test", f"wrong-{i}").status_code for i in range(10)]
    assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}  # back-off, not a lock
    # even the right password waits from the guessing address...
    assert auth.login("ann@acme.test", password).status_code == 429
    assert client.get("/admin/").status_code == 302
    # ...but the owner signs in from their own address: nobody can lock the account
    other = client.application.test_client()
    token = csrf_from(other.get("/login").get_data(as_text=True))
    resp = other.post("/login", data={"email": "ann@acme.test", "password": password, "csrf_token": token},
                      environ_base={"REMOTE_ADDR": "10.9.9.9"})
    assert resp.status_code == 302
    db.session.expire_all()
    assert db.session.get(User, user.id).locked_until is None
    failures = db.session.execute(select(AuditLog).where(AuditLog.action == "login_failed")).scalars().all()
    assert len(failures) == 5  # the refused attempts never reached a password check


def test_open_redirect_after_login_is_ignored(client, company, make_user):
    make_user("ann@acme.test", company_id=company.id)
    token = csrf_from(client.get("/login").get_data(as_text=True))
    resp = client.post("/login?next=//evil.example/x", data={
        "email": "ann@acme.test", "password": "correct horse battery", "csrf_token": token})
    assert resp.status_code == 302 and "evil.example" not in resp.headers["Location"]


def test_audit_ip_is_not_taken_from_a_forged_header(client, company, make_user):
    make_user("ann@acme.test", company_id=company.id)
    token = csrf_from(client.get("/login").get_data(as_text=True))
    client.post("/login", data={"email": "ann@acme.test", "password": "correct horse battery", "csrf_token": token},
                headers={"X-Forwarded-For": "6.6.6.6"}, environ_base={"REMOTE_ADDR": "10.1.2.3"})
    entry = db.session.execute(select(AuditLog).where(AuditLog.action == "login")).scalar_one()
    assert entry.ip == "10.1.2.3"


def test_behind_a_trusted_proxy_the_forwarded_ip_is_used(app, company, make_user):
    make_user("ann@acme.test", company_id=company.id)
    proxied = create_app({"database_url": settings.current().database_url, "redis_url": settings.current().redis_url,
                          "proxy_hops": 1})
    proxied.testing = True
    client = proxied.test_client()
    token = csrf_from(client.get("/login").get_data(as_text=True))
    client.post("/login", data={"email": "ann@acme.test", "password": "correct horse battery", "csrf_token": token},
                headers={"X-Forwarded-For": "203.0.113.9"}, environ_base={"REMOTE_ADDR": "10.1.2.3"})
    db.session.expire_all()
    entry = db.session.execute(select(AuditLog).where(AuditLog.action == "login")).scalar_one()
    assert entry.ip == "203.0.113.9"
