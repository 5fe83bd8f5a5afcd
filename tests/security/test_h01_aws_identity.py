"""High 1: the operator's AWS identity serves no tenant.

A company with neither keys nor a role used to get boto3's default chain:
its own endpoint then received the service's key id and session token. Now
it gets a clear settings error and nothing leaves; AssumeRole goes to the
operator's STS only, and a role that trusts the service without the
external id is refused (the confused-deputy check)."""
from __future__ import annotations

import json

import boto3

from core.db import db
from core.models import Company, Job
from providers import aws
from providers.aws import NoTenantCredentials, aws_session
from tests.support.app import csrf_from, run_worker_burst
from tests.support.attack import login_as, people, submit
from tests.support.servers import StubHttpServer

SERVICE_KEY = "AKIASERVICEIDENTITY1"
SERVICE_TOKEN = "FwoGZXIvYXdzSERVICESESSIONTOKEN"


def test_a_company_without_credentials_never_gets_the_services_identity(app, client, make_company, monkeypatch,
                                                                        internal_service):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SERVICE_KEY)  # the operator's identity, in the worker's env
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "service-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", SERVICE_TOKEN)
    company = make_company(provider="aws", sender="ceo@acme.test", aws_region="us-east-1",
                           aws_endpoint_url=internal_service.url)  # no keys, no role: the attacker's endpoint
    job_id = submit(client, company, people(3))
    run_worker_burst(app)

    assert internal_service.requests == []  # no signed request reached the tenant's endpoint
    job = db.session.get(Job, job_id)
    errors = client.get(f"/api/v1/jobs/{job_id}/recipients", headers=company.auth).get_json()["recipients"]
    assert job.emails_sent == 0
    assert {r["status"] for r in errors} == {"failed"}
    assert all("no AWS credentials" in r["error"] for r in errors)
    assert SERVICE_KEY not in json.dumps(errors) and SERVICE_KEY not in (job.error_log or "")


def test_no_endpoint_no_credentials_is_a_settings_error_not_the_operators_ses(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SERVICE_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "service-secret")
    for config in ({"aws_region": "us-east-1"}, {"aws_access_key": "AKIAONLYHALF", "aws_region": "us-east-1"}):
        try:
            aws_session(config)
        except NoTenantCredentials as exc:
            assert "credentials" in exc.reason
        else:
            raise AssertionError("a session without the tenant's own credentials was built")


def test_assume_role_goes_to_the_operators_sts_never_the_tenants_endpoint(moto_server, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", SERVICE_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "service-secret")
    seen = []
    with StubHttpServer(lambda r: (seen.append(r) or 500, {}, "no")) as tenant_endpoint:
        iam = boto3.client("iam", endpoint_url=moto_server.url, region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        role = iam.create_role(RoleName="tenant-role-h1", AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                    "Principal": {"AWS": "arn:aws:iam::123456789012:root"}}]}))
        aws.configure(sts_endpoint_url=moto_server.url)
        try:
            config = {"aws_role_arn": role["Role"]["Arn"], "aws_external_id": "ext-42",
                      "aws_endpoint_url": tenant_endpoint.url, "aws_sts_endpoint_url": tenant_endpoint.url,
                      "aws_region": "us-east-1"}
            # moto plays the role as open: the config carries the confirmation the settings would store
            session = aws_session({**config, aws.CONFIRMED_KEY: aws.role_fingerprint(config)})
            assert session.get_credentials().get_frozen_credentials().access_key != SERVICE_KEY
        finally:
            aws.configure(sts_endpoint_url=None)
    assert seen == []  # the tenant's endpoint never saw the service's AssumeRole


def test_a_role_that_trusts_the_service_without_the_external_id_is_refused(app, client, company, make_user,
                                                                           moto_server, monkeypatch):
    """moto's AssumeRole ignores trust policies: it plays a role open to anyone who knows its ARN."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    aws.configure(sts_endpoint_url=moto_server.url)
    try:
        login_as(client, make_user, "mgr@acme.test", company_id=company.id)
        page = client.get(f"/admin/settings/{company.id}/").get_data(as_text=True)
        resp = client.post(f"/admin/settings/{company.id}/save", data={
            "csrf_token": csrf_from(page), "section": "aws", "aws_role_arn": "arn:aws:iam::222233334444:role/victim",
            "aws_region": "us-east-1"})
    finally:
        aws.configure(sts_endpoint_url=None)
    assert resp.status_code == 303  # refused: back to the form (POST-redirect-GET) with the reason
    assert "without the external id" in client.get(resp.headers["Location"]).get_data(as_text=True)
    db.session.expire_all()
    assert db.session.get(Company, company.id).settings.get_setting("aws_role_arn") is None


def test_when_the_check_cannot_be_made_the_page_says_so(app, client, company, make_user, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with StubHttpServer(lambda r: (503, {}, "down")) as sts_down:
        aws.configure(sts_endpoint_url=sts_down.url)
        try:
            login_as(client, make_user, "mgr@acme.test", company_id=company.id)
            page = client.get(f"/admin/settings/{company.id}/").get_data(as_text=True)
            resp = client.post(f"/admin/settings/{company.id}/save", follow_redirects=True, data={
                "csrf_token": csrf_from(page), "section": "aws",
                "aws_role_arn": "arn:aws:iam::222233334444:role/ours", "aws_region": "us-east-1"})
        finally:
            aws.configure(sts_endpoint_url=None)
    assert resp.status_code == 200
    assert "could not be checked" in resp.get_data(as_text=True)
