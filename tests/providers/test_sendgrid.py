"""providers.sendgrid against a local server that follows SendGrid's v3 Mail Send API,
and the Signed Event Webhook's verification with known-answer vectors."""
from __future__ import annotations

import base64
import json
from collections import Counter

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from providers import guard, registry
from providers.base import (
    Attachment,
    ConnectionFailure,
    Message,
    PermanentError,
    RetryableError,
    ThrottledError,
    WebhookRefused,
    get_provider,
)
from providers.http_api import CredentialsRejected
from providers.sendgrid import SendgridProvider, bounce_reports, verify_signature
from tests.support.email_apis import FakeSendgrid
from tests.support.servers import free_port

KEY = "SG.test-key-do-not-log"
SENDER = "LMS <noreply@lms.example>"


def message(i: int, **fields) -> Message:
    base = {"key": i, "to": f"user{i}@example.com", "subject": f"Welcome {i} & <ünï>",
            "text": f"Hi {i} -text- %recipient.t% {{{{x}}}}", "html": f"<p>Hi {i} &amp; -html-</p>",
            "headers": {"List-Unsubscribe": f"<https://lms.example/u/{i}>"}}
    return Message(**{**base, **fields})


@pytest.fixture
def sendgrid():
    before = guard.policy()
    guard.configure(allow_private=True, production=False)
    with FakeSendgrid(KEY) as fake:
        registry.configure(api_bases={"sendgrid": fake.url})
        yield fake
    registry.configure(api_bases={})
    guard.configure(allow_private=before.allow_private, production=before.production,
                    allowed_hosts=before.allowed_hosts)


def provider(**extra) -> SendgridProvider:
    return SendgridProvider({"sendgrid_api_key": KEY, **extra})


def test_registered_with_its_settings_declared_once():
    assert isinstance(get_provider("sendgrid", {}), SendgridProvider)
    assert "sendgrid" in registry.names(registry.SENDER)
    fields = {s.key: s for s in SendgridProvider.settings.fields}
    assert fields["sendgrid_api_key"].secret and not fields["sendgrid_webhook_public_key"].secret
    assert SendgridProvider({}).api.base == "https://api.sendgrid.com"  # without the operator's override


def test_every_recipient_gets_exactly_their_own_message_in_one_request(sendgrid):
    messages = [message(i) for i in range(250)]
    with provider() as sg:
        results = sg.send(SENDER, messages)
    assert [r.status for r in results] == ["sent"] * 250 and [r.key for r in results] == list(range(250))
    assert len(sendgrid.requests) == 1 and sendgrid.problems == []
    request = sendgrid.requests[0]
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    body = request.json()
    assert body["from"] == {"email": "noreply@lms.example", "name": "LMS"}
    assert len(body["personalizations"]) == 250
    assert Counter(d.to for d in sendgrid.delivered) == {f"user{i}@example.com": 1 for i in range(250)}
    for d in sendgrid.delivered:
        i = int(d.to.removeprefix("user").split("@")[0])
        assert d.subject == f"Welcome {i} & <ünï>"
        assert d.text == f"Hi {i} -text- %recipient.t% {{{{x}}}}"  # a literal tag-like text stays as it is
        assert d.html == f"<p>Hi {i} &amp; -html-</p>"
        assert d.headers == {"List-Unsubscribe": f"<https://lms.example/u/{i}>"}
    message_id = request and sendgrid.delivered[0].message_id
    assert {r.message_id for r in results} == {message_id}  # X-Message-Id, recorded per recipient


def test_more_than_1000_recipients_take_several_requests(sendgrid):
    with provider() as sg:
        results = sg.send(SENDER, [message(i) for i in range(1201)])
    assert all(r.status == "sent" for r in results)
    assert [len(r.json()["personalizations"]) for r in sendgrid.requests] == [1000, 201]
    assert len(sendgrid.delivered) == 1201 and len({d.to for d in sendgrid.delivered}) == 1201
    assert len({r.message_id for r in results}) == 2


def test_big_messages_attachments_and_repeated_addresses_go_on_their_own(sendgrid):
    big = message(1, html="<p>" + "x" * 12_000 + "</p>")
    pdf = message(2, attachments=[Attachment("cert.pdf", b"%PDF-1.7 test", "application/pdf")])
    text_only = message(3, html=None)
    twice = [message(4), message(5, to="user4@example.com", subject="second")]
    with provider() as sg:
        results = sg.send(SENDER, [big, pdf, text_only, *twice])
    assert [r.status for r in results] == ["sent"] * 5
    assert sendgrid.problems == [] and len(sendgrid.delivered) == 5
    by_subject = {d.subject: d for d in sendgrid.delivered}
    assert by_subject["Welcome 1 & <ünï>"].html == big.html
    assert by_subject["Welcome 2 & <ünï>"].attachments[0]["filename"] == "cert.pdf"
    assert base64.b64decode(by_subject["Welcome 2 & <ünï>"].attachments[0]["content"]) == b"%PDF-1.7 test"
    assert by_subject["Welcome 3 & <ünï>"].html is None
    assert [d.to for d in sendgrid.delivered].count("user4@example.com") == 2
    assert len(sendgrid.requests) == 5  # big, pdf, text-only, and the repeated address apart


def test_a_per_field_400_fails_that_recipient_and_sends_the_others(sendgrid):
    messages = [message(0), message(1, to="not-an-address"), message(2)]
    with provider() as sg:
        results = sg.send(SENDER, messages)
    assert [r.status for r in results] == ["sent", "failed", "sent"]
    assert results[1].error == "SendGrid 400: invalid to.0.email"
    assert sorted(d.to for d in sendgrid.delivered) == ["user0@example.com", "user2@example.com"]
    assert len(sendgrid.requests) == 2


def test_a_400_naming_no_recipient_fails_the_request_without_remote_text(sendgrid):
    with provider() as sg:
        results = sg.send("not a sender", [message(0), message(1)])
    assert [r.status for r in results] == ["failed", "failed"]
    assert results[0].error == "SendGrid 400: invalid from.email"
    assert sendgrid.delivered == []


@pytest.mark.parametrize("status, headers, expected, retry_after", [
    (429, {"Retry-After": "7"}, ThrottledError, 7.0),
    (429, {}, ThrottledError, None),
    (500, {}, RetryableError, None),
    (503, {}, RetryableError, None),
    (403, {}, CredentialsRejected, None),
])
def test_whole_call_errors_map_to_the_hierarchy(sendgrid, status, headers, expected, retry_after):
    sendgrid.scripted.append((status, headers, {"errors": [{"message": "remote text <b>never shown</b>"}]}))
    with provider() as sg, pytest.raises(expected) as caught:
        sg.send(SENDER, [message(0), message(1)])
    assert "never shown" not in caught.value.reason and str(status) in caught.value.reason
    if expected is ThrottledError:
        assert caught.value.retry_after == retry_after
    assert sendgrid.delivered == []


def test_a_wrong_key_is_a_permanent_credentials_error(sendgrid):
    with SendgridProvider({"sendgrid_api_key": "SG.wrong"}) as sg, pytest.raises(CredentialsRejected) as caught:
        sg.send(SENDER, [message(0)])
    assert isinstance(caught.value, PermanentError) and caught.value.code == "401"
    with pytest.raises(PermanentError, match="not set"):
        SendgridProvider({}).send(SENDER, [message(0)])


def test_throttled_after_a_sent_request_marks_the_rest_for_retry(sendgrid):
    big = [message(i, html="<p>" + "y" * 11_000 + "</p>") for i in range(3)]  # one request each

    def script(request):
        if len(sendgrid.requests) == 2:
            return 429, {"Retry-After": "3"}, {"errors": []}
        return FakeSendgrid.respond(sendgrid, request)
    sendgrid.server.responder = script
    with provider() as sg:
        results = sg.send(SENDER, big)
    assert [r.status for r in results] == ["sent", "retry", "retry"]
    assert len(sendgrid.delivered) == 1


def test_header_injection_is_refused_without_a_request(sendgrid):
    with provider() as sg:
        results = sg.send(SENDER, [message(0, subject="hi\r\nBcc: x@evil.example")])
    assert results[0].status == "failed" and results[0].error == "invalid_header"
    assert sendgrid.requests == []


def test_test_connection_checks_the_key_and_shows_the_scopes(sendgrid):
    with provider() as sg:
        facts = sg.test_connection()
    assert facts["scopes"] == ["mail.send", "scopes.read"] and facts["can_send"] and facts["warnings"] == []
    sendgrid.scopes = ["scopes.read"]
    with provider() as sg:
        assert sg.test_connection()["warnings"] == ["the API key lacks the mail.send scope"]
    with SendgridProvider({"sendgrid_api_key": "SG.wrong"}) as sg, pytest.raises(CredentialsRejected):
        sg.test_connection()


def test_unreachable_api_is_a_connection_failure_and_private_addresses_are_guarded():
    before = guard.policy()
    try:
        guard.configure(allow_private=True, production=False)
        registry.configure(api_bases={"sendgrid": f"http://127.0.0.1:{free_port()}"})
        with provider() as sg, pytest.raises(ConnectionFailure):
            sg.send(SENDER, [message(0)])
        guard.configure(allow_private=False, production=False)
        with provider() as sg, pytest.raises(PermanentError, match="SendGrid endpoint refused: scheme"):
            sg.send(SENDER, [message(0)])
    finally:
        registry.configure(api_bases={})
        guard.configure(allow_private=before.allow_private, production=before.production,
                        allowed_hosts=before.allowed_hosts)


# -- the Signed Event Webhook ---------------------------------------------------------

# Known-answer vector of SendGrid's own libraries (sendgrid-python test/unit/test_eventwebhook.py):
# ECDSA P-256 / SHA-256 over timestamp + payload, the payload ending in CRLF.
VECTOR_KEY = ("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+2fNNRaIN"
              "XvVpiglSI8eNEc6wEA3F+g==")
VECTOR_SIGNATURE = "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15TluLtEZtM="
VECTOR_TIMESTAMP = "1600112502"
VECTOR_BODY = (json.dumps([{
    "email": "hello@world.com", "event": "dropped", "reason": "Bounced Address",
    "sg_event_id": "ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA",
    "sg_message_id": "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0",
    "smtp-id": "<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>", "timestamp": 1600112492,
}], sort_keys=True, separators=(",", ":")) + "\r\n").encode()
OTHER_KEY = ("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqTxd43gyp8IOEto2LdIfjRQrIbsd4SXZkLW6jDutdhXSJCWHw8REntlo7aNDthvj"
             "+y7GjUuFDb/R1NGe1OPzpA==")


def vector_headers(signature=VECTOR_SIGNATURE, timestamp=VECTOR_TIMESTAMP) -> dict:
    return {"X-Twilio-Email-Event-Webhook-Signature": signature,
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp}


def test_the_known_answer_vector_verifies_and_reads_as_a_hard_bounce():
    now = int(VECTOR_TIMESTAMP) + 10
    verify_signature(VECTOR_KEY, vector_headers(), VECTOR_BODY, now)
    reports = SendgridProvider.read_webhook({"sendgrid_webhook_public_key": VECTOR_KEY}, vector_headers(),
                                            VECTOR_BODY, now).reports
    assert [(r.kind, r.email, r.message_id) for r in reports] == [("hard", "hello@world.com",
                                                                    "LRzXl_NHStOGhQ4kofSm_A")]


@pytest.mark.parametrize("key, headers, body, now_offset, why", [
    (OTHER_KEY, vector_headers(), VECTOR_BODY, 10, "another key"),
    (VECTOR_KEY, vector_headers(), VECTOR_BODY.rstrip(), 10, "payload without its CRLF"),
    (VECTOR_KEY, vector_headers(), b"payload", 10, "another payload"),
    (VECTOR_KEY, vector_headers(timestamp="1600112503"), VECTOR_BODY, 10, "another timestamp"),
    (VECTOR_KEY, vector_headers(signature="MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzo"
                                          "QsbVRamr2nlxFDWYNH3j/0="), VECTOR_BODY, 10, "another signature"),
    (VECTOR_KEY, vector_headers(signature="not base64!"), VECTOR_BODY, 10, "garbled signature"),
    (VECTOR_KEY, {}, VECTOR_BODY, 10, "no headers"),
    (VECTOR_KEY, vector_headers(), VECTOR_BODY, 301, "stale"),
    ("", vector_headers(), VECTOR_BODY, 10, "no key configured"),
])
def test_anything_else_is_refused_before_parsing(key, headers, body, now_offset, why):
    with pytest.raises(WebhookRefused):
        SendgridProvider.read_webhook({"sendgrid_webhook_public_key": key}, headers, body,
                                      int(VECTOR_TIMESTAMP) + now_offset)


def sign(private_key: ec.EllipticCurvePrivateKey, timestamp: str, body: bytes) -> dict:
    signature = private_key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return vector_headers(base64.b64encode(signature).decode(), timestamp)


def public_b64(private_key: ec.EllipticCurvePrivateKey) -> str:
    der = private_key.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def test_events_are_sorted_into_bounces_and_complaints():
    events = [
        {"event": "bounce", "type": "bounce", "email": "a@x.test", "sg_message_id": "m1.filter0", "sg_event_id": "e1",
         "status": "5.1.1"},
        {"event": "bounce", "type": "blocked", "email": "b@x.test", "sg_message_id": "m1.filter1", "sg_event_id": "e2"},
        {"event": "spamreport", "email": "c@x.test", "sg_message_id": "m2.filter0", "sg_event_id": "e3"},
        {"event": "delivered", "email": "d@x.test", "sg_event_id": "e4"},
        {"event": "dropped", "reason": "Spam Reporting Address", "email": "e@x.test", "sg_event_id": "e5"},
    ]
    found = [(r.kind, r.email, r.message_id, r.event_id) for r in bounce_reports(events)]
    assert found == [("hard", "a@x.test", "m1", "e1"), ("soft", "b@x.test", "m1", "e2"),
                     ("complaint", "c@x.test", "m2", "e3"), ("complaint", "e@x.test", None, "e5")]
    key = ec.generate_private_key(ec.SECP256R1())
    body = json.dumps(events).encode()
    assert len(SendgridProvider.read_webhook({"sendgrid_webhook_public_key": public_b64(key)},
                                             sign(key, "1700000000", body), body, 1700000000).reports) == 4
    with pytest.raises(ValueError):
        bounce_reports({"not": "a list"})


def test_the_public_key_setting_is_validated():
    setting = next(s for s in SendgridProvider.settings.fields if s.key == "sendgrid_webhook_public_key")
    assert setting.clean(f"  {VECTOR_KEY} ") == VECTOR_KEY
    with pytest.raises(ValueError, match="sendgrid_webhook_public_key: not a base64 DER public key"):
        setting.clean("hello")
