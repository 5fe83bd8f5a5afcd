"""Canary secrets saved through the settings forms never come back out: not
in any HTML page, JSON answer or CSV the flow produces, not in a log line
(captured at DEBUG for the whole flow), not in the audit log, and not in
Redis after the connection-test and test-email jobs ran (RQ job hashes
decompressed and searched too).

The flow is real: connection tests against moto (STS, SES), a scripted
Cloudflare API over HTTP, and an SMTP server that requires the canary
password; a job is sent through that SMTP server by a real worker.
"""
from __future__ import annotations

import json
import logging
import zlib

import pytest
from sqlalchemy import select

from core import companies
from core.db import db
from core.models import AuditLog, Company
from core.queue import connection
from tests.support.app import csrf_from, run_worker_burst
from tests.support.servers import SmtpSink, StubHttpServer

AWS_KEY_ID = "AKIAcanaryKEYID00042"
AWS_SECRET = "canary-secret-XYZ-aws-7d1f0c"
SMTP_PASSWORD = "canary-smtp-pass-5b2e9a"
CF_TOKEN = "canary-cloudflare-token-3c8e"
MOODLE_URL = "postgresql://moodle:canary-db-pass-91aa@db.example.test/moodle"
CANARIES = (AWS_KEY_ID, AWS_SECRET, SMTP_PASSWORD, CF_TOKEN, "canary-db-pass-91aa")
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


def cloudflare_api(request):
    """Cloudflare's v4 token-verify and queue answers, as the real API shapes them."""
    if request.path.endswith("/tokens/verify"):
        return 200, {}, {"success": True, "errors": [], "result": {"id": "tok-1", "status": "active"}}
    if "/queues/" in request.path:
        return 200, {}, {"success": True, "errors": [], "result": {"queue_id": "q-1", "queue_name": "batches",
                                                                     "consumers": [{"service": "w"}]}}
    return 404, {}, {"success": False, "errors": [{"code": 7003, "message": "no route"}]}


class Collected:
    """Everything the flow showed a user."""

    def __init__(self, client):
        self.client = client
        self.bodies: list[tuple[str, str]] = []

    def get(self, url, **kw):
        resp = self.client.get(url, **kw)
        self.bodies.append((url, resp.get_data(as_text=True)))
        return resp

    def post(self, url, **kw):
        resp = self.client.post(url, **kw)
        self.bodies.append((url, resp.get_data(as_text=True)))
        return resp

    def form(self, url, action, **data):
        page = self.get(url).get_data(as_text=True)
        return self.post(action, data={"csrf_token": csrf_from(page), **data})


def redis_dump() -> bytes:
    """Every key and value in Redis, RQ's zlib-compressed job data inflated."""
    conn, out = connection(), []
    for key in conn.scan_iter("*"):
        kind = conn.type(key)
        out.append(key)
        if kind == b"string":
            values = [conn.get(key)]
        elif kind == b"hash":
            values = [v for pair in conn.hgetall(key).items() for v in pair]
        elif kind == b"list":
            values = conn.lrange(key, 0, -1)
        elif kind == b"set":
            values = list(conn.smembers(key))
        elif kind == b"zset":
            values = [m for m, _ in conn.zrange(key, 0, -1, withscores=True)]
        else:
            values = []
        for value in values:
            out.append(value)
            try:
                out.append(zlib.decompress(value))
            except zlib.error:
                pass
    return b"\n".join(v if isinstance(v, bytes) else str(v).encode() for v in out)


def test_canary_secrets_never_leave_the_settings_form(app, client, auth, company, make_user, moto_server, caplog):
    caplog.set_level(logging.DEBUG)
    make_user("manager@acme.test", company_id=company.id)
    auth.login("manager@acme.test", "correct horse battery")
    seen = Collected(client)
    page, save = f"/admin/settings/{company.id}/", f"/admin/settings/{company.id}/save"
    checks: list[dict] = []

    with SmtpSink(users={"mailer": SMTP_PASSWORD}, auth_require_tls=False) as sink, \
            StubHttpServer(cloudflare_api) as cloudflare:
        # 1. every secret through its form
        assert seen.form(page, save, section="aws", aws_access_key=AWS_KEY_ID, aws_secret_key=AWS_SECRET,
                         aws_region="us-east-1", aws_endpoint_url=moto_server.url).status_code == 302
        assert seen.form(page, save, section="smtp", smtp_host="127.0.0.1", smtp_port=str(sink.port),
                         smtp_username="mailer", smtp_password=SMTP_PASSWORD, smtp_tls="none").status_code == 302
        assert seen.form(page, save, section="cloudflare", cloudflare_api_token=CF_TOKEN,
                         cloudflare_account_id="acc-1", cloudflare_queue_id="q-1",
                         cloudflare_api_base=cloudflare.url).status_code == 302
        assert seen.form(page, save, section="advanced", uncertain_policy="resend").status_code == 302
        # the LMS connection is the admins' (and the CLI's): a manager's save is refused
        assert seen.form(page, save, section="lms", lms_url=MOODLE_URL).status_code == 403
        companies.configure(db.session.get(Company, company.id), {"lms_url": MOODLE_URL})
        db.session.commit()
        # a rejected save redirects to the page, which shows the other values: still nothing secret
        rejected = seen.form(page, save, section="smtp", smtp_host="127.0.0.1", smtp_port="nope",
                             smtp_password="", smtp_tls="none")
        assert rejected.status_code == 303
        assert "Not saved" in seen.get(rejected.headers["Location"]).get_data(as_text=True)
        settings = db.session.get(Company, company.id).settings
        assert (settings.get_setting("aws_secret_key"), settings.get_setting("smtp_password")) == \
            (AWS_SECRET, SMTP_PASSWORD)

        # 2. connection tests: AWS direct (moto) with the SMTP fallback, then Cloudflare offload
        for section, fields in (("general", {"provider": "aws", "mode": "direct", "enabled": "1",
                                             "sender": "noreply@acme.test"}),
                                ("general", {"provider": "cloudflare", "mode": "offload", "enabled": "1",
                                             "sender": "noreply@acme.test"})):
            assert seen.form(page, save, section=section, **fields).status_code == 302
            html = seen.get(page).get_data(as_text=True)
            started = seen.post(f"/admin/settings/{company.id}/test-connection", data={"csrf_token": csrf_from(html)},
                                headers={"Accept": "application/json"}).get_json()
            run_worker_burst(app)
            checks.append(seen.get(started["result_url"]).get_json())
        # a test email through the SMTP server (provider smtp), and a real job
        assert seen.form(page, save, section="general", provider="smtp", mode="direct", enabled="1",
                         sender="noreply@acme.test").status_code == 302
        html = seen.get(page).get_data(as_text=True)
        started = seen.post(f"/admin/settings/{company.id}/test-email", data={"csrf_token": csrf_from(html),
                                                                                 "to": "ops@example.com"},
                            headers={"Accept": "application/json"}).get_json()
        job = client.post("/api/v1/jobs", headers=company.auth, json={
            "type": "csv_import", "subject": "Hi", "body_text": "Hi {{ firstname }}",
            "recipients": [{"email": f"u{i}@example.com", "data": {"firstname": "U"}} for i in range(5)]})
        run_worker_burst(app)
        email = seen.get(started["result_url"]).get_json()
        assert email["ok"] is True and len(sink.messages) == 6

    aws, cf = checks
    ses = aws["checks"][0]
    # moto answers STS but has no SES GetAccount: not SES's answer, so the test fails, naming the endpoint
    assert ses["name"] == "Amazon SES" and ses["ok"] is False and ses["field"] == "aws_endpoint_url"
    assert aws["checks"][1]["name"] == "SMTP fallback" and aws["checks"][1]["ok"] is True
    assert [c["name"] for c in cf["checks"]] == ["Cloudflare", "Cloudflare Queue", "SMTP fallback",
                                            "Certificate storage: this machine's disk"]
    assert cf["ok"] is True
    assert cloudflare.requests[0].headers["Authorization"] == f"Bearer {CF_TOKEN}"  # really used

    # 3. every page, JSON answer and CSV the user can reach afterwards
    job_id = job.get_json()["id"]
    for url in ("/admin/", page, "/admin/jobs/", "/admin/jobs/data.json", f"/admin/jobs/{job_id}/",
                f"/admin/jobs/{job_id}/data.json", f"/admin/jobs/{job_id}/chart.json",
                f"/admin/jobs/{job_id}/recipients.csv", f"/admin/jobs/{job_id}/errors.csv", "/admin/audit/",
                "/admin/audit/export/csv/", "/admin/templates/", "/admin/settings/"):
        assert seen.get(url, follow_redirects=True).status_code == 200, url
    for url, body in seen.bodies:
        leaked = [c for c in CANARIES if c in body]
        assert not leaked, f"{url} shows {leaked}"

    # 4. logs
    assert caplog.records, "logging was captured"
    for record in caplog.records:
        line = record.getMessage()
        leaked = [c for c in CANARIES if c in line]  # botocore's wire logs are kept above DEBUG
        assert not leaked, f"log {record.name}: {leaked}"

    # 5. audit log
    entries = db.session.execute(select(AuditLog)).scalars().all()
    text = json.dumps([[e.actor, e.action, e.object_type, e.object_id, e.details, e.ip] for e in entries])
    assert "settings_changed" in text and not [c for c in CANARIES if c in text]
    changed = [e.details for e in entries if e.action == "settings_changed"]
    assert {"fields": ["aws_access_key", "aws_secret_key", "aws_region", "aws_endpoint_url"],
            "section": "aws"} in changed

    # 6. Redis, after the jobs ran
    dump = redis_dump()
    assert b"offload:check:" in dump and b"run_connection_test" in dump
    assert not [c for c in CANARIES if c.encode() in dump]
