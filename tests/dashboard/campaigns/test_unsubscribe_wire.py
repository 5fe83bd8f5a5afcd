"""List-Unsubscribe as a mailbox provider reads it (RFC 2369, RFC 8058): the raw message, parsed with
``email.parser`` and ``policy.default``, has the header exactly ``<https://...>`` on one line (never RFC 2047
encoded words, which the standard policy makes of a long URI) and ``List-Unsubscribe-Post:
List-Unsubscribe=One-Click``; through the real worker to an aiosmtpd server, and to SES (aws-ses-v2-local's
store). Bulk mail also shows the link in a footer of its text and HTML, which a company can restyle;
transactional mail carries neither header nor footer."""
from __future__ import annotations

import re
from email import policy
from email.parser import BytesParser

import pytest

from core import companies, unsubscribe
from core.db import db
from core.unsubscribe import unsubscribe_url
from tests.support.app import run_worker_burst
from tests.support.jobs import aws_settings
from tests.support.servers import SmtpSink

#: a public URL like a real one: with the token, the header is well over 78 characters
PUBLIC_URL = "https://offload.mail-service.example.com"
CAMPAIGN = {"type": "reengagement", "subject": "We miss you {{ firstname }}",
            "body_text": "Come back, {{ firstname }}!", "body_html": "<p>Come back, {{ firstname }}!</p>"}


@pytest.fixture
def public_url(set_settings):
    set_settings(public_url=PUBLIC_URL)
    return PUBLIC_URL


@pytest.fixture
def sink(company):
    with SmtpSink() as server:
        companies.configure(company.company, {"smtp_host": "127.0.0.1", "smtp_port": str(server.port),
                                              "smtp_tls": "none"})
        db.session.commit()
        yield server


def post(client, company, emails, **extra):
    body = {**CAMPAIGN, "recipients": [{"email": e, "data": {"firstname": "Ann", "password": "pw-1"}}
                                       for e in emails], **extra}
    resp = client.post("/api/v1/jobs", json=body, headers=company.auth)
    assert resp.status_code == 202, resp.json
    return resp.json["id"]


def head_lines(raw: bytes) -> list[bytes]:
    return raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def parts(mail) -> tuple[str, str]:
    parsed = mail.message  # the bodies with LF line ends, as a mail client shows them
    return parsed.get_body(("plain",)).get_content(), parsed.get_body(("html",)).get_content()


def test_smtp_writes_the_header_as_a_plain_uri_on_one_line(client, app, company, sink, public_url):
    post(client, company, ["ann.longer-address@example-learners.com"])
    run_worker_burst(app)
    (mail,) = sink.messages
    expected = f"<{unsubscribe_url(company.id, 'ann.longer-address@example-learners.com')}>"
    assert expected.startswith("<https://") and len("List-Unsubscribe: " + expected) > 78

    lines = head_lines(mail.data)
    assert f"List-Unsubscribe: {expected}".encode() in lines  # one line, as written
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in lines
    assert not [line for line in lines if line.lower().startswith(b"list-unsubscribe") and b"=?" in line]

    parsed = BytesParser(policy=policy.default).parsebytes(mail.data)
    raw_values = dict(parsed.raw_items())  # what the message says, before any decoding
    assert raw_values["List-Unsubscribe"] == expected
    assert raw_values["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert str(parsed["List-Unsubscribe"]) == expected


def test_ses_gets_the_header_as_a_plain_uri(client, app, make_company, ses, public_url):
    company = make_company(**aws_settings(ses.url))
    post(client, company, [f"learner{i}@example-learners.com" for i in range(3)])
    run_worker_burst(app)
    received = ses.store()
    assert len(received) == 3
    for email in received:
        (to,) = email["destination"]["to"]
        headers = {h["name"]: h["value"] for h in email["headers"]}
        assert headers["List-Unsubscribe"] == f"<{unsubscribe_url(company.id, to)}>"
        assert re.fullmatch(r"<https://[!-~]+>", headers["List-Unsubscribe"])
        assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_password_mail_has_no_unsubscribe_header_and_no_footer(client, app, company, sink, public_url):
    body = {"type": "csv_import", "subject": "Welcome {{ firstname }}", "body_text": "Your password: {{ password }}",
            "body_html": "<p>Your password: {{ password }}</p>",
            "recipients": [{"email": "ann@example-learners.com", "data": {"firstname": "Ann", "password": "pw-1"}}]}
    assert client.post("/api/v1/jobs", json=body, headers=company.auth).status_code == 202
    run_worker_burst(app)
    (mail,) = sink.messages
    assert not [line for line in head_lines(mail.data) if line.lower().startswith(b"list-unsubscribe")]
    text, html = parts(mail)
    assert text == "Your password: pw-1\n" and html == "<p>Your password: pw-1</p>\n"


def test_bulk_mail_shows_the_link_in_a_footer_of_both_bodies(client, app, company, sink, public_url):
    post(client, company, ["ann@example-learners.com"])
    run_worker_burst(app)
    (mail,) = sink.messages
    url = unsubscribe_url(company.id, "ann@example-learners.com")
    text, html = parts(mail)
    assert text == f"Come back, Ann!\n\n--\nDon't want these emails? Unsubscribe: {url}\n"
    assert html.startswith("<p>Come back, Ann!</p><p style=") and f'<a href="{url}"' in html
    # following the footer's link is the same unsubscribe as the header's
    assert client.post(url[len(PUBLIC_URL):]).status_code == 200


def test_a_company_restyles_its_footer_and_a_footer_without_the_link_is_refused(client, app, company, sink,
                                                                                 public_url):
    with pytest.raises(ValueError, match="must show the link"):
        companies.configure(company.company, {"unsubscribe_footer_text": "Bye!"})
    with pytest.raises(ValueError, match="may use only"):
        companies.configure(company.company, {"unsubscribe_footer_text": "{{ firstname }}: {{ unsubscribe_url }}"})
    companies.configure(company.company, {
        "unsubscribe_footer_text": "Acme Learning · leave the list: {{ unsubscribe_url }}",
        "unsubscribe_footer_html": '<div class="foot"><a href="{{ unsubscribe_url }}">Leave the list</a></div>'})
    db.session.commit()
    post(client, company, ["bob@example-learners.com"], body_html="<html><body><p>Hi</p></body></html>")
    run_worker_burst(app)
    (mail,) = sink.messages
    url = unsubscribe_url(company.id, "bob@example-learners.com")
    text, html = parts(mail)
    assert text.endswith(f"\n\nAcme Learning · leave the list: {url}\n")
    assert html == f'<html><body><p>Hi</p><div class="foot"><a href="{url}">Leave the list</a></div></body></html>\n'
    assert unsubscribe.DEFAULT_FOOTER_TEXT not in text
