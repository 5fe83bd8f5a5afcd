"""Fixtures of the LMS connector's tests: a Moodle/IOMAD database on the
machine's real MariaDB or PostgreSQL (fresh per test, each engine with
``mdl_`` and another prefix), and the servers mail goes to."""
from __future__ import annotations

import uuid

import pytest

from tests.support.certificates import client
from tests.support.lms import ACME_IOMAD, ENGINES, OTHER_IOMAD
from tests.support.moodle import MoodleDb
from tests.support.servers import SmtpSink


@pytest.fixture(params=ENGINES, ids=lambda p: f"{p[0]}-{p[1]}")
def moodle(request):
    db_ = MoodleDb(*request.param)
    db_.add_company(ACME_IOMAD, "Acme Learning IOMAD")
    db_.add_company(OTHER_IOMAD, "Other IOMAD Co")
    yield db_
    db_.drop()


@pytest.fixture
def ses(ses_local):
    """The run's SES emulator with an empty store."""
    ses_local.clear()
    return ses_local


@pytest.fixture
def smtp_sink():
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def s3_bucket(moto_server, monkeypatch) -> str:
    """A fresh bucket in moto's S3 for certificates."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server.url)
    name = f"certs-{uuid.uuid4().hex[:10]}"
    client().create_bucket(Bucket=name)
    return name
