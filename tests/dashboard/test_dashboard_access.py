"""Tenancy across the whole dashboard: a manager of company B gets 404 (or
403) from every dashboard URL and action aimed at company A's objects, and
list pages, counts, JSON and exports leave A's rows out.

The URLs come from ``app.url_map``: every ``/admin`` rule is requested with
every method it accepts, its path arguments filled with A's ids, and
Flask-Admin's id-taking endpoints (edit, details, delete, action, ajax
update) given A's ids in the query and the form. A rule with an argument
this test cannot fill fails the test, so a new endpoint cannot slip by.
"""
from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from core.audiences import Upload, UploadStore
from core.checks import start_connection_test
from core.db import db
from core.models import ApiToken, AuditLog, Certificate, CertificateTemplate, Company, Job, Suppression, Template
from core.queue import connection
from tests.support.app import csrf_from, run_worker_burst
from tests.support.servers import SmtpSink

A_NAME = "Alpha Learning Ltd"
A_MANAGER = "alpha-manager@alpha.test"
A_TEMPLATE = "alpha-only-template"
#: Flask-Admin endpoints that take an object id in the query string or the form
ID_ENDPOINTS = ("edit_view", "details_view", "delete_view", "action_view", "ajax_update")
DENIED = (403, 404)


class World:
    """Company A's objects, and B's manager signed in."""


@pytest.fixture
def world(app, client, auth, make_company, make_user):
    with SmtpSink(refuse={"refused@example.com": "554 refused"}) as sink:
        a = make_company(A_NAME, provider="smtp", sender="noreply@alpha.test", smtp_host="127.0.0.1",
                         smtp_port=sink.port, smtp_tls="none")
        b = make_company("Bravo Training", provider="smtp", sender="noreply@bravo.test", smtp_host="127.0.0.1",
                         smtp_port=sink.port, smtp_tls="none")
        a_manager, _ = make_user(A_MANAGER, company_id=a.id)
        make_user("bravo-manager@bravo.test", company_id=b.id)
        w = World()
        w.a, w.b = a, b
        w.a_manager = a_manager.id
        w.job = _job(client, a, [{"email": "alpha-1@example.com"}, {"email": "refused@example.com"}])
        w.b_job = _job(client, b, [{"email": "bravo-1@example.com"}])
        run_worker_burst(app)
        w.template = _row(Template(company_id=a.id, name=A_TEMPLATE, subject="Hi", body_text="x")).id
        w.b_template = _row(Template(company_id=b.id, name="bravo-template", subject="Hi", body_text="x")).id
        token, _ = ApiToken.issue(a.id, "alpha token")
        w.token = _row(token).id
        w.cert_template = _row(CertificateTemplate(company_id=a.id, name="alpha cert", html="<p>x</p>")).id
        w.suppression = _row(Suppression(company_id=a.id, email="alpha-suppressed@example.com")).id
        w.cert = _row(Certificate(company_id=a.id, code="ALPHA-CERT-0001", job_id=w.job,
                                  learner_name="Alpha Learner", course_name="Alpha course")).id
        w.check = start_connection_test(a.id)
        w.upload = _upload(a.id, a_manager.id)
        w.secret = db.session.get(Company, a.id).callback_secret
        w.audit = db.session.execute(select(AuditLog.id).where(AuditLog.company_id == a.id)).scalars().first()
        auth.login("bravo-manager@bravo.test", "correct horse battery")
        w.csrf = csrf_from(client.get("/admin/").get_data(as_text=True))
        yield w


def _job(client, company, recipients) -> int:
    resp = client.post("/api/v1/jobs", headers=company.auth, json={
        "type": "notification", "subject": "Hello", "body_text": "Hi", "recipients": recipients})
    assert resp.status_code == 202
    return resp.get_json()["id"]


def _row(obj):
    db.session.add(obj)
    db.session.commit()
    return obj


def _upload(company_id: int, user_id: int) -> str:
    return UploadStore(connection()).save(Upload(company_id, user_id, "alpha.csv", ["email"],
                                                 [(2, ["alpha-upload@example.com"])]))


def path_values(w: World, endpoint: str) -> dict:
    """A's id for each path argument a dashboard rule may have."""
    blueprint = endpoint.split(".")[0]
    return {"job_id": w.job, "company_id": w.a.id, "token_id": w.token, "check_id": w.check, "cert_id": w.cert,
            "upload_id": w.upload, "suppression_id": w.suppression, "export_type": "csv",
            "user_id": w.a_manager, "message_id": "1700000000000-0123abcd.eml", "batch_number": 1,
            "template_id": w.cert_template if blueprint == "certificate_templates" else w.template}


def admin_rules(app):
    return [r for r in app.url_map.iter_rules() if r.rule.startswith("/admin") and r.endpoint != "admin.static"]


def a_object_id(w: World, endpoint: str) -> int:
    """The id Flask-Admin's id endpoints of a view get: A's row of that view's model."""
    return {"templates": w.template, "audit": w.audit, "companies": w.a.id, "users": w.a.id}.get(
        endpoint.split(".")[0], w.job)


def requests_for(app, w: World):
    """Every (endpoint, method, url, form) aimed at A's objects."""
    for rule in admin_rules(app):
        view = rule.endpoint.rsplit(".", 1)[1]
        takes_id = view in ID_ENDPOINTS
        args = set(rule.arguments) - {"export_type"}
        if not args and not takes_id:
            continue
        values = path_values(w, rule.endpoint)
        unknown = args - set(values)
        assert not unknown, f"{rule.endpoint}: no company-A value for {unknown}; extend path_values()"
        variants = [{k: values[k] for k in rule.arguments}]
        if "company_id" in args and len(args) > 1:  # B's own company with A's object in it
            variants.append({**variants[0], "company_id": w.b.id})
        for filled in variants:
            url = rule.build(filled, append_unknown=False)[1]
            object_id = a_object_id(w, rule.endpoint)
            form = {"csrf_token": w.csrf}
            if takes_id:
                url += f"?id={object_id}"
                form.update(id=str(object_id), rowid=str(object_id), action="delete", list_form_pk=str(object_id),
                            name="x")
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                yield rule.endpoint, method, url, form


def test_every_dashboard_url_for_company_a_objects_is_404_for_company_b(app, client, world):
    covered = set()
    failures = []
    for endpoint, method, url, form in requests_for(app, world):
        resp = client.get(url) if method == "GET" else client.post(url, data=form)
        covered.add(endpoint)
        if resp.status_code not in DENIED:
            failures.append(f"{method} {url} ({endpoint}) -> {resp.status_code}")
    assert not failures, "company B reached company A's objects:\n" + "\n".join(failures)

    # every rule with a path id, and every Flask-Admin id endpoint, was requested
    must = {r.endpoint for r in admin_rules(app)
            if set(r.arguments) - {"export_type"} or r.endpoint.rsplit(".", 1)[1] in ID_ENDPOINTS}
    assert must <= covered and {"jobs.details", "jobs.retry", "jobs.cancel", "jobs.recipients_csv",
                                "jobs.errors_csv", "jobs.details_data", "jobs.chart_data", "settings.company",
                                "settings.save", "settings.check_result", "settings.revoke_token",
                                "templates.preview", "templates.send_test", "templates.edit_view",
                                "templates.delete_view", "templates.action_view", "audit.details_view"} <= covered

    # and nothing of A's changed
    db.session.expire_all()
    job = db.session.get(Job, world.job)
    assert job.status == "partial_failure" and job.cancel_requested_at is None
    assert db.session.get(Template, world.template) is not None
    assert db.session.get(ApiToken, world.token).revoked_at is None
    company = db.session.get(Company, world.a.id)
    assert company.callback_secret == world.secret and company.settings.get_setting("smtp_tls") == "none"
    assert db.session.get(Certificate, world.cert).revoked_at is None
    assert db.session.get(Suppression, world.suppression) is not None
    assert not db.session.execute(select(AuditLog).where(AuditLog.company_id == world.a.id,
                                                         AuditLog.actor == "bravo-manager@bravo.test")).first()


def test_lists_counts_json_and_exports_leave_company_a_out(app, client, world):
    markers = (A_NAME, A_MANAGER, A_TEMPLATE, f"/admin/jobs/{world.job}/", "alpha-1@example.com",
               "ALPHA-CERT-0001", "alpha.csv", "alpha-suppressed@example.com")
    pages = [r.rule for r in admin_rules(app) if not r.arguments and "GET" in r.methods
             and r.endpoint.rsplit(".", 1)[1] not in ("ajax_lookup",)]
    pages += ["/admin/audit/export/csv/", f"/admin/jobs/data.json?company_id={world.a.id}",
              f"/admin/jobs/?company_id={world.a.id}", "/admin/templates/?search=alpha",
              "/admin/audit/?search=alpha"]
    seen = 0
    for url in pages:
        resp = client.get(url, follow_redirects=True)
        if resp.status_code in DENIED:
            continue
        assert resp.status_code == 200, url
        seen += 1
        text = resp.get_data(as_text=True)
        leaked = [m for m in markers if m in text]
        assert not leaked, f"{url} shows company A's {leaked}"
    assert seen >= 8

    listing = client.get("/admin/jobs/data.json").get_json()
    assert [j["id"] for j in listing["jobs"]] == [world.b_job] and listing["total"] == 1
    templates = client.get("/admin/templates/").get_data(as_text=True)
    assert "bravo-template" in templates and re.search(r"List\s*\(1\)", templates)
    audit = client.get("/admin/audit/").get_data(as_text=True)
    assert "bravo-manager@bravo.test" in audit


def test_an_admin_reaches_both_companies(client, auth, world, make_user):
    auth.logout()
    make_user("root@service.test", role="admin")
    auth.login("root@service.test", "correct horse battery")
    for url in (f"/admin/jobs/{world.job}/", f"/admin/jobs/{world.b_job}/data.json",
                f"/admin/templates/edit/?id={world.template}", f"/admin/settings/{world.a.id}/",
                f"/admin/settings/{world.a.id}/checks/{world.check}.json"):
        assert client.get(url).status_code == 200, url


def test_signed_out_visitors_are_sent_to_the_login_page(client, app, world, auth):
    auth.logout()
    for rule in admin_rules(app):
        if "GET" not in rule.methods:
            continue
        values = path_values(world, rule.endpoint)
        url = rule.build({k: values[k] for k in rule.arguments}, append_unknown=False)[1]
        resp = client.get(url)
        assert resp.status_code == 302 and "/login" in resp.headers["Location"], url


def test_a_stale_check_of_another_company_expires_like_an_unknown_one(client, world):
    """The result key is per company: guessing A's check id from B's page finds nothing."""
    resp = client.get(f"/admin/settings/{world.b.id}/checks/{world.check}.json")
    assert resp.status_code == 404
