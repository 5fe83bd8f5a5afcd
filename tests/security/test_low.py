"""The Low items: botocore errors in the connection test, certificate download redirects,
per-user/per-company caps on uploads and buffered events, CSP on dashboard pages."""
from __future__ import annotations

import io
import json
from datetime import timedelta

from core.certificate_render import new_verification_code
from core.db import db
from core.models import Certificate, Company, Template, utcnow
from tests.support.app import csrf_from
from tests.support.attack import SECRET_BODY, connection_test, leaks, login_as


def test_a_garbled_aws_answer_ends_the_connection_test_with_a_clear_result(app, client, make_company, make_user,
                                                                         internal_page):
    """An endpoint answering an HTML page with 200: botocore's ResponseParserError (which quotes
    the body) used to escape; the check now ends, without the body, in the result and the log."""
    company = make_company(provider="aws", sender="noreply@acme.test", aws_region="us-east-1",
                           aws_access_key="AKIATENANT0000000001", aws_secret_key="tenant-secret",
                           aws_endpoint_url=internal_page.url)
    login_as(client, make_user, "mgr@acme.test", company_id=company.id)
    result = connection_test(app, client, company.id)
    assert result["status"] == "done" and internal_page.requests
    text = json.dumps(result)
    assert "could not read" in text or "could not parse" in text or "not as Amazon SES does" in text
    assert not leaks(text) and SECRET_BODY not in text


def test_the_certificate_download_redirects_only_to_an_allowed_storage_host(app, client, make_company,
                                                                          production_guard):
    company = make_company(s3_bucket="certs", aws_region="us-east-1", aws_access_key="AKIATENANT0000000001",
                           aws_secret_key="tenant-secret")
    db.session.get(Company, company.id).settings.set_setting("s3_endpoint_url", "https://phish.evil.example")
    cert = Certificate(company_id=company.id, code=new_verification_code(), learner_name="Ann", course_name="C",
                       learner_email="ann@acme.test", issued_at=utcnow() - timedelta(days=1), storage="s3",
                       object_key="certificates/1/1/x.pdf", checksum="0" * 64)
    db.session.add(cert)
    db.session.commit()
    resp = client.get(f"/certificates/{cert.code}/download")
    assert resp.status_code == 503 and "evil" not in resp.headers.get("Location", "")


def make_template(company_id: int):
    tpl = Template(company_id=company_id, name="Welcome", job_type="csv_import", subject="Hi {{ firstname }}",
                   body_text="Hello {{ firstname }}")
    db.session.add(tpl)
    db.session.commit()
    return tpl


def test_pending_csv_uploads_are_capped_per_user_and_per_company(app, client, company, make_user, set_settings):
    set_settings(max_uploads_per_user=2, max_uploads_per_company=3)
    tpl = make_template(company.id)
    csv = b"email,firstname\na@acme.test,Ann\n"

    def upload(c):
        token = csrf_from(c.get("/admin/campaigns/import").get_data(as_text=True))
        return c.post("/admin/campaigns/import", content_type="multipart/form-data", data={
            "csrf_token": token, "template_id": str(tpl.id), "file": (io.BytesIO(csv), "users.csv")})

    login_as(client, make_user, "one@acme.test", company_id=company.id)
    assert [upload(client).status_code for _ in range(3)] == [302, 302, 400]
    assert "uploads waiting" in upload(client).get_data(as_text=True)
    other = app.test_client()
    login_as(other, make_user, "two@acme.test", company_id=company.id)
    assert [upload(other).status_code for _ in range(2)] == [302, 400]  # the company's cap


def test_buffered_events_are_capped_per_company(app, client, company, set_settings):
    make_template(company.id)
    set_settings(max_buffered_events=3, bulk_window_s=600)
    codes = [client.post("/api/v1/events", headers=company.auth, json={
        "event": "user_created", "email": f"u{i}@acme.test", "data": {"firstname": "U"}}).status_code
        for i in range(5)]
    assert codes[:3] == [202, 202, 202] and codes[3:] == [429, 429], codes


def test_dashboard_pages_send_a_csp_that_forbids_framing(client, company, make_user):
    for url in ("/login",):
        resp = client.get(url)
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Frame-Options"] == "DENY"
    login_as(client, make_user, "mgr@acme.test", company_id=company.id)
    for url in ("/admin/", "/admin/jobs/", f"/admin/settings/{company.id}/"):
        assert "frame-ancestors 'none'" in client.get(url).headers["Content-Security-Policy"], url
