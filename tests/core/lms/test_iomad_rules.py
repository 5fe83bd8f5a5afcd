"""IOMAD's own rules (CONTRACT §7.1), one test each, on IOMAD's real tables
(MariaDB and PostgreSQL) with rows written as ``queue_for_cron`` writes them,
sent through a real SMTP server: which rows are due, whom they go to, their
Reply-To, the copies IOMAD sends, and what is marked ``sent``."""
from __future__ import annotations

import time
from collections import Counter

import pytest
from sqlalchemy import select

from core.db import db
from core.lms import email_queue
from core.models import LmsEmailCopy, LmsEmailRow
from core.suppressions import suppress
from tests.support.lms import ACME_IOMAD, OTHER_IOMAD, connect, learners, poll, send_all
from tests.support.moodle import SHOP_ADMIN, SUPPORT_USER, MoodleDb


@pytest.fixture(params=[("mysql", "mdl_"), ("postgresql", "lms_")], ids=lambda p: f"{p[0]}-{p[1]}")
def lms(request):
    db_ = MoodleDb(*request.param)
    db_.add_company(ACME_IOMAD, "Acme Learning IOMAD")
    db_.add_company(OTHER_IOMAD, "Other IOMAD Co")
    yield db_
    db_.drop()


@pytest.fixture
def acme(make_company, smtp_sink, lms):
    company = make_company("Acme Learning", provider="smtp", smtp_host="127.0.0.1", smtp_port=smtp_sink.port,
                           smtp_tls="none", sender="noreply@acme.test")
    connect(company, lms)
    return company


def our_rows(company_id: int) -> dict[int, LmsEmailRow]:
    db.session.expire_all()
    return {r.lms_row_id: r for r in db.session.execute(LmsEmailRow.scoped(company_id)).scalars()}


def delivered(smtp_sink) -> Counter:
    return Counter(to for m in smtp_sink.messages for to in m.rcpt_tos)


def row_ids(lms: MoodleDb) -> list[int]:
    return [r.id for r in lms.emails()]


def test_a_row_is_due_when_due_is_before_now_not_at_now(app, acme, lms, smtp_sink):
    now = int(time.time())
    lms.add_users(learners(3), ACME_IOMAD)
    lms.queue_emails([{"userid": 100, "companyid": ACME_IOMAD, "due": now - 1},
                      {"userid": 101, "companyid": ACME_IOMAD, "due": now},
                      {"userid": 102, "companyid": ACME_IOMAD, "due": now + 1}])
    found = email_queue.poll(acme.company, force=False, chunk=100, max_rows=1000, now=now)
    assert found.taken == 1
    send_all(app)
    assert delivered(smtp_sink) == {"learner100@acme.test": 1}
    assert [r.sent is not None for r in lms.emails()] == [True, False, False]


def test_rows_of_suspended_deleted_or_unknown_users_stay_untouched_and_go_when_the_user_returns(
        app, runner, acme, lms, smtp_sink):
    lms.add_users([{"id": 51, "email": "gone@acme.test", "deleted": 1},
                   {"id": 52, "email": "paused@acme.test", "suspended": 1}], ACME_IOMAD)
    lms.queue_emails([{"userid": 51, "companyid": ACME_IOMAD}, {"userid": 52, "companyid": ACME_IOMAD},
                      {"userid": 99999, "companyid": ACME_IOMAD}])
    found = poll(runner, acme)
    assert (found["taken"], found["failed"]) == ("0", "0"), found
    send_all(app)
    assert our_rows(acme.id) == {} and all(r.sent is None for r in lms.emails())

    lms.execute(f"UPDATE {lms.t('user')} SET suspended = 0 WHERE id = 52")
    assert poll(runner, acme)["taken"] == "1"
    send_all(app)
    assert delivered(smtp_sink) == {"paused@acme.test": 1}
    assert [r.sent is not None for r in lms.emails()] == [False, True, False]


def test_company_suspended_notices_reach_suspended_users(app, runner, acme, lms, smtp_sink):
    lms.add_users([{"id": 52, "email": "paused@acme.test", "suspended": 1},
                   {"id": 51, "email": "gone@acme.test", "deleted": 1, "suspended": 1}], ACME_IOMAD)
    lms.queue_emails([{"userid": 52, "companyid": ACME_IOMAD, "templatename": "company_suspended",
                       "subject": "Your company is suspended"},
                      {"userid": 52, "companyid": ACME_IOMAD, "templatename": "user_create"},
                      {"userid": 51, "companyid": ACME_IOMAD, "templatename": "company_suspended"}])
    assert poll(runner, acme)["taken"] == "1"
    send_all(app)
    (mail,) = smtp_sink.messages
    assert mail.rcpt_tos == ["paused@acme.test"] and mail.message["Subject"] == "Your company is suspended"
    assert [r.sent is not None for r in lms.emails()] == [True, False, False]


def test_shop_administrator_rows_go_to_commerce_admin_email(app, runner, acme, lms, smtp_sink):
    lms.add_users(learners(1), ACME_IOMAD)
    lms.queue_emails([{"userid": SHOP_ADMIN, "companyid": ACME_IOMAD, "templatename": "invoice_ordercomplete_admin",
                       "subject": "New order"}])
    # no shop administrator address: IOMAD could not send it either, and nothing marks it sent
    assert poll(runner, acme)["taken"] == "0"
    send_all(app)
    assert our_rows(acme.id) == {} and lms.emails()[0].sent is None

    lms.set_config("commerce_admin_email", "shop@acme.test")
    assert poll(runner, acme)["taken"] == "1"
    send_all(app)
    assert delivered(smtp_sink) == {"shop@acme.test": 1}
    assert lms.emails()[0].sent is not None and lms.emails()[0].userid == SHOP_ADMIN


def test_site_admin_senders_are_ignored_and_the_templates_reply_to_wins(app, runner, acme, lms, smtp_sink):
    lms.add_users(learners(4) + [{"id": 60, "email": "siteadmin@acme.test"},
                                 {"id": 61, "email": "trainer@acme.test"}], ACME_IOMAD)
    lms.set_config("siteadmins", "2,60")
    lms.queue_emails([
        {"userid": 103, "companyid": ACME_IOMAD, "senderid": SUPPORT_USER},  # Moodle's support user: none
        {"userid": 100, "companyid": ACME_IOMAD, "senderid": 60},   # a site administrator: no Reply-To
        {"userid": 101, "companyid": ACME_IOMAD, "senderid": 61},   # a trainer: Reply-To the trainer
        {"userid": 102, "companyid": ACME_IOMAD, "senderid": 61,    # the template's reply-to line wins
         "template": lms.add_template(ACME_IOMAD, "course_completed_manager", emailreplytoother="help@acme.test")},
    ])
    assert poll(runner, acme)["taken"] == "4"
    send_all(app)
    reply = {m.rcpt_tos[0]: m.message["Reply-To"] for m in smtp_sink.messages}
    assert reply == {"learner100@acme.test": None, "learner101@acme.test": "trainer@acme.test",
                     "learner102@acme.test": "help@acme.test", "learner103@acme.test": None}


def test_emailto_and_emailcc_users_and_addresses_get_one_copy_each(app, runner, acme, lms, smtp_sink):
    lms.add_users(learners(1) + [{"id": 110, "email": "to-user@acme.test"},
                                 {"id": 111, "email": "paused@acme.test", "suspended": 1},
                                 {"id": 112, "email": "cc-user@acme.test"}], ACME_IOMAD)
    template = lms.add_template(ACME_IOMAD, "course_completed_manager", emailto="110,111", emailcc="112",
                                emailtoother="partner@other.test,not-an-address",
                                emailccother="audit@other.test,learner100@acme.test")
    lms.queue_emails([{"userid": 100, "companyid": ACME_IOMAD, "templatename": "course_completed_manager",
                       "template": template, "subject": "Course done"}])
    found = poll(runner, acme)
    assert (found["taken"], found["copies"]) == ("1", "4"), found
    assert poll(runner, acme)["taken"] == "0"
    send_all(app)
    assert delivered(smtp_sink) == {"learner100@acme.test": 1, "to-user@acme.test": 1, "cc-user@acme.test": 1,
                                    "partner@other.test": 1, "audit@other.test": 1}
    assert {m.message["Subject"] for m in smtp_sink.messages} == {"Course done"}
    kinds = Counter(db.session.execute(select(LmsEmailCopy.kind)).scalars())
    assert kinds == {"to": 2, "cc": 2}
    assert lms.emails()[0].sent is not None


def test_managers_and_supervisors_get_copies_of_user_templates(app, runner, acme, lms, smtp_sink):
    top = lms.top_department[ACME_IOMAD]
    sales = lms.add_department(ACME_IOMAD, "Sales", parent=top)
    support = lms.add_department(ACME_IOMAD, "Support", parent=top)
    lms.execute(f"UPDATE {lms.t('company')} SET emailprofileid = 7 WHERE id = {ACME_IOMAD}")
    lms.add_users(learners(4), ACME_IOMAD, department=sales)
    lms.add_users([{"id": 200, "email": "ceo@acme.test"}, {"id": 203, "email": "away@acme.test", "suspended": 1}],
                  ACME_IOMAD, managertype=1)
    lms.add_users([{"id": 201, "email": "sales-boss@acme.test"}], ACME_IOMAD, department=sales, managertype=1)
    lms.add_users([{"id": 202, "email": "support-boss@acme.test"}], ACME_IOMAD, department=support, managertype=1)
    lms.add_users([{"id": 204, "email": "dept-manager@acme.test"}], ACME_IOMAD, department=sales, managertype=2)
    lms.set_profile_field(100, 7, "coach@partner.test, not-an-address")
    lms.set_profile_field(101, 7, "coach@partner.test")
    no_managers = lms.add_template(ACME_IOMAD, "user_create", disabledmanager="1")
    no_supervisors = lms.add_template(ACME_IOMAD, "license_allocated", disabledsupervisor="1")
    lms.queue_emails([
        {"userid": 100, "companyid": ACME_IOMAD, "templatename": "user_create"},            # both
        {"userid": 100, "companyid": ACME_IOMAD, "templatename": "course_completed_manager"},  # not a user template
        {"userid": 101, "companyid": ACME_IOMAD, "templatename": "user_create", "template": no_managers},
        {"userid": 102, "companyid": ACME_IOMAD, "templatename": "license_allocated", "template": no_supervisors},
    ])
    found = poll(runner, acme)
    assert (found["taken"], found["copies"]) == ("4", "6"), found
    send_all(app)
    assert delivered(smtp_sink) == {
        "learner100@acme.test": 2, "learner101@acme.test": 1, "learner102@acme.test": 1,
        "ceo@acme.test": 2, "sales-boss@acme.test": 2, "coach@partner.test": 2}
    # without the company's field, IOMAD reads $CFG->companyemailprofileid
    lms.execute(f"UPDATE {lms.t('company')} SET emailprofileid = NULL WHERE id = {ACME_IOMAD}")
    lms.set_config("companyemailprofileid", "8")
    lms.set_profile_field(103, 8, "mentor@partner.test")
    lms.queue_emails([{"userid": 103, "companyid": ACME_IOMAD, "templatename": "password_update",
                       "template": lms.add_template(ACME_IOMAD, "password_update", disabledmanager="1")}])
    smtp_sink.messages.clear()
    assert poll(runner, acme)["copies"] == "1"
    send_all(app)
    assert delivered(smtp_sink) == {"learner103@acme.test": 1, "mentor@partner.test": 1}
    assert all(r.sent for r in lms.emails())


def test_iomad_mail_carries_no_unsubscribe_and_only_bounce_lists_stop_it(app, runner, acme, lms, smtp_sink):
    lms.add_users(learners(1), ACME_IOMAD)
    suppress(acme.id, "learner100@acme.test", "unsubscribe")
    lms.queue_emails([{"userid": 100, "companyid": ACME_IOMAD, "templatename": "user_reset"},
                      {"userid": 100, "companyid": ACME_IOMAD, "templatename": "course_completed_manager"}])
    assert poll(runner, acme)["taken"] == "2"
    send_all(app)
    assert delivered(smtp_sink) == {"learner100@acme.test": 2}
    assert all(m.message["List-Unsubscribe"] is None for m in smtp_sink.messages)
    assert all(b"/u/" not in m.data and b"Unsubscribe" not in m.data for m in smtp_sink.messages)  # no footer
    assert all(r.sent for r in lms.emails())

    # a hard bounce stops it; the row is held, not marked sent: no delivery was attempted
    suppress(acme.id, "learner100@acme.test", "bounce")
    lms.queue_emails([{"userid": 100, "companyid": ACME_IOMAD, "templatename": "user_reset"}])
    assert poll(runner, acme)["taken"] == "1"
    send_all(app)
    assert poll(runner, acme)["taken"] == "0"  # settled at this poll (no batch ran): held, not taken again
    assert len(smtp_sink.messages) == 2
    held = our_rows(acme.id)[lms.emails()[-1].id]
    assert (held.status, held.error) == ("held", "suppressed (bounce list)") and held.marked_at is not None
    assert lms.emails()[-1].sent is None


def test_the_site_queue_company_sends_the_rows_no_company_takes(app, runner, make_company, acme, lms, smtp_sink):
    lms.add_company(7, "Unmapped IOMAD Co")
    lms.add_users(learners(2), ACME_IOMAD)
    lms.add_users(learners(2, start=300, domain="other.test"), OTHER_IOMAD)
    lms.add_users(learners(2, start=700, domain="unmapped.test"), 7)
    lms.add_users([{"id": 900, "email": "site-user@lms.test"}], None)
    other = make_company("Other Co", provider="smtp", smtp_host="127.0.0.1", smtp_port=smtp_sink.port,
                         smtp_tls="none", sender="noreply@other.test")
    connect(other, lms, iomad_company_id=OTHER_IOMAD)
    connect(acme, lms, iomad_site_queue=1)
    lms.queue_emails([{"userid": u, "companyid": c} for u, c in
                      ((100, ACME_IOMAD), (300, OTHER_IOMAD), (700, 7), (701, 7), (900, 0))])
    found = poll(runner, acme)
    assert found["taken"] == "4", found  # its own, company 7's two, the site's (companyid 0)
    assert poll(runner, other)["taken"] == "1"
    send_all(app)
    assert delivered(smtp_sink) == {"learner100@acme.test": 1, "learner300@other.test": 1,
                                    "learner700@unmapped.test": 1, "learner701@unmapped.test": 1,
                                    "site-user@lms.test": 1}
    assert set(our_rows(acme.id)) == {r.id for r in lms.emails() if r.companyid in (ACME_IOMAD, 7, 0)}
    assert all(r.sent for r in lms.emails())
    # one company per Moodle database sends its site queue
    with pytest.raises(ValueError, match=f"company {acme.id} already sends"):
        connect(other, lms, iomad_site_queue=1)
    db.session.rollback()


def test_iomads_purge_of_old_rows_is_opt_in_with_iomads_age(app, runner, acme, lms):
    now = int(time.time())
    old, recent = now - 181 * 86400, now - 179 * 86400
    lms.add_users(learners(1), ACME_IOMAD)
    lms.queue_emails([{"userid": 100, "companyid": ACME_IOMAD, "modifiedtime": old, "due": old},
                      {"userid": 100, "companyid": ACME_IOMAD, "modifiedtime": recent, "due": recent},
                      {"userid": 100, "companyid": ACME_IOMAD, "modifiedtime": old, "due": now + 3600},
                      {"userid": 300, "companyid": OTHER_IOMAD, "modifiedtime": old, "due": old}])
    lms.execute(f"UPDATE {lms.t('email')} SET sent = modifiedtime")
    before = row_ids(lms)
    assert poll(runner, acme)["purged"] == "0" and row_ids(lms) == before
    connect(acme, lms, iomad_purge=1)
    assert poll(runner, acme)["purged"] == "1"
    assert row_ids(lms) == [before[1], before[2], before[3]]  # not due yet, or another company's
    assert poll(runner, acme)["purged"] == "0"  # at most once an hour


def test_a_workers_poll_reads_on_and_looks_at_everything_again_every_minute(app, acme, lms, smtp_sink,
                                                                           monkeypatch):
    lms.add_users([{"id": 52, "email": "paused@acme.test", "suspended": 1}] + learners(2), ACME_IOMAD)
    lms.queue_emails([{"userid": 52, "companyid": ACME_IOMAD}, {"userid": 100, "companyid": ACME_IOMAD}])

    def worker_poll():
        return email_queue.poll(acme.company, force=False, chunk=100, max_rows=1000, full=False)

    assert worker_poll().taken == 1  # the first poll looks at everything
    lms.execute(f"UPDATE {lms.t('user')} SET suspended = 0 WHERE id = 52")
    lms.queue_emails([{"userid": 101, "companyid": ACME_IOMAD}])
    assert worker_poll().taken == 1  # reading on: the new row, not the returning user's older one
    monkeypatch.setattr(email_queue, "FULL_SCAN_S", 0)
    assert worker_poll().taken == 1  # a minute on: the whole queue again
    send_all(app)
    assert delivered(smtp_sink) == {"paused@acme.test": 1, "learner100@acme.test": 1, "learner101@acme.test": 1}
