"""Medium 8: unauthenticated bodies are read only up to a cap, before anything is checked,
chunked or not; the bare callback path caps at a few KB before trying any secret; JSON
nested deeper than a limit is a 400; the app has a MAX_CONTENT_LENGTH."""
from __future__ import annotations

import io
import json

import pytest

from dashboard import callbacks
from dashboard.bodies import MAX_JSON_DEPTH
from tests.support.servers import free_port  # noqa: F401


class Endless(io.RawIOBase):
    """A body stream of ``total`` bytes that counts how much the app read."""

    def __init__(self, total: int, prefix: bytes = b'{"job_id": 1, "x": "'):
        self.total, self.given, self.prefix = total, 0, prefix

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=0):  # the test client rewinds before the request: at the start, a no-op
        return 0

    def tell(self):
        return 0

    def readinto(self, buffer):
        if self.given >= self.total:
            return 0
        n = min(len(buffer), self.total - self.given)
        chunk = (self.prefix + b"a" * n)[:n] if self.given == 0 else b"a" * n
        buffer[:n] = chunk
        self.given += n
        return n


def chunked(client, path: str, total: int, **kwargs):
    stream = Endless(total)
    resp = client.post(path, input_stream=stream, headers={"Transfer-Encoding": "chunked",
                                                           "Content-Type": "application/json", **kwargs},
                       environ_overrides={"wsgi.input_terminated": True})
    return resp, stream


def test_the_app_has_a_max_content_length(app):
    assert app.config["MAX_CONTENT_LENGTH"] and app.config["MAX_CONTENT_LENGTH"] <= 256 * 1024 * 1024


def test_the_bare_callback_path_caps_the_body_before_any_secret(app, client, make_company, monkeypatch):
    for i in range(5):
        make_company(f"Tenant {i}")
    tried = []
    monkeypatch.setattr(callbacks.webhooks, "verify", lambda *a, **k: tried.append(1))
    headers = {"webhook-id": "msg_1", "webhook-timestamp": "1", "webhook-signature": "v1,xx"}
    resp = client.post("/callbacks/v1/batches", data=b'{"job_id": 1, "p": "' + b"a" * (8 * 1024 * 1024) + b'"}',
                       headers=headers, content_type="application/json")
    assert resp.status_code == 413 and tried == []
    resp, stream = chunked(client, "/callbacks/v1/batches", 8 * 1024 * 1024, **headers)
    assert resp.status_code == 413 and tried == []
    assert stream.given <= callbacks.BARE_MAX_BODY_BYTES + 128 * 1024  # never read whole


@pytest.mark.parametrize("path_of", [
    lambda c: f"/callbacks/v1/bounces/cloudflare/{c.id}",
    lambda c: f"/callbacks/v1/bounces/sns/{c.id}",
    lambda c: f"/callbacks/v1/batches?company={c.id}",
])
def test_chunked_bodies_to_public_endpoints_are_cut_off_at_the_cap(client, company, path_of):
    resp, stream = chunked(client, path_of(company), 300 * 1024 * 1024)
    assert resp.status_code == 413
    assert stream.given < 10 * 1024 * 1024  # not 300 MB


def test_the_events_endpoint_caps_chunked_bodies_too(client, company):
    resp, stream = chunked(client, "/api/v1/events", 50 * 1024 * 1024, Authorization=f"Bearer {company.token}")
    assert resp.status_code == 413 and stream.given < 1024 * 1024


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/api/v1/events"])
def test_deeply_nested_json_is_a_400(client, company, path):
    body = "[" * 30_000 + "]" * 30_000
    resp = client.post(path, data=body, headers=company.auth, content_type="application/json")
    assert resp.status_code == 400
    body = json.dumps({"type": "csv_import", "subject": "x", "body_text": "x", "recipients": [
        {"email": "a@acme.test", "data": {"n": json.loads("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1))}}]})
    assert client.post(path, data=body, headers=company.auth, content_type="application/json").status_code == 400


def test_deep_json_on_a_callback_is_refused_not_a_500(client, company):
    body = b"[" * 50_000 + b"]" * 50_000
    resp = client.post("/callbacks/v1/batches", data=body, content_type="application/json",
                       headers={"webhook-id": "m", "webhook-timestamp": "1", "webhook-signature": "v1,x"})
    assert resp.status_code in (401, 413)
