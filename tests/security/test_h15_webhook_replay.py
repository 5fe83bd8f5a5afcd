"""Issue 26, item 6: every webhook's replay set is shared by all the service's processes.

Mailgun's seen-token set lived in the process: one signature was accepted twice, once per
gunicorn process. Worse, Mailgun signs only ``timestamp + token``, not the event, so a
captured signature carried any event to the second process (here: a complaint that
suppresses an address the attacker chose). Now each webhook's delivery id (Mailgun's token,
SendGrid's signed content, the Worker's ``webhook-id``, SNS's ``MessageId``) is claimed in
Redis: two real gunicorn processes on one database and Redis take each delivery once."""
from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from core.db import db
from core.models import Suppression
from providers.mailgun import signature_of
from providers.sendgrid import SIGNATURE_HEADER, TIMESTAMP_HEADER
from providers.webhooks import sign_headers
from tests.support.servers import WebApp
from tests.support.sns import TOPIC, FakeSns

MAILGUN_KEY = "key-" + "m" * 32


@pytest.fixture(scope="module")
def fake_sns():
    fake = FakeSns()
    with fake.server:
        yield fake


@pytest.fixture(scope="module")
def two_processes(migrated, redis_server, fake_sns):
    """Two web processes (one gunicorn worker each) on the run's database and Redis."""
    env = {"OFFLOAD_SNS_URL_PATTERN": fake_sns.url_pattern}
    with WebApp(migrated, redis_server, env=env) as first, WebApp(migrated, redis_server, env=env) as second:
        yield first.url, second.url


@pytest.fixture
def sendgrid_key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def hooked(make_company, sendgrid_key):
    """A company with every provider's webhook key set."""
    public = base64.b64encode(sendgrid_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    return make_company("Hooked Co", sender="noreply@acme.test", mailgun_webhook_signing_key=MAILGUN_KEY,
                        sendgrid_webhook_public_key=public, sns_topic_arn=TOPIC)


def suppressed() -> set[str]:
    db.session.expire_all()
    return set(db.session.execute(select(Suppression.email)).scalars())


def post(base: str, path: str, company_id: int, body: bytes, headers: dict | None = None) -> dict:
    resp = requests.post(f"{base}/callbacks/v1/bounces/{path}/{company_id}", data=body, timeout=30,
                         headers={"Content-Type": "application/json", **(headers or {})})
    assert resp.status_code == 200, f"{resp.status_code} {resp.text[:300]}"
    return resp.json()


def mailgun_body(signature: dict, email: str) -> bytes:
    return json.dumps({"signature": signature, "event-data": {
        "event": "complained", "id": uuid.uuid4().hex, "recipient": email}}).encode()


def test_a_captured_mailgun_signature_is_taken_once_by_all_processes(two_processes, hooked):
    first, second = two_processes
    timestamp, token = str(int(time.time())), uuid.uuid4().hex + uuid.uuid4().hex[:18]
    signature = {"timestamp": timestamp, "token": token, "signature": signature_of(MAILGUN_KEY, timestamp, token)}
    assert post(first, "mailgun", hooked.id, mailgun_body(signature, "learner@acme.test"))["applied"] == 1
    # the same signature, replayed to the other process with an event the attacker chose
    replay = post(second, "mailgun", hooked.id, mailgun_body(signature, "victim@acme.test"))
    assert replay == {"ok": True, "applied": 0, "duplicate": True}
    assert post(first, "mailgun", hooked.id, mailgun_body(signature, "victim@acme.test"))["duplicate"] is True
    assert suppressed() == {"learner@acme.test"}


def test_sendgrid_worker_and_sns_deliveries_are_taken_once_by_all_processes(two_processes, hooked, sendgrid_key,
                                                                          fake_sns):
    first, second = two_processes
    timestamp = str(int(time.time()))
    sendgrid = json.dumps([{"event": "spamreport", "email": "sg@acme.test", "sg_event_id": uuid.uuid4().hex}]).encode()
    sg_headers = {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: base64.b64encode(
        sendgrid_key.sign(timestamp.encode() + sendgrid, ec.ECDSA(hashes.SHA256()))).decode()}
    worker = json.dumps({"events": [{"type": "complaint", "email": "cf@acme.test"}]}).encode()
    cf_headers = sign_headers(hooked.secret, f"msg_{uuid.uuid4().hex}", worker)
    sns = json.dumps(fake_sns.message({"notificationType": "Complaint", "complaint": {
        "complainedRecipients": [{"emailAddress": "sns@acme.test"}], "complaintFeedbackType": "abuse"},
        "mail": {"messageId": "m-1", "destination": ["sns@acme.test"]}})).encode()
    sns_headers = {"x-amz-sns-message-type": "Notification", "Content-Type": "text/plain"}
    for path, body, headers in (("sendgrid", sendgrid, sg_headers), ("cloudflare", worker, cf_headers),
                                ("sns", sns, sns_headers)):
        assert post(first, path, hooked.id, body, headers)["applied"] == 1, path
        again = post(second, path, hooked.id, body, headers)
        assert again == {"ok": True, "applied": 0, "duplicate": True}, (path, again)
    assert suppressed() == {"sg@acme.test", "cf@acme.test", "sns@acme.test"}
