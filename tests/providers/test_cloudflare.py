"""providers.cloudflare against a local HTTP server emulating Cloudflare's Email Sending API."""
from __future__ import annotations

import base64

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
from providers.cloudflare import CloudflareEmailProvider
from tests.support.servers import SilentServer, free_port

ACCOUNT = "0123456789abcdef0123456789abcdef"
TOKEN = "cf-token-do-not-log"
SEND_PATH = f"/client/v4/accounts/{ACCOUNT}/email/sending/send"
SENDER = "LMS <noreply@lms.example>"


def message(i: int, **fields) -> Message:
    base = {"key": i, "to": f"user{i}@example.com", "subject": f"Welcome {i} & <ünï>",
            "text": f"Hi {i} {{{{x}}}}", "html": f"<p>Hi {i}</p>"}
    return Message(**{**base, **fields})


def envelope(result: dict | None = None, errors: list | None = None, success: bool = True) -> dict:
    return {"success": success, "errors": errors or [], "messages": [], "result": result}


class FakeCloudflare:
    """Answers like the Email Sending API; ``overrides[recipient] = (status, headers, body)``."""

    def __init__(self):
        self.overrides: dict[str, tuple] = {}
        self.problems: list[str] = []

    def __call__(self, request):
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return 401, {}, envelope(None, [{"code": 10000, "message": "Authentication error"}], success=False)
        if request.path == "/client/v4/user/tokens/verify":
            return 200, {}, envelope({"id": "tok-1", "status": "active"})
        if request.method != "POST" or request.path != SEND_PATH:
            return 404, {}, envelope(None, [{"code": 7003, "message": "No route"}], success=False)
        body = request.json()
        self._check_shape(body)
        if body["to"] in self.overrides:
            return self.overrides[body["to"]]
        return 200, {}, envelope({"delivered": [body["to"]], "permanent_bounces": [], "queued": []})

    def _check_shape(self, body: dict) -> None:
        for key in ("from", "to", "subject"):
            if key not in body:
                self.problems.append(f"missing {key}")
        if not ("text" in body or "html" in body):
            self.problems.append("no body")
        unknown = set(body) - {"from", "to", "subject", "text", "html", "headers", "attachments", "cc", "bcc",
                               "reply_to"}
        if unknown:
            self.problems.append(f"unknown keys {sorted(unknown)}")


@pytest.fixture
def cloudflare(stub_http):
    fake = FakeCloudflare()
    server = stub_http(fake)
    made: list[CloudflareEmailProvider] = []

    def make(**config) -> CloudflareEmailProvider:
        provider = CloudflareEmailProvider({"cloudflare_api_token": TOKEN, "cloudflare_account_id": ACCOUNT,
                                            "cloudflare_api_base": f"{server.url}/client/v4", "timeout": 5,
                                            **config})
        made.append(provider)
        return provider

    yield fake, server, make
    for provider in made:
        provider.close()
    assert fake.problems == []


def test_registry_builds_cloudflare_provider():
    assert isinstance(get_provider("cloudflare", {}), CloudflareEmailProvider)


def test_messages_are_posted_with_bearer_token_and_api_shape(cloudflare):
    fake, server, make = cloudflare
    pdf = b"%PDF-1.4 \x00\xff"
    messages = [message(1, headers={"List-Unsubscribe": "<https://lms.example/u/1>"}),
                message(2, text=None, attachments=[Attachment("cert.pdf", pdf, "application/pdf")])]

    results = make().send(SENDER, messages)

    assert [(r.key, r.status) for r in results] == [(1, "sent"), (2, "sent")]
    first, second = (r.json() for r in server.requests)
    assert first == {"from": {"address": "noreply@lms.example", "name": "LMS"}, "to": "user1@example.com",
                     "subject": "Welcome 1 & <ünï>", "text": "Hi 1 {{x}}", "html": "<p>Hi 1</p>",
                     "headers": {"List-Unsubscribe": "<https://lms.example/u/1>"}}
    assert "text" not in second
    (attachment,) = second["attachments"]
    assert attachment == {"content": base64.b64encode(pdf).decode(), "filename": "cert.pdf",
                          "type": "application/pdf", "disposition": "attachment"}
    assert all(r.headers["Content-Type"] == "application/json" for r in server.requests)


def test_permanent_bounce_and_per_message_4xx_fail_only_that_message(cloudflare):
    fake, server, make = cloudflare
    fake.overrides["user2@example.com"] = (200, {}, envelope({"delivered": [], "queued": [],
                                                              "permanent_bounces": ["user2@example.com"]}))
    fake.overrides["user3@example.com"] = (400, {}, envelope(None, [{"code": 10001,
                                                                     "message": "Header not allowed"}], False))

    results = make().send(SENDER, [message(i) for i in range(1, 5)])

    assert [(r.status, r.error) for r in results] == [
        ("sent", None), ("failed", "permanent_bounce"), ("failed", "error 10001"), ("sent", None)]


@pytest.mark.parametrize(("status", "headers", "body", "expected"), [
    (429, {"Retry-After": "7"}, envelope(None, [{"code": 971, "message": "Rate limited"}], False), ThrottledError),
    (500, {}, envelope(None, [{"code": 10002, "message": "Internal error"}], False), RetryableError),
    (503, {}, "<html>upstream unavailable</html>", RetryableError),
    (403, {}, envelope(None, [{"code": 10000, "message": "Forbidden"}], False), PermanentError),
    (400, {}, envelope(None, [{"code": 10004, "message": "Daily sending quota exceeded"}], False),
     QuotaExceededError),
])
def test_whole_call_errors_are_classified(cloudflare, status, headers, body, expected):
    fake, server, make = cloudflare
    fake.overrides["user1@example.com"] = (status, headers, body)

    with pytest.raises(expected) as caught:
        make().send(SENDER, [message(1), message(2)])

    assert caught.value.reason.startswith(f"Cloudflare HTTP {status}")
    assert TOKEN not in caught.value.reason
    assert len(server.requests) == 1
    if status == 429:
        assert caught.value.retry_after == 7.0
    if expected is RetryableError:
        assert not isinstance(caught.value, (ThrottledError, ConnectionFailure))


def test_bad_token_is_permanent(cloudflare):
    fake, server, make = cloudflare
    with pytest.raises(PermanentError) as caught:
        make(cloudflare_api_token="wrong-token").send(SENDER, [message(1)])
    assert caught.value.code == "401"
    assert "wrong-token" not in caught.value.reason


def test_throttle_after_a_sent_message_marks_the_rest_for_retry(cloudflare):
    fake, server, make = cloudflare
    fake.overrides["user2@example.com"] = (429, {}, envelope(None, [{"code": 971, "message": "Rate limited"}], False))

    results = make().send(SENDER, [message(1), message(2), message(3)])

    assert [r.status for r in results] == ["sent", "retry", "retry"]
    assert results[1].error.startswith("Cloudflare HTTP 429")
    assert len(server.requests) == 2


def test_header_injection_is_refused_without_a_request(cloudflare):
    fake, server, make = cloudflare
    results = make().send(SENDER, [message(1, subject="Hi\r\nBcc: victim@example.com"),
                                   message(2, headers={"X-A": "1\nBcc: victim@example.com"})])
    assert [(r.status, r.error) for r in results] == [("failed", "invalid_header")] * 2
    assert server.requests == []


def test_test_connection_verifies_the_token(cloudflare):
    fake, server, make = cloudflare

    facts = make().test_connection()

    assert facts == {"provider": "cloudflare", "api_base": f"{server.url}/client/v4", "account_id": ACCOUNT,
                     "token_id": "tok-1", "token_status": "active"}
    with pytest.raises(PermanentError):
        make(cloudflare_api_token="wrong-token").test_connection()


def test_closed_port_is_a_connection_failure():
    provider = CloudflareEmailProvider({"cloudflare_api_token": TOKEN, "cloudflare_account_id": ACCOUNT,
                                        "cloudflare_api_base": f"http://127.0.0.1:{free_port()}/client/v4"})
    with provider, pytest.raises(ConnectionFailure):
        provider.send(SENDER, [message(1)])


def test_silent_server_times_out_as_retryable():
    with SilentServer() as silent:
        provider = CloudflareEmailProvider({"cloudflare_api_token": TOKEN, "cloudflare_account_id": ACCOUNT,
                                            "cloudflare_api_base": silent.url, "timeout": 0.5})
        with provider, pytest.raises(RetryableError) as caught:
            provider.send(SENDER, [message(1)])
    assert not isinstance(caught.value, ConnectionFailure)
    assert caught.value.code == "ReadTimeout"


def test_missing_settings_are_permanent():
    with pytest.raises(PermanentError):
        CloudflareEmailProvider({"cloudflare_api_token": TOKEN}).send(SENDER, [message(1)])
    with pytest.raises(PermanentError):
        CloudflareEmailProvider({"cloudflare_account_id": ACCOUNT}).send(SENDER, [message(1)])
