"""Issue 26, Low 9: API robustness.

The review sent 300 API requests without a 429, got a 500 on PostgreSQL for
``?page=99999999999999999999`` and ``?status=%00``, and had ``/login`` parse a
60 MB form body. Now each token has a rate limit with ``Retry-After``
(``OFFLOAD_API_RATE_PER_MIN``), bad query parameters are a 400 with the
reason, and form bodies are capped (``OFFLOAD_MAX_FORM_BYTES``) before anything
parses them. (HSTS and the CSP without inline scripts: tests/dashboard/test_pages.py.)
This file also runs in the PostgreSQL pass (Makefile ``PG_TESTS``).
"""
from __future__ import annotations

import io

import pytest

from core.models import sha256_hex
from tests.support.attack import people, submit


def test_each_token_has_a_rate_limit_with_retry_after(app, client, make_company, set_settings):
    set_settings(api_rate_per_min=5)
    acme, other = make_company("Acme"), make_company("Other")
    codes = [client.get("/api/v1/jobs", headers=acme.auth).status_code for _ in range(7)]
    assert codes == [200] * 5 + [429, 429], codes
    resp = client.get("/api/v1/jobs", headers=acme.auth)
    assert resp.status_code == 429 and resp.get_json()["error"] == "rate_limited"
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    # the events endpoint counts against the same token; another company's token has its own budget
    assert client.post("/api/v1/events", headers=acme.auth, json={"event": "user_created"}).status_code == 429
    assert client.get("/api/v1/jobs", headers=other.auth).status_code == 200
    # a stranger's guesses spend their own budget, never the company's
    assert client.get("/api/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401


@pytest.mark.parametrize("query", ["page=99999999999999999999", "page=0", "page=-1", "page=%C2%B2", "page=1e3",
                                   "status=%00", "status=queued%00", "status=nonsense", "type=%00"])
def test_bad_query_parameters_are_a_400(app, client, company, query):
    resp = client.get(f"/api/v1/jobs?{query}", headers=company.auth)
    assert resp.status_code == 400, (query, resp.status_code)


def test_bad_query_parameters_on_a_jobs_recipients_are_a_400(app, client, company):
    job_id = submit(client, company, people(1))
    for query in ("page=99999999999999999999", "status=%00", "page=%00"):
        resp = client.get(f"/api/v1/jobs/{job_id}/recipients?{query}", headers=company.auth)
        assert resp.status_code == 400, (query, resp.status_code)
    assert client.get(f"/api/v1/jobs/{job_id}/recipients?page=1", headers=company.auth).status_code == 200


def test_a_nul_in_any_query_parameter_is_a_400_everywhere(client):
    for url in ("/login?next=%00", "/admin/?x=%00", "/verify?code=a%00b"):
        assert client.get(url).status_code == 400, url


class CountingBody(io.RawIOBase):
    """A request body of ``size`` bytes that counts what the server read of it."""

    def __init__(self, size: int):
        self.size, self.pos, self.read_bytes = size, 0, 0

    def readable(self):
        return True

    def seekable(self):  # the test client measures the body by seeking to its end
        return True

    def seek(self, offset, whence=0):
        self.pos = {0: offset, 1: self.pos + offset, 2: self.size + offset}[whence]
        return self.pos

    def tell(self):
        return self.pos

    def readinto(self, buffer):
        n = max(0, min(len(buffer), self.size - self.pos))
        buffer[:n] = b"a" * n
        self.pos += n
        self.read_bytes += n
        return n


SIXTY_MB = 60 * 1024 * 1024


def test_a_60_mb_login_form_is_a_413_without_reading_it(app, client):
    body = CountingBody(SIXTY_MB)
    resp = client.post("/login", input_stream=body, content_type="application/x-www-form-urlencoded",
                       headers={"Content-Length": str(SIXTY_MB)})
    assert resp.status_code == 413 and body.read_bytes == 0


def test_a_chunked_login_form_is_read_no_further_than_the_cap(app, client, set_settings):
    set_settings(max_form_bytes=64 * 1024)
    body = CountingBody(SIXTY_MB)
    resp = client.post("/login", input_stream=body, content_type="application/x-www-form-urlencoded",
                       environ_overrides={"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True})
    # werkzeug stops at the cap and parses nothing: the login answers that the form had no CSRF token
    assert resp.status_code in (400, 413)
    assert body.read_bytes <= 64 * 1024 + 64 * 1024, body.read_bytes  # the cap and at most one buffer


def test_the_rate_limit_key_is_the_token_hash_not_the_token(app, client, company, set_settings):
    """Nothing of the token itself is written to Redis."""
    from core.queue import connection
    client.get("/api/v1/jobs", headers=company.auth)
    keys = [k.decode() for k in connection().keys("offload:api-rate:*")]
    token = company.auth["Authorization"].split()[1]
    assert keys and all(token not in k for k in keys) and sha256_hex(token)[:32] in keys[0]
