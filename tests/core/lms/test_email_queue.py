"""Taking over IOMAD's email queue, against a Moodle/IOMAD database on the
machine's real MariaDB and PostgreSQL (``mdl_`` and another prefix), with
aws-ses-v2-local or an SMTP sink as the provider."""
from __future__ import annotations

import hashlib
import time
from collections import Counter
from datetime import UTC

import pytest
from sqlalchemy import select, text

from core import companies, settings
from core.db import db
from core.lms import email_queue, marking
from core.lms.email_queue import job_type_for
from core.lms.html_text import html_to_text
from core.models import Job, LmsEmailRow, Recipient
from tests.support.jobs import aws_settings
from tests.support.lms import ACME_IOMAD, OTHER_IOMAD, connect, learners, poll, send_all
from tests.support.servers import free_port

TEMPLATES = ("user_create", "license_allocated", "course_completed_manager")


def our_rows(company_id: int) -> list[LmsEmailRow]:
    db.session.expire_all()
    return list(db.session.execute(LmsEmailRow.scoped(company_id).order_by(LmsEmailRow.lms_row_id)).scalars())


def test_job_kinds_and_text_part():
    assert [job_type_for(n) for n in ("user_create", "user_reset", "password_update", "license_allocated",
                                      "licence_reminder", "course_completed_manager", None)] == [
        "csv_import", "csv_import", "csv_import", "license_allocation", "license_allocation", "notification",
        "notification"]
    plain = html_to_text('<html><head><style>p{}</style></head><body><p>Hi <b>Ann</b></p>'
                         '<p>Go <a href="https://lms.test/x">here</a></p><ul><li>one</li></ul></body></html>')
    assert plain == "Hi Ann\n\nGo here (https://lms.test/x)\n\n- one\n"


@pytest.mark.slow
def test_takes_over_2000_rows_each_user_one_email_marked_after_acceptance(app, runner, make_company, ses,
                                                                        moodle):
    company = make_company("Acme Learning", **aws_settings(ses.url))
    connect(company, moodle)
    users = learners(2000)
    moodle.add_users(users, ACME_IOMAD)
    others = learners(30, start=5000, domain="other.test")
    moodle.add_users(others, OTHER_IOMAD)
    moodle.queue_emails([{"userid": u["id"], "companyid": ACME_IOMAD, "templatename": TEMPLATES[i % 3],
                          "subject": f"Welcome {u['firstname']}",
                          "body": f"<p>Hi {u['firstname']}, your password is <b>Pw-{u['id']}</b></p>"}
                         for i, u in enumerate(users)])
    moodle.queue_emails([{"userid": u["id"], "companyid": OTHER_IOMAD} for u in others])
    moodle.queue_emails([{"userid": users[0]["id"], "companyid": ACME_IOMAD, "due": int(time.time()) + 3600}])
    other_before = moodle.emails(OTHER_IOMAD)

    found = poll(runner, company)
    chunks = -(-2000 // settings.current().lms_chunk)
    assert (found["taken"], found["jobs"], found["failed"]) == ("2000", str(3 * chunks), "0"), found
    kinds = Counter()
    for jtype, count in db.session.execute(select(Job.type, Job.email_count).where(Job.company_id == company.id)):
        kinds[jtype] += count
    assert kinds == {"csv_import": 667, "license_allocation": 667, "notification": 666}
    # taken, not yet accepted by the provider: no Moodle row is marked
    assert all(r.sent is None for r in moodle.emails(ACME_IOMAD))

    send_all(app)
    store = ses.store()
    got = Counter(a for m in store for a in m["destination"]["to"])
    assert got == Counter({u["email"]: 1 for u in users})
    mail = next(m for m in store if m["destination"]["to"] == [users[7]["email"]])
    assert mail["subject"] == f"Welcome {users[7]['firstname']}"
    assert "<b>Pw-107</b>" in mail["body"]["html"] and "your password is Pw-107" in mail["body"]["text"]

    rows = {r.id: r for r in moodle.emails(ACME_IOMAD)}
    ours = our_rows(company.id)
    assert len(ours) == 2000 and all(o.status == "sent" and o.marked_at for o in ours)
    sent_at = dict(db.session.execute(select(Recipient.id, Recipient.sent_at)
                                      .where(Recipient.company_id == company.id)).all())
    for o in ours:  # Moodle's ``sent`` is the time the provider accepted that row's message
        accepted = int(sent_at[o.recipient_id].replace(tzinfo=UTC).timestamp())
        assert rows[o.lms_row_id].sent == o.sent_time == accepted
    future = [r for r in rows.values() if r.sent is None]
    assert len(future) == 1  # the row due in an hour waits
    assert moodle.emails(OTHER_IOMAD) == other_before  # another IOMAD company's rows are never touched

    again = poll(runner, company)
    assert (again["taken"], again["jobs"]) == ("0", "0")


def test_rows_are_marked_only_after_the_provider_accepted(app, runner, make_company, ses, moodle):
    dead = f"http://127.0.0.1:{free_port()}"
    company = make_company("Acme Learning", **aws_settings(dead))
    connect(company, moodle)
    users = learners(5)
    moodle.add_users(users, ACME_IOMAD)
    moodle.queue_emails([{"userid": u["id"], "companyid": ACME_IOMAD} for u in users])
    assert poll(runner, company)["taken"] == "5"
    send_all(app)  # the provider cannot be reached: nothing accepted
    assert all(r.sent is None for r in moodle.emails(ACME_IOMAD))
    assert all(o.marked_at is None for o in our_rows(company.id))

    companies.configure(db.session.get(type(company.company), company.id), {"aws_endpoint_url": ses.url})
    db.session.commit()
    send_all(app)
    send_all(app)
    assert len(ses.store()) == 5
    assert all(r.sent for r in moodle.emails(ACME_IOMAD))


def test_bad_rows_fail_alone_with_a_reason(app, runner, make_company, smtp_sink, moodle):
    company = make_company("Acme Learning", provider="smtp", smtp_host="127.0.0.1", smtp_port=smtp_sink.port,
                           smtp_tls="none", sender="noreply@acme.test")
    connect(company, moodle)
    good = learners(4)
    moodle.add_users(good + [{"id": 50, "email": ""}, {"id": 53, "email": "not-an-address"},
                             {"id": 60, "email": "boss@acme.test", "firstname": "Boss"}], ACME_IOMAD)
    moodle.queue_emails([
        {"userid": 100, "companyid": ACME_IOMAD, "senderid": 60, "subject": "Course done",
         "body": "<p>Well done <b>Ann</b></p>"},
        {"userid": 50, "companyid": ACME_IOMAD},                         # no address
        {"userid": 101, "companyid": ACME_IOMAD, "headers": "a:1:{s:3:\"abc"},  # headers that don't decode
        {"userid": 102, "companyid": ACME_IOMAD, "body": "Plain text & no tags"},
        {"userid": 53, "companyid": ACME_IOMAD},                         # invalid address
        {"userid": 103, "companyid": ACME_IOMAD, "varsreplaced": 0},     # not rendered by IOMAD
        {"userid": 103, "companyid": ACME_IOMAD, "attachment": {
            "filepath": "/var/moodledata/filedir/ab/cd/" + "a" * 40, "filename": "logo.png"}},  # no dataroot
        {"userid": 103, "companyid": ACME_IOMAD, "template": {"emailreplytoother": "help@acme.test"},
         "subject": "With headers"},
    ])
    found = poll(runner, company)
    assert (found["taken"], found["failed"]) == ("3", "5"), found
    send_all(app)

    mails = {m.rcpt_tos[0]: m.message for m in smtp_sink.messages}
    assert set(mails) == {"learner100@acme.test", "learner102@acme.test", "learner103@acme.test"}
    done = mails["learner100@acme.test"]
    assert done["Reply-To"] == "boss@acme.test" and done["Subject"] == "Course done"
    assert "<b>Ann</b>" in done.get_body(("html",)).get_content()
    assert done.get_body(("plain",)).get_content().strip() == "Well done Ann"
    plain = mails["learner102@acme.test"]
    assert plain.get_body(("html",)) is None and plain.get_body(("plain",)).get_content().strip() == \
        "Plain text & no tags"
    assert mails["learner103@acme.test"]["Reply-To"] == "help@acme.test"

    reasons = {o.lms_row_id: o.error for o in our_rows(company.id) if o.status == "failed"}
    assert sorted(reasons.values()) == sorted([
        "the user has no email address", "the headers could not be decoded (bad string)",
        "the user's email address is invalid", "not rendered by IOMAD (varsreplaced is not 1)",
        "the row has an attachment and no Moodle dataroot is configured (lms_dataroot)"])
    # every row, sent or failed for good, is marked so IOMAD never sends it again
    assert all(r.sent for r in moodle.emails(ACME_IOMAD))
    assert all(o.marked_at for o in our_rows(company.id))


def test_attachments_come_from_the_configured_dataroot(app, runner, make_company, smtp_sink, moodle, tmp_path):
    company = make_company("Acme Learning", provider="smtp", smtp_host="127.0.0.1", smtp_port=smtp_sink.port,
                           smtp_tls="none", sender="noreply@acme.test")
    connect(company, moodle, lms_dataroot=str(tmp_path))
    content = b"%PDF-1.4 a certificate"
    digest = hashlib.sha1(content).hexdigest()
    (tmp_path / "filedir" / digest[:2] / digest[2:4]).mkdir(parents=True)
    (tmp_path / "filedir" / digest[:2] / digest[2:4] / digest).write_bytes(content)
    moodle.add_users(learners(2), ACME_IOMAD)
    moodle.queue_emails([
        {"userid": 100, "companyid": ACME_IOMAD, "attachment": {
            "filepath": f"/srv/moodledata/filedir/{digest[:2]}/{digest[2:4]}/{digest}", "filename": "cert.pdf"}},
        {"userid": 101, "companyid": ACME_IOMAD, "attachment": {
            "filepath": "/srv/moodledata/filedir/00/11/" + "0" * 40, "filename": "gone.pdf"}},
        {"userid": 101, "companyid": ACME_IOMAD, "attachment": {
            "filepath": "/etc/passwd", "filename": "passwd"}},
    ])
    assert poll(runner, company)["failed"] == "2"
    send_all(app)
    (mail,) = [m.message for m in smtp_sink.messages]
    (part,) = list(mail.iter_attachments())
    assert part.get_filename() == "cert.pdf" and part.get_content() == content
    errors = sorted(o.error for o in our_rows(company.id) if o.status == "failed")
    assert errors == ["the attachment is not a file of Moodle's file store (filedir/..)",
                      "the attachment's file is not in the Moodle dataroot"]


def test_refuses_while_iomads_own_task_is_enabled(app, runner, make_company, ses, moodle, set_settings):
    company = make_company("Acme Learning", **aws_settings(ses.url))
    connect(company, moodle)
    moodle.add_users(learners(3), ACME_IOMAD)
    moodle.queue_emails([{"userid": 100 + i, "companyid": ACME_IOMAD} for i in range(3)])
    moodle.set_iomad_task(disabled=0)
    found = poll(runner, company)
    assert found["exit_code"] == 1 and found["taken"] == "0"
    assert "IOMAD's own email task is enabled" in found["email_error"]
    assert "Scheduled tasks" in found["email_error"] and "OFFLOAD_LMS_FORCE=1" in found["email_error"]
    assert our_rows(company.id) == [] and all(r.sent is None for r in moodle.emails())

    set_settings(lms_force=True)
    assert poll(runner, company)["taken"] == "3"
    set_settings(lms_force=False)
    moodle.set_iomad_task(disabled=1)
    assert poll(runner, company)["taken"] == "0"


def test_the_row_id_is_the_idempotency_key(app, runner, make_company, ses, moodle, monkeypatch):
    """A crash before our commit takes nothing; one after it (before the Moodle
    update) never takes the row again."""
    company = make_company("Acme Learning", **aws_settings(ses.url))
    connect(company, moodle)
    moodle.add_users(learners(6), ACME_IOMAD)
    moodle.queue_emails([{"userid": 100 + i, "companyid": ACME_IOMAD} for i in range(6)])

    real_create = email_queue.create_job

    def crash_before_commit(*args, before_commit, **kwargs):
        def boom(job):
            before_commit(job)
            raise KeyboardInterrupt("worker killed")
        return real_create(*args, before_commit=boom, **kwargs)

    monkeypatch.setattr(email_queue, "create_job", crash_before_commit)
    with pytest.raises(KeyboardInterrupt):
        email_queue.poll(company.company, force=False, chunk=100, max_rows=1000)
    db.session.rollback()
    assert our_rows(company.id) == [] and db.session.execute(text("SELECT count(*) FROM jobs")).scalar() == 0

    monkeypatch.setattr(email_queue, "create_job", real_create)
    monkeypatch.setattr(marking, "mark_finished", lambda *a, **k: 0)  # "crash" before any Moodle update
    assert poll(runner, company)["taken"] == "6"
    second = poll(runner, company)
    assert (second["taken"], second["already_taken"], second["jobs"]) == ("0", "6", "0")
    monkeypatch.undo()
    send_all(app)
    assert Counter(a for m in ses.store() for a in m["destination"]["to"]) == \
        Counter({f"learner{100 + i}@acme.test": 1 for i in range(6)})
    assert all(r.sent for r in moodle.emails())


def test_an_offload_company_sends_iomad_rows_through_its_smtp(app, runner, make_company, smtp_sink, moodle):
    """Cloud workers cannot carry IOMAD's finished HTML: these jobs stay with the service's workers."""
    company = make_company("Acme Learning", provider="aws", mode="offload", aws_region="us-east-1",
                           sqs_queue_url="https://sqs.us-east-1.amazonaws.com/123456789012/never-used",
                           smtp_host="127.0.0.1", smtp_port=smtp_sink.port, smtp_tls="none",
                           sender="noreply@acme.test")
    connect(company, moodle)
    moodle.add_users(learners(3), ACME_IOMAD)
    moodle.queue_emails([{"userid": 100 + i, "companyid": ACME_IOMAD, "body": "<p>Hi <b>there</b></p>"}
                         for i in range(3)])
    assert poll(runner, company)["taken"] == "3"
    send_all(app)
    assert sorted(m.rcpt_tos[0] for m in smtp_sink.messages) == [f"learner{100 + i}@acme.test" for i in range(3)]
    assert "<b>there</b>" in smtp_sink.messages[0].message.get_body(("html",)).get_content()
    assert all(r.sent for r in moodle.emails())


def test_a_poll_that_stops_at_max_rows_reads_on_at_once(app, make_company, ses, moodle, set_settings):
    """A worker's poll stops at ``lms_max_rows`` and says so (``backlog``); its task queues the next poll
    right away (not at the next poll slot), which reads on from there. Every row is sent once."""
    from core import queue
    from tasks.lms import poll_company
    from tests.support.app import run_worker_burst

    company = make_company("Acme Learning", **aws_settings(ses.url))
    connect(company, moodle)
    users = learners(250)
    moodle.add_users(users, ACME_IOMAD)
    set_settings(lms_max_rows=200, lms_chunk=100)
    assert poll_company(company.id)["backlog"] == "no"  # the full look at an empty queue; then it reads on
    moodle.queue_emails([{"userid": u["id"], "companyid": ACME_IOMAD} for u in users])

    first = poll_company(company.id)
    assert (first["taken"], first["jobs"], first["backlog"]) == (200, 2, "yes"), first
    assert queue.port().status(f"lms-poll-{company.id}") in queue.WAITING  # the next poll, queued now
    assert len(our_rows(company.id)) == 200

    run_worker_burst(app)  # the queued poll (it reads on: 50 rows, no backlog, nothing queued after it)
    assert [r.lms_row_id for r in our_rows(company.id)] == sorted(int(r.id) for r in moodle.emails())
    send_all(app)
    assert Counter(a for m in ses.store() for a in m["destination"]["to"]) == \
        Counter({u["email"]: 1 for u in users})
    assert all(r.sent for r in moodle.emails())
