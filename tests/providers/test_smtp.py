"""providers.smtp against in-process aiosmtpd servers (plain, STARTTLS, implicit TLS, AUTH)."""
from __future__ import annotations

import pytest

from providers.base import (
    Attachment,
    ConnectionFailure,
    Message,
    PermanentError,
    ThrottledError,
    get_provider,
)
from providers.smtp import SmtpProvider, parse_smtp_url
from tests.support.servers import SilentServer, SmtpSink, free_port

SENDER = "LMS Notifications <noreply@lms.example>"


def message(i: int, **fields) -> Message:
    base = {"key": i, "to": f"user{i}@example.com", "subject": f"Welcome {i} – ünï",
            "text": f"Hi {i},\nyour password is pw-{i}", "html": f"<p>Hi <b>{i}</b> &amp; co</p>"}
    return Message(**{**base, **fields})


@pytest.fixture
def smtp_sink():
    """Start SmtpSinks with the given options; stopped after the test."""
    sinks: list[SmtpSink] = []

    def start(**options) -> SmtpSink:
        sink = SmtpSink(**options).start()
        sinks.append(sink)
        return sink

    yield start
    for sink in sinks:
        sink.stop()


@pytest.fixture
def make_smtp():
    """Build SmtpProviders; each is closed after the test."""
    made: list[SmtpProvider] = []

    def make(port: int, **config) -> SmtpProvider:
        provider = SmtpProvider({"smtp_host": "127.0.0.1", "smtp_port": port, "timeout": 5, **config})
        made.append(provider)
        return provider

    yield make
    for provider in made:
        provider.close()


def test_registry_builds_smtp_provider():
    assert isinstance(get_provider("smtp", {"smtp_host": "mail.example", "smtp_port": "2525"}), SmtpProvider)


def test_batch_is_sent_over_one_connection(smtp_sink, make_smtp):
    sink = smtp_sink()
    provider = make_smtp(sink.port)
    messages = [message(i, headers={"List-Unsubscribe": f"<https://lms.example/u/{i}>"}) for i in range(5)]

    first = provider.send(SENDER, messages[:3])
    second = provider.send(SENDER, messages[3:])

    results = first + second
    assert [(r.key, r.status) for r in results] == [(i, "sent") for i in range(5)]
    assert sink.sessions == 1
    assert provider.connections_opened == 1
    assert len({m.peer for m in sink.messages}) == 1
    for i, (result, received) in enumerate(zip(results, sink.messages, strict=True)):
        mail = received.message
        assert received.mail_from == "noreply@lms.example"
        assert received.rcpt_tos == [f"user{i}@example.com"]
        assert mail["To"] == f"user{i}@example.com"
        assert mail["From"] == SENDER
        assert mail["Subject"] == f"Welcome {i} – ünï"
        assert mail["Message-ID"] == result.message_id
        assert mail["List-Unsubscribe"] == f"<https://lms.example/u/{i}>"
        assert mail.get_body(("plain",)).get_content() == f"Hi {i},\nyour password is pw-{i}\n"
        assert mail.get_body(("html",)).get_content() == f"<p>Hi <b>{i}</b> &amp; co</p>\n"


def test_html_only_and_attachments(smtp_sink, make_smtp):
    sink = smtp_sink()
    pdf = bytes(range(256))
    results = make_smtp(sink.port).send(SENDER, [
        message(1, text=None),
        message(2, attachments=[Attachment("certificate.pdf", pdf, "application/pdf"),
                                Attachment("notes.txt", "ünï".encode(), "text/plain")]),
    ])

    assert [r.status for r in results] == ["sent", "sent"]
    html_only, with_files = (m.message for m in sink.messages)
    assert html_only.get_content_type() == "text/html"
    files = {part.get_filename(): part for part in with_files.iter_attachments()}
    assert files["certificate.pdf"].get_content() == pdf
    assert files["certificate.pdf"].get_content_type() == "application/pdf"
    assert files["notes.txt"].get_payload(decode=True) == "ünï".encode()


def test_starttls_with_verified_certificate(smtp_sink, make_smtp, tls_files):
    sink = smtp_sink(starttls_context=tls_files.server_context(), require_starttls=True)
    provider = make_smtp(sink.port, smtp_tls="starttls", smtp_ca_file=str(tls_files.cert))

    results = provider.send(SENDER, [message(1), message(2)])

    assert [r.status for r in results] == ["sent", "sent"]
    assert sink.sessions == 1
    assert len(sink.messages) == 2


def test_untrusted_certificate_is_a_connection_failure(smtp_sink, make_smtp, tls_files):
    sink = smtp_sink(starttls_context=tls_files.server_context(), require_starttls=True)
    with pytest.raises(ConnectionFailure) as caught:
        make_smtp(sink.port, smtp_tls="starttls").send(SENDER, [message(1)])
    assert caught.value.code == "tls"
    assert sink.messages == []


def test_implicit_tls(smtp_sink, make_smtp, tls_files):
    sink = smtp_sink(tls_context=tls_files.server_context())
    provider = make_smtp(sink.port, smtp_tls="tls", smtp_ca_file=str(tls_files.cert))

    results = provider.send(SENDER, [message(1)])

    assert results[0].status == "sent"
    assert sink.messages[0].rcpt_tos == ["user1@example.com"]


def test_auth_over_starttls(smtp_sink, make_smtp, tls_files):
    sink = smtp_sink(starttls_context=tls_files.server_context(), users={"lms": "s3cr3t pass"})
    provider = make_smtp(sink.port, smtp_tls="starttls", smtp_ca_file=str(tls_files.cert),
                         smtp_username="lms", smtp_password="s3cr3t pass")

    assert provider.send(SENDER, [message(1)])[0].status == "sent"
    assert len(sink.messages) == 1


def test_wrong_password_is_permanent_and_not_echoed(smtp_sink, make_smtp, tls_files):
    sink = smtp_sink(starttls_context=tls_files.server_context(), users={"lms": "right"})
    provider = make_smtp(sink.port, smtp_tls="starttls", smtp_ca_file=str(tls_files.cert),
                         smtp_username="lms", smtp_password="wrong-Pa55")

    with pytest.raises(PermanentError) as caught:
        provider.send(SENDER, [message(1)])

    assert caught.value.code == "auth_failed"
    assert caught.value.reason.startswith("SMTP authentication failed: 535")
    assert "wrong-Pa55" not in caught.value.reason
    assert sink.messages == []


def test_test_connection_reports_features_without_password(smtp_sink, make_smtp, tls_files):
    sink = smtp_sink(starttls_context=tls_files.server_context(), users={"lms": "s3cr3t"})
    provider = make_smtp(sink.port, smtp_tls="starttls", smtp_ca_file=str(tls_files.cert),
                         smtp_username="lms", smtp_password="s3cr3t")

    facts = provider.test_connection()

    assert facts["authenticated"] is True
    assert facts["tls"] == "starttls"
    assert "PLAIN" in facts["features"]["auth"]
    assert "s3cr3t" not in repr(facts)


@pytest.mark.parametrize("fields", [
    {"subject": "Hello\r\nX-Injected: yes"},
    {"subject": "Hello\nX-Injected: yes"},
    {"headers": {"List-Unsubscribe": "<https://x>\r\nX-Injected: yes"}},
    {"headers": {"X-Injected: yes\r\nX-Other": "v"}},
    {"headers": {"Bad Name": "v"}},
    {"headers": {"Bcc": "victim@example.com"}},
    {"to": "user1@example.com\r\nX-Injected: yes"},
    {"to": "user1@example.com\nBcc: victim@example.com"},
    {"subject": "nul\x00byte"},
])
def test_header_injection_is_refused_and_never_reaches_the_server(smtp_sink, make_smtp, fields):
    sink = smtp_sink()

    results = make_smtp(sink.port).send(SENDER, [message(1, **fields), message(2)])

    assert [(r.status, r.error) for r in results] == [("failed", "invalid_header"), ("sent", None)]
    assert len(sink.messages) == 1
    received = sink.messages[0]
    assert received.rcpt_tos == ["user2@example.com"]
    assert "X-Injected" not in received.message
    assert b"X-Injected" not in received.data
    assert b"victim" not in received.data


def test_header_injection_in_sender_fails_every_message(smtp_sink, make_smtp):
    sink = smtp_sink()
    results = make_smtp(sink.port).send("a@lms.example\r\nX-Injected: yes", [message(1), message(2)])
    assert {(r.status, r.error) for r in results} == {("failed", "invalid_header")}
    assert sink.messages == []


def test_more_than_one_recipient_in_to_is_refused(smtp_sink, make_smtp):
    sink = smtp_sink()
    results = make_smtp(sink.port).send(SENDER, [message(1, to="a@example.com, b@example.com")])
    assert (results[0].status, results[0].error) == ("failed", "invalid_address")
    assert sink.messages == []


def test_rejected_recipient_fails_only_that_message(smtp_sink, make_smtp):
    sink = smtp_sink(refuse={"user2@example.com": "550 5.1.1 No such user",
                             "user3@example.com": "450 4.2.1 Mailbox busy",
                             "user5@example.com": "554 5.7.1 Message refused by policy"})

    results = make_smtp(sink.port).send(SENDER, [message(i) for i in range(1, 6)])

    # a mailbox that does not exist is a hard bounce; other permanent refusals are failures
    assert [(r.key, r.status) for r in results] == [(1, "sent"), (2, "bounced"), (3, "retry"), (4, "sent"),
                                                    (5, "failed")]
    assert results[1].error == "550 5.1.1 mailbox unavailable or message refused"  # no server text
    assert results[2].error == "450 4.2.1 mailbox unavailable (try later)"
    assert results[4].error == "554 5.7.1 transaction failed"
    assert [m.rcpt_tos for m in sink.messages] == [["user1@example.com"], ["user4@example.com"]]
    assert sink.sessions == 1


def test_too_many_recipients_throttles(smtp_sink, make_smtp):
    sink = smtp_sink(refuse={"user1@example.com": "452 4.5.3 Too many recipients"})
    provider = make_smtp(sink.port)

    with pytest.raises(ThrottledError):
        provider.send(SENDER, [message(1), message(2)])
    after_one_sent = provider.send(SENDER, [message(2), message(1), message(3)])

    assert [r.status for r in after_one_sent] == ["sent", "retry", "retry"]
    assert after_one_sent[1].error == "452 4.5.3 insufficient storage or too many recipients"


def test_dropped_connection_is_reopened_once(smtp_sink, make_smtp):
    sink = smtp_sink(drop_after_message=True)
    provider = make_smtp(sink.port)

    results = provider.send(SENDER, [message(i) for i in range(3)])

    assert [r.status for r in results] == ["sent"] * 3
    assert [m.rcpt_tos for m in sink.messages] == [[f"user{i}@example.com"] for i in range(3)]
    assert sink.sessions == 3


def test_connection_refused_raises_connection_failure(make_smtp):
    with pytest.raises(ConnectionFailure) as caught:
        make_smtp(free_port()).send(SENDER, [message(1)])
    assert caught.value.code == "unreachable"


def test_server_that_never_greets_is_a_connection_failure(make_smtp):
    with SilentServer() as silent, pytest.raises(ConnectionFailure) as caught:
        make_smtp(silent.port, timeout=0.5).send(SENDER, [message(1)])
    assert "timed out" in caught.value.reason


def test_close_is_idempotent(smtp_sink, make_smtp):
    provider = make_smtp(smtp_sink().port)
    provider.send(SENDER, [message(1)])
    provider.close()
    provider.close()


@pytest.mark.parametrize("config", [
    {"smtp_host": "mail.example", "smtp_tls": "ssl"},
    {"smtp_port": 25},
    {"smtp_host": "mail.example", "smtp_port": "twenty-five"},
])
def test_bad_config_is_permanent_on_first_use(config):
    provider = SmtpProvider(config)
    with pytest.raises(PermanentError) as caught:
        provider.send(SENDER, [message(1)])
    assert caught.value.code == "config"
    with pytest.raises(PermanentError):
        provider.test_connection()


# -- OFFLOAD_FALLBACK_SMTP ---------------------------------------------------------

@pytest.mark.parametrize(("url", "expected"), [
    ("smtp://mail.example:2525",
     {"smtp_host": "mail.example", "smtp_port": 2525, "smtp_username": "", "smtp_password": "", "smtp_tls": "none"}),
    ("smtp://us%40er:p%3Ass%2Fw%40rd@mail.example:587?tls=starttls",
     {"smtp_host": "mail.example", "smtp_port": 587, "smtp_username": "us@er", "smtp_password": "p:ss/w@rd",
      "smtp_tls": "starttls"}),
    ("smtp://relay.example?tls=tls",
     {"smtp_host": "relay.example", "smtp_port": 465, "smtp_username": "", "smtp_password": "", "smtp_tls": "tls"}),
    ("smtp://[::1]:25", {"smtp_host": "::1", "smtp_port": 25, "smtp_username": "", "smtp_password": "",
                         "smtp_tls": "none"}),
])
def test_parse_smtp_url(url, expected):
    assert parse_smtp_url(url) == expected


@pytest.mark.parametrize(("url", "complaint"), [
    ("http://user:hunter2@mail.example:25", "must start with smtp://"),
    ("smtp://user:hunter2@:25", "no host"),
    ("smtp://user:hunter2@mail.example:port", "port must be a number"),
    ("smtp://user:hunter2@mail.example:99999", "port must be a number"),
    ("smtp://user:hunter2@mail.example:25?tls=ssl", "tls must be one of"),
    ("smtp://user:hunter2@mail.example:25?secure=1", "unknown parameter(s): secure"),
    ("smtp://user:hunter2@mail.example:25/path", "must not have a path"),
    ("smtp://:hunter2@mail.example:25", "password but no user"),
    ("", "must start with smtp://"),
])
def test_parse_smtp_url_rejects_malformed_input_without_echoing_it(url, complaint):
    with pytest.raises(ValueError) as caught:
        parse_smtp_url(url)
    assert complaint in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_parsed_url_configures_a_working_provider(smtp_sink, tls_files):
    sink = smtp_sink(starttls_context=tls_files.server_context(), users={"lms@school": "p:ss"})
    config = parse_smtp_url(f"smtp://lms%40school:p%3Ass@127.0.0.1:{sink.port}?tls=starttls")
    with SmtpProvider({**config, "smtp_ca_file": str(tls_files.cert)}) as provider:
        assert provider.send(SENDER, [message(1)])[0].status == "sent"
    assert len(sink.messages) == 1
