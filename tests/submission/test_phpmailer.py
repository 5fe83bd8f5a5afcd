"""Moodle's own mailer, PHPMailer under php-cli, as email_to_user() drives it: AUTH LOGIN, a session kept
open for smtpmaxbulk messages and a new one after, UTF-8 subjects and names, attachments, Cc and Bcc, a
wrong password and a foreign sender refused with Moodle seeing why."""
from __future__ import annotations

from sqlalchemy import select

from core.db import db
from core.models import SmtpMessage
from providers import mime
from tests.support import phpmailer

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 16


def moodle(n: int, **extra) -> dict:
    """One of Moodle's messages: From the noreply address with the user's name (via the site)."""
    return {"sender": "noreply@acme.test", "from": "noreply@acme.test", "from_name": "Zoë Ångström (via Academy)",
            "to": f"learner{n}@example.com", "to_name": f"Łukasz {n}", "subject": f"Nouveau compte n°{n} — 新しい",
            "text": f"Bonjour Łukasz {n},\nvotre mot de passe est P@ss-{n}.\n", **extra}


def rows() -> list[SmtpMessage]:
    db.session.rollback()
    return list(db.session.execute(select(SmtpMessage).order_by(SmtpMessage.id)).scalars())


def test_moodles_phpmailer_sends_120_in_sessions_of_50(smtp_server, smtp_company):
    phpmailer.require_phpmailer()
    server = smtp_server()
    messages = [moodle(n) for n in range(120)]
    messages[7] = moodle(7, html="<p>Bonjour <b>Łukasz</b></p>", attachments=[
        phpmailer.attachment("certificat é.pdf", PDF)], cc=["tutor@example.com"], bcc=["audit@example.com"],
        headers={"X-Offload-Type": "certificate"})
    results = phpmailer.send(server.host, server.port, str(smtp_company.id), smtp_company.token, messages,
                             maxbulk=50)
    assert all(r["ok"] for r in results), [r for r in results if not r["ok"]][:3]
    stored = rows()
    assert len(stored) == 120
    assert [r.subject for r in stored[:3]] == [f"Nouveau compte n°{n} — 新しい" for n in range(3)]
    assert {r.mail_from for r in stored} == {"noreply@acme.test"}
    cert = stored[7]
    assert cert.job_type == "certificate"
    assert cert.rcpt_to == ["learner7@example.com", "tutor@example.com", "audit@example.com"]
    assert mime.header_values(cert.raw, "bcc") == [] and mime.header_values(cert.raw, "x-offload-type") == []
    parsed = mime.parsed(cert.raw)
    assert parsed["From"].addresses[0].display_name == "Zoë Ångström (via Academy)"
    [pdf] = list(parsed.iter_attachments())
    assert pdf.get_filename() == "certificat é.pdf" and pdf.get_content() == PDF
    assert {r.token_prefix for r in stored} == {smtp_company.token[:12]}


def test_moodle_sees_the_reason_of_a_wrong_password_and_a_foreign_sender(smtp_server, smtp_company):
    phpmailer.require_phpmailer()
    server = smtp_server()
    [wrong] = phpmailer.send(server.host, server.port, str(smtp_company.id), "mro_not-the-token", [moodle(1)])
    assert not wrong["ok"] and "authenticate" in wrong["error"].lower()
    foreign = moodle(2, sender="bounces@elsewhere.test")
    [refused, fine] = phpmailer.send(server.host, server.port, str(smtp_company.id), smtp_company.token,
                                     [foreign, moodle(3)])
    assert not refused["ok"] and "5.7.1" in refused["error"]
    assert fine["ok"]
    assert [r.subject for r in rows()] == ["Nouveau compte n°3 — 新しい"]
