"""Issue 26, High 2: a role not confirmed to require the external id is never assumed.

The review saved a role that does not require the external id with
``aws_region=xx-nowhere-1``: the check went to STS in that region, could not
be made, and the role was accepted with a warning, then assumed; changing the
region back did not check again. Now the check goes to STS's fixed region,
``aws_region`` must be a real region (botocore's endpoint data), every change
of an AWS setting checks again, and a role without a stored confirmation is
checked at its first use and not assumed unless it passes.

These tests run against a moto server of their own with IAM authorization on,
so its STS evaluates trust policies (the principal and ``sts:ExternalId``);
the service's identity is an IAM user allowed only sts:AssumeRole. One
correction to moto, as AWS evaluates it: a ``StringEquals`` condition on a key
the request does not carry (AssumeRole without ``ExternalId``) does not match
(moto 5.2 lets it pass, so every role would look open).
"""
from __future__ import annotations

import json
import sys
import urllib.request

import boto3
import pytest

from core.db import db
from core.models import Company
from providers import aws
from providers.aws import RoleNotConfirmed, aws_session
from tests.support.app import csrf_from
from tests.support.attack import login_as
from tests.support.servers import ManagedProcess, free_port

ACCOUNT = "123456789012"  # moto's default account


MOTO_AS_AWS = """
import sys
from moto.iam import policy_conditions
from moto.server import main
verify = policy_conditions.TrustCondition.verify_condition
policy_conditions.TrustCondition.verify_condition = lambda self, values: bool(values) and verify(self, values)
main(["-H", "127.0.0.1", "-p", sys.argv[1]])
"""


class TrustingMoto(ManagedProcess):
    def __init__(self):
        port = free_port()
        super().__init__([sys.executable, "-c", MOTO_AS_AWS, str(port)], port, log_name="moto-trust")


class AuthMoto:
    """moto with IAM authorization: an admin for the set-up, the service's user, roles."""

    def __init__(self, server: ManagedProcess):
        self.url = server.url
        iam = boto3.client("iam", endpoint_url=self.url, region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        self.keys = {}
        for user, action in (("setup-admin", "*"), ("offload-service", "sts:AssumeRole")):
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps({
                "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": action, "Resource": "*"}]}))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            self.keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        # from here on every request is authenticated and authorized, trust policies included
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset-auth", data=b"0",
                                                      headers={"Content-Type": "text/plain"}, method="POST"),
                               timeout=10).close()
        admin_key, admin_secret = self.keys["setup-admin"]
        self.iam = boto3.client("iam", endpoint_url=self.url, region_name="us-east-1",
                                aws_access_key_id=admin_key, aws_secret_access_key=admin_secret)

    def trust(self, external_id: str | None) -> str:
        statement = {"Effect": "Allow", "Action": "sts:AssumeRole",
                     "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/offload-service"}}
        if external_id:
            statement["Condition"] = {"StringEquals": {"sts:ExternalId": external_id}}
        return json.dumps({"Version": "2012-10-17", "Statement": [statement]})

    def role(self, name: str, external_id: str | None) -> str:
        """A role trusting the service; it requires ``external_id`` when one is given."""
        return self.iam.create_role(RoleName=name, AssumeRolePolicyDocument=self.trust(external_id))["Role"]["Arn"]

    def retrust(self, name: str, external_id: str | None) -> None:
        self.iam.update_assume_role_policy(RoleName=name, PolicyDocument=self.trust(external_id))


@pytest.fixture(scope="module")
def sts_with_trust():
    with TrustingMoto() as server:
        yield AuthMoto(server)


@pytest.fixture
def service_identity(sts_with_trust, monkeypatch):
    """The service's own identity (environment) and its STS (the operator's endpoint: this moto)."""
    key, secret = sts_with_trust.keys["offload-service"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    aws.configure(sts_endpoint_url=sts_with_trust.url)
    yield sts_with_trust
    aws.configure(sts_endpoint_url=None)


def save_aws(client, company_id: int, **fields):
    page = client.get(f"/admin/settings/{company_id}/").get_data(as_text=True)
    resp = client.post(f"/admin/settings/{company_id}/save", data={"csrf_token": csrf_from(page), "section": "aws",
                                                                    **fields})
    return resp, client.get(resp.headers["Location"]).get_data(as_text=True)


def stored(company_id: int, key: str):
    db.session.expire_all()
    return db.session.get(Company, company_id).settings.get_setting(key)


def external_id(company_id: int) -> str:
    return stored(company_id, "aws_external_id")


def test_the_role_with_a_bogus_region_is_refused(app, client, company, make_user, service_identity):
    """The review's bypass: an open role saved with a region STS does not answer in."""
    arn = service_identity.role(f"open-{company.id}", None)
    login_as(client, make_user, "mgr@acme.test", company_id=company.id)
    resp, page = save_aws(client, company.id, aws_role_arn=arn, aws_region="xx-nowhere-1")
    assert resp.status_code == 303 and "Not saved" in page and "not an AWS region" in page
    assert stored(company.id, "aws_role_arn") is None
    # the region is no way round the check: with a real region the open role is refused too
    resp, page = save_aws(client, company.id, aws_role_arn=arn, aws_region="ap-southeast-2")
    assert "without the external id" in page and stored(company.id, "aws_role_arn") is None


def test_a_role_requiring_the_external_id_is_confirmed_and_assumed(app, client, company, make_user,
                                                                   service_identity):
    arn = service_identity.role(f"guarded-{company.id}", external_id(company.id))
    login_as(client, make_user, "mgr@acme.test", company_id=company.id)
    resp, page = save_aws(client, company.id, aws_role_arn=arn, aws_region="eu-west-1")
    assert "saved" in page and "could not be checked" not in page, page[page.find("section-aws"):][:3000]
    config = db.session.get(Company, company.id).settings.provider_config()
    assert aws.role_confirmed(config)
    creds = aws_session(config).get_credentials().get_frozen_credentials()
    assert creds.token and creds.access_key != service_identity.keys["offload-service"][0]


def test_changing_the_region_checks_the_role_again(app, client, company, make_user, service_identity):
    """Confirmed once, then the role's trust policy loses the condition: the next change of any AWS
    setting (here the region, as the review changed it back) checks again and refuses it."""
    name = f"switch-{company.id}"
    arn = service_identity.role(name, external_id(company.id))
    login_as(client, make_user, "mgr@acme.test", company_id=company.id)
    save_aws(client, company.id, aws_role_arn=arn, aws_region="us-east-1")
    assert stored(company.id, aws.CONFIRMED_KEY)
    service_identity.retrust(name, None)
    resp, page = save_aws(client, company.id, aws_role_arn=arn, aws_region="eu-west-1")
    assert "without the external id" in page
    assert stored(company.id, "aws_region") == "us-east-1"  # refused: nothing of the change was kept


def test_a_role_without_a_confirmation_is_checked_at_first_use(app, company, service_identity):
    """A role stored without the check (an older version, a database edit): its first use checks it;
    an open one is never assumed, one that requires the external id is."""
    settings = db.session.get(Company, company.id).settings
    ext = external_id(company.id)
    for name, required, assumed in ((f"old-open-{company.id}", None, False),
                                    (f"old-guarded-{company.id}", ext, True)):
        settings.set_setting("aws_role_arn", service_identity.role(name, required))
        settings.set_setting("aws_region", "us-east-1")
        db.session.commit()
        config = settings.provider_config()
        assert not aws.role_confirmed(config)
        if assumed:
            assert aws_session(config).get_credentials().get_frozen_credentials().token
        else:
            with pytest.raises(RoleNotConfirmed, match="without the external id"):
                aws_session(config)


def test_aws_region_must_be_a_real_region():
    assert aws.valid_region(" EU-West-1 ") == "eu-west-1" and aws.valid_region("cn-north-1") == "cn-north-1"
    for bogus in ("xx-nowhere-1", "us-east-1.evil", "", "auto"):
        with pytest.raises(ValueError, match="not an AWS region"):
            aws.valid_region(bogus)
    assert aws.sts_region("arn:aws-cn:iam::123456789012:role/x") == "cn-north-1"
    assert aws.sts_region("arn:aws:iam::123456789012:role/x") == "us-east-1"
