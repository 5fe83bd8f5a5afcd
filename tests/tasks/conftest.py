"""Fixtures for the sending pipeline: companies wired to real servers."""
from __future__ import annotations

import importlib
import sys
import threading
import uuid

import boto3
import pytest
from werkzeug.serving import make_server

from tests.support.offload import (
    AWS_DIR,
    CF_SECRET,
    CF_TOKEN,
    REGION,
    Lambda,
)
from tests.support.servers import Miniflare, StubHttpServer, free_port


@pytest.fixture
def live_url(app, set_settings):
    """The app served over real HTTP in a thread; callbacks in the messages point here."""
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    set_settings(public_url=url)
    yield url
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def lambda_module():
    """lambda_handler imported as the Lambda runtime does: its folder on sys.path."""
    sys.path.insert(0, str(AWS_DIR))
    try:
        yield importlib.import_module("lambda_handler")
    finally:
        sys.path.remove(str(AWS_DIR))
        sys.modules.pop("lambda_handler", None)
        sys.modules.pop("webhooks", None)


@pytest.fixture
def sqs(moto_server):
    return boto3.client("sqs", region_name=REGION, endpoint_url=moto_server.url,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def queue_url(sqs):
    return sqs.create_queue(QueueName=f"offload-{uuid.uuid4().hex[:8]}",
                            Attributes={"VisibilityTimeout": "300"})["QueueUrl"]


@pytest.fixture
def marker_bucket(moto_server):
    """The company's S3 bucket where its Lambda records what it sent."""
    name = f"markers-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", region_name=REGION, endpoint_url=moto_server.url, aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=name)
    return name


@pytest.fixture
def aws_lambda(lambda_module, sqs, queue_url, ses, moto_server, marker_bucket, monkeypatch):
    for name, value in {"AWS_ENDPOINT_URL_SESV2": ses.url, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_ENDPOINT_URL_S3": moto_server.url, "MARKER_BUCKET": marker_bucket,
                        "ALLOWED_CALLBACK_PREFIX": "http://127.0.0.1:",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
                        "CALLBACK_RETRY_DELAY_S": "0.01", "CALLBACK_TIMEOUT_S": "10"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    lambda_module.ses_client.cache_clear()
    lambda_module.s3_client.cache_clear()
    yield Lambda(lambda_module, sqs, queue_url)
    lambda_module.ses_client.cache_clear()
    lambda_module.s3_client.cache_clear()


@pytest.fixture
def offload_company(make_company, moto_server, queue_url, aws_lambda, monkeypatch):
    """A company in offload mode on the moto queue; the Lambda holds its callback secret."""
    company = make_company(provider="aws", mode="offload", sender="noreply@acme.test", aws_region=REGION,
                           aws_endpoint_url=moto_server.url, aws_access_key="testing", aws_secret_key="testing",
                           sqs_queue_url=queue_url)
    monkeypatch.setenv("CALLBACK_SECRET", company.secret)
    return company


@pytest.fixture(scope="module")
def miniflare():
    with Miniflare(secrets={"CALLBACK_SECRET": CF_SECRET},
                   overrides={"RETRY_BASE_DELAY_S": "0", "CALLBACK_ATTEMPTS": "2",
                              "ALLOWED_CALLBACK_PREFIX": "http://127.0.0.1:"}) as mf:
        yield mf


@pytest.fixture
def cloudflare_api(miniflare):
    """The Queues REST API's batch-send call, forwarding into miniflare's queue."""

    def respond(request):
        expected = "/client/v4/accounts/acct-1/queues/queue-1/messages/batch"
        if request.method != "POST" or request.path != expected:
            return 404, {}, {"success": False, "errors": [{"code": 7003, "message": "No route"}]}
        if request.headers.get("Authorization") != f"Bearer {CF_TOKEN}":
            return 401, {}, {"success": False, "errors": [{"code": 10000, "message": "Authentication error"}]}
        for message in request.json()["messages"]:
            assert message["content_type"] == "json"
            miniflare.enqueue(message["body"])
        return 200, {}, {"success": True, "errors": [], "messages": [], "result": {}}

    with StubHttpServer(respond) as api:
        yield api
