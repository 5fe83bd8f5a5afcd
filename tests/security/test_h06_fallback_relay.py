"""Medium 6: the operator's SMTP relay sends for a company only when the operator enabled
it, and then From is the service's address (the tenant's sender in Reply-To) unless the
sender's domain was approved for that company."""
from __future__ import annotations

import smtplib
from datetime import timedelta
from email import message_from_bytes

from core import companies, submissions
from core.db import db
from core.models import Job, utcnow
from providers import mime
from tests.support.app import run_worker_burst
from tests.support.attack import people, submit
from tests.support.servers import free_port
from tests.support.smtp_clients import message


def dead_aws(**extra) -> dict:
    return {"provider": "aws", "aws_endpoint_url": f"http://127.0.0.1:{free_port()}", "aws_region": "us-east-1",
            "aws_access_key": "AKIATESTTESTTEST", "aws_secret_key": "test-secret", **extra}


def test_the_relay_is_off_for_a_company_the_operator_did_not_enable(app, client, make_company, smtp_sink,
                                                                    set_settings):
    set_settings(fallback_smtp=smtp_sink.config())
    company = make_company(**dead_aws(sender="ceo@beta.example"))
    job_id = submit(client, company, people(3))
    run_worker_burst(app)
    assert smtp_sink.messages == []
    assert db.session.get(Job, job_id).emails_sent == 0


def test_on_the_relay_from_is_the_services_address_and_the_sender_is_reply_to(app, client, make_company,
                                                                              smtp_sink, set_settings):
    set_settings(fallback_smtp=smtp_sink.config(), fallback_from="relay@offload.example")
    company = make_company(**dead_aws(sender="ceo@beta.example", fallback_relay="1"))
    submit(client, company, people(2))
    run_worker_burst(app)
    assert len(smtp_sink.messages) == 2
    for mail in smtp_sink.messages:
        parsed = message_from_bytes(mail.data)
        assert mail.mail_from == "relay@offload.example" and parsed["From"] == "relay@offload.example"
        assert parsed["Reply-To"] == "ceo@beta.example"
        assert "beta.example" not in parsed["Message-ID"]


def test_an_approved_domain_keeps_its_from(app, client, make_company, smtp_sink, set_settings):
    set_settings(fallback_smtp=smtp_sink.config())
    company = make_company(**dead_aws(sender="news@acme.test", fallback_relay="1",
                                      fallback_sender_domains="acme.test"))
    submit(client, company, people(1))
    run_worker_burst(app)
    [mail] = smtp_sink.messages
    assert mail.mail_from == "news@acme.test" and message_from_bytes(mail.data)["Reply-To"] is None


def test_only_an_admin_may_turn_the_relay_on(app, client, company, make_user):
    try:
        companies.configure(company.company, {"fallback_relay": "1"}, admin=False)
    except ValueError as exc:
        assert "only an administrator" in str(exc)
    else:
        raise AssertionError("a manager enabled the operator's relay")
    db.session.rollback()
    assert not company.company.fallback_relay


def test_mail_taken_by_smtp_keeps_its_bytes_on_the_relay_but_from_and_sender_are_the_services(
        app, make_company, smtp_sink, smtp_server, set_settings):
    """The LMS's own MIME on the relay: From: becomes the service's address (the LMS's From: the Reply-To),
    and the envelope sender too; every other byte as the LMS wrote it."""
    set_settings(fallback_smtp=smtp_sink.config(), fallback_from="relay@offload.example")
    company = make_company(**dead_aws(sender="ceo@beta.example", fallback_relay="1"))
    server = smtp_server()
    sent = message("Your account", sender="Beta Boss <ceo@beta.example>")
    with smtplib.SMTP(server.host, server.port, timeout=30) as client:
        client.login(str(company.id), company.token)
        client.sendmail("ceo@beta.example", ["ann@example.com"], sent)
    submissions.close_window(company.id, "notification", now=utcnow() + timedelta(hours=1))
    run_worker_burst(app)
    [mail] = smtp_sink.messages
    parsed = message_from_bytes(mail.data)
    assert mail.mail_from == "relay@offload.example" and parsed["From"] == "relay@offload.example"
    assert parsed["Reply-To"] == "Beta Boss <ceo@beta.example>"
    assert mime.without(mail.data.replace(b"\r\n", b"\n"), ["received", "from", "reply-to"]) == \
        mime.without(sent, ["from"]).replace(b"\r\n", b"\n")
