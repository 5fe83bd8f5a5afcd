"""The AWS Lambda worker, run in-process against moto SQS and aws-ses-v2-local.

The test plays the Lambda event source mapping itself: ReceiveMessage, build
the SQS event, call the handler, DeleteMessage every record not named in
``batchItemFailures`` and make the named ones visible again at once (what
the visibility timeout does, minus the wait). Callbacks land on a local HTTP
server that verifies them with the service's own ``providers.webhooks``.
"""
from __future__ import annotations

import base64
import importlib
import json
import logging
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import boto3
import pytest

from providers import webhooks
from tests.support.servers import ROOT, CallbackReceiver, MotoServer, SesLocal, StubHttpServer, free_port

AWS_DIR = ROOT / "cloud_workers" / "aws"
REGION = "us-east-1"
SECRET = webhooks.generate_secret()
TEMPLATE = {"subject": "Welcome {{ firstname }}\r\nto {{course}}",
            "text": "Hi {{ firstname }}, your password is {{ password }}. Bye",
            "html": "<p>Hi {{ firstname }}</p><p>{{ password }}</p>"}


@pytest.fixture(scope="module")
def handler_module():
    """Import lambda_handler the way the Lambda runtime does: its directory on sys.path."""
    sys.path.insert(0, str(AWS_DIR))
    try:
        module = importlib.import_module("lambda_handler")
        yield module
    finally:
        sys.path.remove(str(AWS_DIR))
        sys.modules.pop("lambda_handler", None)
        sys.modules.pop("webhooks", None)


@pytest.fixture(scope="module")
def moto():
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="module")
def ses():
    with SesLocal() as server:
        yield server


def verify_callback(headers, body: bytes) -> None:
    webhooks.verify([SECRET], headers, body)


@pytest.fixture
def callbacks():
    with CallbackReceiver(verify_callback) as receiver:
        yield receiver


@pytest.fixture
def lambda_env(monkeypatch, handler_module, ses, moto):
    """The Lambda's environment: secret, SES and S3 endpoint overrides, the marker bucket, dummy credentials."""
    ses.clear()
    bucket = f"markers-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", region_name=REGION, endpoint_url=moto.url, aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    for name, value in {"CALLBACK_SECRET": SECRET, "AWS_ENDPOINT_URL_SESV2": ses.url,
                        "AWS_ENDPOINT_URL_S3": moto.url, "MARKER_BUCKET": bucket,
                        "ALLOWED_CALLBACK_PREFIX": "http://127.0.0.1:",
                        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": REGION, "CALLBACK_RETRY_DELAY_S": "0.01",
                        "CALLBACK_TIMEOUT_S": "5"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    handler_module.ses_client.cache_clear()
    handler_module.s3_client.cache_clear()
    yield handler_module
    handler_module.ses_client.cache_clear()
    handler_module.s3_client.cache_clear()


@pytest.fixture
def queues(moto):
    """A queue with a dead-letter queue after 2 receives, as template.yaml sets up."""
    suffix = uuid.uuid4().hex[:8]
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=moto.url,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    dlq_url = sqs.create_queue(QueueName=f"offload-dlq-{suffix}")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(QueueName=f"offload-{suffix}", Attributes={
        "VisibilityTimeout": "360",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"}),
    })["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return sqs, queue_url, queue_arn, dlq_url


def batch(job_id: int, number: int, count: int, callback_url: str, bad: set[int] = frozenset()) -> dict:
    recipients = []
    for i in range(count):
        email = f"not an address {job_id}-{number}-{i}" if i in bad else f"user{job_id}.{number}.{i}@example.com"
        recipients.append({"email": email, "data": {"firstname": f"Ann <{number}.{i}> & Co",
                                                     "password": f"p'{number}\"{i}", "course": "Maths"}})
    return {"job_id": job_id, "batch_number": number, "company_id": 1, "callback_url": callback_url,
            "sender": "noreply@example.com", "template": TEMPLATE, "recipients": recipients}


class FakeContext:
    function_name = "offload-sender"
    aws_request_id = "test"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 60_000


def run_event_source(sqs, queue_url: str, queue_arn: str, handler, max_rounds: int = 10) -> list[list[str]]:
    """Emulate the event source mapping until the queue is drained; return each round's failures."""
    rounds = []
    for _ in range(max_rounds):
        resp = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                   AttributeNames=["All"])
        messages = resp.get("Messages", [])
        if not messages:
            return rounds
        event = {"Records": [{
            "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
            "attributes": m.get("Attributes", {}), "messageAttributes": {}, "md5OfBody": m["MD5OfBody"],
            "eventSource": "aws:sqs", "eventSourceARN": queue_arn, "awsRegion": REGION,
        } for m in messages]}
        result = handler(event, FakeContext())
        failed = [f["itemIdentifier"] for f in result["batchItemFailures"]]
        rounds.append(failed)
        for m in messages:
            if m["MessageId"] in failed:
                sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"],
                                              VisibilityTimeout=0)
            else:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
    raise AssertionError(f"queue not drained after {max_rounds} rounds")


def drain(sqs, queue_url: str) -> list[dict]:
    resp = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    return [json.loads(m["Body"]) for m in resp.get("Messages", [])]


def expected_content(handler_module, recipient: dict) -> dict:
    return handler_module.render_recipient(TEMPLATE, recipient["data"])


def test_batches_through_ses_with_callbacks_retries_and_dlq(lambda_env, queues, ses, callbacks, caplog):
    sqs, queue_url, queue_arn, dlq_url = queues
    dead_callback = f"http://127.0.0.1:{free_port()}/callbacks/v1/batches"
    good = [batch(7, 1, 100, callbacks.callback_url, bad={42}), batch(7, 2, 100, callbacks.callback_url),
            batch(7, 3, 100, callbacks.callback_url)]
    failing = batch(7, 4, 3, dead_callback)
    ids = {}
    for message in [*good, failing]:
        sent = sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(message))
        ids[message["batch_number"]] = sent["MessageId"]

    with caplog.at_level(logging.INFO, logger="offload.lambda"):
        rounds = run_event_source(sqs, queue_url, queue_arn, lambda_env.handler)

    # Only the batch whose callback cannot be delivered is retried, once per receive,
    # until the redrive policy moves it to the dead-letter queue.
    assert rounds == [[ids[4]], [ids[4]]]
    assert drain(sqs, dlq_url) == [failing]

    # Every recipient of the good batches is in SES exactly once, with its own content.
    store = ses.store()
    by_address = Counter(email["destination"]["to"][0] for email in store)
    emails = {email["destination"]["to"][0]: email for email in store}
    for message in good:
        for i, recipient in enumerate(message["recipients"]):
            if message["batch_number"] == 1 and i == 42:
                assert recipient["email"] not in by_address
                continue
            assert by_address[recipient["email"]] == 1
            sent = emails[recipient["email"]]
            want = expected_content(lambda_env, recipient)
            assert sent["from"] == "noreply@example.com"
            assert (sent["subject"], sent["body"]["text"], sent["body"]["html"]) == (
                want["subject"], want["text"], want["html"])
    # Exactly once: the second receive found the stored results and only re-posted them.
    assert all(by_address[r["email"]] == 1 for r in failing["recipients"])

    sample = emails["user7.2.5@example.com"]
    assert sample["subject"] == "Welcome Ann <2.5> & Co to Maths"
    assert sample["body"]["text"] == "Hi Ann <2.5> & Co, your password is p'2\"5. Bye"
    assert sample["body"]["html"] == "<p>Hi Ann &lt;2.5&gt; &amp; Co</p><p>p&#x27;2&quot;5</p>"

    # One verified callback per good batch, with every recipient's result.
    assert callbacks.rejected == 0
    payloads = {p["batch_number"]: p for p in callbacks.payloads}
    assert sorted(payloads) == [1, 2, 3] and len(callbacks.payloads) == 3
    assert payloads[2]["status"] == payloads[3]["status"] == "sent"
    assert payloads[1]["status"] == "partial"
    for number, payload in payloads.items():
        assert payload["job_id"] == 7
        results = {r["email"]: r for r in payload["results"]}
        assert set(results) == {r["email"] for r in good[number - 1]["recipients"]}
        for email, result in results.items():
            if email.startswith("not an address"):
                assert result["status"] == "failed" and result["error"].startswith("FAILED")
            else:
                assert result["status"] == "sent" and result["message_id"]

    # Nothing about recipients in the logs.
    assert "Batch 7/2: 100 sent, 0 failed, 0 left to retry" in caplog.text
    assert "@example.com" not in caplog.text and "Ann" not in caplog.text


def raw_mail(to: str, subject: str, size: int = 0) -> bytes:
    return (f"From: Moodle <noreply@example.com>\r\nTo: {to}\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n" f"Olá {to}\r\n" + "z" * size).encode()


def test_smtp_mail_is_sent_as_the_lms_wrote_it_inline_or_from_its_link(lambda_env, queues, ses, callbacks):
    sqs, queue_url, queue_arn, _ = queues
    big = raw_mail("big@example.com", "Big one", 300_000)
    with StubHttpServer(lambda request: (200, {"Content-Type": "message/rfc822"}, big)) as storage:
        message = {"job_id": 9, "batch_number": 1, "company_id": 1, "callback_url": callbacks.callback_url,
                   "sender": "noreply@example.com", "template": {"subject": "", "text": "", "html": ""},
                   "recipients": [
                       {"email": "a@example.com", "raw": base64.b64encode(raw_mail("a@example.com", "Für A")).decode()},
                       {"email": "big@example.com", "raw_url": f"{storage.url}/smtp/9/1.eml?sig=x",
                        "headers": {"List-Unsubscribe": "<https://offload.test/u/9>", "Subject": "Big one, ours"}},
                       {"email": "bad@example.com", "raw": "not base64!"}]}
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(message))
        assert run_event_source(sqs, queue_url, queue_arn, lambda_env.handler) == [[]]
        assert [r.path for r in storage.requests] == ["/smtp/9/1.eml?sig=x"]
    sent = {e["destination"]["to"][0]: e for e in ses.store()}
    assert sorted(sent) == ["a@example.com", "big@example.com"]
    assert sent["a@example.com"]["subject"] == "Für A" and "<noreply@example.com>" in sent["a@example.com"]["from"]
    assert sent["big@example.com"]["body"]["text"].endswith("z" * 1000)
    # read by its link: the recipient's own fields on top, a field of the same name replaced
    assert sent["big@example.com"]["subject"] == "Big one, ours"
    [payload] = callbacks.payloads
    results = {r["email"]: r["status"] for r in payload["results"]}
    assert results == {"a@example.com": "sent", "big@example.com": "sent", "bad@example.com": "failed"}


def test_unreachable_ses_retries_without_callback(lambda_env, queues, callbacks, monkeypatch):
    sqs, queue_url, queue_arn, _ = queues
    monkeypatch.setenv("AWS_ENDPOINT_URL_SESV2", f"http://127.0.0.1:{free_port()}")
    lambda_env.ses_client.cache_clear()
    message_id = sqs.send_message(QueueUrl=queue_url,
                                  MessageBody=json.dumps(batch(8, 1, 3, callbacks.callback_url)))["MessageId"]
    resp = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)
    event = {"Records": [{"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"],
                          "body": m["Body"], "attributes": {}, "messageAttributes": {},
                          "eventSource": "aws:sqs", "eventSourceARN": queue_arn}
                         for m in resp["Messages"]]}
    assert lambda_env.handler(event, FakeContext()) == {"batchItemFailures": [{"itemIdentifier": message_id}]}
    assert callbacks.payloads == []


def test_malformed_records_go_towards_the_dlq(lambda_env, ses, callbacks, caplog):
    records = [
        {"messageId": "not-json", "body": "{nope"},
        {"messageId": "no-sender", "body": json.dumps({**batch(9, 1, 2, callbacks.callback_url), "sender": ""})},
        {"messageId": "file-url", "body": json.dumps(batch(9, 2, 2, "file:///etc/passwd"))},
        {"messageId": "ok", "body": json.dumps(batch(9, 3, 2, callbacks.callback_url))},
    ]
    with caplog.at_level(logging.INFO, logger="offload.lambda"):
        result = lambda_env.handler({"Records": records}, FakeContext())
    assert result == {"batchItemFailures": [{"itemIdentifier": "not-json"}, {"itemIdentifier": "no-sender"},
                                            {"itemIdentifier": "file-url"}]}
    assert [(p["batch_number"], p["status"]) for p in callbacks.payloads] == [(3, "sent")]
    assert len(ses.store()) == 2
    assert "example.com" not in caplog.text


def ses_refusal(status: int, error_type: str) -> StubHttpServer:
    """An endpoint answering every SES call with one restJson error, as SES does."""
    return StubHttpServer(lambda request: (status, {"x-amzn-ErrorType": error_type},
                                           {"message": "Email address is not verified."}))


def test_ses_refusing_the_call_fails_its_recipients_without_retry(lambda_env, callbacks, monkeypatch):
    with ses_refusal(400, "MessageRejected") as refusal:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SESV2", refusal.url)
        lambda_env.ses_client.cache_clear()
        record = {"messageId": "m1", "body": json.dumps(batch(11, 1, 60, callbacks.callback_url))}
        assert lambda_env.handler({"Records": [record]}, FakeContext()) == {"batchItemFailures": []}
    [payload] = callbacks.payloads
    assert payload["status"] == "failed" and len(payload["results"]) == 60
    # SES's code only, never its text: the service words it as direct mode does
    assert {r["error"] for r in payload["results"]} == {"MessageRejected"}


def test_a_recipient_lacking_a_field_fails_alone_and_nothing_is_sent_blank(lambda_env, ses, callbacks):
    message = batch(13, 1, 3, callbacks.callback_url)  # an older service's message: no "rendered"
    del message["recipients"][1]["data"]["password"]
    record = {"messageId": "m1", "body": json.dumps(message)}
    assert lambda_env.handler({"Records": [record]}, FakeContext()) == {"batchItemFailures": []}
    [payload] = callbacks.payloads
    results = {r["email"]: r for r in payload["results"]}
    assert payload["status"] == "partial" and len(results) == 3
    assert results["user13.1.1@example.com"] == {"email": "user13.1.1@example.com", "status": "failed",
                                                 "error": "missing_fields: password"}
    sent = sorted(e["destination"]["to"][0] for e in ses.store())
    assert sent == ["user13.1.0@example.com", "user13.1.2@example.com"]
    assert all("password is ." not in e["body"]["text"] for e in ses.store())


def test_callback_refused_with_4xx_is_not_retried(lambda_env, callbacks, monkeypatch):
    monkeypatch.setenv("CALLBACK_SECRET", webhooks.generate_secret())  # the service will answer 401
    record = {"messageId": "m1", "body": json.dumps(batch(10, 1, 2, callbacks.callback_url))}
    assert lambda_env.handler({"Records": [record]}, FakeContext()) == {"batchItemFailures": []}
    assert callbacks.rejected == 1  # one attempt only: a 401 is not retried


def test_records_are_left_for_later_when_time_is_short(lambda_env, ses, callbacks):
    class ShortContext(FakeContext):
        @staticmethod
        def get_remaining_time_in_millis() -> int:
            return 5_000

    records = [{"messageId": f"m{n}", "body": json.dumps(batch(12, n, 2, callbacks.callback_url))}
               for n in range(2)]
    assert lambda_env.handler({"Records": records}, ShortContext()) == {
        "batchItemFailures": [{"itemIdentifier": "m0"}, {"itemIdentifier": "m1"}]}
    assert ses.store() == [] and callbacks.payloads == []


def test_missing_secret_fails_the_whole_invocation(lambda_env, monkeypatch):
    monkeypatch.delenv("CALLBACK_SECRET")
    with pytest.raises(RuntimeError, match="CALLBACK_SECRET"):
        lambda_env.handler({"Records": []}, FakeContext())


@pytest.mark.parametrize(("template", "data", "want"), [
    ("Hi {{ name }}!", {"name": "Ann"}, "Hi Ann!"),
    ("Hi {{name}} {{ name }}", {"name": "<b>"}, "Hi <b> <b>"),
    ("{{ n }} {{ f }} {{ g }} {{ t }}", {"n": 3, "f": 2.0, "g": 1.5, "t": True}, "3 2 1.5 true"),
    ("{{ user.name }} {% if x %}{{ x | upper }}", {"x": "y"}, "{{ user.name }} {% if x %}{{ x | upper }}"),
    ("{{ a }}", {"a": "{{ b }}", "b": "no"}, "{{ b }}"),
])
def test_render_text(handler_module, template, data, want):
    assert handler_module.render(template, data) == want


@pytest.mark.parametrize("template, data", [("{{ missing }}", {}), ("a {{ none }}", {"none": None})])
def test_render_refuses_a_name_the_data_lacks(handler_module, template, data):
    with pytest.raises(handler_module.MissingField, match="missing_fields: "):
        handler_module.render(template, data)


def test_render_escapes_html_and_cleans_the_subject(handler_module):
    data = {"x": "<script>alert('&')</script>\r\nBcc: evil@example.com"}
    out = handler_module.render_recipient({"subject": "S {{ x }}", "text": "{{ x }}", "html": "{{ x }}"}, data)
    assert "\r" not in out["subject"] and "\n" not in out["subject"]
    assert out["subject"] == "S <script>alert('&')</script> Bcc: evil@example.com"
    assert out["text"] == data["x"]
    assert out["html"] == ("&lt;script&gt;alert(&#x27;&amp;&#x27;)&lt;/script&gt;\r\n"
                           "Bcc: evil@example.com")


def test_vendored_webhooks_signs_exactly_like_the_service(handler_module):
    vendored = sys.modules["webhooks"]
    assert Path(vendored.__file__).resolve() == AWS_DIR / "webhooks.py"
    for body in (b"", b'{"job_id": 1}', "é ✓".encode()):
        for ts in (0, 1614265330, 2_000_000_000):
            secret = webhooks.generate_secret()
            assert vendored.sign(secret, "msg_x", ts, body) == webhooks.sign(secret, "msg_x", ts, body)
    assert (AWS_DIR / "webhooks.py").read_bytes() == (ROOT / "providers" / "webhooks.py").read_bytes()


def test_cloudformation_template_passes_cfn_lint():
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    proc = subprocess.run([str(cfn_lint), str(AWS_DIR / "template.yaml")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
