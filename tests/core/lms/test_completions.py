"""Course completions in Moodle become one certificate each (user, course),
however often the poller reads them."""
from __future__ import annotations

import time
from collections import Counter

from sqlalchemy import select, update

from core.db import db
from core.models import CampaignSettings, Certificate, LmsCompletion
from tests.support.certificates import ses_settings
from tests.support.events import drain, make_template
from tests.support.lms import ACME_IOMAD, OTHER_IOMAD, add_completions, connect, poll


def test_completions_become_one_certificate_each(app, runner, make_company, ses, s3_bucket, moodle):
    company = make_company(**ses_settings(ses.url), s3_bucket=s3_bucket)
    connect(company, moodle, iomad_email_queue=0, lms_completions=1)
    make_template(company.id, "certificate", subject="Your {{ course_name }} certificate",
                  body_text="Well done {{ learner_name }}!", body_html=None)
    moodle.execute(f"INSERT INTO {moodle.t('course')} (id, fullname, shortname) VALUES "
                   "(1, 'Fire Safety', 'FS'), (2, 'Data Protection', 'DP')")
    moodle.add_users([{"id": 100, "email": "ann@acme.test", "firstname": "Ann", "lastname": "Lee"},
                      {"id": 101, "email": "bob@acme.test", "firstname": "Bob", "lastname": "Ray"},
                      {"id": 102, "email": "cy@acme.test", "firstname": "Cy", "lastname": "Wu"},
                      {"id": 103, "email": "gone@acme.test", "deleted": 1}], ACME_IOMAD)
    moodle.add_users([{"id": 900, "email": "other@other.test"}], OTHER_IOMAD)
    t = int(time.time()) - 3600
    add_completions(moodle, [(100, 1, t), (100, 2, t), (101, 1, t), (102, 1, None), (103, 1, t + 1),
                             (900, 1, t)])

    first = poll(runner, company)
    assert (first["completions"], first["completions_skipped"], first["email_queue"]) == ("3", "1", "off"), first
    assert first["certificate_jobs"] == "2"  # Ann's two certificates go in two jobs (one address per job)
    drain(app)
    certs = Counter((c.learner_email, c.learner_name, c.course_name)
                    for c in db.session.execute(select(Certificate)).scalars())
    assert certs == {("ann@acme.test", "Ann Lee", "Fire Safety"): 1, ("ann@acme.test", "Ann Lee", "Data Protection"): 1,
                     ("bob@acme.test", "Bob Ray", "Fire Safety"): 1}
    assert Counter(m["destination"]["to"][0] for m in ses.store()) == {"ann@acme.test": 2, "bob@acme.test": 1}

    assert poll(runner, company)["completions"] == "0"
    # Cy completes; Bob completes again (Moodle moves timecompleted): only Cy's is new
    moodle.execute(f"UPDATE {moodle.t('course_completions')} SET timecompleted = :t WHERE userid IN (101, 102)",
                   {"t": t + 60})
    again = poll(runner, company)
    # the look-back reads the last hour again: Ann's two, Bob's and the deleted learner's, taken before
    assert (again["completions"], again["completions_already_taken"], again["completions_rechecked"]) == (
        "1", "0", "4"), again
    # a watermark reset reads everything again and takes nothing twice
    db.session.execute(update(CampaignSettings).values(completions_after_time=None, completions_after_id=None,
                                                       completions_scan_id=None))
    db.session.commit()
    reset = poll(runner, company)
    assert (reset["completions"], reset["completions_already_taken"]) == ("0", "5")
    drain(app)
    assert db.session.execute(select(Certificate)).scalars().all().__len__() == 4
    skipped = db.session.execute(select(LmsCompletion.skipped).where(LmsCompletion.lms_user_id == 103)).scalar()
    assert skipped == "the user is deleted"


def test_no_certificate_template_takes_nothing(app, runner, make_company, moodle):
    company = make_company()
    connect(company, moodle, iomad_email_queue=0, lms_completions=1)
    moodle.execute(f"INSERT INTO {moodle.t('course')} (id, fullname, shortname) VALUES (1, 'Fire Safety', 'FS')")
    moodle.add_users([{"id": 100, "email": "ann@acme.test"}], ACME_IOMAD)
    add_completions(moodle, [(100, 1, int(time.time()))])
    found = poll(runner, company)
    assert found["exit_code"] == 1 and "no email template of type certificate" in found["completions_error"]
    row = db.session.execute(CampaignSettings.scoped(company.id)).scalar_one()
    assert row.completions_after_time is None
    make_template(company.id, "certificate", subject="Cert", body_text="{{ course_name }}", body_html=None)
    assert poll(runner, company)["completions"] == "1"


def cert_company(make_company, ses, s3_bucket, moodle, iomad_company_id=ACME_IOMAD, name="Acme Learning"):
    company = make_company(name, **ses_settings(ses.url), s3_bucket=s3_bucket)
    connect(company, moodle, iomad_email_queue=0, lms_completions=1, iomad_company_id=iomad_company_id)
    make_template(company.id, "certificate", subject="Your {{ course_name }} certificate",
                  body_text="Well done {{ learner_name }}!", body_html=None)
    return company


def test_a_completion_written_later_with_an_earlier_timecompleted_is_taken(app, runner, make_company, ses,
                                                                           s3_bucket, moodle):
    company = cert_company(make_company, ses, s3_bucket, moodle)
    moodle.execute(f"INSERT INTO {moodle.t('course')} (id, fullname, shortname) VALUES (1, 'Fire Safety', 'FS')")
    moodle.add_users([{"id": 100 + i, "email": f"l{i}@acme.test"} for i in range(3)], ACME_IOMAD)
    now = int(time.time())
    add_completions(moodle, [(100, 1, now - 60), (102, 1, None)])  # 102 enrolled, not completed yet
    assert poll(runner, company)["completions"] == "1"
    # an import writes a completion from last month; Moodle's completion task completes 102 ten minutes back
    add_completions(moodle, [(101, 1, now - 30 * 86400)])
    moodle.execute(f"UPDATE {moodle.t('course_completions')} SET timecompleted = :t WHERE userid = 102",
                   {"t": now - 600})
    again = poll(runner, company)
    assert (again["completions"], again["completions_already_taken"]) == ("2", "0"), again
    assert poll(runner, company)["completions"] == "0"
    drain(app)
    assert sorted(c.learner_email for c in db.session.execute(select(Certificate)).scalars()) == [
        "l0@acme.test", "l1@acme.test", "l2@acme.test"]


def test_a_learner_in_two_companies_gets_one_certificate_per_completion(app, runner, make_company, ses,
                                                                        s3_bucket, moodle):
    acme = cert_company(make_company, ses, s3_bucket, moodle)
    other = cert_company(make_company, ses, s3_bucket, moodle, iomad_company_id=OTHER_IOMAD, name="Other Co")
    moodle.execute(f"INSERT INTO {moodle.t('course')} (id, fullname, shortname) VALUES "
                   "(1, 'Other Co Course', 'OC'), (2, 'Shared Course', 'SC')")
    moodle.execute(f"INSERT INTO {moodle.t('company_course')} (companyid, courseid, departmentid) VALUES "
                   f"({OTHER_IOMAD}, 1, {moodle.top_department[OTHER_IOMAD]})")
    moodle.add_users([{"id": 100, "email": "ann@acme.test"}], ACME_IOMAD)  # Ann's first company: Acme
    moodle.join_company([100], OTHER_IOMAD)
    t = int(time.time()) - 60
    add_completions(moodle, [(100, 1, t), (100, 2, t)])
    assert poll(runner, acme)["completions"] == "1"  # course 2: no company_course, Ann's first company
    assert poll(runner, other)["completions"] == "1"  # course 1: company_course gives it to Other Co
    drain(app)
    certs = {(c.company_id, c.course_name) for c in db.session.execute(select(Certificate)).scalars()}
    assert certs == {(acme.id, "Shared Course"), (other.id, "Other Co Course")}
