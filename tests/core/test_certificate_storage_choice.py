"""Which storage a company's certificates go to, from its delivery settings."""
from __future__ import annotations

import pytest

from core.certificate_issue import delivery_of, learner_fields, parse_date
from core.certificate_render import CertificateError
from core.certificates import StorageNotConfigured, storage_config, storage_kind

WORKER = "https://certs.acme.workers.dev"


@pytest.mark.parametrize("config, kind", [
    ({"provider": "aws", "s3_bucket": "b"}, "s3"),
    ({"provider": "smtp", "s3_bucket": "b", "cloudflare_worker_url": WORKER}, "s3"),
    ({"provider": "aws", "cloudflare_worker_url": WORKER}, "worker_r2"),
    ({"provider": "cloudflare", "cloudflare_worker_url": WORKER, "s3_bucket": "b"}, "worker_r2"),
    ({"provider": "cloudflare", "s3_bucket": "b"}, "r2"),
])
def test_storage_kind(config, kind):
    assert storage_kind(config) == kind


@pytest.mark.parametrize("provider", ["aws", "cloudflare", "smtp"])
def test_no_bucket_and_no_worker_is_a_permanent_error(provider):
    with pytest.raises(StorageNotConfigured):
        storage_kind({"provider": provider})


def test_the_worker_is_signed_with_the_callback_secret(app, make_company):
    company = make_company(provider="cloudflare", cloudflare_worker_url=WORKER)
    config = storage_config(company.company, "worker_r2")
    assert config == {"worker_url": WORKER, "callback_secret": company.secret}


def test_learner_fields():
    fields = learner_fields({"firstname": " Ann ", "lastname": "Li", "course_name": "Fire\nSafety",
                             "grade": 94, "completion_date": "2026-11-22T10:30:00Z"}, issuer="Acme")
    assert fields["learner_name"] == "Ann Li" and fields["course_name"] == "Fire Safety"
    assert fields["grade"] == "94" and fields["completion_date"].isoformat() == "2026-11-22"
    assert fields["expiry_date"] is None and fields["issuer"] == "Acme"
    with pytest.raises(CertificateError, match="learner_name"):
        learner_fields({"course_name": "X"}, issuer="Acme")
    assert parse_date("1795000000", "d").isoformat() == "2026-11-18"
    with pytest.raises(CertificateError, match="expiry_date"):
        parse_date("31/12/2027", "expiry_date")


def test_delivery_defaults_to_link():
    assert delivery_of(None) == "link" and delivery_of({"certificate_delivery": "fax"}) == "link"
    assert delivery_of({"certificate_delivery": "attachment"}) == "attachment"
