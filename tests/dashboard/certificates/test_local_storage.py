"""Certificates on this machine's disk (``local`` storage): the development
default, refused in production unless enabled, signed expiring download
links served by the app, a certificate job that completes with it, and
"Test connection" checking whichever storage is configured (a missing S3
bucket fails there, not later)."""
from __future__ import annotations

import io
import time

import pytest
from pypdf import PdfReader
from sqlalchemy import select

from core import companies
from core.certificates import StorageNotConfigured, configured_kind
from core.checks import read_result, start_connection_test
from core.db import db
from core.models import Certificate, Job
from core.settings import load
from providers.storage import LocalStorage, ObjectNotFound
from tests.support.app import run_worker_burst
from tests.support.certificates import DOWNLOAD_LINK, learners, ses_settings, sha256, submit
from tests.support.servers import SmtpSink


def job(job_id: int) -> Job:
    db.session.expire_all()
    return db.session.get(Job, job_id)


def certificates_of(job_id: int) -> list[Certificate]:
    db.session.expire_all()
    return list(db.session.execute(select(Certificate).where(Certificate.job_id == job_id)
                                   .order_by(Certificate.id)).scalars())


def test_local_storage_is_the_development_default_and_opt_in_in_production():
    assert load({"OFFLOAD_DEV": "1"}).local_storage is True
    prod = {"OFFLOAD_ENV": "production", "SECRET_KEY": "k" * 32,
            "OFFLOAD_ENCRYPTION_KEYS": "ZmDfcTF7_60GrrY167zsiPd67pEvs0aGOv2oasOM1Pg="}
    assert load(prod).local_storage is False
    assert load({**prod, "OFFLOAD_LOCAL_STORAGE": "1"}).local_storage is True


def test_production_refuses_local_storage_unless_enabled(app, make_company, set_settings):
    company = make_company(provider="smtp", sender="noreply@acme.test")
    assert configured_kind(company.company) == "local"
    set_settings(production=True, local_storage=False)
    with pytest.raises(StorageNotConfigured):
        configured_kind(company.company)


def test_local_files_and_signed_links(tmp_path):
    now = [1_800_000_000.0]
    storage = LocalStorage({"local_path": str(tmp_path), "base_url": "http://127.0.0.1:5000",
                            "signing_secret": "s"}, clock=lambda: now[0])
    storage.put("certificates/1/2/ABC.pdf", b"%PDF-1.4 x", "application/pdf")
    assert storage.get("certificates/1/2/ABC.pdf") == b"%PDF-1.4 x"
    url = storage.presigned_url("certificates/1/2/ABC.pdf", 300)
    assert url.startswith("http://127.0.0.1:5000/certificates/files/certificates/1/2/ABC.pdf?expires=")
    expires, sig = url.split("expires=")[1].split("&sig=")
    assert storage.check_link("certificates/1/2/ABC.pdf", expires, sig)
    assert not storage.check_link("certificates/1/2/OTHER.pdf", expires, sig)
    now[0] += 301
    assert not storage.check_link("certificates/1/2/ABC.pdf", expires, sig)  # expired
    with pytest.raises(ValueError):
        storage.put("../escape.pdf", b"x", "application/pdf")
    storage.delete("certificates/1/2/ABC.pdf")
    with pytest.raises(ObjectNotFound):
        storage.get("certificates/1/2/ABC.pdf")
    assert storage.test_connection()["kind"] == "local"


def test_a_certificate_job_completes_with_local_storage(app, client, make_company, ses, tmp_path, set_settings):
    set_settings(local_storage_path=str(tmp_path))
    company = make_company(**ses_settings(ses.url))
    job_id = submit(client, company, learners(3))
    run_worker_burst(app)
    done = job(job_id)
    assert done.status == "completed", done.error_log
    certs = certificates_of(job_id)
    assert len(certs) == 3 and {c.storage for c in certs} == {"local"}
    mails = ses.store()
    assert len(mails) == 3
    for cert in certs:
        assert (tmp_path / cert.object_key).exists()
        assert cert.code in DOWNLOAD_LINK.findall("".join(m["body"]["text"] for m in mails))
        redirect = client.get(f"/certificates/{cert.code}/download")
        assert redirect.status_code == 302 and "/certificates/files/" in redirect.headers["Location"]
        path = redirect.headers["Location"].split("://", 1)[1].split("/", 1)[1]
        pdf = client.get("/" + path)
        assert pdf.status_code == 200 and pdf.mimetype == "application/pdf"
        assert sha256(pdf.data) == cert.checksum
        assert cert.learner_name in PdfReader(io.BytesIO(pdf.data)).pages[0].extract_text()
        tampered = client.get("/" + path.replace("sig=", "sig=0"))
        assert tampered.status_code == 404
        page = client.get(f"/verify/{cert.code}")
        assert page.status_code == 200 and cert.learner_name in page.get_data(as_text=True)


def wait_for_check(company_id: int, check_id: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        result = read_result(company_id, check_id)
        if result and result.get("status") == "done":
            return result
        time.sleep(0.1)
    raise AssertionError("the connection test did not finish")


def test_test_connection_checks_the_configured_storage(app, make_company, moto_server, smtp_ok, set_settings):
    set_settings(aws_endpoint_url_s3=moto_server.url)
    company = make_company(provider="smtp", sender="noreply@acme.test", **smtp_ok,
                           s3_bucket="no-such-bucket-here", aws_access_key="AKIATESTTESTTEST",
                           aws_secret_key="test-secret", aws_region="us-east-1")
    check_id = start_connection_test(company.id)
    run_worker_burst(app)
    result = wait_for_check(company.id, check_id)
    storage = [c for c in result["checks"] if c["name"].startswith("Certificate storage")]
    assert len(storage) == 1 and storage[0]["name"] == "Certificate storage: S3 bucket"
    assert storage[0]["ok"] is False and "does not exist" in storage[0]["error"]
    assert result["ok"] is False

    companies.configure(company.company, {"s3_bucket": ""})  # no bucket: this machine's disk
    db.session.commit()
    check_id = start_connection_test(company.id)
    run_worker_burst(app)
    result = wait_for_check(company.id, check_id)
    (local,) = [c for c in result["checks"] if c["name"].startswith("Certificate storage")]
    assert local["name"] == "Certificate storage: this machine's disk" and local["ok"] is True


@pytest.fixture
def smtp_ok():
    with SmtpSink() as sink:
        yield {"smtp_host": "127.0.0.1", "smtp_port": str(sink.port), "smtp_tls": "none"}
