"""providers.offload against a real moto SQS server and a local Cloudflare-shaped HTTP API."""
from __future__ import annotations

import json

import boto3
import pytest

from providers import guard, webhooks
from providers.base import (
    ConnectionFailure,
    PermanentError,
    RetryableError,
    ThrottledError,
)
from providers.offload import (
    CloudflareQueueTransport,
    EndpointRejected,
    SqsTransport,
    SubmitResult,
    delivery_id,
    encode_message,
    get_transport,
    split_recipients,
)
from tests.support.servers import MotoServer, SilentServer, StubHttpServer, free_port

REGION = "us-east-1"
TOKEN = "cf-test-token-123"
SECRET = webhooks.generate_secret()


def batch_message(n: int, recipients: int = 2, pad: int = 0) -> dict:
    """A CONTRACT §5 batch message."""
    return {
        "job_id": 100, "batch_number": n, "company_id": 1,
        "callback_url": "https://service.example/callbacks/v1/batches",
        "sender": "noreply@example.com",
        "template": {"subject": "Hi {{ firstname }}", "text": "Hello {{ firstname }}" + "x" * pad,
                     "html": "<p>Hello {{ firstname }}</p>"},
        "recipients": [{"email": f"u{n}-{i}@example.com", "data": {"firstname": f"Ann é {i}"}}
                       for i in range(recipients)],
    }


# --------------------------------------------------------------------------- SQS

@pytest.fixture(scope="module")
def moto():
    with MotoServer() as server:
        yield server


@pytest.fixture
def sqs(moto):
    moto.reset()
    return boto3.client("sqs", region_name=REGION, endpoint_url=moto.url,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def sqs_config(moto, queue_url: str) -> dict:
    return {"aws_access_key": "testing", "aws_secret_key": "testing", "aws_region": REGION,
            "aws_endpoint_url": moto.url, "sqs_queue_url": queue_url}


def count_calls(transport: SqsTransport) -> list[str]:
    calls: list[str] = []
    transport.client.meta.events.register(
        "before-call.sqs.SendMessageBatch", lambda **kwargs: calls.append("batch"))
    return calls


def receive_all(sqs, queue_url: str) -> list[dict]:
    bodies = []
    for _ in range(20):
        resp = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        if not resp.get("Messages"):
            break
        for message in resp["Messages"]:
            bodies.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return bodies


def test_sqs_25_messages_in_3_calls_all_receivable(moto, sqs):
    queue_url = sqs.create_queue(QueueName="offload")["QueueUrl"]
    messages = [(f"100-{n}", batch_message(n)) for n in range(25)]
    with get_transport("sqs", sqs_config(moto, queue_url)) as transport:
        assert isinstance(transport, SqsTransport)
        calls = count_calls(transport)
        results = transport.submit(messages)
    assert len(calls) == 3
    assert [r.key for r in results] == [key for key, _ in messages]
    assert all(r.ok and r.message_id for r in results)
    received = receive_all(sqs, queue_url)
    assert sorted(received, key=lambda m: m["batch_number"]) == [m for _, m in messages]


def test_sqs_oversized_message_fails_alone(moto, sqs):
    queue_url = sqs.create_queue(QueueName="offload")["QueueUrl"]
    big = batch_message(1, pad=300 * 1024)
    transport = SqsTransport(sqs_config(moto, queue_url))
    results = transport.submit([("a", batch_message(0)), ("big", big), ("c", batch_message(2))])
    assert [r.ok for r in results] == [True, False, True]
    assert "message too large" in results[1].error and "262144" in results[1].error
    assert results[1].retryable is False
    assert sorted(m["batch_number"] for m in receive_all(sqs, queue_url)) == [0, 2]


def test_sqs_calls_respect_the_total_size_limit(moto, sqs):
    queue_url = sqs.create_queue(QueueName="offload")["QueueUrl"]
    messages = [(str(n), batch_message(n, pad=60 * 1024)) for n in range(6)]  # ~60 KiB each
    transport = SqsTransport(sqs_config(moto, queue_url))
    calls = count_calls(transport)
    results = transport.submit(messages)
    assert all(r.ok for r in results)
    assert len(calls) == 2  # 4 fit under 256 KiB, then 2
    assert len(receive_all(sqs, queue_url)) == 6


def test_sqs_missing_queue_is_permanent(moto, sqs):
    transport = SqsTransport(sqs_config(moto, f"{moto.url}/123456789012/no-such-queue"))
    with pytest.raises(PermanentError) as info:
        transport.submit([("a", batch_message(0))])
    assert "NonExistentQueue" in info.value.code or "QueueDoesNotExist" in info.value.code


def test_sqs_unreachable_endpoint_is_a_connection_failure():
    port = free_port()
    config = {"aws_access_key": "testing", "aws_secret_key": "testing", "aws_region": REGION,
              "aws_endpoint_url": f"http://127.0.0.1:{port}",
              "sqs_queue_url": f"http://127.0.0.1:{port}/123456789012/offload"}
    with pytest.raises(ConnectionFailure):
        SqsTransport(config).submit([("a", batch_message(0))])


def test_sqs_failure_after_a_successful_call_is_reported_not_raised(moto, sqs):
    # The queue refuses bodies over 2 KiB: the first call (small messages) goes
    # through, the second (one large message) is refused as a whole.
    queue_url = sqs.create_queue(QueueName="small", Attributes={"MaximumMessageSize": "2048"})["QueueUrl"]
    messages = [(str(n), batch_message(n)) for n in range(10)] + [("big", batch_message(10, pad=4096))]
    results = SqsTransport(sqs_config(moto, queue_url)).submit(messages)
    assert all(r.ok for r in results[:10])
    assert results[10].ok is False and results[10].retryable is False and results[10].error
    assert len(receive_all(sqs, queue_url)) == 10


def test_sqs_per_entry_failures_are_classified():
    batch = [("a", b"{}"), ("b", b"{}"), ("c", b"{}")]
    response = {"Successful": [{"Id": "m0", "MessageId": "id-0"}],
                "Failed": [{"Id": "m1", "SenderFault": True, "Code": "InvalidMessageContents",
                            "Message": "bad characters"},
                           {"Id": "m2", "SenderFault": False, "Code": "InternalError",
                            "Message": "try again"}]}
    assert SqsTransport._map_results(batch, response) == [
        SubmitResult("a", True, message_id="id-0"),
        SubmitResult("b", False, error="InvalidMessageContents: the queue refused this message", retryable=False),
        SubmitResult("c", False, error="InternalError: the queue refused this message", retryable=True),
    ]


def test_sqs_test_connection_reports_queue_facts(moto, sqs):
    dlq_url = sqs.create_queue(QueueName="offload-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(QueueName="offload", Attributes={
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3}),
        "SqsManagedSseEnabled": "true"})["QueueUrl"]
    sqs.send_message(QueueUrl=queue_url, MessageBody="{}")
    facts = SqsTransport(sqs_config(moto, queue_url)).test_connection()
    assert facts["approximate_messages"] == 1
    assert facts["dead_letter_queue"] is True
    assert facts["dead_letter_target_arn"] == dlq_arn
    assert facts["max_receive_count"] == 3
    assert facts["warnings"] == []

    bare_url = sqs.create_queue(QueueName="bare")["QueueUrl"]
    bare = SqsTransport(sqs_config(moto, bare_url)).test_connection()
    assert bare["dead_letter_queue"] is False
    assert any("dead-letter" in w for w in bare["warnings"])


def test_missing_settings_and_unknown_provider():
    with pytest.raises(PermanentError, match="sqs_queue_url"):
        get_transport("sqs", {})
    with pytest.raises(PermanentError, match="sqs_queue_url"):
        get_transport("aws", {})  # the old name SES and SQS shared
    with pytest.raises(PermanentError, match="cloudflare_api_token"):
        get_transport("cloudflare_queue", {"cloudflare_account_id": "a", "cloudflare_queue_id": "q"})
    with pytest.raises(PermanentError):
        get_transport("smtp", {})


# --------------------------------------------------------------------------- Cloudflare

class FakeCloudflare:
    """Answers like the Cloudflare v4 API, on a ``StubHttpServer``.

    ``batch_responses`` are (status, headers, body) used in turn for batch
    pushes; when empty, pushes succeed.
    """

    def __init__(self):
        self.batch_responses: list[tuple[int, dict, dict]] = []
        self.stub = StubHttpServer(self.respond)

    @property
    def url(self) -> str:
        return f"{self.stub.url}/client/v4"

    @property
    def requests(self):
        return self.stub.requests

    @staticmethod
    def envelope(result=None, errors=()) -> dict:
        return {"success": not errors, "errors": list(errors), "messages": [], "result": result}

    def respond(self, request):
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return 401, {}, self.envelope(errors=[{"code": 1000, "message": "Invalid API Token"}])
        if request.method == "POST":
            return self.batch_responses.pop(0) if self.batch_responses else (200, {}, self.envelope())
        if request.path == "/client/v4/user/tokens/verify":
            return 200, {}, self.envelope({"id": "tok", "status": "active"})
        return 200, {}, self.envelope({"queue_id": "q1", "queue_name": "offload",
                                       "consumers": [{"script": "w"}]})


@pytest.fixture
def cloudflare():
    fake = FakeCloudflare()
    with fake.stub:
        yield fake


def cf_config(fake: FakeCloudflare, token: str = TOKEN) -> dict:
    return {"cloudflare_api_token": token, "cloudflare_account_id": "acc1",
            "cloudflare_queue_id": "q1", "cloudflare_api_base": fake.url}


def test_cloudflare_150_messages_in_2_calls(cloudflare):
    messages = [(f"100-{n}", batch_message(n)) for n in range(150)]
    with get_transport("cloudflare_queue", cf_config(cloudflare)) as transport:
        assert isinstance(transport, CloudflareQueueTransport)
        results = transport.submit(messages)
    assert all(r.ok for r in results) and [r.key for r in results] == [k for k, _ in messages]
    posts = [r for r in cloudflare.requests if r.method == "POST"]
    assert [p.path for p in posts] == ["/client/v4/accounts/acc1/queues/q1/messages/batch"] * 2
    assert all(p.headers["Authorization"] == f"Bearer {TOKEN}" for p in posts)
    assert all(p.headers["Content-Type"] == "application/json" for p in posts)
    assert [len(p.json()["messages"]) for p in posts] == [100, 50]
    sent = [m for p in posts for m in p.json()["messages"]]
    assert all(set(m) == {"body", "content_type"} and m["content_type"] == "json" for m in sent)
    assert [m["body"] for m in sent] == [m for _, m in messages]


def test_cloudflare_oversized_message(cloudflare):
    results = CloudflareQueueTransport(cf_config(cloudflare)).submit(
        [("a", batch_message(0)), ("big", batch_message(1, pad=130 * 1024))])
    assert results[0].ok and not results[1].ok
    assert "128000" in results[1].error


@pytest.mark.parametrize(("status", "headers", "error", "retry_after"), [
    (429, {"Retry-After": "7"}, ThrottledError, 7.0),
    (500, {}, RetryableError, None),
    (403, {}, PermanentError, None),
])
def test_cloudflare_first_call_errors_are_raised(cloudflare, status, headers, error, retry_after):
    cloudflare.batch_responses.append((status, headers, {
        "success": False, "result": None, "messages": [],
        "errors": [{"code": 10000 + status, "message": "nope"}]}))
    with pytest.raises(error) as info:
        CloudflareQueueTransport(cf_config(cloudflare)).submit([("a", batch_message(0))])
    assert info.value.code == str(10000 + status)
    assert TOKEN not in info.value.reason
    if retry_after is not None:
        assert info.value.retry_after == retry_after
    if error is PermanentError:
        assert not isinstance(info.value, RetryableError)


def test_cloudflare_later_call_error_is_per_message(cloudflare):
    ok = (200, {}, {"success": True, "errors": [], "messages": [], "result": None})
    busy = (429, {}, {"success": False, "result": None, "messages": [],
                      "errors": [{"code": 10250, "message": "rate limited"}]})
    cloudflare.batch_responses.extend([ok, busy])
    results = CloudflareQueueTransport(cf_config(cloudflare)).submit(
        [(str(n), batch_message(n, recipients=1)) for n in range(150)])
    assert all(r.ok for r in results[:100])
    assert all(not r.ok and r.retryable and "error 10250" in r.error for r in results[100:])


def test_cloudflare_unreachable_is_a_connection_failure():
    config = {"cloudflare_api_token": TOKEN, "cloudflare_account_id": "a", "cloudflare_queue_id": "q",
              "cloudflare_api_base": f"http://127.0.0.1:{free_port()}/client/v4"}
    with pytest.raises(ConnectionFailure):
        CloudflareQueueTransport(config).submit([("a", batch_message(0))])


def test_cloudflare_test_connection(cloudflare):
    facts = CloudflareQueueTransport(cf_config(cloudflare)).test_connection()
    assert facts["token_status"] == "active"
    assert facts["queue_name"] == "offload" and facts["consumers"] == 1
    paths = [r.path for r in cloudflare.requests]
    assert paths == ["/client/v4/user/tokens/verify", "/client/v4/accounts/acc1/queues/q1"]

    with pytest.raises(PermanentError, match="HTTP 401 \\(error 1000\\)"):
        CloudflareQueueTransport(cf_config(cloudflare, token="wrong")).test_connection()


# --------------------------------------------------------------------------- size splitting and HTTPS

def test_split_recipients_fills_messages_up_to_the_limit_and_no_further():
    envelope = {"job_id": 1, "batch_number": 1, "delivery_id": delivery_id(1, [])}
    entries = [{"email": f"u{i}@example.com", "rendered": {"html": "x" * (100 + i * 37 % 400)}} for i in range(300)]
    entries.append({"email": "huge@example.com", "rendered": {"html": "y" * 20_000}})
    limit = 10_000
    parts, too_large = split_recipients(envelope, entries, limit)
    assert too_large == [300]
    assert sorted(i for part in parts for i in part) == list(range(300))  # each once, in order
    for number, part in enumerate(parts):
        size = len(encode_message({**envelope, "recipients": [entries[i] for i in part]}))
        assert size <= limit
        if number < len(parts) - 1:  # a part closes only when the next entry would not fit
            with_next = {**envelope, "recipients": [entries[i] for i in part] + [entries[parts[number + 1][0]]]}
            assert len(encode_message(with_next)) > limit


def test_delivery_id_names_the_batch_and_exactly_its_recipients():
    assert delivery_id(7, [1, 2, 3]) == delivery_id(7, [1, 2, 3])
    assert delivery_id(7, [1, 2, 3]) != delivery_id(7, [1, 2])
    assert delivery_id(7, [1, 2]) != delivery_id(8, [1, 2])
    assert len(delivery_id(7, [])) == len(delivery_id(7, list(range(500))))


@pytest.fixture
def open_guard():
    before = guard.policy()
    guard.configure(allow_private=True, production=False)
    yield guard
    guard.configure(allow_private=before.allow_private, production=before.production,
                    allowed_hosts=before.allowed_hosts)


@pytest.mark.parametrize(("status", "error"), [(503, RetryableError), (429, RetryableError),
                                              (404, EndpointRejected), (401, EndpointRejected)])
def test_https_errors_are_sorted_and_never_echo_the_body(open_guard, status, error):
    with StubHttpServer(lambda request: (status, {}, {"message": "internal detail"})) as endpoint:
        transport = get_transport("https", {"offload_url": f"{endpoint.url}/batches", "callback_secret": SECRET,
                                            "offload_auth_token": "tok"})
        with pytest.raises(error) as caught:
            transport.submit([("b1-abc", batch_message(1))])
    assert caught.value.reason.startswith(f"HTTP {status}: ") and "detail" not in caught.value.reason
    [request] = endpoint.requests
    assert request.headers["Authorization"] == "Bearer tok" and request.headers["webhook-id"] == "msg_b1-abc"
    webhooks.verify([SECRET], request.headers, request.body)  # signed per Standard Webhooks
    assert json.loads(request.body) == batch_message(1)


def test_https_2xx_is_accepted_and_a_timeout_is_retryable(open_guard):
    with StubHttpServer(lambda request: (202, {}, "")) as endpoint:
        transport = get_transport("https", {"offload_url": f"{endpoint.url}/batches", "callback_secret": SECRET})
        assert transport.submit([("k1", batch_message(1)), ("k2", batch_message(2))]) == [
            SubmitResult("k1", True), SubmitResult("k2", True)]
        assert "Authorization" not in endpoint.requests[0].headers
    with SilentServer() as silent:
        transport = get_transport("https", {"offload_url": f"{silent.url}/batches", "callback_secret": SECRET})
        transport.timeout = (2, 0.5)
        with pytest.raises(RetryableError) as caught:
            transport.submit([("k1", batch_message(1))])
    assert caught.value.code in ("https_timeout", "connection")


def test_https_url_goes_through_the_endpoint_guard(open_guard):
    open_guard.configure(allow_private=False, production=False)
    transport = get_transport("https", {"offload_url": "http://127.0.0.1:9/batches", "callback_secret": SECRET})
    with pytest.raises(EndpointRejected) as caught:
        transport.submit([("k1", batch_message(1))])
    assert caught.value.reason.startswith("offload_url refused")


def test_https_during_a_rotation_is_signed_with_both_secrets_so_either_worker_verifies_it(open_guard):
    """A rotated callback secret: the worker still holding the old one, and one already
    updated, both verify a batch posted during the overlap (Standard Webhooks' space-separated
    signatures); outside the overlap only the current secret signs."""
    new, old = webhooks.generate_secret(), SECRET
    with StubHttpServer(lambda request: (202, {}, "")) as endpoint:
        transport = get_transport("https", {"offload_url": f"{endpoint.url}/batches", "callback_secret": new,
                                            "callback_secrets": [new, old]})
        assert transport.submit([("k1", batch_message(1))]) == [SubmitResult("k1", True)]
        transport = get_transport("https", {"offload_url": f"{endpoint.url}/batches", "callback_secret": new})
        transport.submit([("k2", batch_message(2))])
    during, after = endpoint.requests
    assert len(during.headers["webhook-signature"].split()) == 2
    webhooks.verify([old], during.headers, during.body)
    webhooks.verify([new], during.headers, during.body)
    webhooks.verify([new], after.headers, after.body)
    with pytest.raises(webhooks.BadSignature):
        webhooks.verify([old], after.headers, after.body)
