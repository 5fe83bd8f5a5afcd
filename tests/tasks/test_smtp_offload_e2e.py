"""SMTP submission end to end through offload mode: a Moodle's mail, taken by the SMTP process, goes to
the company's SQS queue and its Lambda sends each message through SES as the LMS wrote it (the bytes,
with the service's Received: on top and Bcc: gone). A message too large for the queue goes as a link
to a copy in the company's bucket (S3 on moto), which the retention purge deletes; a message larger
than the database keeps is sent from the copy the SMTP process stored there.

Real parts: the SMTP process (aiosmtpd, in this process), smtplib as the LMS's client, PostgreSQL or
SQLite, Redis, moto (SQS, S3), the Lambda's handler, aws-ses-v2-local (whose store only keeps parsed
fields, so the Lambda's SendEmail calls are also read as they leave, by a botocore event hook)."""
from __future__ import annotations

import smtplib
from datetime import timedelta
from email.message import EmailMessage

import pytest
from sqlalchemy import select

from core import submissions
from core.db import db
from core.models import Job, Recipient, SmtpMessage, utcnow
from providers import mime
from tests.support.app import run_worker_burst
from tests.support.certificates import client as s3_client
from tests.support.offload import REGION


@pytest.fixture
def company(make_company, moto_server, queue_url, aws_lambda, s3_bucket, monkeypatch):
    """In offload mode on the moto queue, with its own bucket (S3 on moto) for large messages."""
    found = make_company("Acme Learning", provider="aws", mode="offload", sender="noreply@acme.test",
                         aws_region=REGION, aws_endpoint_url=moto_server.url, aws_access_key="testing",
                         aws_secret_key="testing", sqs_queue_url=queue_url, s3_bucket=s3_bucket)
    monkeypatch.setenv("CALLBACK_SECRET", found.secret)
    return found


@pytest.fixture
def sent_raw(aws_lambda):
    """The Raw data of every SendEmail call the Lambda makes, by destination, as it goes to SES."""
    calls: dict[str, bytes] = {}

    def capture(params, **_):
        data = params.get("Content", {}).get("Raw", {}).get("Data")
        if data is not None:
            calls[params["Destination"]["ToAddresses"][0]] = bytes(data)

    aws_lambda.module.ses_client().meta.events.register("provide-client-params.sesv2.SendEmail", capture)
    return calls


def utf8_with_attachment() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Mödle Site <noreply@acme.test>"
    msg["To"] = "Łucja Wąs <lucja@example.com>, 王芳 <wang@example.com>"
    msg["Bcc"] = "hidden@example.com"
    msg["Subject"] = "Zażółć gęślą jaźń: 你的账户"
    msg["Message-ID"] = "<utf8-1@acme.test>"
    msg.set_content("Witaj Łucjo,\nyour account is ready.\n")
    msg.add_alternative("<p>Witaj <b>Łucjo</b></p>", subtype="html")
    msg.add_attachment(b"%PDF-1.4 course guide\n" * 40, maintype="application", subtype="pdf",
                       filename="przewodnik kursu.pdf")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def plain(subject: str, lines: int, message_id: str) -> bytes:
    head = (f"From: Moodle <noreply@acme.test>\r\nTo: ann@example.com\r\nSubject: {subject}\r\n"
            f"Message-ID: <{message_id}@acme.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "\r\n")
    return (head + "".join(f"line {i:06d} " + "x" * 80 + "\r\n" for i in range(lines))).encode()


def test_smtp_mail_goes_through_sqs_and_the_lambda_as_the_lms_wrote_it(app, smtp_server, company, aws_lambda, ses,
                                                                       live_url, s3_bucket, sent_raw, set_settings):
    set_settings(bulk_threshold=10)  # three messages: a job each
    small, queue_sized, huge = utf8_with_attachment(), plain("Course pack", 4_000, "pack"), \
        plain("Archive", 13_000, "archive")
    assert 256 * 1024 < len(queue_sized) < submissions.LARGE_BYTES < len(huge)
    server = smtp_server()
    with smtplib.SMTP(server.host, server.port, timeout=30) as client:
        client.login(str(company.id), company.token)
        client.sendmail("bounces@acme.test", ["lucja@example.com", "wang@example.com"], small)
        client.sendmail("bounces@acme.test", ["ann@example.com"], queue_sized)
        client.sendmail("bounces@acme.test", ["bob@example.com"], huge)
    made = submissions.close_window(company.id, "notification", now=utcnow() + timedelta(hours=1)).jobs
    assert len(made) == 3
    stored = {m.subject: m for m in db.session.execute(select(SmtpMessage)).scalars()}
    assert stored["Archive"].raw is None and stored["Archive"].storage_key  # the SMTP process put it in S3
    assert stored["Course pack"].raw is not None and stored["Course pack"].storage_key is None

    run_worker_burst(app)  # plan, then submit to SQS
    assert ses.store() == []  # the service sent nothing itself
    assert aws_lambda.drain() == 3

    db.session.rollback()
    jobs = db.session.execute(select(Job).order_by(Job.id)).scalars().all()
    assert [(j.source, j.status, j.emails_sent) for j in jobs] == [("smtp", "completed", 2), ("smtp", "completed", 1),
                                                                  ("smtp", "completed", 1)]
    routes = set(db.session.execute(select(Recipient.route).where(Recipient.job_id.in_([j.id for j in jobs])))
                 .scalars())
    assert routes == {"offload:sqs"}
    assert sorted(sent_raw) == ["ann@example.com", "bob@example.com", "lucja@example.com", "wang@example.com"]
    # every byte as the LMS wrote it, but for our Received: on top and the Bcc: taken out
    for to, original in [("lucja@example.com", small), ("wang@example.com", small), ("ann@example.com", queue_sized),
                         ("bob@example.com", huge)]:
        got = sent_raw[to]
        assert got.startswith(b"Received: from ")
        assert mime.without(got, ["received"]) == mime.without(original, ["bcc"]), to
    assert b"hidden@example.com" not in sent_raw["lucja@example.com"]
    by_to = {tuple(m["destination"]["to"]): m for m in ses.store()}
    assert len(ses.store()) == 4
    assert any(m["subject"] == "Zażółć gęślą jaźń: 你的账户" for m in by_to.values())

    # the message kept in the database went by a link: its copy in the bucket, recorded on it
    db.session.expire_all()
    linked = db.session.get(SmtpMessage, stored["Course pack"].id)
    assert linked.raw is not None and linked.storage_key == f"smtp/{company.id}/{linked.job_id}/{linked.id}.eml"
    bucket = s3_client()
    assert bucket.get_object(Bucket=s3_bucket, Key=linked.storage_key)["Body"].read() == mime.without(
        sent_raw["ann@example.com"], [])
    for job in jobs:
        submissions.purge_raw(job.id)  # the retention purge
    db.session.commit()
    assert [k.get("Key") for k in bucket.list_objects_v2(Bucket=s3_bucket).get("Contents", [])] == []


def test_a_message_too_large_for_the_queue_fails_with_the_reason_without_storage(app, smtp_server, make_company,
                                                                                 moto_server, queue_url, aws_lambda,
                                                                                 live_url, set_settings,
                                                                                 monkeypatch):
    company = make_company("No Bucket Ltd", provider="aws", mode="offload", sender="noreply@acme.test",
                           aws_region=REGION, aws_endpoint_url=moto_server.url, aws_access_key="testing",
                           aws_secret_key="testing", sqs_queue_url=queue_url)
    monkeypatch.setenv("CALLBACK_SECRET", company.secret)
    server = smtp_server()
    with smtplib.SMTP(server.host, server.port, timeout=30) as client:
        client.login(str(company.id), company.token)
        client.sendmail("noreply@acme.test", ["ann@example.com"], plain("Course pack", 4_000, "pack2"))
    submissions.close_window(company.id, "notification", now=utcnow() + timedelta(hours=1))
    run_worker_burst(app)
    db.session.rollback()
    [recipient] = db.session.execute(select(Recipient)).scalars().all()
    assert recipient.status == "failed"
    assert recipient.error.startswith("message_too_large: too large for the queue, and the company has no storage")
    assert aws_lambda.receive() == []
