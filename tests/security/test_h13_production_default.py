"""Issue 26, item 5: anything not explicitly development is production.

With ``OFFLOAD_ENV`` unset and ``OFFLOAD_DEV`` unset the service used to run with
development's comforts: ``/metrics`` open to anyone, a session cookie without
``Secure``, the Outbox and local certificate storage on, any Host header answered,
and the public development key accepted without a word when set explicitly. Now
that environment is production: the app below is built from it (no test override
of ``production``) and checked from outside, as a client sees it."""
from __future__ import annotations

import os
import subprocess

import pytest
from cryptography.fernet import Fernet

from core import companies, crypto, settings
from core.db import db
from providers import aws, guard, sns
from service import create_app
from tests.support.app import JINJA_BYTECODE, ROOT, TEST_SETTINGS, csrf_from, empty_tables
from tests.support.openapi import CheckedClient

PUBLIC = "https://offload.example"
DEVELOPMENT = ("OFFLOAD_DEV", "OFFLOAD_ENV", "FLASK_ENV")


def production_environment(**more: str) -> dict[str, str]:
    """This process's environment with development unset and production's secrets given."""
    env = {k: v for k, v in os.environ.items() if k not in DEVELOPMENT}
    return {**env, "SECRET_KEY": "p" * 48, "OFFLOAD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "OFFLOAD_PUBLIC_URL": PUBLIC, **more}


@pytest.fixture
def production_app(migrated, redis_server, monkeypatch):
    """The web app as ``create_app`` builds it from an environment without OFFLOAD_ENV/OFFLOAD_DEV;
    the process's settings, keys and outbound policy come back afterwards."""
    before = settings.current() if settings._current is not None else None
    policy = guard.policy()
    for name in DEVELOPMENT:
        monkeypatch.delenv(name, raising=False)
    for name, value in production_environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("OFFLOAD_LOCAL_STORAGE", raising=False)
    app = create_app({"database_url": migrated, "redis_url": redis_server, **TEST_SETTINGS})
    app.test_client_class = CheckedClient
    app.jinja_env.bytecode_cache = JINJA_BYTECODE
    try:
        with app.app_context():
            empty_tables(db)
            yield app
            db.session.remove()
            db.engine.dispose()
    finally:
        guard.configure(allow_private=policy.allow_private, production=policy.production,
                        allowed_hosts=policy.allowed_hosts)
        if before is not None:
            settings.install(before)
            crypto.configure(list(before.encryption_keys))
            aws.configure(sts_endpoint_url=before.sts_endpoint_url)
            sns.configure(url_pattern=before.sns_url_pattern, ca_bundle=before.sns_ca_bundle)


def test_the_environment_without_development_loads_as_production():
    s = settings.load({k: v for k, v in production_environment().items() if k.startswith(("OFFLOAD_", "SECRET"))})
    assert s.production and not s.development
    assert s.local_storage is False  # no certificates on this machine's disk unless asked for
    assert s.allowed_hosts == ("offload.example",)  # the public URL's host answers, no other
    dev = settings.load({"OFFLOAD_DEV": "1"})
    assert dev.development and not dev.production and dev.local_storage and dev.allowed_hosts == ()
    with pytest.raises(settings.SettingsError, match="OFFLOAD_ENV"):
        settings.load({"OFFLOAD_ENV": "staging"})  # neither word: a typo is not a third mode


def test_the_public_development_key_is_refused_even_when_set_explicitly():
    env = production_environment(OFFLOAD_ENCRYPTION_KEYS=settings.dev_encryption_key().decode(),
                                 DATABASE_URL="sqlite:///:memory:")
    done = subprocess.run([os.path.join(ROOT, ".venv", "bin", "flask"), "--app", "wsgi", "routes"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "OFFLOAD_ENCRYPTION_KEYS" in done.stderr and "public development key" in done.stderr
    # among other keys too (a rotation that kept it)
    with pytest.raises(settings.SettingsError, match="public development key"):
        settings.load({"SECRET_KEY": "p" * 48, "OFFLOAD_ENCRYPTION_KEYS":
                       f"{Fernet.generate_key().decode()},{settings.dev_encryption_key().decode()}"})


def test_production_by_default_from_outside(production_app):
    client = production_app.test_client()
    # a Host the operator did not name is refused; the probes answer any
    assert client.get("/login", base_url="http://evil.example").status_code == 400
    assert client.get("/healthz", base_url="http://10.0.0.7:8000").status_code == 200
    # /metrics: not for anyone outside the allowed networks
    assert client.get("/metrics", base_url=PUBLIC, environ_base={"REMOTE_ADDR": "203.0.113.9"}).status_code == 403
    # the session cookie is Secure, and the Outbox does not exist
    companies.create_user("root@acme.test", "correct horse battery", "admin", None)
    db.session.commit()
    page = client.get("/login", base_url=PUBLIC)
    assert page.status_code == 200
    resp = client.post("/login", base_url=PUBLIC, headers={"Referer": f"{PUBLIC}/login"}, data={
        "email": "root@acme.test", "password": "correct horse battery",
        "csrf_token": csrf_from(page.get_data(as_text=True))})
    assert resp.status_code == 302
    cookies = resp.headers.getlist("Set-Cookie")
    session_cookie = next(c for c in cookies if c.startswith("session="))
    assert "Secure" in session_cookie and "HttpOnly" in session_cookie
    assert client.get("/admin/", base_url=PUBLIC).status_code == 200  # signed in over https
    assert client.get("/admin/outbox/", base_url=PUBLIC).status_code in (403, 404)
