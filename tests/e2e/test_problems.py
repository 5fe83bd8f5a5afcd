"""Issue 25's problems, one browser test each (``test_problem_<n>_...``), and the
manager's whole journey in Chromium.

Each problem test drives the page the newcomer's review complained about and
asserts what a person sees there now; each failed on the code before the fixes.
Every test saves screenshots of what it asserted on in
``tests/artifacts/problems/`` (git-ignored). The module shares one app server
(werkzeug on a thread), one RQ worker process and one Chromium: each test makes
its own companies and users and signs in in a fresh browser context.
"""
from __future__ import annotations

import csv
import email
import email.policy
import io
import json
import os
import re
import threading
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import expect
from sqlalchemy import update

from core import companies, labels
from core.db import db
from core.models import Job, Suppression, Template, utcnow
from core.queue import connection
from dashboard.outbox import OutboxSink
from service import create_app
from tests.support.app import TEST_SETTINGS, empty_tables
from tests.support.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, worker_process
from tests.support.faulty_proxy import FaultyProxy
from tests.support.pages import raw_keys, read
from tests.support.servers import SesLocal, SmtpSink, free_port

pytestmark = [pytest.mark.browser]

PASSWORD = "correct horse battery"
DESKTOP = {"width": 1366, "height": 900}
WAIT_MS = 60_000
SHOTS = ARTIFACTS / "problems"
#: what the SES emulator's GetAccount answers (an account out of the sandbox)
SES_ACCOUNT = {
    "DedicatedIpAutoWarmupEnabled": False, "EnforcementStatus": "HEALTHY", "ProductionAccessEnabled": True,
    "SendingEnabled": True, "SendQuota": {"Max24HourSend": 50000, "MaxSendRate": 50, "SentLast24Hours": 0},
    "SuppressionAttributes": {"SuppressedReasons": []},
    "Details": {"AdditionalContactEmailAddresses": [], "ContactLanguage": "EN", "MailType": "TRANSACTIONAL",
                "ReviewDetails": {"CaseId": "1", "Status": "GRANTED"}, "UseCaseDescription": "lms",
                "WebsiteURL": "https://lms.example"},
}
WELCOME = {"subject": "Welcome {{ firstname }}", "body_text": "Hi {{ firstname }}, your password is {{ password }}",
           "body_html": "<p>Hi {{ firstname }}, your password is <b>{{ password }}</b></p>"}


# -- one app server, one worker, one browser for the module ----------------------------------------------


@dataclass
class Web:
    app: object
    base: str
    instance: Path


@pytest.fixture(scope="module")
def web(migrated, redis_server, tmp_path_factory):
    """The app on the run's database and Redis, served on a free loopback port for the whole module."""
    from werkzeug.serving import make_server

    app = create_app({"database_url": migrated, "redis_url": redis_server, **TEST_SETTINGS})
    instance = tmp_path_factory.mktemp("problems-instance")
    app.instance_path = str(instance)

    @app.teardown_request
    def end_session(exc):
        db.session.rollback()

    with app.app_context():
        empty_tables(db)
        connection().flushdb()
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, name="problems-server", daemon=True)
        thread.start()
        try:
            yield Web(app, f"http://127.0.0.1:{server.server_port}", instance)
        finally:
            server.shutdown()
            server.server_close()
            db.session.remove()
            db.engine.dispose()


@pytest.fixture(scope="module")
def worker(web, tmp_path_factory):
    """``flask --app wsgi worker`` (RQ, with its scheduler) on the module's database and Redis."""
    with worker_process(tmp_path_factory.mktemp("problems-worker") / "worker.log") as proc:
        yield proc


@pytest.fixture(scope="module")
def chromium():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def smtp():
    with SmtpSink() as sink:
        yield sink


@pytest.fixture(scope="module")
def ses():
    """aws-ses-v2-local whose GetAccount answers as SES does."""
    with SesLocal(account=SES_ACCOUNT) as server:
        yield server


class NotFound:
    """An HTTP server that answers 404 (an HTML page) to every request."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def answer(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = b"<html><body><h1>Not Found</h1></body></html>"
                self.send_response(404)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_HEAD = answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def shot(request):
    """``shot(page, "step")`` saves a full-page screenshot as ``<test>-<step>.png``."""
    SHOTS.mkdir(parents=True, exist_ok=True)

    def take(page, step: str, locator=None) -> Path:
        path = SHOTS / f"{request.node.name}-{step}.png"
        (locator or page).screenshot(path=str(path), **({} if locator else {"full_page": True}))
        return path

    return take


@pytest.fixture
def open_page(web, chromium):
    """``open_page(email)``: a new browser context signed in as ``email``; closed after the test."""
    contexts = []

    def sign_in(email: str):
        context = chromium.new_context(viewport=DESKTOP, accept_downloads=True)
        contexts.append(context)
        page = context.new_page()
        page.goto(f"{web.base}/login")
        page.fill("input[name=email]", email)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r".*/admin/$"))
        return page

    yield sign_in
    for context in contexts:
        context.close()


def new_company(name: str, **values):
    company, token, _ = companies.create_company(f"{name} {uuid.uuid4().hex[:4]}")
    if values:
        companies.configure(company, {k: str(v) for k, v in values.items()})
    db.session.commit()
    return company, token


def new_user(role: str = "manager", company_id: int | None = None) -> str:
    email = f"{role}-{uuid.uuid4().hex[:6]}@people.test"
    companies.create_user(email, PASSWORD, role, company_id)
    db.session.commit()
    return email


def new_template(company_id: int, job_type: str, name: str, **parts) -> Template:
    tpl = Template(company_id=company_id, name=name, job_type=job_type, **{**WELCOME, **parts})
    db.session.add(tpl)
    db.session.commit()
    return tpl


def post_job(base: str, token: str, body: dict) -> dict:
    request = urllib.request.Request(f"{base}/api/v1/jobs", data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 202
        return json.load(resp)


def smtp_settings(sink) -> dict:
    return {"provider": "smtp", "sender": "noreply@school.test", "smtp_host": "127.0.0.1",
            "smtp_port": str(sink.port), "smtp_tls": "none"}


#: the label tables of values a page shows as a cell, a badge or an option (the others hold codes that
#: raw_keys finds by their shape: snake_case, exception names)
VALUE_KINDS = ("job_status", "recipient_status", "batch_status", "job_type", "priority", "source", "mode", "role",
               "uncertain_policy", "smtp_tls", "recipient_error", "suppression_list")


def no_raw_keys(page) -> None:
    """What the page shows has no key (tests/support/pages.py), and no text that is exactly a key of the
    label table (core.labels: a status, type, source, code... as stored)."""
    html = page.content()
    assert raw_keys(html) == [], page.url
    keys = {str(k) for kind in VALUE_KINDS for k, words in labels.TABLES[kind].items() if str(k) != words}
    shown = {text for where, text in read(html).texts if where in ("text", "badge", "option")}
    assert not shown & keys, (page.url, shown & keys)


def write_outbox(web, count: int, prefix: str = "pupil") -> Path:
    """``count`` messages as the demo's sink writes them: ``<unix ms>-<random>.eml``, the envelope first."""
    folder = web.instance / "outbox"
    folder.mkdir(exist_ok=True)
    for i in range(count):
        (folder / f"{1700000000000 + i:013d}-{uuid.uuid4().hex[:8]}.eml").write_bytes(
            f"X-Outbox-From: lms@school.test\r\nX-Outbox-To: {prefix}{i:02d}@school.test\r\n"
            f"Subject: {'Welcome' if i % 2 else 'Reminder'} {i}\r\nFrom: lms@school.test\r\n\r\nHi\r\n".encode())
    return folder


# -- the problems that are fixed ------------------------------------------------------------------------


def api_error(base: str, token: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{base}/api/v1/jobs", data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_problem_1_no_password_mail_with_blanks(web, open_page, shot, smtp, worker):
    """A recipient lacking a field the mail uses is never sent with a blank: the API answers 400 naming the
    field and the recipients (or, with on_missing fail_recipient, fails that one with the reason in words);
    the preview says which field the sample lacks; a CSV row leaving it blank is named and not sent."""
    company, token = new_company("Blanks Co", **smtp_settings(smtp))
    tpl = new_template(company.id, "csv_import", "welcome")
    status, answer = api_error(web.base, token, {"type": "csv_import", "template": "welcome", "recipients": [
        {"email": "full@example.com", "data": {"firstname": "Ann", "password": "Pw-1"}},
        {"email": "bare@example.com"}]})
    assert status == 400 and answer["error"] == "missing_fields", answer
    assert "password" in answer["details"]["fields"] and answer["details"]["count"] == 1
    assert [r["email"] for r in answer["details"]["recipients"]] == ["bare@example.com"]

    job = post_job(web.base, token, {"type": "csv_import", "template": "welcome", "on_missing": "fail_recipient",
                                     "recipients": [{"email": "full@example.com",
                                                     "data": {"firstname": "Ann", "password": "Pw-1"}},
                                                    {"email": "bare@example.com", "data": {"firstname": "Bo"}}]})
    page = open_page(new_user("manager", company.id))
    page.goto(f"{web.base}/admin/jobs/{job['id']}/")
    expect(page.locator("#job-updated")).to_have_text("Finished", timeout=WAIT_MS)
    page.reload()
    failed = page.locator("#failed-table")
    expect(failed).to_contain_text("bare@example.com")
    expect(failed).to_contain_text("Not sent: its data lacks fields the mail needs")
    expect(failed).to_contain_text("password")
    no_raw_keys(page)
    shot(page, "job")
    to = {r: m for m in smtp.messages for r in m.rcpt_tos}
    assert "bare@example.com" not in to  # nothing sent with a blank
    assert "your password is Pw-1" in to["full@example.com"].data.decode()

    page.goto(f"{web.base}/admin/templates/preview/{tpl.id}/")
    page.fill("textarea[name=sample]", '{"firstname": "Ann"}')
    page.click("#preview-form button[type=submit], form button:has-text('Preview')")
    expect(page.locator("#preview-error")).to_contain_text("The sample data has no password")
    no_raw_keys(page)
    shot(page, "preview")

    page.goto(f"{web.base}/admin/campaigns/import")
    page.set_input_files("#file", files=[{"name": "people.csv", "mimeType": "text/csv", "buffer":
                                          b"email,firstname,password\nann@example.com,Ann,Pw-1\nbo@example.com,Bo,\n"}])
    page.click("button:has-text('Upload and map columns')")
    expect(page.locator("#lacking-rows")).to_contain_text("bo@example.com: no password")
    expect(page.locator(".good-count")).to_have_text("1")
    no_raw_keys(page)
    shot(page, "import-review")
    page.goto(f"{web.base}/admin/campaigns/import")
    page.set_input_files("#file", files=[{"name": "nopw.csv", "mimeType": "text/csv", "buffer":
                                          b"email,firstname\nann@example.com,Ann\n"}])
    page.click("button:has-text('Upload and map columns')")
    expect(page.locator("#unmapped-fields")).to_contain_text("password")
    expect(page.locator("button:has-text('Send')")).to_have_count(0)
    shot(page, "import-unmapped")


def test_problem_2_connection_test_fails_when_the_provider_did_not_answer(web, open_page, shot, ses, worker):
    """"Test connection" with the SES endpoint at a server that answers 404 to everything fails, in words,
    with a link to the field to fix; at SES (the emulator, whose GetAccount answers) it passes."""
    with NotFound() as nowhere:
        company, _ = new_company("Checks Co", provider="aws", sender="noreply@checks.test",
                                 aws_access_key="AKIACHECKS0001", aws_secret_key="checks-secret",
                                 aws_region="us-east-1", aws_endpoint_url=nowhere.url)
        page = open_page(new_user("manager", company.id))
        page.goto(f"{web.base}/admin/settings/")
        page.click("#test-connection")
        result = page.locator("#check-result")
        expect(result.locator(".check-bad").first).to_be_visible(timeout=WAIT_MS)
        expect(result).to_contain_text("Connection test found problems.")
        expect(result).not_to_contain_text("passed")
        assert "✗ Amazon SES" in result.inner_text() and "Not Found" not in result.inner_text()  # no remote body
        fix = result.locator("a.check-fix").first
        expect(fix).to_have_text("Fix: Endpoint URL")
        no_raw_keys(page)
        shot(page, "404-fails", locator=page.locator("#checks"))
        fix.click()
        expect(page.locator("#f-aws_endpoint_url")).to_be_focused()
        expect(page.locator("#f-aws_endpoint_url")).to_be_in_viewport()

    companies.configure(company, {"aws_endpoint_url": ses.url})
    db.session.commit()
    page.goto(f"{web.base}/admin/settings/")
    page.click("#test-connection")
    expect(result.locator(".check-ok, .check-bad").first).to_be_visible(timeout=WAIT_MS)
    expect(result).to_contain_text("Connection test passed.")
    expect(result).to_contain_text("✓ Amazon SES")
    shot(page, "ses-passes", locator=page.locator("#checks"))


def outbox_messages(folder: Path) -> dict[str, email.message.Message]:
    """The Outbox's messages by recipient, parsed from their bytes as a mailbox provider reads them (no
    decoding of header fields: compat32 gives each field as it is on the wire)."""
    found = {}
    for path in sorted(folder.glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.compat32)
        found[message["X-Outbox-To"]] = message
    return found


def body_text(message, subtype: str) -> str:
    for part in message.walk():
        if part.get_content_type() == f"text/{subtype}":
            return part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8")
    return ""


def test_problem_3_one_click_unsubscribe(web, open_page, shot, worker):
    """Campaign mail carries List-Unsubscribe as a plain <URI> and List-Unsubscribe-Post (RFC 8058), and a
    visible unsubscribe link in its text and HTML; the one-click POST unsubscribes; transactional mail
    has neither."""
    sink = OutboxSink(str(web.instance)).start()
    try:
        folder = Path(sink.path)
        for old in folder.glob("*.eml"):
            old.unlink()
        company, token = new_company("Unsub Co", provider="smtp", sender="noreply@unsub.test", smtp_host="127.0.0.1",
                                     smtp_port=str(sink.port), smtp_tls="none")
        bulk = post_job(web.base, token, {"type": "reengagement", "subject": "We miss you, {{ firstname }}",
                                          "body_text": "Hi {{ firstname }}, come back to your course.",
                                          "body_html": "<p>Hi {{ firstname }}, come back to your course.</p>",
                                          "recipients": [{"email": "back@example.com", "data": {"firstname": "Bo"}}]})
        welcome = post_job(web.base, token, {"type": "csv_import", **WELCOME, "recipients": [
            {"email": "new@example.com", "data": {"firstname": "Ann", "password": "Pw-7"}}]})
        page = open_page(new_user("manager", company.id))
        for job in (bulk, welcome):
            page.goto(f"{web.base}/admin/jobs/{job['id']}/")
            expect(page.locator("#job-updated")).to_have_text("Finished", timeout=WAIT_MS)
        mail = outbox_messages(folder)
    finally:
        sink.stop()

    campaign = mail["back@example.com"]
    header = campaign["List-Unsubscribe"]
    assert "=?" not in header and re.fullmatch(r"<https?://[^<>\s]+>(, ?<mailto:[^<>\s]+>)?", header.strip()), header
    assert campaign["List-Unsubscribe-Post"].strip() == "List-Unsubscribe=One-Click"
    url = re.match(r"<(https?://[^>]+)>", header.strip()).group(1)
    assert url in body_text(campaign, "plain")  # a visible link in the text
    assert re.search(r'<a [^>]*href="' + re.escape(url) + '"', body_text(campaign, "html"))  # and in the HTML

    transactional = mail["new@example.com"]
    assert transactional["List-Unsubscribe"] is None and transactional["List-Unsubscribe-Post"] is None
    assert "unsubscribe" not in (body_text(transactional, "plain") + body_text(transactional, "html")).lower()

    admin = open_page(new_user("admin"))
    admin.goto(f"{web.base}/admin/outbox/")
    admin.click("text=We miss you, Bo")
    frame = admin.frame_locator("iframe.outbox-preview")
    expect(frame.locator(f'a[href="{url}"]')).to_be_visible()
    expect(admin.locator(".outbox-text")).to_contain_text(url)
    shot(admin, "campaign-in-the-outbox")

    # the mailbox provider's one-click POST (RFC 8058), at the path the header names
    path = re.sub(r"^https?://[^/]+", "", url)
    request = urllib.request.Request(f"{web.base}{path}", data=b"List-Unsubscribe=One-Click", method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 200
    page.goto(f"{web.base}/admin/suppressions/?q=back%40example.com")
    expect(page.locator("body")).to_contain_text("Unsubscribed: stops bulk and re-engagement mail only")
    shot(page, "unsubscribed")


def test_problem_4_scheduled_jobs_say_when_they_send(web, chromium, shot):
    """A scheduled job shows when it starts in the viewer's timezone (UTC on hover), never an ETA of
    seconds; a paused job's ETA says it waits, and why."""
    company, token = new_company("Later Co", provider="smtp", sender="noreply@later.test", smtp_host="127.0.0.1",
                                 smtp_port=str(free_port()), smtp_tls="none", max_send_rate="5")
    starts = (utcnow() + timedelta(days=2)).replace(hour=3, minute=0, second=0, microsecond=0)
    job = post_job(web.base, token, {"type": "notification", "subject": "Later", "body_text": "x",
                                     "send_at": starts.isoformat() + "Z",
                                     "recipients": [{"email": f"l{i}@school.test"} for i in range(20)]})
    # a job its company's state paused (as the worker pauses one whose company has no sender any more)
    paused = post_job(web.base, token, {"type": "notification", "subject": "Hi", "body_text": "x",
                                        "send_at": "2099-01-01T00:00:00Z", "recipients": [{"email": "p@school.test"}]})
    db.session.execute(update(Job).where(Job.id == paused["id"]).values(
        status="paused", paused_reason="no sender address is configured for the company"))
    db.session.commit()
    manager = new_user("manager", company.id)
    context = chromium.new_context(viewport=DESKTOP, timezone_id="Asia/Tokyo", locale="en-GB")
    try:
        page = context.new_page()
        page.goto(f"{web.base}/login")
        page.fill("input[name=email]", manager)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.goto(f"{web.base}/admin/jobs/{job['id']}/")
        moment = page.locator(".stat-eta time[data-field=starts_at]")
        expect(moment).to_be_visible()
        expect(moment).to_have_attribute("title", starts.strftime("%Y-%m-%d %H:%M UTC"))
        expect(moment).to_contain_text("12:00")  # 03:00 UTC is noon in Tokyo
        expect(moment).to_contain_text((starts + timedelta(hours=9)).strftime("%b"))
        expect(page.locator(".stat-eta [data-field=eta]")).to_have_text("waiting: starts at")
        assert not re.search(r"ETA ~|~\d+s", page.locator("#job-detail").inner_text())
        no_raw_keys(page)
        shot(page, "scheduled")
        page.goto(f"{web.base}/admin/jobs/")
        row = page.locator(f'tr[data-job-id="{job["id"]}"]')
        expect(row.locator("time[data-field=starts_at]")).to_contain_text("12:00")
        expect(row.locator("[data-field=waiting_text]")).to_have_text("scheduled, starts at")
        shot(page, "list")

        page.goto(f"{web.base}/admin/jobs/{paused['id']}/")
        expect(page.locator(".stat-eta [data-field=eta]")).to_have_text("waiting: paused")
        expect(page.locator("#job-detail")).to_contain_text("no sender address")
        shot(page, "paused")
    finally:
        context.close()


def test_problem_5_counts_agree(web, open_page, shot, worker):
    """A job with a send-time bounce, refused and invalid addresses and a suppressed one: the job page's
    Failed is its "Not delivered" list's failed, the job list says the same, and the bounce rate (1 of 19
    handed over: 5.26%) is the same on the job page, Suppressions and the overview, not 0%."""
    refuse = {"gone@example.com": "550 5.1.1 user unknown", "refused@example.com": "554 5.7.1 message refused"}
    with SmtpSink(refuse=refuse) as sink:
        company, token = new_company("Counts Co", **smtp_settings(sink))
        db.session.add(Suppression(company_id=company.id, email="listed@example.com", reason="manual"))
        db.session.commit()
        emails = [f"ok{i:02d}@example.com" for i in range(18)] + [*refuse, "listed@example.com", "not-an-address"]
        job = post_job(web.base, token, {"type": "notification", "subject": "Hello", "body_text": "Hello",
                                         "recipients": [{"email": e} for e in emails]})
        page = open_page(new_user("manager", company.id))
        page.goto(f"{web.base}/admin/jobs/{job['id']}/")
        expect(page.locator("#job-updated")).to_have_text("Finished", timeout=WAIT_MS)
    stat = {f: page.locator(f"#job-detail .stat [data-field={f}]").inner_text()
            for f in ("email_count", "emails_sent", "emails_failed", "emails_bounced", "emails_suppressed")}
    assert stat == {"email_count": "22", "emails_sent": "18", "emails_failed": "2", "emails_bounced": "1",
                    "emails_suppressed": "1"}
    assert page.locator("#failed [data-count=failed]").inner_text() == stat["emails_failed"]
    assert page.locator("#failed [data-count=bounced]").inner_text() == stat["emails_bounced"]
    expect(page.locator("[data-field=bounce_rate]").first).to_have_text("5.26%")
    no_raw_keys(page)
    shot(page, "job")
    page.reload()  # the list of what was not delivered, as the heading counts it
    expect(page.locator("#failed-table tbody tr")).to_have_count(3)
    page.goto(f"{web.base}/admin/jobs/")
    row = page.locator(f'tr[data-job-id="{job["id"]}"]')
    for field, value in stat.items():
        expect(row.locator(f"[data-field={field}]")).to_have_text(value)
    page.goto(f"{web.base}/admin/suppressions/")
    expect(page.locator("[data-field=bounce_rate]").first).to_have_text("5.26%")
    shot(page, "suppressions")
    page.goto(f"{web.base}/admin/")
    expect(page.locator("[data-field=bounce_rate]").first).to_have_text("5.26%")
    totals = {s: page.locator(f".overview-chart [data-total={s}]").inner_text() for s in ("sent", "failed", "bounced")}
    assert totals == {"sent": "18", "failed": "2", "bounced": "1"}
    shot(page, "overview")


def test_problem_6_results_next_to_the_button(web, open_page, shot):
    """"Test LMS connection" (and a section's save) answers inside the LMS section, in view, not at the
    top of the page while the page sits at the section."""
    company, _ = new_company("Results Co", provider="smtp", sender="noreply@results.test",
                             lms_url=f"mysql://moodle:pw@127.0.0.1:{free_port()}/moodle")  # nothing listens there
    page = open_page(new_user("admin"))
    page.goto(f"{web.base}/admin/settings/{company.id}/")
    page.click(".settings-nav a[href='#section-lms']")  # the section's link opens it
    page.click("#test-lms")
    page.wait_for_url(re.compile(r".*#section-lms$"))
    result = page.locator(".alert", has_text="LMS connection")
    expect(result).to_have_count(1)
    expect(page.locator("#section-lms .alert", has_text="LMS connection")).to_have_count(1)  # in the section
    expect(result).to_be_in_viewport()
    expect(page.locator("#test-lms")).to_be_in_viewport()
    no_raw_keys(page)  # the reason in words: the field by its label
    shot(page, "lms-result", locator=page.locator("#section-lms"))

    page.fill("#f-lms_prefix", "mdl_")
    page.click("#save-lms")
    saved = page.locator(".alert", has_text="saved")
    expect(saved).to_have_count(1)
    expect(page.locator("#section-lms .alert", has_text="saved")).to_have_count(1)
    expect(saved).to_be_in_viewport()
    shot(page, "lms-saved")


def test_problem_7_words_not_keys(web, open_page, shot, smtp, worker):
    """Options, saved-field lists, a template's error and a recipient's reason are words: no
    ``aws_access_key``, ``TemplateAssertionError``, ``invalid_email`` or ``smtp``/``aws`` as an option."""
    company, token = new_company("Words Co", **smtp_settings(smtp))
    page = open_page(new_user("manager", company.id))

    page.goto(f"{web.base}/admin/settings/")
    options = page.locator("#f-provider option").all_inner_texts()
    assert "SMTP" in options and "Amazon SES" in options and not {"smtp", "aws", "ses"} & set(options)
    no_raw_keys(page)
    page.click("#section-aws > summary")
    page.fill("#f-aws_access_key", "AKIAWORDS0001")
    page.fill("#f-aws_secret_key", "words-secret")
    page.click("#save-aws")
    saved = page.locator(".alert", has_text="saved (").inner_text()
    assert "Access key id" in saved and "Secret access key" in saved and "aws_" not in saved
    no_raw_keys(page)
    shot(page, "settings")

    page.goto(f"{web.base}/admin/templates/new/")
    page.fill("#name", "unknown filter")
    page.fill("#subject", "Hello")
    page.fill("#body_text", "Hi {{ firstname|shout }}")
    page.click("input[type=submit][value=Save]")
    expect(page.locator("form.admin-form")).to_contain_text("filter")
    assert "TemplateAssertionError" not in page.content()
    assert "the template uses a filter or test that does not exist" in page.locator("form.admin-form").inner_text()
    no_raw_keys(page)
    shot(page, "template-error")

    job = post_job(web.base, token, {"type": "notification", "subject": "Hi", "body_text": "Hello",
                                     "recipients": [{"email": "fine@example.com"}, {"email": "not-an-email"}]})
    page.goto(f"{web.base}/admin/jobs/{job['id']}/")
    expect(page.locator("#job-updated")).to_have_text("Finished", timeout=WAIT_MS)
    failed = page.locator("#failed-table").inner_text()
    assert "Not a valid email address" in failed and "invalid_email" not in failed
    no_raw_keys(page)
    shot(page, "job")


def test_problem_8_settings_by_provider(web, open_page, shot, smtp):
    """The settings page shows the chosen provider's fields only; the others are closed sections, each
    with its own save and test; choosing another provider opens its section."""
    company, _ = new_company("Sections Co", **smtp_settings(smtp))
    page = open_page(new_user("manager", company.id))
    page.goto(f"{web.base}/admin/settings/")
    providers = page.locator("details[data-provider-group]")
    assert providers.count() >= 5
    expect(page.locator("details[data-provider-group][open]")).to_have_count(1)
    expect(page.locator("#section-smtp")).to_have_attribute("open", "")
    expect(page.locator("#f-smtp_host")).to_be_visible()
    for hidden in ("#f-aws_access_key", "#f-sendgrid_api_key", "#f-mailgun_api_key"):
        expect(page.locator(hidden)).to_be_hidden()
    height = page.evaluate("document.documentElement.scrollHeight")
    assert height < 2600, height  # every provider's form at once was about 3,400 px
    for section in providers.all():
        name = section.get_attribute("data-provider-group")
        assert page.locator(f"#save-{name}").count() == 1 and page.locator(f"#test-{name}").count() == 1
    no_raw_keys(page)
    shot(page, "smtp-chosen")

    page.select_option("#f-provider", label="Amazon SES")
    expect(page.locator("#section-aws")).to_have_attribute("open", "")
    expect(page.locator("#f-aws_access_key")).to_be_visible()
    shot(page, "ses-chosen")


def test_problem_9_search_by_email(web, open_page, shot):
    """Search by part of an address in a job's recipients, in the Outbox and in Suppressions, with pages
    that go on from the last row shown."""
    company, token = new_company("Search Co", provider="smtp", sender="noreply@search.test",
                                 smtp_host="127.0.0.1", smtp_port=str(free_port()), smtp_tls="none")
    emails = [f"learner{i:03d}@school.test" for i in range(60)] + ["Ann.Smith@Example.com"]
    job = post_job(web.base, token, {"type": "notification", "subject": "Hi", "body_text": "x", "send_at":
                                     "2099-01-01T00:00:00Z", "recipients": [{"email": e} for e in emails]})
    for i in range(3):
        db.session.add(Suppression(company_id=company.id, email=f"gone{i}@school.test"))
    db.session.add(Suppression(company_id=company.id, email="kept@elsewhere.test"))
    db.session.commit()
    page = open_page(new_user("manager", company.id))

    page.goto(f"{web.base}/admin/jobs/{job['id']}/")
    page.fill("#recipient-q", "ann.SMITH")
    page.click("#recipient-search-go")
    expect(page.locator("#recipients-table tbody tr")).to_have_count(1)
    expect(page.locator("#recipients-table tbody")).to_contain_text("Ann.Smith@Example.com")
    no_raw_keys(page)
    shot(page, "job-recipients")
    page.fill("#recipient-q", "learner")
    page.click("#recipient-search-go")
    cells = page.locator("#recipients-table tbody td[data-label=Email]")
    expect(cells).to_have_count(50)
    assert cells.first.inner_text() == "learner000@school.test"
    page.click("#recipients-next")
    expect(cells).to_have_text([f"learner{i:03d}@school.test" for i in range(50, 60)])  # on from the last shown

    page.goto(f"{web.base}/admin/suppressions/")
    page.fill("#suppression-q", "GONE")
    page.keyboard.press("Enter")
    expect(page.locator("#suppressions-total")).to_contain_text("3 addresses match")
    assert "kept@elsewhere.test" not in page.content()
    no_raw_keys(page)
    shot(page, "suppressions")

    write_outbox(web, 30)
    admin = open_page(new_user("admin"))
    admin.goto(f"{web.base}/admin/outbox/")
    admin.fill("#outbox-q", "PUPIL1")
    admin.keyboard.press("Enter")
    newest_first = [f"pupil1{i}@school.test" for i in range(9, -1, -1)]
    expect(admin.locator("#outbox-messages td.outbox-to")).to_have_text(newest_first)
    no_raw_keys(admin)
    shot(admin, "outbox")


def test_problem_10_api_docs_resolve_refs(web, chromium, shot):
    """``/api/v1/docs`` is Swagger UI served by the service: operations and schemas, no raw ``$ref`` text,
    and nothing fetched from another host."""
    context = chromium.new_context(viewport=DESKTOP)
    page = context.new_page()
    elsewhere = []
    page.on("request", lambda r: None if r.url.startswith(web.base) or r.url.startswith("data:")
            else elsewhere.append(r.url))
    try:
        page.goto(f"{web.base}/api/v1/docs")
        expect(page.locator(".swagger-ui .opblock").first).to_be_visible(timeout=WAIT_MS)
        post_jobs = page.locator(".opblock-post", has_text="Create a job and queue it").first
        post_jobs.locator(".opblock-summary").click()
        expect(post_jobs.locator(".opblock-body")).to_contain_text("recipients")
        post_jobs.locator("button[data-name=model]").first.click()  # the request body's schema, $refs followed
        expect(post_jobs.locator(".opblock-body .model-box").first).to_contain_text("recipients")
        expect(page.locator("section.models.is-open")).to_contain_text("Job")  # the schemas, listed
        text = page.locator("body").inner_text()
        raw = re.findall(r".{0,80}(?:\$ref|#/components/).{0,40}", text)
        assert raw == [], raw
        assert elsewhere == []
        shot(page, "docs")
    finally:
        context.close()


def test_problem_11_smaller_problems(web, open_page, shot, smtp, worker):
    """Add a manager starts as a manager of that company; Clear asks first; the import and re-engagement
    forms start on a template of their own type; an import links to its job; a wrong certificate code
    gets a page with the lookup; the stock Flask-Admin pages look like the custom ones; the overview
    has the week's charts."""
    admin = open_page(new_user("admin"))
    admin.goto(f"{web.base}/admin/companies/new/")
    admin.fill("#name", f"Small Co {uuid.uuid4().hex[:4]}")
    admin.click("input[type=submit][value=Save]")
    admin.click("a:has-text('Add a manager')")
    expect(admin.locator("#role")).to_have_value("manager")
    assert admin.locator("#company option:checked").inner_text().startswith("Small Co")
    no_raw_keys(admin)
    shot(admin, "add-manager")

    folder = write_outbox(web, 3, prefix="clear")
    admin.goto(f"{web.base}/admin/outbox/")
    asked = []
    admin.once("dialog", lambda d: (asked.append(d.message), d.dismiss()))
    admin.click("form[action$='/clear'] button")
    assert asked and len(list(folder.iterdir())) >= 3  # dismissed: nothing removed
    admin.once("dialog", lambda d: d.accept())
    admin.click("form[action$='/clear'] button")
    admin.wait_for_load_state()
    expect(admin.locator("#outbox-messages")).to_contain_text("Nothing yet")
    assert list(folder.iterdir()) == []

    company, _ = new_company("Import Co", **smtp_settings(smtp))
    new_template(company.id, "certificate", "a certificate mail", subject="Your certificate",
                 body_text="Well done {{ firstname }}", body_html="")
    welcome = new_template(company.id, "csv_import", "welcome")
    come_back = new_template(company.id, "reengagement", "come back", subject="We miss you",
                             body_text="Hi {{ firstname }}", body_html="")
    page = open_page(new_user("manager", company.id))
    page.goto(f"{web.base}/admin/campaigns/reengagement")
    expect(page.locator("#template_id")).to_have_value(str(come_back.id))
    page.goto(f"{web.base}/admin/campaigns/import")
    expect(page.locator("#template_id")).to_have_value(str(welcome.id))
    page.set_input_files("#file", files=[{"name": "people.csv", "mimeType": "text/csv", "buffer":
                                          b"email,firstname,password\nann@example.com,Ann,Pw-1\nbo@example.com,Bo,Pw-2\n"}])
    page.click("button:has-text('Upload and map columns')")
    page.click("button:has-text('Send 2 messages')")
    link = page.locator("#open-job")
    expect(link).to_be_visible()
    no_raw_keys(page)
    shot(page, "import-result")
    link.click()
    page.wait_for_url(re.compile(r".*/admin/jobs/\d+/$"))
    expect(page.locator("#job-updated")).to_have_text("Finished", timeout=WAIT_MS)

    page.goto(f"{web.base}/admin/templates/")  # a stock Flask-Admin list
    no_raw_keys(page)
    stock = page.locator("table.model-list thead th").first.evaluate(
        "th => [getComputedStyle(th).backgroundColor, getComputedStyle(th).color]")
    page.goto(f"{web.base}/admin/jobs/")  # a page of our own
    ours = page.locator("table thead.thead-light th").first.evaluate(
        "th => [getComputedStyle(th).backgroundColor, getComputedStyle(th).color]")
    assert stock == ours, (stock, ours)
    page.goto(f"{web.base}/admin/templates/new/")
    card = page.locator("form.admin-form").evaluate("f => [getComputedStyle(f).backgroundColor, "
                                                    "getComputedStyle(f).borderTopStyle]")
    assert card == ["rgb(255, 255, 255)", "solid"]
    no_raw_keys(page)
    shot(page, "stock-form")

    page.goto(f"{web.base}/admin/")
    charts = page.locator(".overview-chart")
    expect(charts).to_have_count(4)
    assert page.locator(".overview-chart[data-series=queued] [data-total=queued]").inner_text() == "2"
    assert page.locator(".overview-chart svg rect").count() >= 28  # 7 days x 4 series
    shot(page, "overview")

    context = page.context
    verify = context.new_page()
    response = verify.goto(f"{web.base}/verify/NO-SUCH-CODE-42")
    assert response.status == 404
    expect(verify.locator("#verify-lookup input#code")).to_be_visible()
    expect(verify.locator("body")).to_contain_text("NO-SUCH-CODE-42")
    no_raw_keys(verify)
    shot(verify, "verify-unknown")


# -- the manager's journey ------------------------------------------------------------------------------


def counts_on_job_page(page) -> dict[str, int]:
    fields = ("email_count", "emails_sent", "emails_failed", "emails_suppressed")
    found = {f: int(page.locator(f"#job-detail .stat [data-field={f}]").inner_text()) for f in fields}
    found["failed_heading"] = int(page.locator("#failed [data-count=failed]").inner_text())
    found["suppressed_heading"] = int(re.search(r"\((\d+)\)", page.locator("#suppressed").inner_text()).group(1))
    return found


def counts_agree(page, base: str, job_id: int) -> dict[str, int]:
    """The job page, its row in the job list and the overview give the same counts (one job in the
    company: the overview's week is this job's)."""
    page.goto(f"{base}/admin/jobs/{job_id}/")
    detail = counts_on_job_page(page)
    assert detail["failed_heading"] == detail["emails_failed"], detail
    assert detail["suppressed_heading"] == detail["emails_suppressed"], detail
    no_raw_keys(page)
    page.goto(f"{base}/admin/jobs/")
    row = page.locator(f'tr[data-job-id="{job_id}"]')
    expect(row.locator("[data-field=emails_sent]")).to_have_text(str(detail["emails_sent"]))
    listed = {f: int(row.locator(f"[data-field={f}]").inner_text()) for f in ("email_count", "emails_sent",
                                                                                "emails_failed")}
    assert listed == {f: detail[f] for f in listed}, (listed, detail)
    no_raw_keys(page)
    page.goto(f"{base}/admin/")
    week = {s: int(page.locator(f".overview-chart [data-total={s}]").inner_text())
            for s in ("sent", "failed", "queued")}
    assert week == {"sent": detail["emails_sent"], "failed": detail["emails_failed"],
                    "queued": detail["email_count"]}, (week, detail)
    no_raw_keys(page)
    return detail


def test_the_managers_journey(web, open_page, shot, ses, worker):
    """Sign in; set up Amazon SES (the emulator, behind a proxy that rejects three addresses) in the
    settings; test the connection; import a CSV; follow the job to its end; retry its failed recipients
    once the addresses are accepted; export its CSVs. Every page shows words, not keys, and the job
    page, the job list, the overview and the exports agree on every count."""
    people = [f"learner{i:02d}@example.com" for i in range(26)] + [f"refused-{i}@example.com" for i in range(3)]
    people.append("gone@example.com")
    with FaultyProxy(ses.url, reject="refused-") as proxy:
        company, _ = new_company("Journey Co", sender="noreply@journey.test")
        new_template(company.id, "csv_import", "welcome")
        db.session.add(Suppression(company_id=company.id, email="gone@example.com"))
        db.session.commit()
        page = open_page(new_user("manager", company.id))
        no_raw_keys(page)

        # -- configure Amazon SES and test it
        page.goto(f"{web.base}/admin/settings/")
        page.select_option("#f-provider", label="Amazon SES")
        expect(page.locator("#section-aws")).to_have_attribute("open", "")
        page.fill("#f-aws_access_key", "AKIAJOURNEY00001")
        page.fill("#f-aws_secret_key", "journey-secret-9f1")
        page.fill("#f-aws_region", "us-east-1")
        page.fill("#f-aws_endpoint_url", proxy.url)
        page.click("#save-aws")
        expect(page.locator("#section-aws .result-here")).to_contain_text("saved (")
        page.select_option("#f-provider", label="Amazon SES")
        page.click("#save-general")
        expect(page.locator(".result-here", has_text="saved (Provider)")).to_have_count(1)
        no_raw_keys(page)
        page.click("#test-aws")
        check = page.locator("#check-result-aws")
        expect(check.locator(".check-ok, .check-bad").first).to_be_visible(timeout=WAIT_MS)
        expect(check).to_contain_text("✓ Amazon SES")
        assert "journey-secret-9f1" not in page.content() and "AKIAJOURNEY00001" not in page.content()
        no_raw_keys(page)
        shot(page, "settings")

        # -- import a CSV: the job
        lines = ["email,firstname,password"] + [f"{e},Name{i},Pw-{i}x" for i, e in enumerate(people)]
        page.goto(f"{web.base}/admin/campaigns/import")
        no_raw_keys(page)
        page.set_input_files("#file", files=[{"name": "people.csv", "mimeType": "text/csv",
                                              "buffer": ("\n".join(lines) + "\n").encode()}])
        page.click("button:has-text('Upload and map columns')")
        expect(page.locator(".good-count")).to_have_text("30")
        assert "Pw-1x" not in page.content()  # the preview masks passwords
        no_raw_keys(page)
        shot(page, "import-review")
        page.click("button:has-text('Send 30 messages')")
        no_raw_keys(page)
        page.click("#open-job")
        page.wait_for_url(re.compile(r".*/admin/jobs/\d+/$"))
        job_id = int(re.search(r"/admin/jobs/(\d+)/$", page.url).group(1))

        # -- watch it finish
        expect(page.locator("#job-updated")).to_have_text("Finished", timeout=WAIT_MS)
        expect(page.locator("#job-detail [data-field=emails_failed]").first).to_have_text("3")
        assert "Pw-1x" not in page.content()
        shot(page, "job-finished")
        first = counts_agree(page, web.base, job_id)
        assert {k: first[k] for k in ("email_count", "emails_sent", "emails_failed", "emails_suppressed")} == {
            "email_count": 30, "emails_sent": 26, "emails_failed": 3, "emails_suppressed": 1}
        shot(page, "overview-before-retry")

        # -- the error report and the recipient list agree with the page
        page.goto(f"{web.base}/admin/jobs/{job_id}/")
        no_raw_keys(page)
        with page.expect_download() as info:
            page.click("#download-errors")
        errors = list(csv.DictReader(io.StringIO(Path(info.value.path()).read_text(encoding="utf-8"))))
        assert sorted(r["email"] for r in errors) == [f"refused-{i}@example.com" for i in range(3)]

        # -- retry the failed recipients once SES takes them
        proxy.reject = None
        page.click("#retry-failed")
        expect(page.locator("#job-actions .result-here")).to_contain_text("3 failed recipient(s) queued again")
        expect(page.locator("#job-detail .stat [data-field=emails_sent]")).to_have_text("29", timeout=WAIT_MS)
        expect(page.locator("#job-updated")).to_have_text("Finished", timeout=WAIT_MS)
        no_raw_keys(page)
        shot(page, "job-retried")
        after = counts_agree(page, web.base, job_id)
        assert (after["emails_sent"], after["emails_failed"], after["emails_suppressed"]) == (29, 0, 1)
        shot(page, "overview")

        # -- export: the recipient list holds the same counts, and no password
        page.goto(f"{web.base}/admin/jobs/{job_id}/")
        no_raw_keys(page)
        with page.expect_download() as info:
            page.click("#download-recipients")
        text = Path(info.value.path()).read_text(encoding="utf-8")
        rows = list(csv.DictReader(io.StringIO(text)))
        statuses = [r["status"] for r in rows]
        assert (len(rows), statuses.count("sent"), statuses.count("suppressed")) == (30, 29, 1)
        assert "Pw-" not in text
    delivered = {m["destination"]["to"][0] for m in ses.store() if m["destination"]["to"][0].endswith("@example.com")}
    assert set(people) - {"gone@example.com"} <= delivered
