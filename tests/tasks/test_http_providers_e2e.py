"""SendGrid and Mailgun through the whole app: settings → API job → worker → the local API
server, then the provider's signed webhook → the suppression list."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections import Counter

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select, text

from core.db import db
from core.models import BounceEvent, Job, Recipient, Suppression
from providers import guard, registry
from tests.support.app import run_worker_burst
from tests.support.email_apis import FakeMailgun, FakeSendgrid
from tests.support.jobs import BODY, people

SG_KEY = "SG.e2e-key-canary-0001"
MG_KEY = "key-e2e-canary-0002"
MG_SIGNING = "mg-signing-canary-0003"
DOMAIN = "mg.acme.test"


@pytest.fixture
def endpoints(app):
    """Let the providers reach the local servers (loopback) and point their API bases there."""
    before = guard.policy()
    guard.configure(allow_private=True, production=False)
    yield lambda **bases: registry.configure(api_bases=bases)
    registry.configure(api_bases={})
    guard.configure(allow_private=before.allow_private, production=before.production,
                    allowed_hosts=before.allowed_hosts)


def submit(client, company, recipients) -> int:
    resp = client.post("/api/v1/jobs", json={**BODY, "recipients": recipients}, headers=company.auth)
    assert resp.status_code == 202, resp.json
    return resp.json["id"]


def job(job_id: int) -> Job:
    db.session.expire_all()
    return db.session.get(Job, job_id)


def recipient(job_id: int, email: str) -> Recipient:
    db.session.expire_all()
    stmt = select(Recipient).where(Recipient.job_id == job_id, Recipient.email == email)
    return db.session.execute(stmt).scalar_one()


def assert_own_content(delivered, n: int) -> None:
    assert Counter(d.to for d in delivered) == {f"user{i}@acme.test": 1 for i in range(n)}
    for d in delivered:
        i = int(d.to.removeprefix("user").split("@")[0])
        assert d.subject == f"Welcome Name{i}"
        assert d.text == f"Hi Name{i}, your password is Pw-{i}-secret"
        assert d.html == f"<p>Hi Name{i}, your password is <b>Pw-{i}-secret</b></p>"


def test_sendgrid_job_to_webhook(app, client, make_company, endpoints):
    signing = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(signing.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    company = make_company(provider="sendgrid", sender="noreply@acme.test", sendgrid_api_key=SG_KEY,
                           sendgrid_webhook_public_key=public)
    raw = db.session.execute(text("SELECT provider_settings FROM delivery_settings WHERE company_id = :c"),
                             {"c": company.id}).scalar_one()
    assert raw and SG_KEY not in raw and public not in raw  # one encrypted document
    with FakeSendgrid(SG_KEY) as sendgrid:
        endpoints(sendgrid=sendgrid.url)
        job_id = submit(client, company, people(300))
        run_worker_burst(app)
    done = job(job_id)
    assert (done.status, done.emails_sent, done.emails_failed) == ("completed", 300, 0)
    assert_own_content(sendgrid.delivered, 300)
    assert len(sendgrid.requests) <= 2  # batches of OFFLOAD_BATCH_SIZE, each one request
    message_id = recipient(job_id, "user5@acme.test").message_id
    assert message_id and message_id in {d.message_id for d in sendgrid.delivered}

    events = [{"event": "bounce", "type": "bounce", "email": "user5@acme.test", "status": "5.1.1",
               "sg_message_id": f"{message_id}.filterdrecv-1", "sg_event_id": "ev-bounce-5"},
              {"event": "spamreport", "email": "user6@acme.test", "sg_event_id": "ev-spam-6",
               "sg_message_id": f"{recipient(job_id, 'user6@acme.test').message_id}.filterdrecv-2"},
              {"event": "delivered", "email": "user7@acme.test", "sg_event_id": "ev-delivered-7"}]
    body = json.dumps(events).encode() + b"\r\n"
    stamp = str(int(time.time()))
    signature = base64.b64encode(signing.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
    headers = {"X-Twilio-Email-Event-Webhook-Signature": signature, "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
               "Content-Type": "application/json"}
    url = f"/callbacks/v1/bounces/sendgrid/{company.id}"

    forged = client.post(url, data=body.replace(b"user5", b"user8"), headers=headers)
    assert forged.status_code == 401 and db.session.execute(select(BounceEvent)).first() is None
    other = make_company(provider="sendgrid", sender="noreply@other.test")
    assert client.post(f"/callbacks/v1/bounces/sendgrid/{other.id}", data=body, headers=headers).status_code == 401
    assert client.post(url, data=b"[" + b" " * (1024 * 1024) + b"]", headers=headers).status_code == 413

    resp = client.post(url, data=body, headers=headers)
    assert resp.status_code == 200 and resp.json["applied"] == 2
    assert client.post(url, data=body, headers=headers).json["applied"] == 0  # a redelivery applies once
    assert recipient(job_id, "user5@acme.test").status == "bounced"
    assert recipient(job_id, "user6@acme.test").status == "sent"
    assert job(job_id).emails_bounced == 1
    suppressed = dict(db.session.execute(select(Suppression.email, Suppression.reason)
                                         .where(Suppression.company_id == company.id)).all())
    assert suppressed == {"user5@acme.test": "bounce", "user6@acme.test": "complaint"}


def test_mailgun_job_to_webhook(app, client, make_company, endpoints):
    company = make_company(provider="mailgun", sender="noreply@mg.acme.test", mailgun_api_key=MG_KEY,
                           mailgun_domain=DOMAIN, mailgun_region="eu", mailgun_webhook_signing_key=MG_SIGNING)
    with FakeMailgun(MG_KEY, DOMAIN) as mailgun:
        endpoints(**{"mailgun-eu": mailgun.url})
        job_id = submit(client, company, people(250))
        run_worker_burst(app)
    done = job(job_id)
    assert (done.status, done.emails_sent, done.emails_failed) == ("completed", 250, 0)
    assert_own_content(mailgun.delivered, 250)
    message_id = recipient(job_id, "user3@acme.test").message_id
    assert message_id and "<" not in message_id

    def signed(event: dict, token: str | None = None) -> dict:
        token, stamp = token or secrets.token_hex(25), str(int(time.time()))
        digest = hmac.new(MG_SIGNING.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
        return {"signature": {"timestamp": stamp, "token": token, "signature": digest}, "event-data": event}

    url = f"/callbacks/v1/bounces/mailgun/{company.id}"
    bounce = {"event": "failed", "severity": "permanent", "id": "mg-ev-1", "recipient": "user3@acme.test",
              "reason": "bounce", "message": {"headers": {"message-id": message_id}}}
    forged = signed(bounce)
    forged["event-data"] = {**bounce, "recipient": "user4@acme.test"}  # the signature does not cover the body,
    forged["signature"]["signature"] = "0" * 64                         # so a bad signature is what is refused
    assert client.post(url, json=forged).status_code == 401
    assert client.post(url, json=signed(bounce)).json["applied"] == 1
    complaint = {"event": "complained", "id": "mg-ev-2", "recipient": "user4@acme.test"}
    assert client.post(url, json=signed(complaint)).json["applied"] == 1
    assert client.post(url, json=signed(bounce)).json["applied"] == 0  # same event id, new token: once
    assert recipient(job_id, "user3@acme.test").status == "bounced"
    suppressed = dict(db.session.execute(select(Suppression.email, Suppression.reason)
                                         .where(Suppression.company_id == company.id)).all())
    assert suppressed == {"user3@acme.test": "bounce", "user4@acme.test": "complaint"}
    assert client.post(f"/callbacks/v1/bounces/smtp/{company.id}", json={}).status_code == 404
