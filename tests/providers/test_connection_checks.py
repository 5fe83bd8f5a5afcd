"""Connection tests that mean it: every sender, transport and storage of the registry passes its
"Test connection" only on its provider's own answer.

Each is pointed at a local server that answers 404, 500, an HTML page with 200, or nothing in time
(past the timeout the test sets): the check fails, says why in words, shows nothing of what the
server sent, and names the setting to fix (``tasks.checks``). Against the real part (aws-ses-v2-local
with an account, moto's SQS and S3, our Lambda's ``POST /batches``, an aiosmtpd server with AUTH,
certificates.js under miniflare, and the API stand-ins of Cloudflare, SendGrid and Mailgun) it passes.
"""
from __future__ import annotations

import importlib
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest

from core import delivery_settings
from providers import registry, webhooks
from tasks.checks import _check, _provider_test, _transport_test
from tests.support.email_apis import FakeMailgun, FakeSendgrid
from tests.support.servers import ROOT, CertificateGateway, SesLocal, SmtpSink, StubHttpServer

MODES = ("404", "500", "html", "slow")
LEAK = "INTERNAL-PAGE-7d1e"  # what a bad server says: never in a result
TIMEOUT = 1
SLOW_S = 3
SECRET = webhooks.generate_secret()
ACCOUNT = {
    "DedicatedIpAutoWarmupEnabled": False, "EnforcementStatus": "HEALTHY", "ProductionAccessEnabled": True,
    "SendingEnabled": True, "SendQuota": {"Max24HourSend": 50000, "MaxSendRate": 14, "SentLast24Hours": 120},
    "SuppressionAttributes": {"SuppressedReasons": []},
    "Details": {"AdditionalContactEmailAddresses": [], "ContactLanguage": "EN", "MailType": "TRANSACTIONAL",
                "ReviewDetails": {"CaseId": "1", "Status": "GRANTED"}, "UseCaseDescription": "lms",
                "WebsiteURL": "https://lms.example"},
}
AWS = {"aws_access_key": "AKIDCHECKS", "aws_secret_key": "checks-secret", "aws_region": "us-east-1"}
CF_TOKEN, CF_ACCOUNT, CF_QUEUE = "cf-check-token", "0123456789abcdef0123456789abcdef", "q-checks"


# -- servers that are not the provider -------------------------------------------------------------

class BadHttp:
    """An HTTP server answering every request in one way: 404, 500 (HTML pages), 200 HTML, or late."""

    def __init__(self, mode: str):
        def serve(handler: BaseHTTPRequestHandler):
            length = int(handler.headers.get("Content-Length") or 0)
            if length:
                handler.rfile.read(length)
            if mode == "slow":
                time.sleep(SLOW_S)
            status = {"404": 404, "500": 500}.get(mode, 200)
            body = f"<html><body><h1>{LEAK}</h1><p>{mode}</p></body></html>".encode()
            try:
                handler.send_response(status)
                handler.send_header("Content-Type", "text/html")
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                if handler.command != "HEAD":
                    handler.wfile.write(body)
            except OSError:  # the client gave up (slow)
                pass

        class Handler(BaseHTTPRequestHandler):
            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = serve

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.port = self.server.server_address[1]

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class BadSmtp:
    """A TCP server whose greeting is an HTTP 404 page, a 500 banner, an HTML page, or nothing."""

    GREETING = {"404": f"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\n\r\n<html>{LEAK}</html>\r\n",
                "500": f"500 {LEAK} service refused\r\n", "html": f"<html><body>{LEAK}</body></html>\r\n"}

    def __init__(self, mode: str):
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.held: list[socket.socket] = []

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.mode == "slow":
                self.held.append(conn)  # never a word
                continue
            try:
                conn.sendall(self.GREETING[self.mode].encode())
                time.sleep(0.2)
            except OSError:
                pass
            conn.close()

    def __enter__(self):
        self.sock.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.sock.close()
        for conn in self.held:
            conn.close()


# -- each backend, aimed at a base URL ---------------------------------------------------------------

def _storage_test(name: str, config: dict):
    def run():
        with registry.create(registry.STORAGE, name, config) as storage:
            return storage.test_connection()
    return run


def configs(url: str, port: int) -> dict[str, tuple[str, object]]:
    """Each backend's group and its check, every URL or host of its settings at ``url``/``port``."""
    aws = {**AWS, "aws_endpoint_url": url, "aws_sts_endpoint_url": url, "timeout": TIMEOUT}
    cloudflare = {"cloudflare_api_token": CF_TOKEN, "cloudflare_account_id": CF_ACCOUNT,
                  "cloudflare_queue_id": CF_QUEUE, "cloudflare_api_base": f"{url}/client/v4", "timeout": TIMEOUT}
    return {
        "ses": ("aws", _provider_test("ses", aws)),
        "sqs": ("aws", _transport_test("sqs", {**aws, "sqs_queue_url": f"{url}/123456789012/batches"})),
        "cloudflare": ("cloudflare", _provider_test("cloudflare", cloudflare)),
        "cloudflare_queue": ("cloudflare", _transport_test("cloudflare_queue", cloudflare)),
        "sendgrid": ("sendgrid", _provider_test("sendgrid", {"sendgrid_api_key": "SG.checks", "timeout": TIMEOUT})),
        "mailgun": ("mailgun", _provider_test("mailgun", {"mailgun_api_key": "mg-checks", "timeout": TIMEOUT,
                                                          "mailgun_domain": "mg.example.com", "mailgun_region": "us"})),
        "https": ("offload", _transport_test("https", {"offload_url": f"{url}/batches", "callback_secret": SECRET,
                                                       "offload_auth_token": "tok-checks", "timeout": TIMEOUT})),
        "smtp": ("smtp", _provider_test("smtp", {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_tls": "none",
                                                 "smtp_username": "mailer", "smtp_password": "pw-checks",
                                                 "timeout": TIMEOUT})),
        "s3": ("aws", _storage_test("s3", {**aws, "s3_bucket": "certificates"})),
        "r2": ("cloudflare", _storage_test("r2", {**aws, "s3_bucket": "certificates"})),
        "worker_r2": ("cloudflare", _storage_test("worker_r2", {"worker_url": url, "signing_secret": SECRET,
                                                               "timeout": TIMEOUT})),
    }


BACKENDS = tuple(configs("http://127.0.0.1:9", 9))


def test_every_registered_backend_is_checked_here():
    registered = {*registry.names(registry.SENDER), *registry.names(registry.TRANSPORT),
                  *registry.names(registry.STORAGE)} - {"local"}  # this machine's disk: tests/dashboard/certificates
    assert registered == set(BACKENDS)


@pytest.fixture
def api_bases():
    """SendGrid's and Mailgun's API bases are the operator's (never a tenant's): set them for a test."""
    def aim(url: str) -> None:
        registry.configure(api_bases={"sendgrid": url, "mailgun": url})
    yield aim
    registry.configure(api_bases={})


def words_only(result: dict, group: str) -> None:
    """A failed check that says why in words, shows nothing of the answer and names a setting of ``group``
    (or the bucket, which R2 shares with S3)."""
    assert result["ok"] is False, result
    error = result["error"]
    assert error and " " in error and LEAK not in error and "<" not in error, error
    keys = {s.key for g in delivery_settings.groups() if g.name == group for s in g.fields} | {"s3_bucket"}
    assert result["field"] in keys and result["fix"] == f"#f-{result['field']}", result
    assert result["field_label"] == delivery_settings.by_key()[result["field"]].label


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_server_that_is_not_the_provider_fails_the_check_in_words(backend, mode, api_bases):
    server = BadSmtp(mode) if backend == "smtp" else BadHttp(mode)
    with server:
        api_bases(server.url)
        group, run = configs(server.url, server.port)[backend]
        result = _check(backend, run)
    words_only(result, group)


# -- the real parts ----------------------------------------------------------------------------------

def _cloudflare_api(request):
    envelope = {"success": True, "errors": [], "messages": []}
    if request.headers.get("Authorization") != f"Bearer {CF_TOKEN}":
        return 401, {}, {**envelope, "success": False, "errors": [{"code": 1000, "message": "Invalid API Token"}],
                         "result": None}
    if request.path.endswith("/tokens/verify"):
        return 200, {}, {**envelope, "result": {"id": "tok", "status": "active"}}
    if request.path == f"/client/v4/accounts/{CF_ACCOUNT}/queues/{CF_QUEUE}":
        return 200, {}, {**envelope, "result": {"queue_id": CF_QUEUE, "queue_name": "offload",
                                                "consumers": [{"script": "offload"}]}}
    return 404, {}, {**envelope, "success": False, "errors": [{"code": 7003, "message": "No route"}], "result": None}


@pytest.fixture(scope="module")
def lambda_module():
    """cloud_workers/aws/lambda_handler as the Lambda runtime imports it."""
    sys.path.insert(0, str(ROOT / "cloud_workers" / "aws"))
    try:
        yield importlib.import_module("lambda_handler")
    finally:
        sys.path.remove(str(ROOT / "cloud_workers" / "aws"))
        sys.modules.pop("lambda_handler", None)
        sys.modules.pop("webhooks", None)


def _api_gateway(module):
    """Our Lambda's ``POST /batches`` behind a local HTTP server, as API Gateway hands it requests."""
    def respond(request):
        event = {"version": "2.0", "rawPath": request.path, "headers": request.headers,
                 "body": request.body.decode(), "isBase64Encoded": False,
                 "requestContext": {"http": {"method": request.method}}}
        answer = module.handler(event, None)
        return answer["statusCode"], {}, answer["body"]
    return StubHttpServer(respond)


def test_the_real_parts_pass(moto_server, lambda_module, monkeypatch, api_bases, tls_files):
    monkeypatch.setenv("CALLBACK_SECRET", SECRET)
    monkeypatch.setenv("ALLOWED_CALLBACK_PREFIX", "https://service.example/")
    monkeypatch.setenv("AUTH_TOKEN", "tok-checks")
    s3 = boto3.client("s3", endpoint_url=moto_server.url, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket="certificates")
    sqs = boto3.client("sqs", endpoint_url=moto_server.url, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    queue_url = sqs.create_queue(QueueName="checks-batches")["QueueUrl"]
    moto = {**AWS, "aws_endpoint_url": moto_server.url}
    sendgrid, mailgun = FakeSendgrid("SG.checks"), FakeMailgun("mg-checks", "mg.example.com")
    with SesLocal(account=ACCOUNT) as ses, SmtpSink(users={"mailer": "pw-checks"},
                                                 starttls_context=tls_files.server_context()) as smtp, \
            StubHttpServer(_cloudflare_api) as cloudflare, _api_gateway(lambda_module) as gateway, \
            CertificateGateway(SECRET) as certificates, sendgrid, mailgun:
        cf = {"cloudflare_api_token": CF_TOKEN, "cloudflare_account_id": CF_ACCOUNT, "cloudflare_queue_id": CF_QUEUE,
              "cloudflare_api_base": f"{cloudflare.url}/client/v4"}
        checks = {
            "ses": _provider_test("ses", {**AWS, "aws_endpoint_url": ses.url,
                                          "aws_sts_endpoint_url": moto_server.url}),
            "sqs": _transport_test("sqs", {**moto, "sqs_queue_url": queue_url}),
            "cloudflare": _provider_test("cloudflare", cf),
            "cloudflare_queue": _transport_test("cloudflare_queue", cf),
            "sendgrid": _provider_test("sendgrid", {"sendgrid_api_key": "SG.checks"}),
            "mailgun": _provider_test("mailgun", {"mailgun_api_key": "mg-checks", "mailgun_domain": "mg.example.com",
                                                  "mailgun_region": "us"}),
            "https": _transport_test("https", {"offload_url": f"{gateway.url}/batches", "callback_secret": SECRET,
                                               "offload_auth_token": "tok-checks"}),
            "smtp": _provider_test("smtp", {"smtp_host": "127.0.0.1", "smtp_port": smtp.port, "smtp_tls": "starttls",
                                            "smtp_ca_file": str(tls_files.cert), "smtp_username": "mailer",
                                            "smtp_password": "pw-checks"}),
            "s3": _storage_test("s3", {**moto, "s3_bucket": "certificates"}),
            "r2": _storage_test("r2", {**moto, "s3_bucket": "certificates"}),
            "worker_r2": _storage_test("worker_r2", {"worker_url": certificates.url, "signing_secret": SECRET}),
        }
        assert set(checks) == set(BACKENDS)
        registry.configure(api_bases={"sendgrid": sendgrid.url, "mailgun": mailgun.url})
        results = {name: _check(name, run) for name, run in checks.items()}
        wrong = _check("https", _transport_test("https", {"offload_url": f"{gateway.url}/batches",
                                                          "callback_secret": SECRET, "offload_auth_token": "nope"}))
    assert {name: r["ok"] for name, r in results.items()} == {name: True for name in checks}, results
    assert results["ses"]["facts"]["max_send_rate"] == 14 and results["ses"]["facts"]["account_id"]
    assert not any(s3.list_objects_v2(Bucket="certificates").get("Contents", []))  # the probe is removed
    # a refusal our Lambda gives is said in words, naming its setting
    assert wrong["ok"] is False and wrong["field"] == "offload_auth_token"
    assert wrong["error"] == "the endpoint refused the authentication token"
