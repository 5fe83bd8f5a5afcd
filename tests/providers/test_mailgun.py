"""providers.mailgun against a local server that follows Mailgun's Messages API,
and its webhook HMAC verification with known-answer vectors."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from providers import guard, registry
from providers.base import (
    Attachment,
    Message,
    PermanentError,
    RetryableError,
    ThrottledError,
    WebhookRefused,
    get_provider,
)
from providers.http_api import CredentialsRejected
from providers.mailgun import MailgunProvider, bounce_reports, signature_of, verify_signature
from tests.support.email_apis import FakeMailgun

KEY = "key-mailgun-test-do-not-log"
DOMAIN = "mg.lms.example"
SENDER = "LMS <noreply@mg.lms.example>"


def message(i: int, **fields) -> Message:
    base = {"key": i, "to": f"user{i}@example.com", "subject": f"Welcome {i} & <ünï>",
            "text": f"Hi {i} %recipient.x% {{{{x}}}}", "html": f"<p>Hi {i} &amp; 100%</p>"}
    return Message(**{**base, **fields})


@pytest.fixture
def private_ok():
    before = guard.policy()
    guard.configure(allow_private=True, production=False)
    yield
    registry.configure(api_bases={})
    guard.configure(allow_private=before.allow_private, production=before.production,
                    allowed_hosts=before.allowed_hosts)


@pytest.fixture
def mailgun(private_ok):
    with FakeMailgun(KEY, DOMAIN) as fake:
        registry.configure(api_bases={"mailgun": fake.url})
        yield fake


def provider(**extra) -> MailgunProvider:
    return MailgunProvider({"mailgun_api_key": KEY, "mailgun_domain": DOMAIN, **extra})


def test_registered_with_its_settings_and_regional_bases():
    assert isinstance(get_provider("mailgun", {}), MailgunProvider)
    fields = {s.key: s for s in MailgunProvider.settings.fields}
    assert fields["mailgun_api_key"].secret and fields["mailgun_webhook_signing_key"].secret
    assert fields["mailgun_region"].choices == ("us", "eu")
    assert fields["mailgun_domain"].clean(" MG.Example.COM ") == "mg.example.com"
    with pytest.raises(ValueError, match="mailgun_domain:"):
        fields["mailgun_domain"].clean("https://mg.example.com/")
    assert MailgunProvider({}).api.base == "https://api.mailgun.net"
    assert MailgunProvider({"mailgun_region": "eu"}).api.base == "https://api.eu.mailgun.net"


def test_a_batch_gives_every_recipient_exactly_their_own_message(mailgun):
    messages = [message(i) for i in range(300)]
    with provider() as mg:
        results = mg.send(SENDER, messages)
    assert [r.status for r in results] == ["sent"] * 300
    assert len(mailgun.requests) == 1
    request = mailgun.requests[0]
    assert request.headers["Authorization"].startswith("Basic ")
    assert Counter(d.to for d in mailgun.delivered) == {f"user{i}@example.com": 1 for i in range(300)}
    for d in mailgun.delivered:
        i = int(d.to.removeprefix("user").split("@")[0])
        assert (d.subject, d.text, d.html) == (f"Welcome {i} & <ünï>", f"Hi {i} %recipient.x% {{{{x}}}}",
                                               f"<p>Hi {i} &amp; 100%</p>")
    ids = {r.message_id for r in results}
    assert ids == {mailgun.delivered[0].message_id} and not next(iter(ids)).startswith("<")


def test_calls_split_at_1000_and_by_headers_attachments_and_repeats(mailgun):
    many = [message(i) for i in range(1001)]
    own_headers = [message(2000 + i, headers={"List-Unsubscribe": f"<https://lms.example/u/{i}>"}) for i in range(2)]
    pdf = message(3000, attachments=[Attachment("cert.pdf", b"%PDF-1.7 test", "application/pdf")])
    again = message(3001, to="user0@example.com", subject="again")
    with provider() as mg:
        results = mg.send(SENDER, [*many, *own_headers, pdf, again])
    assert all(r.status == "sent" for r in results)
    assert len(mailgun.delivered) == 1005
    # 1,000 in the first call; user1000 and the repeat of user0 in a second; two header sets; the PDF alone
    assert sorted(len([v for k, v in mailgun._form(r)[0] if k == "to"]) for r in mailgun.requests) == \
        [1, 1, 1, 2, 1000]
    by_to = {d.to: d for d in mailgun.delivered}
    assert by_to["user2001@example.com"].headers == {"List-Unsubscribe": "<https://lms.example/u/1>"}
    assert by_to["user3000@example.com"].attachments == [("cert.pdf", b"%PDF-1.7 test")]
    assert [d.subject for d in mailgun.delivered if d.to == "user0@example.com"] == ["Welcome 0 & <ünï>", "again"]


def test_a_refused_address_in_a_batch_fails_only_that_message(mailgun):
    with provider() as mg:
        results = mg.send(SENDER, [message(0), message(1, to="nope"), message(2)])
    assert [r.status for r in results] == ["sent", "failed", "sent"]
    assert results[1].error == "Mailgun HTTP 400: message refused"
    assert sorted(d.to for d in mailgun.delivered) == ["user0@example.com", "user2@example.com"]


@pytest.mark.parametrize("status, headers, expected, retry_after", [
    (429, {"Retry-After": "11"}, ThrottledError, 11.0),
    (500, {}, RetryableError, None),
    (502, {}, RetryableError, None),
    (401, {}, CredentialsRejected, None),
    (403, {}, CredentialsRejected, None),
])
def test_whole_call_errors_map_to_the_hierarchy(mailgun, status, headers, expected, retry_after):
    mailgun.scripted.append((status, headers, {"message": "remote text never shown"}))
    with provider() as mg, pytest.raises(expected) as caught:
        mg.send(SENDER, [message(0), message(1)])
    assert "never shown" not in caught.value.reason and str(status) in caught.value.reason
    if expected is ThrottledError:
        assert caught.value.retry_after == retry_after
    assert mailgun.delivered == []


def test_wrong_key_unknown_domain_and_missing_settings_are_permanent(mailgun):
    with MailgunProvider({"mailgun_api_key": "wrong", "mailgun_domain": DOMAIN}) as mg, \
            pytest.raises(CredentialsRejected):
        mg.send(SENDER, [message(0)])
    with provider(mailgun_domain="other.example") as mg, pytest.raises(PermanentError, match="no domain"):
        mg.send(SENDER, [message(0)])
    for config in ({"mailgun_domain": DOMAIN}, {"mailgun_api_key": KEY},
                   {"mailgun_api_key": KEY, "mailgun_domain": DOMAIN, "mailgun_region": "mars"}):
        with pytest.raises(PermanentError):
            MailgunProvider(config).send(SENDER, [message(0)])


def test_throttled_after_a_sent_call_marks_the_rest_for_retry(mailgun):
    messages = [message(0, headers={"X-A": "1"}), message(1, headers={"X-A": "2"}), message(2, headers={"X-A": "3"})]

    def script(request):
        if len(mailgun.requests) == 2:
            return 429, {"Retry-After": "2"}, {"message": "slow down"}
        return FakeMailgun.respond(mailgun, request)
    mailgun.server.responder = script
    with provider() as mg:
        results = mg.send(SENDER, messages)
    assert [r.status for r in results] == ["sent", "retry", "retry"]


def test_eu_region_goes_to_the_eu_base(private_ok):
    with FakeMailgun(KEY, DOMAIN) as us, FakeMailgun(KEY, DOMAIN) as eu:
        registry.configure(api_bases={"mailgun": us.url, "mailgun-eu": eu.url})
        with provider(mailgun_region="eu") as mg:
            assert mg.send(SENDER, [message(0)])[0].status == "sent"
        assert len(eu.delivered) == 1 and us.requests == []


def test_test_connection_shows_the_domain_state(mailgun):
    with provider() as mg:
        facts = mg.test_connection()
    assert (facts["domain"], facts["state"], facts["warnings"]) == (DOMAIN, "active", [])
    mailgun.state = "unverified"
    with provider() as mg:
        assert mg.test_connection()["warnings"] == ["the domain is unverified: verify its DNS records in Mailgun"]
    mailgun.state = "disabled"
    with provider() as mg, pytest.raises(PermanentError, match="disabled"):
        mg.test_connection()
    with provider(mailgun_domain="other.example") as mg, pytest.raises(PermanentError, match="no domain"):
        mg.test_connection()


# -- webhooks ------------------------------------------------------------------------

# Mailgun's documented signature example (timestamp and token), signed with a test key; the expected
# hex digests were computed with `openssl dgst -sha256 -hmac`, not with the code under test.
TIMESTAMP, TOKEN = "1770920772", "e0b5477167110d68991efc6b9f89f0a11066af27834600e123"
SIGNING_KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
EXPECTED = "3f9f9869e390626cfa401e164e5cd201b24d153eafc2004a69d41c945dc93c1e"
EXPECTED_OTHER_KEY = "4a35d8514e29f6a0d1f8a1bdffe21e1370b5c25fc54b9fcc13ecbfaa7513c30d"


def test_the_signature_matches_the_known_answers():
    assert signature_of(SIGNING_KEY, TIMESTAMP, TOKEN) == EXPECTED
    assert signature_of("wrong-key", TIMESTAMP, TOKEN) == EXPECTED_OTHER_KEY


def webhook(token: str, signature: str = EXPECTED, timestamp: str = TIMESTAMP, event: dict | None = None) -> bytes:
    return json.dumps({"signature": {"timestamp": timestamp, "token": token, "signature": signature},
                       "event-data": event or {"event": "failed", "severity": "permanent", "id": "ev-1",
                                               "recipient": "a@x.test", "reason": "bounce",
                                               "message": {"headers": {"message-id": "m1@mg.lms.example"}}}}
                      ).encode()


def test_a_signed_webhook_verifies_and_reads_as_a_hard_bounce_with_its_token_as_delivery_id():
    now = int(TIMESTAMP) + 5
    config = {"mailgun_webhook_signing_key": SIGNING_KEY}
    reply = MailgunProvider.read_webhook(config, {}, webhook(TOKEN), now)
    assert [(r.kind, r.email, r.message_id, r.event_id) for r in reply.reports] == [
        ("hard", "a@x.test", "m1@mg.lms.example", "ev-1")]
    # the token is the delivery's id: the service's replay set, shared by its processes, takes it once
    # (tests/security/test_h15_webhook_replay.py)
    assert reply.delivery_id == f"token:{TOKEN}" and reply.delivery_ttl_s > 2 * 300


@pytest.mark.parametrize("key, body, now_offset", [
    ("wrong-key", webhook("t" * 50, EXPECTED), 5),
    (SIGNING_KEY, webhook("u" * 50, EXPECTED), 5),  # another token
    (SIGNING_KEY, webhook("v" * 50, EXPECTED, timestamp="1770920773"), 5),
    (SIGNING_KEY, webhook(TOKEN, EXPECTED), 301),  # stale
    (SIGNING_KEY, b'{"event-data": {}}', 5),
    (SIGNING_KEY, b"not json", 5),
    ("", webhook(TOKEN, EXPECTED), 5),
])
def test_anything_else_is_refused(key, body, now_offset):
    with pytest.raises(WebhookRefused):
        MailgunProvider.read_webhook({"mailgun_webhook_signing_key": key}, {}, body, int(TIMESTAMP) + now_offset)


def test_events_are_sorted_into_bounces_and_complaints():
    assert [r.kind for r in bounce_reports({"event": "failed", "severity": "temporary", "recipient": "a@x.test"})] \
        == ["soft"]
    assert [r.kind for r in bounce_reports({"event": "complained", "recipient": "a@x.test"})] == ["complaint"]
    assert bounce_reports({"event": "delivered", "recipient": "a@x.test"}) == []
    with pytest.raises(ValueError):
        bounce_reports({"event": "failed"})
    verify_signature(SIGNING_KEY, {"timestamp": "1700000000", "token": "w" * 50,
                                   "signature": signature_of(SIGNING_KEY, "1700000000", "w" * 50)}, 1700000000)
