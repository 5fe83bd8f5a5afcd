"""Offload mode on a par with direct sending, through real parts only.

- rendering: one template with a condition, a loop and filters gives the same
  subject, text and HTML in direct mode (aws-ses-v2-local), Lambda offload
  (moto SQS + S3, the handler, aws-ses-v2-local) and Worker offload
  (miniflare): the stored mail is compared;
- headers: campaign mail carries List-Unsubscribe in all three;
- exactly once: a callback that fails until the record is redelivered sends
  each recipient once, in both clouds, and the job completes;
- size: a 200-recipient batch of large HTML bodies is split under each queue's
  limit and everyone is sent once;
- HTTPS offload: the service POSTs signed batches to the Lambda (as an API
  Gateway payload-v2 event) and to the Worker's /batches; forged or stale
  requests are refused before parsing;
- Cloudflare bounces: a bounce report the Worker receives suppresses the address;
- certificates: attached when the message can hold them, else the link alone.

The fixtures come from test_offload_e2e (SQS queue, marker bucket, Lambda,
miniflare, the Queues REST stand-in, the live app).
"""
from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections import Counter

import boto3
import pytest
from sqlalchemy import select, update

from core import companies
from core.db import db
from core.models import Company, Suppression
from core.unsubscribe import unsubscribe_url
from providers import guard, webhooks
from providers.offload import SqsTransport
from tests.support.app import run_worker_burst
from tests.support.certificates import CERT_JOB
from tests.support.certificates import learners as cert_learners
from tests.support.faulty_proxy import FaultyProxy
from tests.support.jobs import aws_settings, run_scheduled_now
from tests.support.offload import CF_SECRET, CF_TOKEN, REGION, FakeContext, batches, job, ses_count, wait_final
from tests.support.servers import Miniflare, StubHttpServer, StubRequest

pytestmark = pytest.mark.slow

#: a condition, a loop and filters in every part; HTML escaping and non-ASCII text
TEMPLATE = {
    "type": "notification", "priority": "bulk",  # bulk: its mail carries the one-click unsubscribe
    "subject": "{% if vip %}VIP: {% endif %}Hello {{ firstname | title }} – {{ courses | length }} course(s)",
    "body_text": "Hi {{ firstname }},\r\n{% for c in courses %}- {{ c.name | upper }}: {{ c.score | round(1) }}\n"
                 "{% else %}No courses yet.\n{% endfor %}Password: {{ password }}\n",
    "body_html": "<p>Hi {{ firstname | e }}</p><ul>{% for c in courses %}<li>{{ c.name }} "
                 "({{ '%.1f' | format(c.score) }})</li>{% endfor %}</ul>{% if note %}<p>{{ note }}</p>{% endif %}",
}


def learners(prefix: str, n: int = 4) -> list[dict]:
    out = []
    for i in range(n):
        courses = [{"name": f"Zoë's course {j} <b>", "score": 7.25 + j} for j in range(i % 3)]
        out.append({"email": f"{prefix}{i}@acme.test",
                    "data": {"firstname": f"ann-marie {i}", "vip": i % 2 == 1, "courses": courses,
                             "password": f"Pw-{i}-日本", "note": "a <script> & \"quote\"" if i == 2 else ""}})
    return out


def submit(client, company, recipients, body: dict | None = None) -> int:
    resp = client.post("/api/v1/jobs", json={**(body or TEMPLATE), "recipients": recipients}, headers=company.auth)
    assert resp.status_code == 202, resp.json
    return resp.json["id"]


def ses_mail(ses) -> dict[str, dict]:
    """aws-ses-v2-local's store by recipient: subject, text, html, headers."""
    out = {}
    for mail in ses.store():
        [to] = mail["destination"]["to"]
        out[to] = {"subject": mail["subject"], "text": mail["body"].get("text"), "html": mail["body"].get("html"),
                   "headers": {h["name"]: h["value"] for h in mail.get("headers") or []}}
    return out


def cloudflare_company(make_company, api_url: str, **extra):
    company = make_company(provider="cloudflare", mode="offload", sender="noreply@acme.test",
                           cloudflare_api_token=CF_TOKEN, cloudflare_account_id="acct-1",
                           cloudflare_queue_id="queue-1", cloudflare_api_base=f"{api_url}/client/v4", **extra)
    db.session.execute(update(Company).where(Company.id == company.id).values(callback_secret=CF_SECRET))
    db.session.commit()
    company.secret = CF_SECRET
    return company


@pytest.fixture
def private_endpoints():
    """The endpoint guard lets the tests reach their local servers (OFFLOAD_ALLOW_PRIVATE_ENDPOINTS=1)."""
    before = guard.policy()
    guard.configure(allow_private=True, production=False)
    yield
    guard.configure(allow_private=before.allow_private, production=before.production,
                    allowed_hosts=before.allowed_hosts)


# --------------------------------------------------------------------------- rendering and headers

def test_the_same_mail_in_direct_mode_lambda_offload_and_worker_offload(
        app, client, make_company, offload_company, aws_lambda, ses, miniflare, cloudflare_api, live_url):
    # direct: the service sends through SES itself
    direct = make_company(**aws_settings(ses.url))
    direct_job = submit(client, direct, learners("d"))
    run_worker_burst(app)
    assert job(direct_job).status == "completed"
    direct_mail = ses_mail(ses)
    ses.clear()

    # Lambda offload: SQS → the handler → SES
    lambda_job = submit(client, offload_company, learners("l"))
    run_worker_burst(app)
    assert ses.store() == []
    aws_lambda.drain()
    assert job(lambda_job).status == "completed"
    lambda_mail = ses_mail(ses)

    # Worker offload: Queues REST → miniflare's queue → worker.js → send_email
    cf = cloudflare_company(make_company, cloudflare_api.url)
    cf_job = submit(client, cf, learners(f"w{cf.id}-"))
    run_worker_burst(app)
    assert wait_final(cf_job).status == "completed"
    worker_mail = {m["to"]: m for m in miniflare.sent_emails() if m["to"].startswith(f"w{cf.id}-")}

    assert len(direct_mail) == len(lambda_mail) == len(worker_mail) == 4
    def content(mail, company, email) -> tuple:
        """The mail with its recipient's own unsubscribe link (in the footer) as one word."""
        url = unsubscribe_url(company.id, email)
        assert url in mail["text"] and url in mail["html"]  # the visible footer, in every mode
        return tuple(mail[k].replace(url, "UNSUBSCRIBE-LINK") for k in ("subject", "text", "html"))

    for i in range(4):
        d, la = direct_mail[f"d{i}@acme.test"], lambda_mail[f"l{i}@acme.test"]
        w = worker_mail[f"w{cf.id}-{i}@acme.test"]
        assert content(la, offload_company, f"l{i}@acme.test") == content(d, direct, f"d{i}@acme.test")
        assert content(w, cf, f"w{cf.id}-{i}@acme.test") == content(d, direct, f"d{i}@acme.test")
        # one-click unsubscribe (RFC 8058) for bulk mail, in every mode
        for mail, company, email in ((d, direct, f"d{i}@acme.test"), (la, offload_company, f"l{i}@acme.test"),
                                     (w, cf, f"w{cf.id}-{i}@acme.test")):
            assert mail["headers"]["List-Unsubscribe"] == f"<{unsubscribe_url(company.id, email)}>"
            assert mail["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    sample = direct_mail["d1@acme.test"]
    assert sample["subject"] == "VIP: Hello Ann-Marie 1 – 1 course(s)"
    assert sample["text"] == "Hi ann-marie 1,\n- ZOË'S COURSE 0 <B>: 7.2\nPassword: Pw-1-日本\n\n--\n" \
        f"Don't want these emails? Unsubscribe: {unsubscribe_url(direct.id, 'd1@acme.test')}\n"
    assert "<li>Zoë&#39;s course 0 &lt;b&gt; (7.2)</li>" in sample["html"]
    assert "&lt;script&gt; &amp; &#34;quote&#34;" in direct_mail["d2@acme.test"]["html"]


# --------------------------------------------------------------------------- exactly once on redelivery

def test_lambda_redelivery_after_failed_callbacks_sends_each_recipient_once(
        app, client, offload_company, aws_lambda, ses, live_url, monkeypatch, set_settings):
    monkeypatch.setenv("CALLBACK_ATTEMPTS", "2")
    with FaultyProxy(live_url, error_rate=1.0) as proxy:
        set_settings(public_url=proxy.url)
        job_id = submit(client, offload_company, learners("x", 30))
        run_worker_burst(app)
        [message] = aws_lambda.receive()
        for _ in range(2):  # the callback fails on every attempt of two deliveries
            assert aws_lambda.invoke([message]) == [message["MessageId"]]
            aws_lambda.sqs.change_message_visibility(QueueUrl=aws_lambda.queue_url,
                                                     ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
            [message] = aws_lambda.receive()
        assert proxy.errors == 4 and job(job_id).status == "processing"
        proxy.error_rate = 0.0
        assert aws_lambda.invoke([message]) == []  # the third delivery re-posts the stored results
    done = job(job_id)
    assert (done.status, done.emails_sent, done.emails_failed) == ("completed", 30, 0)
    counts = ses_count(ses)
    assert len(counts) == 30 and set(counts.values()) == {1}


def test_worker_redelivery_after_failed_callbacks_sends_each_recipient_once(
        app, client, make_company, miniflare, cloudflare_api, live_url, set_settings):
    with FaultyProxy(live_url, error_rate=1.0) as proxy:
        set_settings(public_url=proxy.url)
        cf = cloudflare_company(make_company, cloudflare_api.url)
        job_id = submit(client, cf, learners(f"r{cf.id}-", 12))
        run_worker_burst(app)
        deadline = time.monotonic() + 30
        while proxy.errors < 2:  # the first delivery's two callback attempts failed
            assert time.monotonic() < deadline, "no callback attempt"
            time.sleep(0.02)
        proxy.error_rate = 0.0
        done = wait_final(job_id)
    assert (done.status, done.emails_sent) == ("completed", 12)
    sent = Counter(m["to"] for m in miniflare.sent_emails() if m["to"].startswith(f"r{cf.id}-"))
    assert len(sent) == 12 and set(sent.values()) == {1}


# --------------------------------------------------------------------------- size

LARGE = {"type": "csv_import", "subject": "Report for {{ firstname }}", "body_text": "See the HTML part.",
         "body_html": "<h1>{{ firstname }}</h1>" + "".join(f"<p>Paragraph {n}: {'lorem ipsum ' * 20}</p>"
                                                          for n in range(12))}


def large_people(prefix: str) -> list[dict]:
    return [{"email": f"{prefix}{i}@acme.test", "data": {"firstname": f"Name{i}"}} for i in range(200)]


def test_a_batch_of_large_bodies_is_split_under_the_sqs_limit(app, client, offload_company, aws_lambda, ses,
                                                              live_url):
    job_id = submit(client, offload_company, large_people("big"), LARGE)
    run_worker_burst(app)
    [batch] = batches(job_id)
    messages = aws_lambda.receive()
    sizes = [len(m["Body"].encode()) for m in messages]
    assert len(messages) > 1 and max(sizes) <= 256 * 1024
    bodies = [json.loads(m["Body"]) for m in messages]
    assert {b["batch_number"] for b in bodies} == {batch.batch_number}
    assert sum(len(b["recipients"]) for b in bodies) == 200 and len({b["delivery_id"] for b in bodies}) == len(bodies)
    for start in range(0, len(messages), 10):
        assert aws_lambda.invoke(messages[start:start + 10]) == []
    done = job(job_id)
    assert (done.status, done.emails_sent) == ("completed", 200)
    counts = ses_count(ses)
    assert len(counts) == 200 and set(counts.values()) == {1}
    assert len(ses.store()[0]["body"]["html"]) > 3000


def test_a_batch_of_large_bodies_is_split_under_the_cloudflare_limit(app, client, make_company, miniflare,
                                                                     cloudflare_api, live_url):
    cf = cloudflare_company(make_company, cloudflare_api.url)
    job_id = submit(client, cf, large_people(f"big{cf.id}-"), LARGE)
    run_worker_burst(app)
    sent_messages = [m for r in cloudflare_api.requests for m in r.json()["messages"]
                     if m["body"]["job_id"] == job_id]
    sizes = [len(json.dumps(m["body"], separators=(",", ":")).encode()) for m in sent_messages]
    assert len(sent_messages) > 2 and max(sizes) <= 128_000
    assert all(len(r.body) <= 256_000 for r in cloudflare_api.requests)
    done = wait_final(job_id)
    assert (done.status, done.emails_sent) == ("completed", 200)
    sent = Counter(m["to"] for m in miniflare.sent_emails() if m["to"].startswith(f"big{cf.id}-"))
    assert len(sent) == 200 and set(sent.values()) == {1}


# --------------------------------------------------------------------------- HTTPS offload

def api_gateway_event(request) -> dict:
    """An API Gateway HTTP API (payload format 2.0) event for a request the stub received."""
    return {"version": "2.0", "routeKey": "POST /batches", "rawPath": request.path.split("?")[0],
            "rawQueryString": "", "headers": {k.lower(): v for k, v in request.headers.items()},
            "requestContext": {"http": {"method": request.method, "path": request.path.split("?")[0]},
                               "requestId": "test", "stage": "$default"},
            "body": base64.b64encode(request.body).decode(), "isBase64Encoded": True}


@pytest.fixture
def api_gateway(aws_lambda):
    """API Gateway in front of the Lambda: each request becomes a payload-v2 event for the handler."""

    def respond(request):
        result = aws_lambda.module.handler(api_gateway_event(request), FakeContext())
        return result["statusCode"], {}, result["body"]

    with StubHttpServer(respond) as server:
        yield server


def test_https_offload_through_api_gateway_and_the_lambda(app, client, make_company, api_gateway, aws_lambda,
                                                          ses, live_url, monkeypatch, private_endpoints, set_settings):
    company = make_company(provider="aws", mode="offload", sender="noreply@acme.test", aws_region=REGION,
                           offload_url=f"{api_gateway.url}/batches", offload_auth_token="gw-token-1")
    monkeypatch.setenv("CALLBACK_SECRET", company.secret)
    monkeypatch.setenv("AUTH_TOKEN", "gw-token-1")
    set_settings(batch_size=10)
    job_id = submit(client, company, learners("h", 25))
    run_worker_burst(app)
    done = job(job_id)
    assert (done.status, done.emails_sent) == ("completed", 25)
    assert {b.route for b in batches(job_id)} == {"offload:https"}
    assert len(api_gateway.requests) == 3
    assert all(r.headers["Authorization"] == "Bearer gw-token-1" for r in api_gateway.requests)
    counts = ses_count(ses)
    assert len(counts) == 25 and set(counts.values()) == {1}


def test_https_offload_retries_a_5xx_and_pauses_on_a_4xx(app, client, make_company, private_endpoints):
    answers = [503, 400]
    with StubHttpServer(lambda request: (answers.pop(0) if answers else 400, {}, {"detail": "secret-ish body"})) \
            as endpoint:
        company = make_company(provider="aws", mode="offload", sender="noreply@acme.test",
                               offload_url=f"{endpoint.url}/batches")
        job_id = submit(client, company, learners("p", 2))
        run_worker_burst(app)
        [batch] = batches(job_id)
        assert batch.status == "retry" and "HTTP 503" in batch.error
        run_scheduled_now()
        run_worker_burst(app)
    paused = job(job_id)
    assert paused.status == "paused"
    assert paused.paused_reason == "HTTP 400: the offload endpoint refused the batch"
    assert "secret-ish" not in (paused.error_log or "")
    assert len(endpoint.requests) == 2
    first, second = endpoint.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"]  # the same batch, the same key
    webhooks.verify([company.secret], second.headers, second.body)


def test_https_offload_to_the_worker(app, client, make_company, miniflare, live_url, private_endpoints):
    company = make_company(provider="cloudflare", mode="offload", sender="noreply@acme.test",
                           offload_url=f"{miniflare.url}/batches")
    db.session.execute(update(Company).where(Company.id == company.id).values(callback_secret=CF_SECRET))
    db.session.commit()
    job_id = submit(client, company, learners(f"hw{company.id}-", 7))
    run_worker_burst(app)
    done = job(job_id)
    assert (done.status, done.emails_sent) == ("completed", 7)
    sent = Counter(m["to"] for m in miniflare.sent_emails() if m["to"].startswith(f"hw{company.id}-"))
    assert len(sent) == 7 and set(sent.values()) == {1}


def post(url: str, body: bytes, headers: dict) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("forgery", ["wrong secret", "stale", "unsigned"])
def test_forged_or_stale_batches_are_refused_before_parsing(aws_lambda, miniflare, monkeypatch, forgery):
    monkeypatch.setenv("CALLBACK_SECRET", CF_SECRET)
    body = b"this is not even JSON"  # a verified request would be a 400; a refused one never gets that far
    secret = webhooks.generate_secret() if forgery == "wrong secret" else CF_SECRET
    timestamp = int(time.time()) - (3600 if forgery == "stale" else 0)
    headers = {} if forgery == "unsigned" else webhooks.sign_headers(secret, "msg_forged", body,
                                                                      timestamp=timestamp)
    headers["Content-Type"] = "application/json"
    assert post(f"{miniflare.url}/batches", body, headers) == 401
    event = api_gateway_event(StubRequest("POST", "/batches", headers, body))
    assert aws_lambda.module.handler(event, FakeContext())["statusCode"] == 401
    # the same body, properly signed, is parsed (and refused as malformed)
    good = {**webhooks.sign_headers(CF_SECRET, "msg_ok", body), "Content-Type": "application/json"}
    assert post(f"{miniflare.url}/batches", body, good) == 400
    event = api_gateway_event(StubRequest("POST", "/batches", good, body))
    assert aws_lambda.module.handler(event, FakeContext())["statusCode"] == 400


# --------------------------------------------------------------------------- Cloudflare bounces

DSN = """From: MAILER-DAEMON@mx.example.net\r
To: bounces@acme.test\r
Subject: Undelivered Mail Returned to Sender\r
Message-ID: <dsn-1@mx.example.net>\r
MIME-Version: 1.0\r
Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r
\r
--B\r
Content-Type: text/plain\r
\r
Your message could not be delivered.\r
--B\r
Content-Type: message/delivery-status\r
\r
Reporting-MTA: dns; mx.example.net\r
\r
Final-Recipient: rfc822; {email}\r
Action: failed\r
Status: 5.1.1\r
Diagnostic-Code: smtp; 550 5.1.1 no such user\r
--B\r
Content-Type: text/rfc822-headers\r
\r
Message-ID: {message_id}\r
--B--\r
"""


def test_a_bounce_reported_by_the_worker_suppresses_the_address(app, make_company, live_url):
    company = make_company(provider="cloudflare", mode="offload", sender="noreply@acme.test")
    with Miniflare(secrets={"CALLBACK_SECRET": company.secret},
                   overrides={"ALLOWED_CALLBACK_PREFIX": live_url, "COMPANY_ID": str(company.id),
                              "CALLBACK_ATTEMPTS": "1"}) as worker:
        raw = DSN.format(email="gone@acme.test", message_id="<abc@acme.test>").encode()
        assert worker.trigger_email("MAILER-DAEMON@mx.example.net", "bounces@acme.test", raw) == 200
        deadline = time.monotonic() + 30
        while True:
            db.session.rollback()
            row = db.session.execute(select(Suppression).where(Suppression.company_id == company.id,
                                                               Suppression.email == "gone@acme.test")).scalar()
            if row is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert row is not None and row.reason == "bounce"


# --------------------------------------------------------------------------- certificates

@pytest.mark.parametrize("room", ["enough", "too little"])
def test_offloaded_certificates_go_as_attachments_when_they_fit_else_as_links(
        app, client, make_company, offload_company, aws_lambda, ses, moto_server, live_url, monkeypatch, room,
        set_settings):
    bucket = f"certs-{offload_company.id}-{room.replace(' ', '-')}"
    boto3.client("s3", region_name=REGION, endpoint_url=moto_server.url, aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server.url)  # the Lambda's
    set_settings(aws_endpoint_url_s3=moto_server.url)  # the service's
    companies.configure(offload_company.company, {"s3_bucket": bucket})
    db.session.commit()
    if room == "too little":  # a queue whose messages cannot hold a PDF
        monkeypatch.setattr(SqsTransport, "max_message_bytes", 6000)
    job_id = submit(client, offload_company, cert_learners(2, certificate_delivery="attachment"), CERT_JOB)
    run_worker_burst(app)  # issue the PDFs, plan, submit
    run_worker_burst(app)
    aws_lambda.drain()
    assert job(job_id).status == "completed"
    store = ses.store()
    assert len(store) == 2
    for mail in store:
        assert "/certificates/" in mail["body"]["text"]  # the link is always in the body
        if room == "enough":
            (attachment,) = mail["attachments"]
            assert attachment["contentType"] == "application/pdf"
            assert base64.b64decode(attachment["content"]).startswith(b"%PDF")
        else:
            assert mail["attachments"] == []
