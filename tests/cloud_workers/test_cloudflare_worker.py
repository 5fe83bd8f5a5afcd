"""The Cloudflare worker under miniflare: queue in, email out, signed callback back.

Miniflare (workerd) runs worker.js with the queue consumer, send_email, R2
and vars of its wrangler.toml (tests/support/servers.py ``Miniflare``). A
harness worker in the same instance enqueues batch messages and collects the
dead-letter queue; callbacks go to a local server that verifies them with
the service's ``providers.webhooks``. Rendered content is compared with the
AWS Lambda's renderer: both workers must produce the same email.
"""
from __future__ import annotations

import base64
import importlib
import re
import sys
import time
import tomllib
import urllib.error
import urllib.request

import pytest

from providers import webhooks
from providers.storage import WorkerR2Storage
from tests.support.servers import ROOT, CallbackReceiver, Miniflare, free_port

CF_DIR = ROOT / "cloud_workers" / "cloudflare"
AWS_DIR = ROOT / "cloud_workers" / "aws"
SECRET = webhooks.generate_secret()
ALLOWED = [f"r{i}@example.com" for i in range(30)]
REFUSED = "blocked@example.com"
TEMPLATE = {"subject": "Welcome {{ firstname }}\r\nto {{ course }}",
            "text": "Hi {{firstname}}, password {{ password }}, score {{ score }}, ok {{ ok }}. End",
            "html": "<p>Hi {{ firstname }}</p><p>{{ password }}</p>{{ user.name }}"}


def wait_until(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout}s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def lambda_render():
    """The Lambda's renderer, the reference both workers follow."""
    sys.path.insert(0, str(AWS_DIR))
    try:
        yield importlib.import_module("lambda_handler").render_recipient
    finally:
        sys.path.remove(str(AWS_DIR))
        sys.modules.pop("lambda_handler", None)
        sys.modules.pop("webhooks", None)


@pytest.fixture(scope="module")
def callbacks():
    with CallbackReceiver(lambda headers, body: webhooks.verify([SECRET], headers, body)) as receiver:
        yield receiver


@pytest.fixture(scope="module")
def worker():
    with Miniflare(secrets={"CALLBACK_SECRET": SECRET},
                   overrides={"RETRY_BASE_DELAY_S": "0", "CALLBACK_ATTEMPTS": "1",
                              "ALLOWED_CALLBACK_PREFIX": "http://127.0.0.1:"},
                   allowed_destinations=ALLOWED, max_retries=1) as mf:
        yield mf


def batch(job_id: int, emails: list[str], callback_url: str) -> dict:
    recipients = [{"email": email, "data": {"firstname": f"Ann <{i}> & \"Co\"", "password": f"p'w{i}\r\nX",
                                            "course": "Maths\nII", "score": 9.5 if i % 2 else 10, "ok": True}}
                  for i, email in enumerate(emails)]
    return {"job_id": job_id, "batch_number": 1, "company_id": 1, "callback_url": callback_url,
            "sender": "noreply@example.com", "template": TEMPLATE, "recipients": recipients}


def test_batch_is_sent_through_the_email_binding_and_reported(worker, callbacks, lambda_render):
    message = batch(21, [*ALLOWED[:11], REFUSED], callbacks.callback_url)
    worker.enqueue(message)

    payload = wait_until(lambda: [p for p in callbacks.payloads if p["job_id"] == 21], what="callback")[0]
    assert callbacks.rejected == 0
    assert (payload["batch_number"], payload["status"]) == (1, "partial")
    results = {r["email"]: r for r in payload["results"]}
    assert set(results) == {r["email"] for r in message["recipients"]}
    # the binding's code only, never its text (the service words it)
    assert results[REFUSED]["status"] == "failed" and re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", results[REFUSED]["error"])
    assert all(results[email]["status"] == "sent" and results[email]["message_id"] for email in ALLOWED[:11])

    sent = {e["to"]: e for e in worker.sent_emails() if e["to"] in ALLOWED[:11]}
    assert len(sent) == 11 and REFUSED not in {e["to"] for e in worker.sent_emails()}
    for recipient in message["recipients"][:11]:
        email = sent[recipient["email"]]
        want = lambda_render(TEMPLATE, recipient["data"])
        assert email["from"] == "noreply@example.com"
        assert (email["subject"], email["text"], email["html"]) == (want["subject"], want["text"], want["html"])
    first = sent["r1@example.com"]
    assert first["subject"] == 'Welcome Ann <1> & "Co" to Maths II'
    assert first["text"] == 'Hi Ann <1> & "Co", password p\'w1\r\nX, score 9.5, ok true. End'
    assert first["html"] == "<p>Hi Ann &lt;1&gt; &amp; &quot;Co&quot;</p><p>p&#x27;w1\r\nX</p>{{ user.name }}"


def test_a_recipient_lacking_a_field_fails_alone_and_nothing_is_sent_blank(worker, callbacks):
    message = batch(24, ALLOWED[12:15], callbacks.callback_url)  # an older service's message: no "rendered"
    del message["recipients"][1]["data"]["password"]
    worker.enqueue(message)
    payload = wait_until(lambda: [p for p in callbacks.payloads if p["job_id"] == 24], what="callback")[0]
    results = {r["email"]: r for r in payload["results"]}
    assert payload["status"] == "partial" and len(results) == 3
    assert results[ALLOWED[13]] == {"email": ALLOWED[13], "status": "failed", "error": "missing_fields: password"}
    sent = {e["to"] for e in worker.sent_emails()}
    assert ALLOWED[12] in sent and ALLOWED[14] in sent and ALLOWED[13] not in sent


def test_smtp_mail_goes_out_byte_for_byte_inline_or_from_r2(worker, callbacks):
    def mime(to: str, subject: str) -> bytes:
        return (f"From: =?UTF-8?Q?Zo=C3=AB?= <noreply@example.com>\r\nTo: {to}\r\nSubject: {subject}\r\n"
                "Message-ID: <lms.77@example.com>\r\nMIME-Version: 1.0\r\n"
                "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                f"Olá {to} ✓\r\n.leading dot\r\n").encode()
    inline, stored = mime(ALLOWED[25], "Inline"), mime(ALLOWED[26], "From R2")
    traced = b"Received: from lms.example.com ([192.0.2.1])\r\n\tby offload.test; Mon, 7 Dec 2026 10:00:00 +0000\r\n"
    storage = WorkerR2Storage({"worker_url": worker.url, "callback_secret": SECRET})
    storage.put("smtp/31/2.eml", stored, "message/rfc822")
    message = {"job_id": 31, "batch_number": 1, "company_id": 1, "callback_url": callbacks.callback_url,
               "sender": "noreply@example.com", "template": {"subject": "", "text": "", "html": ""},
               "recipients": [{"email": ALLOWED[25], "raw": base64.b64encode(traced + inline).decode(),
                               "envelope_from": "bounce@example.com"},
                              {"email": ALLOWED[26], "raw_key": "smtp/31/2.eml",
                               "raw_url": storage.presigned_url("smtp/31/2.eml", 3600),
                               "headers": {"List-Unsubscribe": "<https://offload.test/u/1>",
                                           "Message-ID": "<ours.1@offload.test>"}}]}
    worker.enqueue(message)
    payload = wait_until(lambda: [p for p in callbacks.payloads if p["job_id"] == 31], what="callback")[0]
    assert payload["status"] == "sent", payload
    assert {r["email"]: r["message_id"] for r in payload["results"]} == {
        ALLOWED[25]: "<lms.77@example.com>", ALLOWED[26]: "<ours.1@offload.test>"}
    sent = {e["to"]: e for e in worker.sent_emails() if e["to"] in ALLOWED[25:27]}
    # byte for byte, but for the Received: field the binding refuses (the trace is Cloudflare's to write);
    # a message read from R2 gets the recipient's own fields on top (a field of the same name replaced)
    assert sent[ALLOWED[25]]["raw"] == inline
    assert sent[ALLOWED[26]]["raw"] == (b"List-Unsubscribe: <https://offload.test/u/1>\r\n"
                                        b"Message-ID: <ours.1@offload.test>\r\n"
                                        + stored.replace(b"Message-ID: <lms.77@example.com>\r\n", b""))


def test_undeliverable_callback_retries_then_dead_letters(worker, callbacks):
    emails = ALLOWED[20:22]
    message = batch(22, emails, f"http://127.0.0.1:{free_port()}/callbacks/v1/batches")
    worker.enqueue(message)
    dead = wait_until(lambda: [d for d in worker.dead_letters() if d["body"].get("job_id") == 22],
                      what="dead letter")
    assert [d["body"] for d in dead] == [message]
    # max_retries=1: two deliveries; the second found the stored results (R2) and sent nothing.
    sent = [e["to"] for e in worker.sent_emails()]
    assert sorted(t for t in sent if t in emails) == sorted(emails)
    assert not [p for p in callbacks.payloads if p["job_id"] == 22]


def test_malformed_message_goes_to_the_dead_letter_queue(worker):
    worker.enqueue({"job_id": 23, "recipients": "nobody"})
    dead = wait_until(lambda: [d for d in worker.dead_letters() if d["body"].get("job_id") == 23],
                      what="dead letter")
    assert dead[0]["body"] == {"job_id": 23, "recipients": "nobody"}


def fetch_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_fetch_serves_only_certificates_and_batches(worker):
    assert fetch_status(f"{worker.url}/") == 404
    assert fetch_status(f"{worker.url}/callbacks/v1/batches") == 404
    assert fetch_status(f"{worker.url}/batches") == 404  # GET: only POST is served
    # /certificates/ is certificates.js's: an unsigned request is refused there, not 404.
    assert fetch_status(f"{worker.url}/certificates/c/1.pdf") == 403


def test_wrangler_toml_declares_the_bindings():
    config = tomllib.loads((CF_DIR / "wrangler.toml").read_text())
    assert config["main"] == "worker.js"
    [consumer] = config["queues"]["consumers"]
    [producer] = config["queues"]["producers"]
    assert producer["queue"] == consumer["queue"]
    assert consumer["dead_letter_queue"] and consumer["dead_letter_queue"] != consumer["queue"]
    assert consumer["max_retries"] >= 1 and consumer["max_batch_size"] >= 1
    assert [b["name"] for b in config["send_email"]] == ["EMAIL"]
    assert [b["binding"] for b in config["r2_buckets"]] == ["CERTIFICATES", "MARKERS"]
    assert config["vars"]["ALLOWED_CALLBACK_PREFIX"].startswith("https://")  # required, no empty default
    assert "CALLBACK_SECRET" not in config.get("vars", {})  # a secret: wrangler secret put
