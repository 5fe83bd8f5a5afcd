"""Operator tasks in a real browser (headless Chromium via Playwright):

- the first run, from what ``flask run-demo`` (``make run``) prints to a job's
  mail in the Outbox, and a restart that keeps the session;
- creating a company (its token and secret shown once) and its manager;
- unlocking a locked account;
- resuming a paused job; "Retry now" on a batch backing off;
- a bad SMTP port: the page lands on the error, focused;
- a certificate job with local storage, and its public verify page.

The app is served over HTTP with a real RQ worker process (tests/e2e/conftest.py)
or, for the first run, the demo itself in a child process.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from core import companies, settings
from core.db import db
from core.models import Batch, Job, User, utcnow
from tests.support.servers import SmtpSink, free_port, stop_group, wait_for_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
FLASK = str(ROOT / ".venv" / "bin" / "flask")
PASSWORD = "correct horse battery"
WAIT_MS = 60_000


def post_job(base: str, token: str, body: dict) -> dict:
    request = urllib.request.Request(f"{base}/api/v1/jobs", data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 202
        return json.load(resp)


def sign_in(page, base: str, email: str, password: str = PASSWORD) -> None:
    page.goto(f"{base}/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/admin/$"))


def fresh(model, row_id):
    db.session.expire_all()
    return db.session.get(model, row_id)


# -- the first run ----------------------------------------------------------------------------------------


def start_demo(env: dict, port: int, log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([FLASK, "--app", "wsgi", "run-demo", "--port", str(port)], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_port(port, timeout=90, proc=proc)
    return proc


def stop_demo(proc: subprocess.Popen) -> None:
    stop_group(proc)


def outbox_rows(page, base: str, want: int) -> list[str]:
    """Reload the Outbox until it lists ``want`` messages; their To cells."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while True:
        page.goto(f"{base}/admin/outbox/")
        cells = page.locator("#outbox-messages td.outbox-to").all_inner_texts()
        if len(cells) >= want or time.monotonic() > deadline:
            return cells
        time.sleep(0.5)


@pytest.mark.timeout(300)
def test_first_run_from_the_printed_login_to_mail_in_the_outbox(browser, tmp_path):
    instance = tmp_path / "instance"
    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "OFFLOAD_PUBLIC_URL", "FLASK_ENV",
                                                              "OFFLOAD_ENV", "OFFLOAD_ENCRYPTION_KEYS")}
    env.update(DATABASE_URL=f"sqlite:///{tmp_path / 'offload.db'}", OFFLOAD_INSTANCE_PATH=str(instance),
               REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", OFFLOAD_SWEEP_S="2")  # the demo brings its Redis
    subprocess.run([FLASK, "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env, check=True, capture_output=True)
    log_path, port = tmp_path / "demo.log", free_port()
    proc = start_demo(env, port, log_path)
    try:
        out = log_path.read_text(errors="replace")
        email, password = re.search(r"Demo login: (\S+) / (\S+)", out).groups()
        token = re.search(r"Demo company API token \(shown once\): (mro_\S+)", out).group(1)
        base = re.search(r"Open (http://\S+)/login", out).group(1)
        assert base == f"http://127.0.0.1:{port}"
        assert oct(os.stat(instance / "secret-key").st_mode & 0o777) == "0o600"

        context = browser.new_context(viewport={"width": 1366, "height": 900})
        page = context.new_page()
        sign_in(page, base, email, password)
        steps = page.locator(".checklist [data-step-done]")
        assert steps.count() == 5
        assert page.locator(".checklist [data-step-done='1']").count() == 4  # all but "A first job"
        assert "A first job" in page.locator(".checklist [data-step-done='0']").inner_text()

        people = [{"email": f"new{i}@example.com", "data": {"firstname": f"Ann{i}", "password": f"Pw-{i}"}}
                  for i in range(3)]
        post_job(base, token, {"type": "csv_import", "template": "welcome", "recipients": people})
        post_job(base, token, {"type": "reengagement", "template": "come-back",
                               "recipients": [{"email": "back@example.com", "data": {"firstname": "Bo"}}]})
        rows = outbox_rows(page, base, 4)
        assert sorted(rows) == ["back@example.com", "new0@example.com", "new1@example.com", "new2@example.com"]
        page.click("text=Welcome to the academy, Ann1")
        assert "Your password is Pw-1" in page.locator(".outbox-text").inner_text()
        preview = page.locator("iframe.outbox-preview")
        assert preview.get_attribute("sandbox") == ""
        assert "Ann1" in page.frame_locator("iframe.outbox-preview").locator("body").inner_text()
        page.goto(f"{base}/admin/outbox/")
        page.click("text=We miss you, Bo")
        page.click("summary")
        # in development the public URL follows the served port: the unsubscribe link works here
        assert f"<http://127.0.0.1:{port}/u/" in page.locator("details").inner_text()
        page.goto(f"{base}/admin/")
        assert page.locator(".checklist").count() == 0  # every step done
        storage = context.storage_state()
        context.close()
    finally:
        stop_demo(proc)

    proc = start_demo(env, port, log_path)  # a restart keeps the secret key, so the session holds
    try:
        assert "printed at the first start" in log_path.read_text(errors="replace")
        context = browser.new_context(storage_state=storage)
        page = context.new_page()
        page.goto(f"{base}/admin/")
        assert page.url == f"{base}/admin/" and "Signed in as admin@example.com" in page.content()
        context.close()
    finally:
        stop_demo(proc)


# -- with the test's app, a live server and a worker ------------------------------------------------------


@pytest.fixture
def admin_page(app, live_server, browser, make_user):
    make_user("root@service.test", role="admin")
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    sign_in(page, live_server, "root@service.test")
    yield page
    context.close()


def close_select2(page) -> None:
    """Close a select2 list left open (its mask would take the next click)."""
    mask = page.locator("#select2-drop-mask")
    if mask.count() and mask.is_visible():
        mask.click()  # select2 closes its list on a click of the mask, choosing nothing
        mask.wait_for(state="hidden")


def test_an_admin_creates_a_company_and_its_manager(app, live_server, browser, admin_page):
    page, base = admin_page, live_server
    page.goto(f"{base}/admin/companies/new/")
    page.fill("#name", "Beta Academy")
    page.click("input[type=submit][value=Save]")
    page.wait_for_selector("#company-credentials")
    token = page.locator("#new-api-token").inner_text()
    secret = page.locator("#new-callback-secret").inner_text()
    assert token.startswith("mro_") and secret.startswith("whsec_")
    body = post_job(base, token, {"type": "notification", "subject": "Hi", "body_text": "Hello",
                                  "recipients": [{"email": "x@example.com"}]})
    assert body["status"] in ("queued", "pending", "paused", "processing")  # the token works at once
    page.reload()  # shown once: the POST's answer; a GET of the list never shows them
    page.goto(f"{base}/admin/companies/")
    assert token not in page.content() and secret not in page.content()

    page.goto(f"{base}/admin/users/new/")
    page.fill("#email", "boss@beta.test")
    page.fill("#password", "another good password")
    page.select_option("#role", "manager", force=True)
    page.click("input[type=submit][value=Save]")  # no company: refused, the error in view
    page.wait_for_selector("text=A manager needs a company.")
    page.wait_for_load_state("load")  # the page focuses the field in error, which may open its select2 list
    page.select_option("#company", label="Beta Academy", force=True)
    page.fill("#password", "another good password")
    close_select2(page)  # as a person would before pressing Save (on a loaded machine its mask took the click)
    page.click("input[type=submit][value=Save]")
    page.wait_for_selector("text=Record was successfully created.")
    manager = db.session.query(User).filter_by(email="boss@beta.test").one()
    assert manager.role == "manager" and manager.company.name == "Beta Academy"

    other = browser.new_context()
    mpage = other.new_page()
    sign_in(mpage, base, "boss@beta.test", "another good password")
    assert "Beta Academy" in mpage.content()
    other.close()


def test_an_admin_unlocks_a_locked_account(app, live_server, browser, admin_page, make_company, make_user):
    acme = make_company("Acme Locks", sender="noreply@acme.test")
    user, _ = make_user("locked@acme.test", company_id=acme.id)
    context = browser.new_context()
    page = context.new_page()
    for _ in range(settings.current().login_max_failures):
        page.goto(f"{live_server}/login")
        page.fill("input[name=email]", "locked@acme.test")
        page.fill("input[name=password]", "wrong guess")
        page.click("button[type=submit]")
    assert fresh(User, user.id).failed_logins >= settings.current().login_max_failures
    page.goto(f"{live_server}/login")  # the right password does not open a backed-off account
    page.fill("input[name=email]", "locked@acme.test")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    assert "/admin/" not in page.url

    admin_page.goto(f"{live_server}/admin/users/")
    admin_page.click("button.user-unlock")
    admin_page.wait_for_selector("text=locked@acme.test is unlocked")
    assert fresh(User, user.id).failed_logins == 0
    sign_in(page, live_server, "locked@acme.test")
    context.close()


def test_resume_a_paused_job_from_its_page(app, live_server, live_worker, admin_page, make_company):
    with SmtpSink() as sink:
        acme = make_company("Acme Paused", provider="smtp", smtp_host="127.0.0.1", smtp_port=str(sink.port),
                            smtp_tls="none")  # no sender yet: the job pauses
        job = post_job(live_server, acme.token, {"type": "notification", "subject": "Hi", "body_text": "Hello",
                                                 "recipients": [{"email": f"p{i}@example.com"} for i in range(3)]})
        page = admin_page
        page.goto(f"{live_server}/admin/jobs/{job['id']}/")
        page.wait_for_selector("#resume-job:visible", timeout=WAIT_MS)
        page.reload()
        assert "no sender address" in page.locator(".alert-info").inner_text()
        companies.configure(acme.company, {"sender": "ops@acme.test"})
        db.session.commit()
        page.click("#resume-job")
        page.wait_for_selector("text=Job resumed")
        page.wait_for_function("() => document.getElementById('job-updated').textContent === 'Finished'",
                               timeout=WAIT_MS)
        assert fresh(Job, job["id"]).status == "completed"
        assert sorted(sink.recipients()) == ["p0@example.com", "p1@example.com", "p2@example.com"]


def test_retry_now_sends_a_backing_off_batch_at_once(app, live_server, live_worker, admin_page, make_company):
    port = free_port()  # nothing listens yet: the batch backs off
    acme = make_company("Acme Outage", provider="smtp", sender="ops@acme.test", smtp_host="127.0.0.1",
                        smtp_port=str(port), smtp_tls="none")
    job = post_job(live_server, acme.token, {"type": "notification", "subject": "Hi", "body_text": "Hello",
                                             "recipients": [{"email": "r@example.com"}]})
    page = admin_page
    deadline = time.monotonic() + 60
    while True:
        page.goto(f"{live_server}/admin/jobs/{job['id']}/")
        if page.locator("button.retry-now").count() or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    waiting = page.locator("#waiting-table").inner_text()
    assert "Direct · SMTP" in waiting and "unreachable" in waiting.lower()
    # push the scheduled attempt an hour out (once the worker has released the batch), so only
    # "Retry now" can send it within the test
    deadline = time.monotonic() + 30
    while True:
        pushed = db.session.execute(update(Batch).where(Batch.job_id == job["id"], Batch.status == "retry")
                                    .values(next_attempt_at=utcnow() + timedelta(hours=1))).rowcount
        db.session.commit()
        if pushed or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert pushed == 1
    with SmtpSink() as sink:
        companies.configure(acme.company, {"smtp_port": str(sink.port)})
        db.session.commit()
        page.reload()
        page.click("button.retry-now")
        page.wait_for_selector("text=trying again now")
        deadline = time.monotonic() + 30
        while fresh(Job, job["id"]).status != "completed" and time.monotonic() < deadline:
            time.sleep(0.3)
        assert fresh(Job, job["id"]).status == "completed"
        assert sink.recipients() == ["r@example.com"]


def test_a_bad_port_lands_on_the_error_focused(app, live_server, admin_page, make_company):
    acme = make_company("Acme Ports", sender="ops@acme.test")
    page = admin_page
    page.set_viewport_size({"width": 1024, "height": 600})
    page.goto(f"{live_server}/admin/settings/{acme.id}/")
    page.fill("#f-smtp_host", "smtp.example.com")
    page.fill("#f-smtp_port", "99999")
    page.click("#save-smtp")
    page.wait_for_url(re.compile(r".*#f-smtp_port$"))
    assert page.evaluate("document.activeElement.id") == "f-smtp_port"
    for selector in ("#f-smtp_port", "label[for=f-smtp_port]"):  # the field and its label are in view
        box = page.locator(selector).bounding_box()
        assert 0 <= box["y"] <= 600 - box["height"], selector
    assert "Port: out of range" in page.locator('[data-error-for="smtp_port"]').inner_text()
    page.reload()  # POST-redirect-GET: a reload neither re-posts nor shows the old error
    assert page.locator('[data-error-for="smtp_port"]').count() == 0


def test_a_certificate_job_with_local_storage_and_its_verify_page(app, live_server, live_worker, browser,
                                                                   make_company, tmp_path, set_settings):
    set_settings(public_url=live_server)  # download links point at this server
    with SmtpSink() as sink:
        acme = make_company("Acme Certs", provider="smtp", sender="ops@acme.test", smtp_host="127.0.0.1",
                            smtp_port=str(sink.port), smtp_tls="none")
        body = {"type": "certificate", "subject": "Your certificate for {{ course_name }}",
                "body_text": "Hi {{ learner_name }}, download: {{ certificate_url }}",
                "recipients": [{"email": "learner@example.com",
                                "data": {"learner_name": "Lea Learner", "course_name": "Fire Safety",
                                         "completion_date": "2026-11-20"}}]}
        job = post_job(live_server, acme.token, body)
        deadline = time.monotonic() + 90
        while fresh(Job, job["id"]).status != "completed" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert fresh(Job, job["id"]).status == "completed", fresh(Job, job["id"]).error_log
        (mail,) = sink.messages
    text = mail.message.get_body(("plain",)).get_content()
    code = re.search(r"/certificates/([0-9A-Z]{20})/download", text).group(1)
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{live_server}/verify/{code}")
    assert "Lea Learner" in page.content() and "Fire Safety" in page.content()
    assert "valid" in page.locator("body").inner_text().lower()
    with urllib.request.urlopen(f"{live_server}/certificates/{code}/download", timeout=30) as resp:
        assert resp.status == 200 and resp.read(5) == b"%PDF-"  # redirected to the local file
    page.goto(f"{live_server}/verify/NOPE")
    assert page.locator("#not-found").count() == 1  # a friendly not-found, with the lookup form again
    assert page.locator("#verify-lookup input[name=code]").input_value() == "NOPE"
    context.close()
