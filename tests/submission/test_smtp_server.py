"""The SMTP submission server through real clients (smtplib, and a client that writes as PHPMailer does):
sign-in, its slow-down, the sender domains, the limits, garbage, and what is stored before the 250."""
from __future__ import annotations

import smtplib
import socket
import ssl
import time
from datetime import timedelta
from email.message import EmailMessage

import pytest
from sqlalchemy import select, text

from core import smtp_auth, submissions
from core.db import db
from core.models import SmtpMessage, utcnow
from providers import mime
from tests.support.certificates import client as s3_client
from tests.support.smtp_clients import LineClient, ProxiedSMTP, SmtpError, message


def stored() -> list[SmtpMessage]:
    db.session.rollback()  # the writer committed on its own connection: read afresh
    return list(db.session.execute(select(SmtpMessage).order_by(SmtpMessage.id)).scalars())


def proxied(address: str, port: int) -> bytes:
    """A PROXY protocol v1 line saying the client is ``address`` (as a TCP balancer writes it)."""
    return f"PROXY TCP4 {address} 127.0.0.1 40000 {port}\r\n".encode()


def test_a_signed_in_message_is_stored_before_its_250(signed_in, smtp_company):
    client = signed_in()
    raw = message("Welcome", headers={"Bcc": "secret@example.com", "X-Offload-Type": "csv_import"})
    client.mail("noreply@acme.test")
    client.rcpt("ann@example.com")
    client.rcpt("bob@example.com")
    code, reply = client.data(raw)
    assert code == 250 and reply.startswith(b"2.0.0 OK queued as ")
    [row] = stored()
    assert str(row.id) == reply.decode().rsplit(" ", 1)[1]
    assert (row.company_id, row.job_type, row.status, row.subject) == (smtp_company.id, "csv_import", "waiting",
                                                                        "Welcome")
    assert row.mail_from == "noreply@acme.test" and row.rcpt_to == ["ann@example.com", "bob@example.com"]
    assert row.raw.startswith(b"Received: from ") and b"with ESMTPA" in row.raw.split(b"\r\n\r\n")[0]
    assert mime.header_values(row.raw, "bcc") == [] and mime.header_values(row.raw, "x-offload-type") == []
    assert row.raw.endswith(raw.split(b"\r\n\r\n", 1)[1])  # the body byte for byte
    assert mime.without(row.raw, ["received"]) == mime.without(raw, ["bcc", "x-offload-type"])
    # encrypted at rest like recipient data
    token = db.session.execute(text("SELECT raw FROM smtp_messages")).scalar()
    assert b"Welcome" not in token.encode() and token.startswith("gAAAA")


def test_auth_plain_and_login_take_the_company_id_and_an_api_token(smtp_server, smtp_company, make_company):
    server = smtp_server()
    other = make_company("Other Co", sender="noreply@other.test")
    for mechanism in ("PLAIN", "LOGIN"):
        with smtplib.SMTP(server.host, server.port) as client:
            client.ehlo()
            assert "PLAIN" in client.esmtp_features["auth"] and "LOGIN" in client.esmtp_features["auth"]
            client.user, client.password = str(smtp_company.id), smtp_company.token
            code, _ = client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
            assert code == 235
    wrong = [(str(smtp_company.id), "mro_wrong"), (str(other.id), smtp_company.token), ("Acme", smtp_company.token)]
    for user, password in wrong:
        with smtplib.SMTP(server.host, server.port) as client, pytest.raises(smtplib.SMTPAuthenticationError) as err:
            client.login(user, password)
        assert err.value.smtp_code == 535 and err.value.smtp_error.startswith(b"5.7.8")
    with smtplib.SMTP(server.host, server.port) as client:  # nothing before AUTH
        client.ehlo()
        code, reply = client.mail("noreply@acme.test")
        assert code == 530


def test_auth_needs_starttls_off_loopback(set_settings, smtp_server, smtp_company, tls_files):
    set_settings(smtp_proxy_protocol=True, smtp_tls_cert=tls_files[0], smtp_tls_key=tls_files[1])
    server = smtp_server()
    client = LineClient(server.host, server.port, proxy_line=proxied("203.0.113.9", server.port))
    with pytest.raises(SmtpError) as err:
        client.command("AUTH LOGIN", 334)
    assert err.value.code == 538  # encryption required
    client.close()
    with ProxiedSMTP(proxied("203.0.113.9", server.port), server.host, server.port) as tls:
        tls.ehlo()
        assert "auth" not in tls.esmtp_features and "starttls" in tls.esmtp_features
        context = ssl.create_default_context(cafile=tls_files[0])
        context.check_hostname = False  # the certificate names localhost, the client dials 127.0.0.1
        tls.starttls(context=context)
        tls.ehlo()
        assert tls.login(str(smtp_company.id), smtp_company.token)[0] == 235
        tls.sendmail("noreply@acme.test", ["ann@example.com"], message("Over TLS"))
    [row] = stored()
    assert row.peer == "203.0.113.9" and b"with ESMTPSA" in row.raw.split(b"\r\n\r\n")[0]


def test_failed_auth_slows_that_address_and_never_locks_the_company_out(set_settings, smtp_server, smtp_company):
    set_settings(smtp_proxy_protocol=True, smtp_allow_plain_auth=True)
    server = smtp_server()
    user = str(smtp_company.id)
    for _ in range(smtp_auth.ACCOUNT_FREE):
        client = LineClient(server.host, server.port, proxy_line=proxied("198.51.100.7", server.port))
        with pytest.raises(SmtpError) as err:
            client.login(user, "mro_guess")
        assert err.value.code == 535
        client.close()
    assert smtp_auth.wait_seconds("198.51.100.7", user) > 0  # the guesser's next try waits
    assert smtp_auth.wait_seconds("192.0.2.20", user) == 0  # the company's own LMS does not
    lms = LineClient(server.host, server.port, proxy_line=proxied("192.0.2.20", server.port))
    lms.login(user, smtp_company.token)
    assert lms.send("noreply@acme.test", ["ann@example.com"], message()).startswith(b"250")
    lms.quit()
    late = LineClient(server.host, server.port, proxy_line=proxied("198.51.100.7", server.port))
    late.login(user, smtp_company.token)  # the right token from the guessing address: delayed, not refused
    late.quit()
    assert smtp_auth.wait_seconds("198.51.100.7", user) == 0


def test_sender_domains_hold_on_the_envelope_and_from(runner, signed_in, smtp_company):
    client = signed_in()
    code, reply = client.mail("someone@elsewhere.test")
    assert code == 550 and reply.startswith(b"5.7.1")
    client.rset()
    with pytest.raises(smtplib.SMTPDataError) as err:
        client.sendmail("noreply@acme.test", ["ann@example.com"], message(sender="CEO <ceo@elsewhere.test>"))
    assert err.value.smtp_code == 550 and err.value.smtp_error.startswith(b"5.7.1")
    with pytest.raises(smtplib.SMTPDataError) as err:
        client.sendmail("noreply@acme.test", ["ann@example.com"], message(sender="a@acme.test, b@elsewhere.test"))
    assert err.value.smtp_code == 550
    result = runner.invoke(args=["company", "configure", str(smtp_company.id),
                                 "sender_domains=lms.acme.test, Elsewhere.test"])
    assert result.exit_code == 0, result.output
    fresh = signed_in()  # the domains are read at sign-in
    fresh.sendmail("bounce+x@lms.acme.test", ["ann@example.com"], message(sender="Moodle <ceo@elsewhere.test>"))
    assert [m.mail_from for m in stored()] == ["bounce+x@lms.acme.test"]


def test_size_recipients_and_line_length_limits(set_settings, smtp_server, smtp_company):
    set_settings(smtp_max_bytes=4096, smtp_max_rcpt=3)
    server = smtp_server()
    with smtplib.SMTP(server.host, server.port) as client:
        client.login(str(smtp_company.id), smtp_company.token)
        assert client.esmtp_features["size"] == "4096"
        code, _ = client.mail("noreply@acme.test", ["SIZE=5000"])
        assert code == 552
        client.rset()
        client.mail("noreply@acme.test")  # no SIZE said: the data itself is counted
        client.rcpt("ann@example.com")
        code, _ = client.data(message(body=("x" * 80 + "\r\n") * 60))
        assert code == 552
        client.mail("noreply@acme.test")
        for n in range(3):
            assert client.rcpt(f"r{n}@example.com")[0] == 250
        assert client.rcpt("r0@example.com")[0] == 250  # the same address again is the same recipient
        code, reply = client.rcpt("r3@example.com")
        assert code == 452 and reply.startswith(b"4.5.3")
        client.rset()
        with pytest.raises(smtplib.SMTPDataError) as err:
            client.sendmail("noreply@acme.test", ["ann@example.com"], message(body="y" * 1200 + "\r\n"))
        assert err.value.smtp_code == 500
        client.sendmail("noreply@acme.test", ["ann@example.com"], message())  # the session goes on
    assert len(stored()) == 1


def test_sessions_per_company_are_limited_across_the_service(set_settings, smtp_server, smtp_company):
    set_settings(smtp_max_connections=2)
    server = smtp_server()
    first, second = (smtplib.SMTP(server.host, server.port) for _ in range(2))
    for client in (first, second):
        client.login(str(smtp_company.id), smtp_company.token)
    third = smtplib.SMTP(server.host, server.port)
    with pytest.raises(smtplib.SMTPAuthenticationError) as err:
        third.login(str(smtp_company.id), smtp_company.token)
    assert err.value.smtp_code == 454
    first.quit()
    deadline = time.monotonic() + 10
    while smtp_auth.connection().zcard(f"offload:smtp:sessions:{smtp_company.id}") > 1:
        assert time.monotonic() < deadline, "the closed session's slot was not released"
        time.sleep(0.02)
    assert third.login(str(smtp_company.id), smtp_company.token)[0] == 235
    second.quit()
    third.quit()


def test_garbage_ends_that_session_only(signed_in):
    good = signed_in()
    server = signed_in.server
    with socket.create_connection((server.host, server.port), timeout=10) as bad:
        bad.recv(1024)
        answers = b""
        # One line, then its answer: the server may close after any of them, and a line written after
        # that would meet a reset (a broken pipe, or the answers already on their way thrown away).
        for junk in (b"\x00\xff\xfe garbage\r\n", b"\x16\x03\x01\x02\x00\x01\x00\r\n", b"GET / HTTP/1.1\r\n",
                     b"NOTACOMMAND\r\n", b"FOO BAR\r\n", b"ZZZ\r\n", b"QQQ\r\n", b"WWW\r\n"):
            bad.sendall(junk)
            chunk = bad.recv(4096)
            while chunk and not chunk.endswith(b"\r\n"):
                chunk += bad.recv(4096)
            answers += chunk
            if not chunk or answers.rstrip().endswith(b"goodbye."):
                break
        while chunk:  # the server ends the session: read to its close
            chunk = bad.recv(4096)
            answers += chunk
    assert b"500" in answers and answers.rstrip().endswith(b"goodbye.")
    good.sendmail("noreply@acme.test", ["ann@example.com"], message("Still here"))
    assert [m.subject for m in stored()] == ["Still here"]


def test_a_keep_alive_session_of_50_written_line_by_line_with_nagle_on(signed_in, smtp_company):
    server = signed_in.server
    client = LineClient(server.host, server.port)
    assert client.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0  # Nagle on, as in Moodle
    client.login(str(smtp_company.id), smtp_company.token)
    replies = [client.send("noreply@acme.test", [f"user{n}@example.com"], message(f"Message {n}"))
               for n in range(50)]
    client.quit()
    assert all(r.startswith(b"250 2.0.0") for r in replies)
    rows = stored()
    assert [r.subject for r in rows] == [f"Message {n}" for n in range(50)]
    assert len({r.id for r in rows}) == 50


def test_attachments_and_utf8_subjects_and_names_arrive_byte_for_byte(signed_in):
    mail = EmailMessage()
    mail["From"] = "Zoë Ångström (via Moodle) <noreply@acme.test>"
    mail["To"] = "Łukasz Żółć <lukasz@example.com>"
    mail["Subject"] = "Certificado de finalización — 完了証明書 ✓"
    mail.set_content("Olá Łukasz, parabéns! 🎓\n")
    mail.add_alternative("<p>Olá <b>Łukasz</b> 🎓</p>", subtype="html")
    mail.add_attachment(bytes(range(256)) * 40, maintype="application", subtype="pdf", filename="certificado ✓.pdf")
    raw = mail.as_bytes(policy=mail.policy.clone(linesep="\r\n"))
    signed_in().sendmail("noreply@acme.test", ["lukasz@example.com"], raw)
    [row] = stored()
    assert row.subject == "Certificado de finalización — 完了証明書 ✓"
    assert mime.without(row.raw, ["received"]) == raw
    parsed = mime.parsed(row.raw)
    assert [p.get_filename() for p in parsed.iter_attachments()] == ["certificado ✓.pdf"]
    assert next(parsed.iter_attachments()).get_content() == bytes(range(256)) * 40


def test_an_unknown_offload_type_is_refused_with_the_reason(signed_in):
    with pytest.raises(smtplib.SMTPDataError) as err:
        signed_in().sendmail("noreply@acme.test", ["a@example.com"], message(headers={"X-Offload-Type": "spam"}))
    assert err.value.smtp_code == 550 and b"X-Offload-Type must be one of" in err.value.smtp_error
    assert stored() == []


def test_a_large_message_goes_to_the_companys_own_storage(smtp_server, make_company, s3_bucket):
    company = make_company("Big Files Ltd", sender="noreply@acme.test", provider="ses", aws_region="us-east-1",
                           aws_access_key="AKIATESTTESTTEST", aws_secret_key="test-secret", s3_bucket=s3_bucket)
    server = smtp_server()
    big = message("Course pack", body=("A" * 998 + "\r\n") * 1200)  # 1.2 MB, over LARGE_BYTES
    small = message("Note")
    with smtplib.SMTP(server.host, server.port) as client:
        client.login(str(company.id), company.token)
        client.sendmail("noreply@acme.test", ["ann@example.com"], big)
        client.sendmail("noreply@acme.test", ["ann@example.com"], small)
    large, little = stored()
    key = large.storage_key
    assert large.raw is None and large.storage_key.startswith(f"smtp/{company.id}/") and large.size > 1_200_000
    assert little.raw is not None and little.storage_key is None
    body = s3_client().get_object(Bucket=s3_bucket, Key=large.storage_key)["Body"].read()
    assert mime.without(body, ["received"]) == big
    found = submissions.stored_messages(company.id, [large.id, little.id])
    assert found[large.id].raw == body and mime.without(found[little.id].raw, ["received"]) == small
    assert submissions.stored_messages(company.id + 1, [large.id]) == {}  # another company's: nothing
    submissions.close_window(company.id, "notification", now=utcnow() + timedelta(hours=1))
    db.session.commit()
    for job_id in {m.job_id for m in stored()}:
        submissions.purge_raw(job_id)  # the retention purge
    db.session.commit()
    assert [(m.raw, m.storage_key) for m in stored()] == [(None, None), (None, None)]
    with pytest.raises(s3_client().exceptions.NoSuchKey):
        s3_client().get_object(Bucket=s3_bucket, Key=key)


@pytest.mark.parametrize("limit", [0, 5])
def test_the_fast_reading_of_mail_and_rcpt_paths_agrees_with_aiosmtpd(limit):
    from aiosmtpd.smtp import SMTP

    from submission.server import SubmissionSMTP

    session = SubmissionSMTP.__new__(SubmissionSMTP)
    session.local_part_limit = limit
    fast = 0
    for local in ("a", "b.c", "x+y", "A_B", "o'neil", "a..b", ".a", "a.", '"q"', "é", "toolongname"):
        for domain in ("ex.com", "b", "b-c.d", "b..c", "[1.2.3.4]", "B.COM.", "é.fr"):
            for rest in ("", " ", "  SIZE=12", " SIZE=12 BODY=8BITMIME", "\tSIZE=1", "x", " (c)", " (c) SIZE=1",
                         ' SIZE="1"', " SIZE=1  "):
                for lead in ("", " "):
                    arg = f"{lead}<{local}@{domain}>{rest}"
                    assert session._getaddr(arg) == SMTP._getaddr(session, arg), arg
                    fast += submission_fast_path(arg, limit)
    assert session._getaddr("<>") == SMTP._getaddr(session, "<>") and session._getaddr("") == ("", "")
    assert fast > 100  # the fast reading was taken, not only aiosmtpd's


def submission_fast_path(arg: str, limit: int) -> bool:
    from submission.server import _SIMPLE_PATH

    found = _SIMPLE_PATH.match(arg)
    return found is not None and not (limit and len(found[1].rpartition("@")[0]) > limit)


def test_a_stored_group_leaves_its_connection_as_it_was_and_a_refused_one_is_not_stored(smtp_company):
    def taken(to: str) -> submissions.Taken:
        return submissions.Taken(smtp_company.id, "notification", "noreply@acme.test", [to], "Hi",
                                 b"From: noreply@acme.test\r\nSubject: Hi\r\n\r\nHi\r\n", "127.0.0.1", None)

    before = len(stored())
    conn = db.engine.raw_connection()
    try:
        ids = submissions.store([taken("a@example.com"), taken("b@example.com")], conn, db.engine.dialect)
        assert len(ids) == 2 and ids == sorted(ids)
        driver = conn.driver_connection
        assert getattr(driver, "autocommit", False) is False  # back to the pool as SQLAlchemy expects it
        assert not submissions.connection_lost(conn, db.engine.dialect)  # idle and open: not lost
        bad = taken("c@example.com")
        bad.mail_from = None  # type: ignore[assignment]  # NOT NULL: the database refuses the row
        with pytest.raises(submissions.NotStored):
            submissions.store([taken("d@example.com"), bad], conn, db.engine.dialect)
    finally:
        conn.close()
    assert sorted(address for m in stored()[before:] for address in m.rcpt_to) == ["a@example.com", "b@example.com"]


def test_an_unforeseen_error_in_the_writer_is_a_451_and_the_writer_goes_on(signed_in, monkeypatch):
    from submission import writer

    real = writer.GroupWriter._store
    calls = []

    async def broken_once(self, connection, messages):
        calls.append(len(messages))
        if len(calls) == 1:
            raise RuntimeError("a bug, not a database error")
        return await real(self, connection, messages)

    monkeypatch.setattr(writer.GroupWriter, "_store", broken_once)
    client = signed_in()
    before = len(stored())
    client.mail("noreply@acme.test")
    client.rcpt("ann@example.com")
    code, reply = client.data(message("First"))
    assert code == 451 and b"a bug" not in reply  # no internal text reaches the client
    client.rset()
    client.mail("noreply@acme.test")
    client.rcpt("bob@example.com")
    code, _ = client.data(message("Second"))
    assert code == 250
    assert [m.subject for m in stored()[before:]] == ["Second"]
