"""Medium 11: without OFFLOAD_ENCRYPTION_KEYS the service refuses to start unless
development is explicitly on (and then says loudly that the public key is in use);
unsubscribe tokens have their own signing key."""
from __future__ import annotations

import hashlib
import hmac
import os
import subprocess

from itsdangerous import URLSafeSerializer

from core import settings
from core.unsubscribe import SALT, make_token, read_token
from service import DEV_KEY_WARNING

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def flask(env: dict) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("OFFLOAD_DEV", "OFFLOAD_ENV", "FLASK_ENV",
                                                              "OFFLOAD_ENCRYPTION_KEYS")}
    return subprocess.run([os.path.join(ROOT, ".venv", "bin", "flask"), "--app", "wsgi", "routes"], cwd=ROOT,
                          env={**clean, "DATABASE_URL": "sqlite:///:memory:", **env}, capture_output=True,
                          text=True, timeout=60)


def test_without_keys_the_service_refuses_to_start():
    done = flask({})
    assert done.returncode != 0 and "OFFLOAD_ENCRYPTION_KEYS" in done.stderr


def test_with_development_on_it_starts_and_warns_loudly():
    done = flask({"OFFLOAD_DEV": "1"})
    assert done.returncode == 0, done.stderr
    assert "PUBLIC development key" in done.stderr and "PUBLIC" in DEV_KEY_WARNING


def test_a_token_forged_with_the_public_dev_key_is_refused(app, client, company, set_settings):
    set_settings(unsubscribe_keys=(b"operator-unsubscribe-key-0123456789abcdef",))
    dev = hmac.new(settings.dev_encryption_key(), SALT.encode(), hashlib.sha256).hexdigest()
    forged = URLSafeSerializer([dev], salt=SALT, signer_kwargs={"digest_method": hashlib.sha256}).dumps(
        [company.id, "victim@acme.test"])
    assert client.get(f"/u/{forged}").status_code in (400, 404)
    with app.test_request_context():
        genuine = make_token(company.id, "learner@acme.test")
        assert genuine != forged and read_token(genuine) == (company.id, "learner@acme.test")
        assert read_token(forged) is None
