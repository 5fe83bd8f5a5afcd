"""Every page, as an admin and as a manager, with data in every state: no page
runs an inline script (the CSP allows scripts from files only), and no page
shows a person a raw key (``aws_access_key``, ``TemplateAssertionError``,
``invalid_email``, ``smtp`` as an option, a status key as a badge): the words
come from ``core.labels``. HSTS is sent in production only.

The pages come from ``app.url_map``: every GET rule of the dashboard, the
public pages and the API docs, their path arguments filled with the world's
ids (a rule this test cannot fill fails it, so a new page cannot slip by).
"""
from __future__ import annotations

from datetime import timedelta

import pytest

from core import checks
from core.audiences import Upload, UploadStore
from core.db import db
from core.models import (
    LIST_BOUNCE,
    LIST_COMPLAINT,
    LIST_MANUAL,
    LIST_UNSUBSCRIBE,
    Batch,
    BatchStatus,
    Certificate,
    CertificateTemplate,
    Job,
    JobStatus,
    JobType,
    Recipient,
    RecipientStatus,
    Suppression,
    Template,
    utcnow,
)
from core.queue import connection
from core.unsubscribe import make_token
from tests.support.app import AuthActions, csrf_from, run_worker_burst
from tests.support.pages import inline_scripts, raw_keys
from tests.support.servers import SmtpSink

PASSWORD = "correct horse battery"
#: pages that are files or JSON, not pages a person reads
NOT_PAGES = ("chart_data", "details_data", "list_data", "check_result", "errors_csv", "recipients_csv",
             "export", "preview_saved", "download", "job_zip", "local_file", "ajax_lookup", "preview")
#: per rule argument: how the world fills it
ARGS = ("job_id", "company_id", "check_id", "cert_id", "upload_id", "template_id", "message_id", "export_type",
        "code", "token", "key", "name", "user_id")


class World:
    """One company with data in every state, its manager and an admin."""


def _add(obj):
    db.session.add(obj)
    db.session.commit()
    return obj


def _job(client, company, job_type, recipients, **extra) -> int:
    resp = client.post("/api/v1/jobs", headers=company.auth, json={
        "type": job_type, "subject": "Hello {{ firstname | default('there') }}", "body_text": "Hi",
        "recipients": recipients, **extra})
    assert resp.status_code == 202, resp.get_data(as_text=True)
    return resp.get_json()["id"]


def _in_every_state(company_id: int, job_id: int) -> None:
    """Jobs of every status, batches of every status, recipients of every status and error."""
    job = db.session.get(Job, job_id)
    types, sources = list(JobType), ["api", "event", "dashboard", "lms", "smtp"]
    for i, status in enumerate(JobStatus):
        other = _add(Job(company_id=company_id, type=types[i % len(types)], status=status, subject="s",
                         email_count=len(RecipientStatus), source=sources[i % len(sources)],
                         paused_reason="provider unavailable: TemplateAssertionError"
                         if status == JobStatus.PAUSED else None))
        for n, rstatus in enumerate(RecipientStatus):
            db.session.add(Recipient(company_id=company_id, job_id=other.id, email=f"r{n}-{status}@example.com",
                                     status=rstatus, route="fallback:smtp",
                                     error="render_error: line 2: TemplateAssertionError"
                                     if rstatus == RecipientStatus.FAILED else None))
        first = db.session.query(Recipient.id).filter(Recipient.job_id == other.id).order_by(Recipient.id).first()[0]
        for n, bstatus in enumerate(BatchStatus, start=1):
            db.session.add(Batch(company_id=company_id, job_id=other.id, batch_number=n, status=bstatus,
                                 route="offload:sqs" if n % 2 else "direct:ses", first_recipient_id=first,
                                 last_recipient_id=first, recipient_count=1, error="SMTP connection failed (TypeError)",
                                 next_attempt_at=utcnow() + timedelta(minutes=5)))
        db.session.commit()
    job.error_log = "2026-01-01 00:00:00 render_error: line 1: UndefinedError\n"
    db.session.commit()


@pytest.fixture
def world(app, client, make_company, make_user, set_settings):
    with SmtpSink(refuse={"refused@example.com": "554 refused"}) as sink:
        company = make_company("Pages Ltd", provider="smtp", sender="noreply@pages.test", smtp_host="127.0.0.1",
                               smtp_port=sink.port, smtp_tls="none", aws_region="us-east-1")
        w = World()
        w.company = company
        manager, _ = make_user("manager@pages.test", company_id=company.id)
        make_user("admin@pages.test", role="admin")
        w.user_id = manager.id
        w.job = _job(client, company, "csv_import", [
            {"email": "ok@example.com", "data": {"firstname": "Ann"}}, {"email": "refused@example.com"},
            {"email": "not an address"}, {"email": "ok@example.com"}])
        _job(client, company, "reengagement", [{"email": "later@example.com"}],
             send_at=(utcnow() + timedelta(days=1)).isoformat())
        run_worker_burst(app)
    _in_every_state(company.id, w.job)
    for n, kind in enumerate(JobType):
        _add(Template(company_id=company.id, name=f"Template {n}", job_type=kind, subject="Hi {{ firstname }}",
                      body_text="x {{ password }}"))
    w.template = db.session.query(Template.id).filter(Template.company_id == company.id).first()[0]
    w.cert_template = _add(CertificateTemplate(company_id=company.id, name="Cert", html="<p>{{ course_name }}</p>")).id
    w.cert = _add(Certificate(company_id=company.id, code="PAGES-CERT-1", job_id=w.job, learner_name="Ann",
                              course_name="Course")).id
    _add(Certificate(company_id=company.id, code="PAGES-CERT-2", learner_name="Bob", course_name="Course",
                     revoked_at=utcnow(), revoked_reason="issued in error"))
    for n, kind in enumerate((LIST_BOUNCE, LIST_COMPLAINT, LIST_MANUAL, LIST_UNSUBSCRIBE)):
        _add(Suppression(company_id=company.id, email=f"s{n}@example.com", reason=kind))
    w.check = checks.start_connection_test(company.id)
    connection().set(checks.result_key(company.id, w.check), '{"status": "done", "kind": "connection", "ok": false, '
                     '"checks": [{"name": "SMTP", "ok": false, "error": "TypeError", "facts": {"smtp_host": "x"}}]}')
    w.upload = UploadStore(connection()).save(Upload(company.id, manager.id, "list.csv", ["email", "firstname"],
                                                     [(2, ["up@example.com", "Ann"])]))
    w.token = make_token(company.id, "ok@example.com")
    return w


def fill(w: World, rule) -> dict:
    values = {"job_id": w.job, "company_id": w.company.id, "check_id": w.check, "cert_id": w.cert,
              "upload_id": w.upload, "message_id": "1700000000000-0123abcd.eml", "export_type": "csv",
              "code": "PAGES-CERT-1", "token": w.token, "key": "x", "name": "x", "user_id": w.user_id,
              "template_id": w.cert_template if rule.endpoint.startswith("certificate_templates") else w.template}
    unknown = set(rule.arguments) - set(values)
    assert not unknown, f"{rule.endpoint}: no value for {unknown}; extend fill()"
    return {k: values[k] for k in rule.arguments}


def page_urls(app, w: World) -> list[str]:
    """Every page a person reads: the dashboard's GET rules, the public pages, the API docs."""
    urls = []
    for rule in app.url_map.iter_rules():
        view = rule.endpoint.rsplit(".", 1)[-1]
        if "GET" not in rule.methods or view in NOT_PAGES or rule.endpoint.endswith("static"):
            continue
        if not (rule.rule.startswith(("/admin", "/verify", "/u/")) or rule.rule in ("/api/v1/docs", "/login")):
            continue
        url = rule.build(fill(w, rule), append_unknown=False)[1]
        if view in ("details_view", "edit_view"):
            url += f"?id={w.template if rule.endpoint.startswith('templates') else 1}"
        urls.append(url)
    company = f"/admin/settings/{w.company.id}/"
    return urls + [f"/admin/jobs/?status={s}" for s in JobStatus] + [
        "/admin/suppressions/?q=example", "/verify/NO-SUCH-CODE", f"{company}?check={w.check}",
        f"/admin/jobs/{w.job + 3}/", f"/admin/jobs/{w.job}/?fpage=2"]


def crawl(client, urls) -> tuple[list[str], list[str], int]:
    scripts, keys, seen = [], [], 0
    for url in urls:
        resp = client.get(url, follow_redirects=True)
        if resp.status_code in (403, 404) or resp.mimetype != "text/html":
            continue
        assert resp.status_code == 200, f"{url}: {resp.status_code}"
        seen += 1
        html = resp.get_data(as_text=True)
        scripts += [f"{url}: {s}" for s in inline_scripts(html)]
        keys += [f"{url}: {k}" for k in raw_keys(html)]
    return scripts, keys, seen


def saved_and_failed(client, company_id: int) -> list[str]:
    """The settings page after a save (its message names the fields) and after a failed one (its error)."""
    url = f"/admin/settings/{company_id}/"
    token = csrf_from(client.get(url).get_data(as_text=True))
    shown = []
    for form in ({"section": "aws", "aws_region": "eu-west-1", "aws_endpoint_url": "http://127.0.0.1:9"},
                 {"section": "smtp", "smtp_host": "127.0.0.1", "smtp_port": "99999999"}):
        client.post(url + "save", data={"csrf_token": token, **form})
        shown.append(client.get(url).get_data(as_text=True))
    return shown


@pytest.mark.parametrize("who", ["admin@pages.test", "manager@pages.test"])
def test_every_page_has_words_and_no_inline_script(app, client, world, who):
    AuthActions(client).login(who, PASSWORD)
    saved, failed = saved_and_failed(client, world.company.id)
    assert "saved (Region, Endpoint URL)" in saved and "Not saved" in failed
    for html in (saved, failed):
        assert not raw_keys(html), raw_keys(html)
    scripts, keys, seen = crawl(client, page_urls(app, world))
    assert seen >= (30 if who.startswith("admin") else 20)
    assert not scripts, "inline script (refused by the CSP):\n" + "\n".join(dict.fromkeys(scripts))
    assert not keys, "raw keys on pages:\n" + "\n".join(dict.fromkeys(keys))


def test_signed_out_pages_have_no_inline_script(client, world):
    for url in ("/login", "/verify/PAGES-CERT-1", "/verify/NO-SUCH-CODE", f"/u/{world.token}", "/api/v1/docs"):
        html = client.get(url).get_data(as_text=True)
        assert not inline_scripts(html), url
        assert not raw_keys(html), (url, raw_keys(html))


def test_the_csp_allows_scripts_from_files_only_and_hsts_is_sent_in_production(client, set_settings):
    resp = client.get("/login")
    policy = dict(part.strip().split(" ", 1) for part in resp.headers["Content-Security-Policy"].split(";"))
    assert policy["script-src"] == "'self'"
    assert "Strict-Transport-Security" not in resp.headers  # development: plain HTTP on loopback
    set_settings(production=True, development=False, allowed_hosts=("localhost",))
    resp = client.get("/healthz")
    assert resp.headers["Strict-Transport-Security"] == "max-age=31536000"
