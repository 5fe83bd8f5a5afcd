"""Medium 9: nobody can lock out an account, logins do not reveal which accounts
exist, admins (dashboard and CLI) can unlock and the CLI can reset a password, and
logout ends the session."""
from __future__ import annotations

import hashlib

from core.db import db
from core.models import User
from core.settings import Settings
from tests.support.app import AuthActions, csrf_from
from tests.support.attack import login_as


def attempt(client, email, password, ip="203.0.113.7"):
    token = csrf_from(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"email": email, "password": password, "csrf_token": token},
                       environ_base={"REMOTE_ADDR": ip})


def test_an_attacker_cannot_lock_the_admin_out(app, client, make_user):
    make_user("root@acme.test", role="admin")
    codes = [attempt(client, "root@acme.test", f"guess-{i}").status_code for i in range(12)]
    assert 429 in codes and set(codes) <= {401, 429}  # the guessing address is slowed down
    owner = app.test_client()
    assert attempt(owner, "root@acme.test", "correct horse battery", ip="198.51.100.2").status_code == 302
    assert owner.get("/admin/", environ_base={"REMOTE_ADDR": "198.51.100.2"}).status_code == 200


def test_unknown_and_real_accounts_cost_the_same_work_and_answer_alike(app, client, make_user, monkeypatch,
                                                                       set_settings):
    set_settings(password_hash_method=Settings.password_hash_method)  # production's scrypt, not the suite's
    make_user("ann@acme.test", role="admin")
    attempt(client, "warmup@nowhere.test", "x", ip="192.0.2.50")  # the dummy hash is made once
    calls = []
    real = hashlib.scrypt
    monkeypatch.setattr(hashlib, "scrypt", lambda *a, **k: calls.append(1) or real(*a, **k))
    unknown = attempt(client, "nobody@acme.test", "wrong-password", ip="192.0.2.51")
    unknown_calls, calls[:] = len(calls), []
    known = attempt(client, "ann@acme.test", "wrong-password", ip="192.0.2.52")
    assert unknown_calls == len(calls) == 1  # one password hash each
    assert unknown.status_code == known.status_code == 401
    strip = lambda r: r.get_data(as_text=True).replace("nobody@acme.test", "").replace("ann@acme.test", "")  # noqa: E731
    assert "Invalid email or password." in strip(unknown) and strip(unknown).count("alert") == strip(known).count(
        "alert")
    # and back-off treats them alike too
    for _ in range(12):
        a, b = attempt(client, "nobody@acme.test", "x", "192.0.2.60"), attempt(client, "ann@acme.test", "x",
                                                                                  "192.0.2.61")
        assert a.status_code == b.status_code


def test_an_admin_unlocks_from_the_dashboard_and_the_cli(app, client, make_user):
    target, password = make_user("ann@acme.test", role="admin")
    for _ in range(8):
        attempt(client, "ann@acme.test", "nope")
    assert attempt(client, "ann@acme.test", password).status_code == 429
    admin = app.test_client()
    login_as(admin, make_user, "root@acme.test", role="admin")
    page = admin.get("/admin/users/").get_data(as_text=True)
    resp = admin.post("/admin/users/action/", data={"csrf_token": csrf_from(page), "action": "unlock",
                                                    "rowid": str(target.id)})
    assert resp.status_code == 302
    assert attempt(client, "ann@acme.test", password).status_code == 302
    client = app.test_client()  # signed out; from another address (the first one's own back-off stays)
    for _ in range(8):
        attempt(client, "ann@acme.test", "nope", ip="203.0.113.8")
    assert attempt(client, "ann@acme.test", password, ip="203.0.113.8").status_code == 429
    result = app.test_cli_runner().invoke(args=["user", "unlock", "ann@acme.test"])
    assert result.exit_code == 0 and "unlocked" in result.output
    assert attempt(client, "ann@acme.test", password, ip="203.0.113.8").status_code == 302


def test_the_cli_resets_a_password_and_ends_old_sessions(app, client, make_user):
    make_user("ann@acme.test", role="admin")
    assert attempt(client, "ann@acme.test", "correct horse battery").status_code == 302
    result = app.test_cli_runner().invoke(args=["user", "set-password", "ann@acme.test", "--password",
                                                "a brand new passphrase"])
    assert result.exit_code == 0, result.output
    assert client.get("/admin/").status_code == 302  # the old session is over
    fresh = app.test_client()
    assert attempt(fresh, "ann@acme.test", "a brand new passphrase", ip="198.51.100.9").status_code == 302


def test_logout_invalidates_the_session_cookie(app, client, company, make_user):
    make_user("ann@acme.test", company_id=company.id)
    auth = AuthActions(client)
    assert auth.login("ann@acme.test", "correct horse battery").status_code == 302
    stolen = client.get_cookie("session").value
    assert auth.logout().status_code == 302
    replay = app.test_client()
    replay.set_cookie("session", stolen)
    assert replay.get("/admin/jobs/").status_code == 302  # the copied cookie signs no one in
    assert db.session.get(User, 1) is not None


def test_passwords_are_stored_with_scrypt_unless_the_settings_name_another_method(app, make_user, set_settings):
    cheap, _ = make_user("suite@acme.test", role="admin")  # the suite's TEST_SETTINGS name a cheap method
    assert cheap.password_hash.startswith("pbkdf2:sha256:1$")
    assert Settings.password_hash_method == "scrypt"  # the default
    set_settings(password_hash_method=Settings.password_hash_method)
    user, password = make_user("ann@acme.test", role="admin")
    assert user.password_hash.startswith("scrypt:32768:8:1$") and user.check_password(password)
    assert cheap.check_password("correct horse battery")  # a stored hash keeps its own method
