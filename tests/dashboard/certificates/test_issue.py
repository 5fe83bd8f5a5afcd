"""Certificate jobs end to end: the API, the issuing RQ job, storage (moto S3, R2 via
miniflare), the SES emulator, the download link and the PDFs themselves."""
from __future__ import annotations

import base64
import io
from datetime import timedelta

import pytest
from pypdf import PdfReader
from rq.job import Job as RQJob
from sqlalchemy import select

from core import companies
from core.certificates import revoke
from core.db import db
from core.models import Certificate, CertificateTemplate, Job, Recipient, utcnow
from core.queue import connection, enqueue_issue, issue_rq_id
from tasks.certificates import issue_certificates
from tasks.sweep import sweep
from tests.support.app import run_worker_burst
from tests.support.certificates import CERT_JOB, DOWNLOAD_LINK, http_get, learners, png, ses_settings, sha256, submit


def job(job_id: int) -> Job:
    db.session.expire_all()
    return db.session.get(Job, job_id)


def certificates_of(job_id: int) -> list[Certificate]:
    db.session.expire_all()
    return list(db.session.execute(select(Certificate).where(Certificate.job_id == job_id)
                                   .order_by(Certificate.id)).scalars())


def check_job(client, ses, job_id: int, company_id: int, kind: str, count: int) -> None:
    """Every learner: one valid PDF in storage, one email whose link downloads exactly that PDF."""
    done = job(job_id)
    assert done.status == "completed", done.error_log
    assert done.emails_sent == count
    certs = certificates_of(job_id)
    assert len(certs) == count and len({c.code for c in certs}) == count
    by_email = {c.learner_email: c for c in certs}
    mails = [m for m in ses.store() if m["destination"]["to"][0] in by_email]
    assert len(mails) == count
    for mail in mails:
        cert = by_email[mail["destination"]["to"][0]]
        assert cert.company_id == company_id and cert.storage == kind
        assert cert.object_key == f"certificates/{company_id}/{job_id}/{cert.code}.pdf"
        assert DOWNLOAD_LINK.findall(mail["body"]["text"]) == [cert.code]
        assert cert.code in mail["body"]["html"]
        resp = client.get(f"/certificates/{cert.code}/download")
        assert resp.status_code == 302
        status, pdf = http_get(resp.headers["Location"])  # the expiring presigned link
        assert status == 200 and sha256(pdf) == cert.checksum
        reader = PdfReader(io.BytesIO(pdf))
        assert len(reader.pages) == 1
        text = reader.pages[0].extract_text()
        assert cert.learner_name in text and cert.code in text


@pytest.mark.slow
def test_hundred_certificates_to_s3_and_hundred_to_r2_each_link_downloads_its_pdf(
        app, client, make_company, ses, s3_bucket, gateway_for):
    aws = make_company(**ses_settings(ses.url), s3_bucket=s3_bucket)
    cloud = make_company(**ses_settings(ses.url))
    gateway_for(cloud)
    s3_job = submit(client, aws, learners(100, "s"))
    r2_job = submit(client, cloud, learners(100, "r"))
    run_worker_burst(app)
    check_job(client, ses, s3_job, aws.id, "s3", 100)
    check_job(client, ses, r2_job, cloud.id, "worker_r2", 100)
    assert len(ses.store()) == 200


@pytest.mark.parametrize("per", ["learner", "job"])
def test_attachment_delivery_puts_the_pdf_in_the_email(app, client, make_company, ses, s3_bucket, per):
    company = make_company(**ses_settings(ses.url), s3_bucket=s3_bucket)
    if per == "learner":
        job_id = submit(client, company, learners(3, certificate_delivery="attachment"))
    else:  # the job-level option of the request
        job_id = submit(client, company, learners(3), certificate_delivery="attachment")
    run_worker_burst(app)
    assert job(job_id).status == "completed"
    certs = {c.learner_email: c for c in certificates_of(job_id)}
    store = ses.store()
    assert len(store) == 3
    for mail in store:
        cert = certs[mail["destination"]["to"][0]]
        (attachment,) = mail["attachments"]
        assert attachment["filename"] == f"certificate-{cert.code}.pdf"
        assert attachment["contentType"] == "application/pdf"
        pdf = base64.b64decode(attachment["content"])
        assert sha256(pdf) == cert.checksum
        assert cert.learner_name in PdfReader(io.BytesIO(pdf)).pages[0].extract_text()


def test_a_body_without_the_link_gets_it_and_learner_fields_come_in_moodle_shapes(
        app, client, make_company, ses, s3_bucket):
    company = make_company(**ses_settings(ses.url), s3_bucket=s3_bucket)
    recipients = [{"email": "ann@acme.test", "data": {"firstname": "Ann", "lastname": "Okafor",
                                                      "course_name": "Manual Handling",
                                                      "completion_date": 1795000000, "expiry_date": "2027-03-01"}}]
    resp = client.post("/api/v1/jobs", headers=company.auth, json={
        "type": "certificate", "subject": "Well done", "body_text": "Congratulations {{ firstname }}!",
        "recipients": recipients})
    run_worker_burst(app)
    assert job(resp.json["id"]).status == "completed"
    (cert,) = certificates_of(resp.json["id"])
    assert (cert.learner_name, cert.course_name) == ("Ann Okafor", "Manual Handling")
    assert cert.expires_at.date().isoformat() == "2027-03-01"
    (mail,) = ses.store()
    text = mail["body"]["text"]
    assert text.startswith("Congratulations Ann!")
    assert f"/certificates/{cert.code}/download" in text and f"/verify/{cert.code}" in text


def test_a_learner_without_a_course_fails_alone(app, client, make_company, ses, s3_bucket):
    company = make_company(**ses_settings(ses.url), s3_bucket=s3_bucket)
    broken = {"email": "nocourse@acme.test", "data": {"learner_name": "No Course"}}
    bad_date = {"email": "baddate@acme.test", "data": {"learner_name": "Bad Date", "course_name": "X",
                                                       "completion_date": "yesterday"}}
    refused = client.post("/api/v1/jobs", headers=company.auth,
                          json={**CERT_JOB, "recipients": learners(4) + [broken, bad_date]})
    assert refused.status_code == 400 and refused.json["details"]["fields"] == ["course_name"]  # at submit
    job_id = submit(client, company, learners(4) + [broken, bad_date], on_missing="fail_recipient")
    run_worker_burst(app)
    done = job(job_id)
    assert done.status == "partial_failure" and done.emails_sent == 4 and done.emails_failed == 2
    errors = dict(db.session.execute(select(Recipient.email, Recipient.error)
                                     .where(Recipient.job_id == job_id, Recipient.status == "failed")).all())
    assert errors == {"nocourse@acme.test": "missing_fields: course_name",
                      "baddate@acme.test": "certificate_error: completion_date is not an ISO 8601 date"}
    assert len(certificates_of(job_id)) == 4 and len(ses.store()) == 4


def test_the_company_template_and_logo_are_used(app, client, make_company, ses, s3_bucket):
    company = make_company(**ses_settings(ses.url), s3_bucket=s3_bucket)
    db.session.add(CertificateTemplate(
        company_id=company.id, name="House style", logo=png("navy"), css="p { font-size: 18pt; }",
        html="<html><body><p>ACME HOUSE STYLE</p><img src=\"{{ logo_src }}\"><p>{{ learner_name }}</p>"
             "<p>{{ course_name }}, {{ completion_date }}</p></body></html>"))
    db.session.commit()
    job_id = submit(client, company, learners(2))
    run_worker_burst(app)
    assert job(job_id).status == "completed"
    for cert in certificates_of(job_id):
        status, pdf = http_get(client.get(f"/certificates/{cert.code}/download").headers["Location"])
        page = PdfReader(io.BytesIO(pdf)).pages[0]
        assert "ACME HOUSE STYLE" in page.extract_text() and "20 November 2026" in page.extract_text()
        assert page.images, "the logo is in the PDF"


def test_no_storage_pauses_the_job_and_sends_nothing(app, client, make_company, ses, set_settings):
    set_settings(local_storage=False)  # as in production: no disk storage unless enabled
    company = make_company(**ses_settings(ses.url))
    job_id = submit(client, company, learners(2))
    run_worker_burst(app)
    paused = job(job_id)
    assert paused.status == "paused"
    assert "set s3_bucket or cloudflare_worker_url" in paused.paused_reason
    assert certificates_of(job_id) == [] and ses.store() == []


def test_issuing_twice_issues_once_and_a_revoked_certificate_is_not_mailed(
        app, client, make_company, ses, s3_bucket):
    company = make_company(**ses_settings(ses.url), s3_bucket=s3_bucket)
    job_id = submit(client, company, learners(3))
    assert issue_certificates(job_id) == 3
    assert issue_certificates(job_id) == 0
    first = certificates_of(job_id)[0]
    revoke(first, "issued in error")
    run_worker_burst(app)
    done = job(job_id)
    assert len(certificates_of(job_id)) == 3
    assert (done.status, done.emails_sent, done.emails_failed) == ("partial_failure", 2, 1)
    assert first.learner_email not in {m["destination"]["to"][0] for m in ses.store()}
    error = db.session.execute(select(Recipient.error).where(Recipient.id == first.recipient_id)).scalar()
    assert "the certificate was revoked" in error


def test_rq_gets_ids_only(app, client, make_company, ses, s3_bucket):
    company = make_company(**ses_settings(ses.url), s3_bucket=s3_bucket)
    job_id = submit(client, company, learners(1))
    enqueue_issue(job_id)
    queued = RQJob.fetch(issue_rq_id(job_id), connection=connection())
    assert queued.args == (job_id,) and queued.kwargs == {}


def test_a_job_paused_for_storage_resumes_once_a_bucket_is_set(app, client, make_company, ses, s3_bucket, set_settings):
    set_settings(local_storage=False)  # as in production: no disk storage unless enabled
    company = make_company(**ses_settings(ses.url))
    job_id = submit(client, company, learners(2))
    run_worker_burst(app)
    assert job(job_id).status == "paused"
    companies.configure(company.company, {"s3_bucket": s3_bucket})
    db.session.commit()
    assert client.post(f"/api/v1/jobs/{job_id}/resume", headers=company.auth).status_code in (200, 202)
    db.session.execute(Job.__table__.update().where(Job.id == job_id).values(
        created_at=utcnow() - timedelta(minutes=1)))  # past the sweep's grace period
    db.session.commit()
    sweep()  # what the worker's scheduler runs every few seconds: re-plans the job
    run_worker_burst(app)
    done = job(job_id)
    assert done.status == "completed" and done.emails_sent == 2 and len(certificates_of(job_id)) == 2
