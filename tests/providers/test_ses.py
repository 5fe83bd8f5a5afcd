"""providers.ses against aws-ses-v2-local, moto (STS) and scripted SES-shaped HTTP answers."""
from __future__ import annotations

import base64
import json

import pytest

from providers.base import (
    Attachment,
    ConnectionFailure,
    Message,
    PermanentError,
    QuotaExceededError,
    RetryableError,
    ThrottledError,
    get_provider,
)
from providers.ses import SesProvider
from tests.support.servers import SesLocal, SilentServer, free_port

SENDER = "noreply@example.com"
TRICKY = 'Ann & "Bob" <o\'Neil> {{ firstname }} {{{h}}} {{#each x}}}} \\ ünï 你好 🎉 \n second line'


def message(i: int, **fields) -> Message:
    base = {"key": i, "to": f"user{i}@example.com", "subject": f"Welcome {i}",
            "text": f"Hi {i}, your password is pw-{i}", "html": f"<p>Hi <b>{i}</b> &amp; co</p>"}
    return Message(**{**base, **fields})


def by_recipient(store: list[dict]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for email in store:
        for to in email["destination"]["to"]:
            found.setdefault(to, []).append(email)
    return found


def count_calls(provider: SesProvider, operation: str) -> list[int]:
    """Record how many entries each call of ``operation`` carried (botocore event hook)."""
    sizes: list[int] = []
    provider.ses.meta.events.register(
        f"provide-client-params.sesv2.{operation}",
        lambda params, **_: sizes.append(len(params.get("BulkEmailEntries", [None]))),
    )
    return sizes


def test_registry_builds_ses_provider():
    assert isinstance(get_provider("ses", {"aws_region": "eu-west-1"}), SesProvider)
    assert isinstance(get_provider("aws", {"aws_region": "eu-west-1"}), SesProvider)  # its old name


def test_120_messages_go_out_in_three_bulk_calls_each_recipient_once(ses: SesLocal, make_ses):
    provider = make_ses(ses.url)
    calls = count_calls(provider, "SendBulkEmail")
    messages = [message(i) for i in range(120)]

    results = provider.send(SENDER, messages)

    assert calls == [50, 50, 20]
    assert [r.key for r in results] == list(range(120))
    assert {r.status for r in results} == {"sent"}
    assert len({r.message_id for r in results}) == 120
    received = by_recipient(ses.store())
    assert len(received) == 120
    for i in range(120):
        (email,) = received[f"user{i}@example.com"]
        assert email["from"] == SENDER
        assert email["subject"] == f"Welcome {i}"
        assert email["body"]["text"] == f"Hi {i}, your password is pw-{i}"
        assert email["body"]["html"] == f"<p>Hi <b>{i}</b> &amp; co</p>"


def test_special_characters_and_template_syntax_round_trip_exactly(ses: SesLocal, make_ses):
    html = f"<p title=\"{TRICKY}\">{TRICKY}</p><script>a < b && c > d</script>"
    provider = make_ses(ses.url)

    results = provider.send(SENDER, [message(1, subject=TRICKY.replace("\n", " "), text=TRICKY, html=html),
                                     message(2)])

    assert [r.status for r in results] == ["sent", "sent"]
    email = by_recipient(ses.store())["user1@example.com"][0]
    assert email["subject"] == TRICKY.replace("\n", " ")
    assert email["body"]["text"] == TRICKY
    assert email["body"]["html"] == html


def test_text_only_and_html_only_messages_get_only_their_parts(ses: SesLocal, make_ses):
    provider = make_ses(ses.url)
    results = provider.send(SENDER, [message(1, html=None), message(2, text=None), message(3)])

    assert [r.status for r in results] == ["sent"] * 3
    received = by_recipient(ses.store())
    assert received["user1@example.com"][0]["body"]["text"] == "Hi 1, your password is pw-1"
    assert not received["user1@example.com"][0]["body"].get("html")
    assert received["user2@example.com"][0]["body"]["html"] == "<p>Hi <b>2</b> &amp; co</p>"
    assert not received["user2@example.com"][0]["body"].get("text")


def test_extra_headers_are_sent_per_recipient(ses: SesLocal, make_ses):
    provider = make_ses(ses.url)
    messages = [message(i, headers={"List-Unsubscribe": f"<https://lms.example/u/{i}>",
                                    "X-Campaign": "Été"}) for i in range(3)]

    provider.send(SENDER, messages)

    received = by_recipient(ses.store())
    for i in range(3):
        headers = {h["name"]: h["value"] for h in received[f"user{i}@example.com"][0]["headers"]}
        assert headers["List-Unsubscribe"] == f"<https://lms.example/u/{i}>"
        assert headers["X-Campaign"] == "=?utf-8?b?w4l0w6k=?="


def test_attachments_go_through_send_email_alongside_bulk(ses: SesLocal, make_ses):
    provider = make_ses(ses.url)
    pdf = bytes(range(256)) * 4
    with_attachment = message(7, attachments=[Attachment("certificate.pdf", pdf, "application/pdf")],
                              headers={"X-Kind": "certificate"})

    results = provider.send(SENDER, [message(1), with_attachment, message(2)])

    assert [(r.key, r.status) for r in results] == [(1, "sent"), (7, "sent"), (2, "sent")]
    email = by_recipient(ses.store())["user7@example.com"][0]
    (attachment,) = email["attachments"]
    assert attachment["filename"] == "certificate.pdf"
    assert attachment["contentType"] == "application/pdf"
    assert base64.b64decode(attachment["content"]) == pdf
    assert email["body"]["text"] == "Hi 7, your password is pw-7"
    assert {"name": "X-Kind", "value": "certificate"} in email["headers"]
    assert results[1].message_id == email["messageId"]


@pytest.mark.parametrize("fields", [
    {"subject": "Hello\r\nBcc: victim@example.com"},
    {"to": "user9@example.com\r\nBcc: victim@example.com"},
    {"headers": {"List-Unsubscribe": "<x>\nBcc: victim@example.com"}},
    {"headers": {"Bad Name": "x"}},
])
def test_header_injection_is_refused_before_sending(ses: SesLocal, make_ses, fields):
    provider = make_ses(ses.url)

    results = provider.send(SENDER, [message(9, **fields), message(1)])

    assert [(r.status, r.error) for r in results] == [("failed", "invalid_header"), ("sent", None)]
    assert [e["destination"]["to"] for e in ses.store()] == [["user1@example.com"]]


def test_entry_level_failure_from_the_emulator_is_per_message(ses: SesLocal, make_ses):
    provider = make_ses(ses.url)

    results = provider.send(SENDER, [message(1), message(2, to="not-an-address")])

    assert results[0].status == "sent"
    assert results[1].status == "retry"
    assert results[1].error.startswith("FAILED")


def test_test_connection_reports_identity_and_quota(moto_server, make_ses):
    account = {
        "DedicatedIpAutoWarmupEnabled": False, "EnforcementStatus": "HEALTHY",
        "ProductionAccessEnabled": True, "SendingEnabled": True,
        "SendQuota": {"Max24HourSend": 50000, "MaxSendRate": 14, "SentLast24Hours": 120},
        "SuppressionAttributes": {"SuppressedReasons": []},
        "Details": {"AdditionalContactEmailAddresses": [], "ContactLanguage": "EN", "MailType": "TRANSACTIONAL",
                    "ReviewDetails": {"CaseId": "1", "Status": "GRANTED"}, "UseCaseDescription": "lms",
                    "WebsiteURL": "https://lms.example"},
    }
    server = SesLocal()
    server.env["AWS_SES_ACCOUNT"] = json.dumps(account)
    with server:
        provider = make_ses(server.url, aws_sts_endpoint_url=moto_server.url)
        facts = provider.test_connection()
        rate = provider.max_send_rate()

    assert facts["account_id"] == "123456789012"
    assert facts["arn"].startswith("arn:aws:")
    assert (facts["max_24_hour_send"], facts["max_send_rate"], facts["sent_last_24_hours"]) == (50000, 14, 120)
    assert facts["production_access_enabled"] is True
    assert facts["notes"] == []
    assert rate == 14.0
    assert "test-secret-do-not-log" not in json.dumps(facts)


def test_test_connection_fails_when_the_endpoint_lacks_getaccount(ses: SesLocal, make_ses):
    """An endpoint that does not answer GetAccount as SES does is not SES: the test fails, naming the
    endpoint; STS it does not answer stays a note of no consequence."""
    provider = make_ses(ses.url)

    with pytest.raises(PermanentError) as caught:
        provider.test_connection()

    assert caught.value.field == "aws_endpoint_url" and "HTTP 400" in caught.value.reason
    assert provider.max_send_rate() is None


def test_client_is_created_once_and_survives_close(ses: SesLocal, make_ses):
    provider = make_ses(ses.url)
    client = provider.ses
    provider.send(SENDER, [message(1)])
    provider.close()
    results = provider.send(SENDER, [message(2)])
    provider.close()
    assert provider.ses is client
    assert results[0].status == "sent"
    assert sorted(by_recipient(ses.store())) == ["user1@example.com", "user2@example.com"]


# -- error classification against scripted SES answers ---------------------------

def aws_error(status: int, error_type: str, text: str, **headers: str):
    """A responder answering every request with an SES (rest-json) error."""
    def respond(request):
        return status, {"x-amzn-ErrorType": error_type, **headers}, {"__type": error_type, "message": text}
    return respond


@pytest.mark.parametrize(("status", "error_type", "text", "expected"), [
    (400, "ThrottlingException", "Maximum sending rate exceeded.", ThrottledError),
    (429, "TooManyRequestsException", "Too many requests.", ThrottledError),
    (400, "LimitExceededException", "Daily message quota exceeded.", QuotaExceededError),
    (400, "Throttling", "Daily message quota exceeded.", QuotaExceededError),
    (400, "SendingPausedException", "Sending is paused for this account.", QuotaExceededError),
    (500, "InternalFailure", "Internal failure.", RetryableError),
    (503, "ServiceUnavailable", "Service unavailable.", RetryableError),
    (400, "MailFromDomainNotVerifiedException", "Domain not verified.", PermanentError),
    (400, "AccountSuspendedException", "Account suspended.", PermanentError),
    (403, "UnrecognizedClientException", "The security token included in the request is invalid.",
     PermanentError),
])
def test_whole_call_errors_are_classified(stub_http, make_ses, status, error_type, text, expected):
    server = stub_http(aws_error(status, error_type, text))
    provider = make_ses(server.url)

    with pytest.raises(expected) as caught:
        provider.send(SENDER, [message(1), message(2)])

    if expected is RetryableError:
        assert not isinstance(caught.value, (ThrottledError, ConnectionFailure))
    assert caught.value.code == error_type
    assert "test-secret-do-not-log" not in caught.value.reason
    assert len(server.requests) == 1  # botocore's own retries are off


def test_throttle_carries_retry_after(stub_http, make_ses):
    server = stub_http(aws_error(429, "TooManyRequestsException", "Slow down.", **{"Retry-After": "3"}))
    with pytest.raises(ThrottledError) as caught:
        make_ses(server.url).send(SENDER, [message(1)])
    assert caught.value.retry_after == 3.0


def test_entry_statuses_map_to_results(stub_http, make_ses):
    statuses = ["SUCCESS", "MESSAGE_REJECTED", "TRANSIENT_FAILURE", "ACCOUNT_THROTTLED", "INVALID_PARAMETER"]

    def respond(request):
        results = [{"Status": s, "MessageId": f"m-{n}" if s == "SUCCESS" else None, "Error": None if s == "SUCCESS"
                    else "detail"} for n, s in enumerate(statuses)]
        return 200, {}, {"BulkEmailEntryResults": results}

    provider = make_ses(stub_http(respond).url)
    results = provider.send(SENDER, [message(i) for i in range(5)])

    assert [(r.status, r.message_id) for r in results] == [
        ("sent", "m-0"), ("failed", None), ("retry", None), ("retry", None), ("failed", None)]
    assert results[1].error == "MESSAGE_REJECTED: SES rejected the message"  # not the remote text


@pytest.mark.parametrize(("status", "expected"), [
    ("ACCOUNT_DAILY_QUOTA_EXCEEDED", QuotaExceededError),
    ("ACCOUNT_THROTTLED", ThrottledError),
    ("ACCOUNT_SUSPENDED", PermanentError),
])
def test_account_wide_entry_status_raises_when_nothing_was_sent(stub_http, make_ses, status, expected):
    def respond(request):
        count = len(request.json()["BulkEmailEntries"])
        return 200, {}, {"BulkEmailEntryResults": [{"Status": status, "Error": "x"}] * count}

    with pytest.raises(expected):
        make_ses(stub_http(respond).url).send(SENDER, [message(1), message(2)])


def test_error_after_a_sent_chunk_marks_the_rest_for_retry(stub_http, make_ses):
    def respond(request):
        if len(stub.requests) == 1:
            entries = request.json()["BulkEmailEntries"]
            return 200, {}, {"BulkEmailEntryResults": [{"Status": "SUCCESS", "MessageId": "m"}] * len(entries)}
        return 400, {"x-amzn-ErrorType": "ThrottlingException"}, {"message": "Maximum sending rate exceeded."}

    stub = stub_http(respond)
    results = make_ses(stub.url).send(SENDER, [message(i) for i in range(60)])

    assert [r.status for r in results] == ["sent"] * 50 + ["retry"] * 10
    assert results[-1].error.startswith("ThrottlingException")


def test_message_rejected_bulk_falls_back_to_one_by_one(stub_http, make_ses):
    def respond(request):
        if request.path.endswith("outbound-bulk-emails"):
            return 400, {"x-amzn-ErrorType": "MessageRejected"}, {"message": "Email address is not verified."}
        if request.json()["Destination"]["ToAddresses"] == ["user2@example.com"]:
            return 400, {"x-amzn-ErrorType": "MessageRejected"}, {"message": "Email address is not verified."}
        return 200, {}, {"MessageId": "single-1"}

    stub = stub_http(respond)
    results = make_ses(stub.url).send(SENDER, [message(1), message(2), message(3)])

    assert [(r.status, r.message_id) for r in results] == [("sent", "single-1"), ("failed", None),
                                                          ("sent", "single-1")]
    assert results[1].error == ("MessageRejected (HTTP 400): SES rejected the message "
                                "(is the sender a verified identity?)")
    assert [r.path.rsplit("/", 1)[-1] for r in stub.requests] == ["outbound-bulk-emails"] + ["outbound-emails"] * 3


def test_silent_endpoint_times_out_as_retryable(make_ses):
    with SilentServer() as silent:
        provider = make_ses(silent.url, timeout=0.5)
        with pytest.raises(RetryableError) as caught:
            provider.send(SENDER, [message(1)])
    assert not isinstance(caught.value, ConnectionFailure)
    assert caught.value.code == "ReadTimeoutError"


def test_closed_port_is_a_connection_failure(make_ses):
    provider = make_ses(f"http://127.0.0.1:{free_port()}", timeout=1)
    with pytest.raises(ConnectionFailure):
        provider.send(SENDER, [message(1)])
    with pytest.raises(ConnectionFailure):
        provider.test_connection()
