"""The LMS connection: settings (admins and the CLI only), the URL rules,
Test connection, and inactive learners on both engines."""
from __future__ import annotations

import time

import pytest

from core import audiences, companies
from core.db import db
from core.lms.connection import LmsError, config_for, describe_connection
from core.models import Company
from providers import guard
from tests.support.app import csrf_from
from tests.support.lms import ACME_IOMAD, OTHER_IOMAD, connect, learners


@pytest.mark.parametrize("url, message", [
    ("sqlite:////tmp/moodle.db", "only postgresql:// and mysql://"),
    ("mysql://u:p@/moodle?unix_socket=/run/mysqld/mysqld.sock", "query parameters are not accepted"),
    ("postgresql://u:p@/moodle", "a host name or address is required"),
    ("mysql://u:p@db.example.test:3306/moodle?local_infile=1", "query parameters"),
    ("postgresql://u:p@db.example.test:5432/", "the database name is missing"),
    ("not a url", "not a database URL"),
])
def test_bad_lms_urls_are_refused_without_echoing_them(make_company, url, message):
    company = make_company()
    with pytest.raises(ValueError) as err:
        companies.configure(company.company, {"lms_url": url})
    assert message in str(err.value) and "u:p" not in str(err.value)


def test_the_lms_keys_of_company_configure(runner, make_company):
    company = make_company()
    out = runner.invoke(args=["company", "configure", str(company.id), "lms_url=mysql://moodle:pw@127.0.0.1:3306/m",
                              "lms_prefix=m2_", "iomad_company_id=7", "iomad_email_queue=1", "lms_completions=1",
                              "lms_dataroot=/srv/moodledata/", "iomad_site_queue=1", "iomad_purge=1"])
    assert out.exit_code == 0, out.output
    db.session.expire_all()
    cfg = config_for(db.session.get(Company, company.id))
    assert (cfg.url, cfg.prefix, cfg.iomad_company_id, cfg.email_queue, cfg.completions, cfg.dataroot,
            cfg.site_queue, cfg.purge) == ("mysql://moodle:pw@127.0.0.1:3306/m", "m2_", 7, True, True,
                                           "/srv/moodledata", True, True)
    # the new switches are an administrator's, like the rest of the LMS settings
    with pytest.raises(ValueError, match="iomad_site_queue: only an administrator"):
        companies.configure(db.session.get(Company, company.id), {"iomad_site_queue": "0"}, admin=False)
    # the old key still works
    assert runner.invoke(args=["company", "configure", str(company.id),
                               "moodle_db_url=postgresql://m:pw@127.0.0.1/m"]).exit_code == 0
    bad = runner.invoke(args=["company", "configure", str(company.id), "lms_prefix=Bad-Prefix"])
    assert bad.exit_code != 0 and "lms_prefix" in bad.output


def test_the_guard_checks_the_lms_host(make_company, moodle):
    company = make_company()
    connect(company, moodle)
    before = guard.policy()
    guard.configure(allow_private=False, production=False)
    try:
        with pytest.raises(LmsError, match="loopback"):
            describe_connection(company.company)
    finally:
        guard.configure(allow_private=before.allow_private, production=before.production,
                        allowed_hosts=before.allowed_hosts)


def test_test_connection_shows_release_company_and_counts(runner, make_company, moodle):
    company = make_company()
    connect(company, moodle)
    moodle.add_users(learners(3), ACME_IOMAD)
    moodle.add_users(learners(2, start=900, domain="other.test"), OTHER_IOMAD)
    moodle.queue_emails([{"userid": 100, "companyid": ACME_IOMAD}, {"userid": 900, "companyid": OTHER_IOMAD}])
    found = describe_connection(company.company)
    assert found["moodle_release"] == "4.5 (Build: 20241007)"
    assert found["iomad_company"] == "Acme Learning IOMAD"
    assert (found["users"], found["queued_emails"], found["iomad_email_task"]) == (3, 1, "disabled")
    out = runner.invoke(args=["lms", "test", str(company.id)])
    assert out.exit_code == 0 and "moodle_release: 4.5 (Build: 20241007)" in out.output


def test_connection_errors_are_fixed_phrases(make_company, moodle):
    company = make_company()
    url = moodle.url.replace("root@", "root:wrong-Secret-pw@").replace("postgres@", "nobody:wrong-Secret-pw@")
    connect(company, moodle, lms_url=url)
    with pytest.raises(LmsError) as err:
        describe_connection(company.company)
    text = str(err.value)
    assert text.startswith("the LMS database could not be read (OperationalError")
    assert "wrong-Secret-pw" not in text and "denied" not in text.lower() and "authentication" not in text.lower()
    connect(company, moodle, iomad_company_id=99)
    with pytest.raises(LmsError, match="no IOMAD company with id 99"):
        describe_connection(db.session.get(Company, company.id))


def test_only_admins_set_and_test_the_lms_connection(client, auth, make_company, make_user, moodle):
    company = make_company()
    manager, password = make_user("boss@acme.test", "manager", company.id)
    auth.login(manager.email, password)
    page = client.get(f"/admin/settings/{company.id}/").get_data(as_text=True)
    assert "section-lms" not in page and "lms_url" not in page
    token = csrf_from(page)
    assert client.post(f"/admin/settings/{company.id}/save", data={
        "csrf_token": token, "section": "lms", "lms_url": moodle.url}).status_code == 403
    assert client.post(f"/admin/settings/{company.id}/test-lms", data={"csrf_token": token}).status_code == 403
    db.session.expire_all()
    assert db.session.get(Company, company.id).moodle_db_url is None

    auth.logout()
    admin, password = make_user("root@offload.test", "admin")
    auth.login(admin.email, password)
    page = client.get(f"/admin/settings/{company.id}/").get_data(as_text=True)
    assert 'id="section-lms"' in page
    resp = client.post(f"/admin/settings/{company.id}/save", data={
        "csrf_token": csrf_from(page), "section": "lms", "lms_url": moodle.url, "lms_prefix": moodle.prefix,
        "iomad_company_id": str(ACME_IOMAD), "iomad_email_queue": "1", "lms_dataroot": ""})
    assert resp.status_code == 302
    page = client.get(f"/admin/settings/{company.id}/").get_data(as_text=True)
    assert moodle.url not in page  # write-only: it holds the database password
    resp = client.post(f"/admin/settings/{company.id}/test-lms", data={"csrf_token": csrf_from(page)},
                       follow_redirects=True)
    assert "LMS connection works" in resp.get_data(as_text=True) and "Acme Learning IOMAD" in \
        resp.get_data(as_text=True)


def test_inactive_learners_on_both_engines(make_company, moodle):
    company = make_company()
    connect(company, moodle)
    now = int(time.time())
    moodle.add_users([{"id": 2, "email": "active@acme.test", "lastaccess": now - 86400},
                      {"id": 3, "email": "idle@acme.test", "lastaccess": now - 40 * 86400, "firstname": "Idle"},
                      {"id": 4, "email": "gone@acme.test", "lastaccess": 0, "deleted": 1}], ACME_IOMAD)
    moodle.add_users([{"id": 5, "email": "other@other.test", "lastaccess": 0}], OTHER_IOMAD)
    found = audiences.inactive_users(company.company, 30)
    assert [r["email"] for r in found] == ["idle@acme.test"]
    assert found[0]["data"]["firstname"] == "Idle" and found[0]["data"]["days_inactive"] == 40
    assert audiences.count_inactive(company.company, 30) == 1
