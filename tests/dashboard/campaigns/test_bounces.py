"""Bounces and complaints: SES notifications through SNS (signed by a test
certificate served from a local server the app is configured to trust) and
the Cloudflare worker's signed reports."""
from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from core import counts, settings
from core.db import db
from core.models import BounceEvent, Job, Recipient, Suppression
from providers import sns as sns_module
from providers.webhooks import sign_headers
from tests.support.app import csrf_from, run_worker_burst
from tests.support.events import ses_settings
from tests.support.sns import CERT_PATH, TOPIC, FakeSns


@pytest.fixture
def sns(app):
    fake = FakeSns()
    with fake.server:
        sns_module.configure(url_pattern=fake.url_pattern)
        try:
            yield fake
        finally:
            sns_module.configure(url_pattern=settings.current().sns_url_pattern,
                                 ca_bundle=settings.current().sns_ca_bundle)


@pytest.fixture
def sent_job(client, app, make_company, ses_local):
    """A job of three recipients really sent through the SES emulator (message ids recorded)."""
    ses_local.clear()
    company = make_company("Bounce Co", **ses_settings(ses_local))
    company.company.settings.set_setting("sns_topic_arn", TOPIC)
    db.session.commit()
    body = {"type": "notification", "subject": "Hello", "body_text": "Hi",
            "recipients": [{"email": f"r{i}@example.com"} for i in range(3)]}
    job_id = client.post("/api/v1/jobs", json=body, headers=company.auth).get_json()["id"]
    run_worker_burst(app)
    rows = db.session.execute(select(Recipient.email, Recipient.message_id).where(Recipient.job_id == job_id)
                              .order_by(Recipient.id)).all()
    assert all(r.message_id for r in rows)
    return company, job_id, {r.email: r.message_id for r in rows}


def ses_bounce(email: str, message_id: str, bounce_type="Permanent") -> dict:
    return {"notificationType": "Bounce",
            "bounce": {"bounceType": bounce_type, "bounceSubType": "General",
                       "bouncedRecipients": [{"emailAddress": email, "status": "5.1.1"}],
                       "timestamp": "2026-11-24T10:00:00.000Z", "feedbackId": "0100-feedback"},
            "mail": {"timestamp": "2026-11-24T09:59:00.000Z", "source": "noreply@acme.test",
                     "messageId": message_id, "destination": [email]}}


def post_sns(client, company_id: int, message: dict):
    return client.post(f"/callbacks/v1/bounces/sns/{company_id}", data=json.dumps(message),
                       headers={"x-amz-sns-message-type": message["Type"], "Content-Type": "text/plain"})


def state(job_id: int) -> tuple:
    db.session.expire_all()
    job = db.session.get(Job, job_id)
    statuses = dict(db.session.execute(select(Recipient.email, Recipient.status)
                                       .where(Recipient.job_id == job_id)).all())
    suppressed = dict(db.session.execute(select(Suppression.email, Suppression.reason)).all())
    return job.emails_sent, job.emails_bounced, statuses, suppressed


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_genuine_hard_bounce_suppresses_and_marks_the_recipient_bounced(client, sns, sent_job, version):
    company, job_id, mids = sent_job
    resp = post_sns(client, company.id, sns.message(ses_bounce("r1@example.com", mids["r1@example.com"]),
                                                    version=version))
    assert resp.status_code == 200 and resp.get_json() == {"ok": True, "applied": 1}
    sent, bounced, statuses, suppressed = state(job_id)
    assert (sent, bounced) == (2, 1)
    assert statuses == {"r0@example.com": "sent", "r1@example.com": "bounced", "r2@example.com": "sent"}
    assert suppressed == {"r1@example.com": "bounce"}
    assert counts.rates(company.id, job_id)["bounces"] == 1


def test_forged_wrong_topic_and_untrusted_certificates_are_refused(client, app, sns, sent_job):
    company, job_id, mids = sent_job
    before = state(job_id)
    genuine = sns.message(ses_bounce("r0@example.com", mids["r0@example.com"]))
    forged = {**genuine, "Message": json.dumps(ses_bounce("r2@example.com", mids["r2@example.com"]))}
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = {
        "forged": forged,
        "wrong key": sns.message(ses_bounce("r0@example.com", None), key=other_key),
        "wrong topic": sns.message(ses_bounce("r0@example.com", None), topic=TOPIC + "-other"),
        "evil cert host": {**genuine, "SigningCertURL": "http://127.0.0.2:9/" + CERT_PATH},
        "cert host in userinfo": {**genuine, "SigningCertURL": sns.cert_url.replace("http://", "http://x@")},
        "not a pem": {**genuine, "SigningCertURL": sns.server.url + "/other.txt"},
        "bad version": {**genuine, "SignatureVersion": "3"},
        "not base64": {**genuine, "Signature": "!!!"},
    }
    for name, message in cases.items():
        resp = post_sns(client, company.id, message)
        assert resp.status_code == 401, name
    assert post_sns(client, company.id + 1000, genuine).status_code == 401  # no such company / topic
    assert client.post(f"/callbacks/v1/bounces/sns/{company.id}", data="{not json").status_code == 400
    assert state(job_id) == before
    assert all("127.0.0.2" not in r.path for r in sns.server.requests)
    # the default pattern only trusts https://sns.<region>.amazonaws.com
    sns_module.configure(url_pattern=None)
    assert sns_module.allowed_url("https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-1.pem")
    assert not sns_module.allowed_url("http://sns.eu-west-1.amazonaws.com/x.pem")
    assert not sns_module.allowed_url("https://sns.eu-west-1.amazonaws.com.evil.test/x.pem")
    assert not sns_module.allowed_url("https://sns.eu-west-1.amazonaws.com@evil.test/x.pem")
    assert not sns_module.allowed_url(sns.cert_url)


def test_the_certificate_is_fetched_once_and_redelivery_applies_once(client, sns, sent_job):
    company, job_id, mids = sent_job
    message = sns.message(ses_bounce("r2@example.com", mids["r2@example.com"]), version="2")
    assert post_sns(client, company.id, message).get_json()["applied"] == 1
    assert post_sns(client, company.id, message).get_json()["applied"] == 0  # SNS retried the delivery
    other = sns.message(ses_bounce("r0@example.com", mids["r0@example.com"], bounce_type="Transient"))
    assert post_sns(client, company.id, other).get_json()["applied"] == 1
    assert [r.path for r in sns.server.requests] == [CERT_PATH]
    sent, bounced, statuses, suppressed = state(job_id)
    assert (sent, bounced) == (2, 1)  # the soft bounce only counts
    assert statuses["r0@example.com"] == "sent" and suppressed == {"r2@example.com": "bounce"}
    kinds = db.session.execute(select(BounceEvent.kind, BounceEvent.email).order_by(BounceEvent.id)).all()
    assert [tuple(k) for k in kinds] == [("hard", "r2@example.com"), ("soft", "r0@example.com")]


def test_a_complaint_suppresses_without_bouncing(client, sns, sent_job):
    company, job_id, mids = sent_job
    complaint = {"notificationType": "Complaint",
                 "complaint": {"complainedRecipients": [{"emailAddress": "r0@example.com"}],
                               "complaintFeedbackType": "abuse", "timestamp": "2026-11-24T10:00:00.000Z"},
                 "mail": {"messageId": mids["r0@example.com"], "destination": ["r0@example.com"]}}
    assert post_sns(client, company.id, sns.message(complaint)).status_code == 200
    sent, bounced, statuses, suppressed = state(job_id)
    assert (sent, bounced, statuses["r0@example.com"]) == (3, 0, "sent")
    assert suppressed == {"r0@example.com": "complaint"}
    assert counts.rates(company.id, job_id)["complaints"] == 1


def test_a_bounce_without_message_id_matches_the_latest_recipient_by_address(client, sns, sent_job):
    company, job_id, _ = sent_job
    assert post_sns(client, company.id, sns.message(ses_bounce("R1@Example.com", "unknown-id"))).status_code == 200
    _, bounced, statuses, _ = state(job_id)
    assert bounced == 1 and statuses["r1@example.com"] == "bounced"


def test_subscription_confirmation_fetches_the_subscribe_url(client, sns, sent_job):
    company, job_id, _ = sent_job
    url = sns.server.url + "/confirm?Action=ConfirmSubscription&TopicArn=x&Token=abc"
    message = sns.message("You have chosen to subscribe...", kind="SubscriptionConfirmation",
                          SubscribeURL=url, Token="abc")
    resp = post_sns(client, company.id, message)
    assert resp.status_code == 200 and resp.get_json()["confirmed"] is True
    assert [r.path for r in sns.server.requests] == [CERT_PATH, "/confirm?Action=ConfirmSubscription&TopicArn=x"
                                                                "&Token=abc"]
    evil = sns.message("x", kind="SubscriptionConfirmation", SubscribeURL="http://127.0.0.2:9/confirm", Token="t")
    assert post_sns(client, company.id, evil).status_code == 401
    assert len(sns.server.requests) == 2


def cloudflare_post(client, company, body: dict, secret: str | None = None, msg_id: str = "msg_1"):
    raw = json.dumps(body).encode()
    headers = sign_headers(secret or company.secret, msg_id, raw)
    return client.post(f"/callbacks/v1/bounces/cloudflare/{company.id}", data=raw,
                       headers={**headers, "Content-Type": "application/json"})


def test_cloudflare_reports_are_verified_then_applied_once(client, sent_job, make_company):
    company, job_id, mids = sent_job
    report = {"events": [{"type": "bounce", "bounce_type": "hard", "email": "r0@example.com",
                          "message_id": mids["r0@example.com"], "reason": "550 5.1.1 user unknown"},
                         {"type": "complaint", "email": "r2@example.com"}]}
    other = make_company("Other Co")
    assert cloudflare_post(client, company, report, secret=other.secret).status_code == 401
    unsigned = client.post(f"/callbacks/v1/bounces/cloudflare/{company.id}", json=report)
    assert unsigned.status_code == 401
    assert cloudflare_post(client, company, {"events": [{"type": "spam"}]}).status_code == 400
    assert state(job_id)[3] == {}

    resp = cloudflare_post(client, company, report)
    assert resp.status_code == 200 and resp.get_json()["applied"] == 2
    assert cloudflare_post(client, company, report).get_json()["applied"] == 0  # same webhook-id
    sent, bounced, statuses, suppressed = state(job_id)
    assert (sent, bounced, statuses["r0@example.com"]) == (2, 1, "bounced")
    assert suppressed == {"r0@example.com": "bounce", "r2@example.com": "complaint"}


def test_rates_warn_past_two_percent_bounces_and_show_on_the_suppression_page(client, sns, sent_job, make_user,
                                                                            auth, make_company):
    company, job_id, mids = sent_job
    assert counts.rates(company.id)["bounce_warning"] is False
    post_sns(client, company.id, sns.message(ses_bounce("r1@example.com", mids["r1@example.com"])))
    job_rates = counts.rates(company.id, job_id)
    assert (job_rates["sent"], job_rates["bounces"], job_rates["bounce_warning"]) == (3, 1, True)
    assert job_rates["bounce_rate"] == pytest.approx(1 / 3) and job_rates["period_days"] is None
    assert counts.rates(company.id)["bounce_warning"] is True
    other = make_company("Quiet Co")
    assert counts.rates(other.id) == {"sent": 0, "bounces": 0, "soft_bounces": 0, "complaints": 0,
                                       "bounce_rate": 0.0, "complaint_rate": 0.0, "bounce_warning": False,
                                       "complaint_warning": False, "period_days": 30}
    with pytest.raises(LookupError):
        counts.rates(other.id, job_id)  # another company's job

    user, password = make_user("boss@bounce.test", "manager", company.id)
    auth.login(user.email, password)
    html = client.get("/admin/suppressions/").get_data(as_text=True)
    assert "33.33%" in html and "The bounce rate is above 2%" in html
    assert "r1@example.com" in html and csrf_from(html)
