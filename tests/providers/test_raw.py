"""A message taken by SMTP submission (``Message.raw``) goes out as the LMS wrote it: SMTP, SES (Raw
content) and Mailgun (messages.mime) send the MIME itself with our headers on top; SendGrid and
Cloudflare's REST API, which take parts, get the parts rebuilt from it."""
from __future__ import annotations

import base64
from email.message import EmailMessage

import pytest

from providers import ThrottledError, mime, registry
from providers.base import Message, ResultStatus
from providers.cloudflare import email_payload
from providers.mailgun import MailgunProvider
from providers.sendgrid import SendgridProvider
from providers.ses import SINGLE_CALLS_AT_ONCE
from providers.smtp import SmtpProvider
from tests.support.email_apis import FakeMailgun, FakeSendgrid
from tests.support.faulty_proxy import FaultyProxy
from tests.support.servers import SmtpSink

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8


def moodle_mail(to: str = "Łukasz <lukasz@example.com>") -> bytes:
    """A message as Moodle's PHPMailer sends one: alternative bodies, an inline logo, a PDF, UTF-8."""
    mail = EmailMessage()
    mail["From"] = '"Zoë Teacher (via Moodle)" <noreply@acme.test>'
    mail["To"] = to
    mail["Reply-To"] = "zoe@acme.test"
    mail["Subject"] = "Certificado — 完了証明書 ✓"
    mail["Message-ID"] = "<moodle.1234@acme.test>"
    mail["X-Course-Id"] = "42"
    mail.set_content("Olá Łukasz 🎓\n")
    mail.add_alternative('<p>Olá <img src="cid:logo@acme"> Łukasz</p>', subtype="html")
    mail.get_payload()[1].add_related(b"\x89PNG\r\n\x1a\nlogo", maintype="image", subtype="png", cid="<logo@acme>")
    mail.add_attachment(PDF, maintype="application", subtype="pdf", filename="certificado ✓.pdf")
    return mail.as_bytes(policy=mail.policy.clone(linesep="\r\n"))


RAW = moodle_mail()
BULK = {"List-Unsubscribe": "<https://offload.test/u/abc>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


def raw_message(key: int = 1, to: str = "lukasz@example.com", headers: dict | None = None) -> Message:
    return Message(key=key, to=to, subject="Certificado — 完了証明書 ✓", raw=RAW, headers=dict(headers or {}),
                   envelope_from="bounces+x@acme.test")


def test_outgoing_adds_our_headers_on_top_and_changes_nothing_else():
    out = mime.outgoing(RAW, BULK)
    assert out.endswith(RAW) and out[:-len(RAW)].count(b"\r\n") == 2
    assert mime.outgoing(RAW, {}) == RAW
    with pytest.raises(ValueError):
        mime.outgoing(RAW, {"X-Bad": "a\r\nBcc: x@evil.test"})


def test_smtp_sends_the_bytes_from_the_lms_envelope_sender():
    with SmtpSink() as sink, SmtpProvider(sink.config()) as provider:
        results = provider.send("noreply@acme.test", [raw_message(1, headers=BULK), raw_message(2, "b@example.com")])
    assert [r.status for r in results] == [ResultStatus.SENT, ResultStatus.SENT]
    assert results[0].message_id == "<moodle.1234@acme.test>"
    first, second = sink.messages
    assert (first.mail_from, first.rcpt_tos) == ("bounces+x@acme.test", ["lukasz@example.com"])
    assert first.data == mime.outgoing(RAW, BULK) and second.data == RAW and second.rcpt_tos == ["b@example.com"]


def test_ses_sends_raw_content_to_the_envelope_recipient(ses, make_ses):
    provider = make_ses(ses.url)
    [result] = provider.send("noreply@acme.test", [raw_message(headers=BULK)])
    assert result.status == ResultStatus.SENT and result.message_id
    [stored] = ses.store()
    assert stored["subject"] == "Certificado — 完了証明書 ✓" and "noreply@acme.test" in stored["from"]
    assert stored["body"]["text"].strip() == "Olá Łukasz 🎓"
    [pdf] = [a for a in stored["attachments"] if a.get("filename")]
    assert pdf["filename"] == "certificado ✓.pdf" and base64.b64decode(pdf["content"]) == PDF


def test_mailgun_posts_the_mime_to_messages_mime():
    with FakeMailgun("key-raw", "mg.acme.test") as fake:
        registry.configure(api_bases={"mailgun": fake.url})
        try:
            provider = MailgunProvider({"mailgun_api_key": "key-raw", "mailgun_domain": "mg.acme.test"})
            [result] = provider.send("noreply@acme.test", [raw_message(headers=BULK)])
        finally:
            registry.configure(api_bases={})
    assert result.status == ResultStatus.SENT
    [got] = fake.delivered
    assert got.to == "lukasz@example.com" and got.raw == mime.outgoing(RAW, BULK)
    assert [r.path for r in fake.requests] == ["/v3/mg.acme.test/messages.mime"]


def test_sendgrid_gets_the_parts_rebuilt_from_the_mime():
    with FakeSendgrid("SG.raw") as fake:
        registry.configure(api_bases={"sendgrid": fake.url})
        try:
            [result] = SendgridProvider({"sendgrid_api_key": "SG.raw"}).send("noreply@acme.test",
                                                                              [raw_message(headers=BULK)])
        finally:
            registry.configure(api_bases={})
    assert result.status == ResultStatus.SENT
    [got] = fake.delivered
    assert (got.to, got.subject) == ("lukasz@example.com", "Certificado — 完了証明書 ✓")
    assert got.text.strip() == "Olá Łukasz 🎓" and '<img src="cid:logo@acme">' in got.html
    assert got.headers["X-Course-Id"] == "42" and got.headers["List-Unsubscribe"] == BULK["List-Unsubscribe"]
    files = {a["filename"]: a for a in got.attachments}
    assert base64.b64decode(files["certificado ✓.pdf"]["content"]) == PDF
    assert files["attachment"]["disposition"] == "inline" and files["attachment"]["content_id"] == "logo@acme"
    body = fake.requests[0].json()
    assert body["from"] == {"email": "noreply@acme.test", "name": "Zoë Teacher (via Moodle)"}
    assert body["reply_to"] == {"email": "zoe@acme.test"}


def test_cloudflare_rest_gets_the_parts_rebuilt_from_the_mime():
    payload = email_payload("noreply@acme.test", raw_message(headers=BULK))
    assert payload["from"] == {"address": "noreply@acme.test", "name": "Zoë Teacher (via Moodle)"}
    assert (payload["to"], payload["subject"]) == ("lukasz@example.com", "Certificado — 完了証明書 ✓")
    assert payload["headers"]["Reply-To"] == "zoe@acme.test" and payload["headers"]["X-Course-Id"] == "42"
    assert base64.b64decode(payload["attachments"][0]["content"]) == PDF


def test_ses_sends_raw_messages_several_at_once_and_settles_a_throttle_part_way(ses, make_ses):
    """Single sends in a row run SINGLE_CALLS_AT_ONCE at a time: one Result per message in order, each
    SENT message in SES's store once; calls SES throttled come back RETRY once anything was sent, and a
    chunk SES throttles whole raises, as one call in a row of them did."""
    messages = [raw_message(key=i, to=f"r{i}@example.com") for i in range(3 * SINGLE_CALLS_AT_ONCE + 3)]
    with FaultyProxy(ses.url, throttle_rate=0.3) as proxy:
        results = make_ses(proxy.url).send("noreply@acme.test", messages)
        assert 0 < proxy.throttled < len(messages)
    assert [r.key for r in results] == [m.key for m in messages]
    sent = [r.key for r in results if r.status == ResultStatus.SENT]
    assert {r.status for r in results} == {ResultStatus.SENT, ResultStatus.RETRY}
    assert all("throttl" in r.error.lower() for r in results if r.status == ResultStatus.RETRY)
    assert len(ses.store()) == len(sent)  # (the emulator keeps the To: field, the same in each)
    ses.clear()
    with FaultyProxy(ses.url, throttle_rate=1.0) as proxy, pytest.raises(ThrottledError):
        make_ses(proxy.url).send("noreply@acme.test", messages[:SINGLE_CALLS_AT_ONCE])
    assert ses.store() == []
