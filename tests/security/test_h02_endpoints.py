"""High 2: tenant-supplied endpoints reach no internal host and reflect no answer.

Saving an endpoint that names loopback, a private or link-local address or
the metadata service is refused (naming the rule); a stored one is refused
again when the worker connects; and where an endpoint does answer (private
endpoints allowed, as for local emulators), its body or banner never comes
back to the tenant."""
from __future__ import annotations

import json
import os

import pytest

from core import audiences, companies
from core.db import db
from core.models import Company, Job
from tests.support.app import csrf_from, run_worker_burst
from tests.support.attack import SECRET_BODY, connection_test, leaks, login_as, people, submit, tenant_view


def save(client, company_id: int, **fields):
    page = client.get(f"/admin/settings/{company_id}/").get_data(as_text=True)
    return client.post(f"/admin/settings/{company_id}/save", data={"csrf_token": csrf_from(page), **fields})


@pytest.mark.parametrize("section,fields", [
    ("aws", {"aws_endpoint_url": "http://127.0.0.1:{port}/"}),
    ("aws", {"aws_endpoint_url": "https://127.0.0.1:{port}/"}),
    ("aws", {"sqs_queue_url": "https://10.0.0.5/123456789012/q"}),
    ("aws", {"aws_endpoint_url": "https://169.254.169.254/latest/meta-data/"}),
    ("cloudflare", {"cloudflare_api_base": "https://[::1]:{port}/client/v4"}),
    ("cloudflare", {"cloudflare_worker_url": "https://192.168.1.10/"}),
    ("smtp", {"smtp_host": "127.0.0.1", "smtp_port": "22", "smtp_tls": "none"}),
    ("smtp", {"smtp_host": "169.254.169.254", "smtp_port": "25", "smtp_tls": "none"}),
])
def test_internal_endpoints_are_refused_when_saved(app, client, company, make_user, production_guard,
                                                   internal_service, section, fields):
    login_as(client, make_user, "mgr@acme.test", company_id=company.id)
    port = internal_service.url.rsplit(":", 1)[1]
    resp = save(client, company.id, section=section, **{k: v.format(port=port) for k, v in fields.items()})
    assert resp.status_code == 303  # refused: back to the form (POST-redirect-GET) with the reason
    page = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert "Not saved" in page and ("refused" in page or "https" in page)
    assert internal_service.requests == [] and not leaks(page)


def test_the_metadata_service_is_refused_even_with_private_endpoints_allowed(app, client, company, make_user):
    login_as(client, make_user, "mgr@acme.test", company_id=company.id)
    resp = save(client, company.id, section="aws", aws_endpoint_url="http://169.254.169.254/latest/")
    assert resp.status_code == 303 and "metadata" in client.get(resp.headers["Location"]).get_data(as_text=True)


def test_a_stored_internal_endpoint_is_refused_when_the_worker_connects(app, client, make_company,
                                                                        internal_service, production_guard):
    company = make_company(provider="aws", sender="noreply@acme.test", aws_region="us-east-1",
                           aws_access_key="AKIATENANT0000000001", aws_secret_key="tenant-secret")
    # as if saved before the guard existed (or resolving elsewhere then): straight into the row
    db.session.get(Company, company.id).settings.set_setting("aws_endpoint_url", internal_service.url)
    db.session.commit()
    job_id = submit(client, company, people(2))
    run_worker_burst(app)
    assert internal_service.requests == []  # the worker never connected
    view = tenant_view(client, company, job_id)
    assert "endpoint refused" in view and not leaks(view)


def test_an_answering_endpoints_body_never_reaches_the_tenant(app, client, make_company, internal_service):
    """Private endpoints allowed (the suite's emulator setting): the internal service answers
    with its secret, which appears nowhere the tenant reads: API, errors.csv, job error log."""
    company = make_company(provider="aws", sender="noreply@acme.test", aws_region="us-east-1",
                           aws_access_key="AKIATENANT0000000001", aws_secret_key="tenant-secret",
                           aws_endpoint_url=internal_service.url)
    job_id = submit(client, company, people(3))
    run_worker_burst(app)
    assert internal_service.requests  # it was reached and answered with the secret
    job = db.session.get(Job, job_id)
    view = tenant_view(client, company, job_id)
    assert "InternalFailure" in view or "InternalFailure" in (job.error_log or "")
    assert not leaks(view) and not leaks(job.error_log or "")


def test_cloudflare_and_html_pages_are_not_reflected_by_a_connection_test(app, client, make_company, make_user,
                                                                          internal_page, internal_service):
    company = make_company(provider="cloudflare", mode="direct", sender="noreply@acme.test",
                           cloudflare_api_token="tok-123456", cloudflare_account_id="acc",
                           cloudflare_api_base=internal_service.url,
                           cloudflare_worker_url=internal_page.url)
    login_as(client, make_user, "mgr@acme.test", company_id=company.id)
    result = connection_test(app, client, company.id)
    assert result["status"] == "done" and result["ok"] is False
    assert "Cloudflare HTTP 500" in json.dumps(result)
    assert not leaks(json.dumps(result))


def test_an_ssh_banner_is_not_shown_by_the_smtp_connection_test(app, client, make_company, make_user, ssh_banner):
    company = make_company(provider="smtp", sender="noreply@acme.test", smtp_host="127.0.0.1",
                           smtp_port=str(ssh_banner.port), smtp_tls="none")
    login_as(client, make_user, "mgr@acme.test", company_id=company.id)
    result = connection_test(app, client, company.id)
    assert ssh_banner.connections >= 1
    assert result["ok"] is False and "did not answer as an SMTP server" in json.dumps(result)
    assert not leaks(json.dumps(result))


@pytest.mark.parametrize("url,why", [
    ("sqlite:////tmp/offload-attack.db", "only postgresql:// and mysql://"),
    ("sqlite:///relative.db", "only postgresql:// and mysql://"),
    ("postgresql://postgres@127.0.0.1/postgres", "refused"),
    ("postgresql://lms:pw@/moodle?host=/var/run/postgresql", "query parameters"),
    ("postgresql://lms:pw@/moodle", "no unix socket"),
    ("mysql://root@localhost/mysql?unix_socket=/run/mysqld/mysqld.sock", "query parameters"),
    ("oracle://scott:tiger@db.example.com/orcl", "only postgresql:// and mysql://"),
])
def test_the_lms_database_url_is_postgres_or_mysql_over_tcp_to_a_public_host(app, company, production_guard,
                                                                            url, why):
    with pytest.raises(ValueError, match=why):
        companies.configure(company.company, {"moodle_db_url": url})
    db.session.rollback()
    assert not os.path.exists("/tmp/offload-attack.db")
    assert db.session.get(Company, company.id).moodle_db_url is None


def test_a_stored_loopback_lms_url_is_refused_when_used(app, company, production_guard):
    db.session.get(Company, company.id).moodle_db_url = "postgresql://postgres@127.0.0.1/postgres"
    db.session.commit()
    audiences.save_lms_settings(company.id, 3, "mdl_")
    with pytest.raises(audiences.AudienceError, match="loopback"):
        audiences.count_inactive(db.session.get(Company, company.id), 30)


def test_delivery_settings_keep_the_secret_body_out_of_job_errors(app, client, make_company, internal_page):
    """An SQS queue URL that answers an HTML page with 200: botocore cannot parse it; the
    tenant sees the exception type, never the page."""
    company = make_company(provider="aws", mode="offload", sender="noreply@acme.test", aws_region="us-east-1",
                           aws_access_key="AKIATENANT0000000001", aws_secret_key="tenant-secret",
                           aws_endpoint_url=internal_page.url, sqs_queue_url=f"{internal_page.url}/1/q")
    job_id = submit(client, company, people(2))
    run_worker_burst(app)
    job = db.session.get(Job, job_id)
    assert internal_page.requests
    view = tenant_view(client, company, job_id)
    assert not leaks(job.error_log or "") and not leaks(view) and SECRET_BODY not in view
