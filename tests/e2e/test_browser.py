"""The dashboard in a real browser: a manager watches a real job progress
in the job list without reloading, opens it, retries its failed recipients,
downloads its CSVs, then saves AWS credentials and runs "Test connection"
against moto. The app is served over HTTP, an RQ worker process sends
through a real SMTP server, and headless Chromium drives the pages."""
from __future__ import annotations

import csv
import io
import json
import re
import urllib.request

import pytest

from tests.support.servers import SmtpSink

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PASSWORD = "correct horse battery"
REFUSED = ("refused-0@example.com", "refused-1@example.com", "refused-2@example.com")
AWS_KEY_ID = "AKIAcanaryBROWSER0001"
AWS_SECRET = "canary-secret-XYZ-browser-5e1"
DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 90_000


def api_create_job(base: str, token: str, recipients: list[dict]) -> dict:
    body = json.dumps({"type": "csv_import", "subject": "Welcome {{ firstname }}",
                       "body_text": "Hi {{ firstname }}, your password is {{ password }}",
                       "recipients": recipients}).encode()
    request = urllib.request.Request(f"{base}/api/v1/jobs", data=body, method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 202
        return json.load(resp)


def login(page, base: str, email: str) -> None:
    page.goto(f"{base}/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit], button")
    page.wait_for_url(re.compile(r".*/admin/$"))


def shoot(context_browser, base: str, storage, url: str, path, viewport) -> None:
    """A full-page screenshot of ``url`` at ``viewport`` in a context sharing the session."""
    context = context_browser.new_context(viewport=viewport, storage_state=storage,
                                          device_scale_factor=2 if viewport is PHONE else 1,
                                          is_mobile=viewport is PHONE, has_touch=viewport is PHONE)
    page = context.new_page()
    page.goto(f"{base}{url}")
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(path), full_page=True)
    context.close()


@pytest.fixture
def smtp():
    with SmtpSink(refuse={address: "554 5.7.1 message refused" for address in REFUSED}) as sink:
        yield sink


def test_manager_follows_a_job_retries_it_and_tests_aws(app, live_server, live_worker, browser, smtp, moto_server,
                                                        make_company, make_user, artifacts):
    base = live_server
    company = make_company("Acme Browser", provider="smtp", sender="noreply@acme.test", smtp_host="127.0.0.1",
                           smtp_port=str(smtp.port), smtp_tls="none", max_send_rate="150")
    make_user("manager@acme.test", company_id=company.id)
    context = browser.new_context(viewport=DESKTOP, accept_downloads=True)
    page = context.new_page()
    login(page, base, "manager@acme.test")

    # -- the list, open before the job exists, follows it to 100% without a reload
    page.goto(f"{base}/admin/jobs/")
    page.evaluate("window.__offloadMarker = 'still-here'")
    page.evaluate("""() => { window.__progressSeen = [];
        new MutationObserver(() => document.querySelectorAll('[data-part=text]').forEach(
            el => window.__progressSeen.push(el.textContent))).observe(document.body,
            {subtree: true, childList: true, characterData: true}); }""")
    recipients = [{"email": f"learner{i}@example.com", "data": {"firstname": f"L{i}", "password": f"pw-{i}"}}
                  for i in range(296)]
    recipients += [{"email": address, "data": {"firstname": "R", "password": "pw-r"}} for address in REFUSED] + \
        [{"email": "not-an-email"}]
    job = api_create_job(base, company.token, recipients)
    row = f'tr[data-job-id="{job["id"]}"]'
    page.wait_for_selector(row, timeout=WAIT_MS)  # inserted by the polling script
    page.wait_for_function(
        f"""() => {{ const r = document.querySelector('{row}');
            return r && r.querySelector('[data-part=text]').textContent === '100%'
                && r.querySelector('[data-field=status]').textContent.trim() === 'Partial failure'; }}""",
        timeout=WAIT_MS)
    assert page.evaluate("window.__offloadMarker") == "still-here"  # the page was never reloaded
    assert page.locator(f"{row} [data-field=emails_sent]").inner_text() == "296"
    assert page.locator(f"{row} [data-field=emails_failed]").inner_text() == "4"
    assert page.locator(f"{row} [data-field=email_count]").inner_text() == "300"
    assert "100%" in page.evaluate("window.__progressSeen")
    storage = context.storage_state()
    page.screenshot(path=str(artifacts / "jobs-list.png"), full_page=True)
    shoot(browser, base, storage, "/admin/jobs/", artifacts / "jobs-list-phone.png", PHONE)

    # -- the detail page
    page.click(f"{row} a.job-link")
    page.wait_for_url(re.compile(rf".*/admin/jobs/{job['id']}/$"))
    assert page.locator("[data-field=emails_sent]").first.inner_text() == "296"
    assert page.locator("[data-field=success_rate]").inner_text() == "98.7%"
    assert page.locator("#batches-table tbody tr").count() == 3
    assert set(page.locator("#batches-table [data-field=route]").all_inner_texts()) == {"Direct · SMTP"}
    failed = page.locator("#failed-table").inner_text()
    # words for the code, the fixed phrase for the server's refusal (no server text)
    assert "Not a valid email address" in failed and "554 5.7.1 transaction failed" in failed
    page.wait_for_selector("#sends-chart svg rect.chart-bar", timeout=WAIT_MS)
    assert "pw-1" not in page.content()
    page.screenshot(path=str(artifacts / "job-detail.png"), full_page=True)
    shoot(browser, base, storage, f"/admin/jobs/{job['id']}/", artifacts / "job-detail-phone.png", PHONE)

    # -- the error report and the recipient list
    with page.expect_download() as info:
        page.click("#download-errors")
    rows = list(csv.reader(io.StringIO(open(info.value.path(), encoding="utf-8").read())))
    assert rows[0][:4] == ["id", "email", "status", "error"]
    assert {r[1] for r in rows[1:]} == {*REFUSED, "not-an-email"}
    with page.expect_download() as info:
        page.click("#download-recipients")
    text = open(info.value.path(), encoding="utf-8").read()
    assert info.value.suggested_filename == f"job-{job['id']}-recipients.csv"
    assert len(list(csv.reader(io.StringIO(text)))) == 301 and "pw-" not in text

    # -- retry the failed recipients: the mailboxes work now
    smtp.refuse.clear()
    page.click("#retry-failed")
    page.wait_for_selector("text=3 failed recipient(s) queued again")
    page.wait_for_function("() => document.querySelector('#job-detail [data-field=emails_sent]').textContent === '299'"
                           " && document.getElementById('job-updated').textContent === 'Finished'", timeout=WAIT_MS)
    assert page.locator("#job-detail [data-field=emails_failed]").first.inner_text() == "1"
    assert len(smtp.messages) == 299

    # -- a template through Flask-Admin's form (one CSRF token per form), then its preview
    page.goto(f"{base}/admin/templates/new/")
    page.fill("#name", "welcome")
    page.select_option("#job_type", "csv_import", force=True)  # select2 hides the <select>
    page.fill("#subject", "Welcome {{ firstname }}")
    page.fill("#body_text", "Hi {{ firstname }}, your password is {{ password }}")
    page.fill("#body_html", "<h2>Hi {{ firstname }}</h2><p>Your password: <b>{{ password }}</b></p>"
                            "<script>x()</script>")
    page.click("input[type=submit][value=Save]")
    page.wait_for_selector("text=Record was successfully created.")
    page.click("a[title=Preview]")
    page.wait_for_selector("#preview-html")
    assert page.locator("#preview-subject").inner_text() == "Welcome Ann"
    frame = page.frame_locator("#preview-html")
    assert frame.locator("h2").inner_text() == "Hi Ann"
    assert page.locator("#preview-html").get_attribute("sandbox") == ""
    page.screenshot(path=str(artifacts / "template-preview.png"), full_page=True)

    # -- AWS credentials through the settings form, then "Test connection" against moto
    page.goto(f"{base}/admin/settings/")
    page.click("#section-aws > summary")  # providers not in use are collapsed
    page.fill("#f-aws_access_key", AWS_KEY_ID)
    page.fill("#f-aws_secret_key", AWS_SECRET)
    page.fill("#f-aws_region", "us-east-1")
    page.fill("#f-aws_endpoint_url", moto_server.url)
    page.click("#save-aws")
    page.wait_for_selector("text=saved (Access key id, Secret access key, Region, Endpoint URL)")
    page.select_option("#f-provider", label="Amazon SES")
    page.click("#save-general")
    page.wait_for_selector("text=saved (Provider)")
    assert page.locator('[data-secret-state="aws_secret_key"]').inner_text() == "set ••••"
    page.click("#test-connection")
    page.wait_for_selector("#check-result .check-bad", timeout=WAIT_MS)
    result = page.locator("#check-result").inner_text()
    # moto lacks SES GetAccount: not SES's answer, so the test fails in words, with a link to the field
    assert "✗ Amazon SES" in result and "Connection test found problems." in result
    assert page.locator("#check-result a.check-fix").first.inner_text() == "Fix: Endpoint URL"
    assert page.locator("#check-result a.check-fix").first.get_attribute("href") == "#f-aws_endpoint_url"
    assert "✓ SMTP fallback" in result
    page.locator("#checks").screenshot(path=str(artifacts / "settings-check.png"))
    for source in (page.content(), page.evaluate("document.documentElement.outerHTML")):
        assert AWS_SECRET not in source and AWS_KEY_ID not in source
    page.reload()
    assert AWS_SECRET not in page.content() and AWS_KEY_ID not in page.content()
    page.screenshot(path=str(artifacts / "settings.png"), full_page=True)
    shoot(browser, base, context.storage_state(), "/admin/settings/", artifacts / "settings-phone.png", PHONE)
    context.close()
