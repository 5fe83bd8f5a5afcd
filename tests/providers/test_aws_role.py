"""A company's role ARN (with the dashboard's external id) is assumed through
STS, against moto in server mode; its credentials then send SQS messages.

The suite's moto plays every role as open (no trust policies), so these configs carry the confirmation the
settings store after the check (``aws.role_fingerprint``); tests/security/test_h16_roles_fail_closed.py
makes the check itself against a moto that evaluates trust policies."""
from __future__ import annotations

import json

import boto3
import pytest

from providers import aws
from providers.aws import SESSION_NAME, aws_session
from providers.offload import get_transport

ROLE_POLICY = json.dumps({"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "sts:AssumeRole",
    "Condition": {"StringEquals": {"sts:ExternalId": "ext-42"}}}]})


def make_role(moto_server) -> str:
    iam = boto3.client("iam", endpoint_url=moto_server.url, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    try:
        return iam.create_role(RoleName="offload-sender", AssumeRolePolicyDocument=ROLE_POLICY)["Role"]["Arn"]
    except iam.exceptions.EntityAlreadyExistsException:
        return iam.get_role(RoleName="offload-sender")["Role"]["Arn"]


@pytest.fixture(autouse=True)
def operator_sts(moto_server):
    """STS AssumeRole goes to the operator's endpoint (OFFLOAD_STS_ENDPOINT_URL), never a tenant's."""
    aws.configure(sts_endpoint_url=moto_server.url)
    yield
    aws.configure(sts_endpoint_url=None)


def confirmed(config: dict) -> dict:
    return {**config, aws.CONFIRMED_KEY: aws.role_fingerprint(config)}


def test_role_arn_is_assumed_with_the_external_id(moto_server, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "service-key")  # the service's own identity
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "service-secret")
    role = make_role(moto_server)
    config = {"aws_role_arn": role, "aws_external_id": "ext-42", "aws_region": "us-east-1",
              "aws_endpoint_url": moto_server.url}
    session = aws_session(confirmed(config))
    creds = session.get_credentials().get_frozen_credentials()
    assert creds.access_key != "service-key" and creds.token  # temporary role credentials
    identity = session.client("sts", endpoint_url=moto_server.url).get_caller_identity()
    assert identity["Arn"].endswith(f"assumed-role/offload-sender/{SESSION_NAME}")


def test_sqs_transport_sends_with_the_role(moto_server, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "service-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "service-secret")
    role = make_role(moto_server)
    sqs = boto3.client("sqs", endpoint_url=moto_server.url, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    url = sqs.create_queue(QueueName="role-queue")["QueueUrl"]
    transport = get_transport("sqs", confirmed({"aws_role_arn": role, "aws_external_id": "ext-42",
                                                "aws_region": "us-east-1", "aws_endpoint_url": moto_server.url,
                                                "sqs_queue_url": url}))
    results = transport.submit([("b1", {"job_id": 1, "batch_number": 1})])
    assert [r.ok for r in results] == [True]
    got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)["Messages"]
    assert json.loads(got[0]["Body"]) == {"job_id": 1, "batch_number": 1}


def test_access_keys_win_over_a_role(moto_server):
    session = aws_session({"aws_access_key": "AKIAKEYS", "aws_secret_key": "s",
                           "aws_role_arn": "arn:aws:iam::1:role/x"})
    assert session.get_credentials().get_frozen_credentials().access_key == "AKIAKEYS"
