"""Re-engagement campaigns: audiences from a Moodle/IOMAD-shaped PostgreSQL
database (created here, dropped after) or an uploaded list; count preview;
scheduling."""
from __future__ import annotations

import io
import time
import uuid
from datetime import timedelta

import pytest
from rq.registry import ScheduledJobRegistry
from sqlalchemy import select

from core import audiences, companies
from core.db import db
from core.models import Job, Recipient, utcnow
from core.queue import DEFAULT
from core.unsubscribe import unsubscribe_url
from tasks.rq_queue import get_queue
from tests.support.app import PG_ADMIN_URL, csrf_from, pg_create, pg_drop
from tests.support.events import make_template

DAY = 86400
ACME_IOMAD, OTHER_IOMAD = 5, 6


@pytest.fixture(scope="module")
def moodle_db():
    """A fresh Moodle-shaped database: users of two IOMAD companies."""
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
    except psycopg.OperationalError:
        pytest.skip("no PostgreSQL at 127.0.0.1:5432")
    name = f"moodle_test_{uuid.uuid4().hex[:8]}"
    url = pg_create(name)
    now = int(time.time())
    users = [  # id, username, email, lastaccess, deleted, suspended, companies
        (2, "active", "active@lms.test", now - 2 * DAY, 0, 0, [ACME_IOMAD]),
        (3, "idle40", "idle40@lms.test", now - 40 * DAY, 0, 0, [ACME_IOMAD]),
        (4, "idle100", "idle100@lms.test", now - 100 * DAY, 0, 0, [ACME_IOMAD]),
        (5, "deleted", "deleted@lms.test", now - 100 * DAY, 1, 0, [ACME_IOMAD]),
        (6, "suspended", "suspended@lms.test", now - 100 * DAY, 0, 1, [ACME_IOMAD]),
        (7, "never", "never@lms.test", 0, 0, 0, [ACME_IOMAD]),
        (8, "otherco", "otherco@lms.test", now - 100 * DAY, 0, 0, [OTHER_IOMAD]),
        (9, "both", "both@lms.test", now - 60 * DAY, 0, 0, [ACME_IOMAD, OTHER_IOMAD, ACME_IOMAD]),
        (10, "idle25", "idle25@lms.test", now - 25 * DAY, 0, 0, [ACME_IOMAD]),
    ]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE mdl_user (id BIGSERIAL PRIMARY KEY, username VARCHAR(100) NOT NULL, "
                     "email VARCHAR(100) NOT NULL DEFAULT '', firstname VARCHAR(100) NOT NULL DEFAULT '', "
                     "lastname VARCHAR(100) NOT NULL DEFAULT '', deleted SMALLINT NOT NULL DEFAULT 0, "
                     "suspended SMALLINT NOT NULL DEFAULT 0, lastaccess BIGINT NOT NULL DEFAULT 0)")
        conn.execute("CREATE TABLE mdl_company_users (id BIGSERIAL PRIMARY KEY, companyid BIGINT NOT NULL, "
                     "userid BIGINT NOT NULL, departmentid BIGINT NOT NULL DEFAULT 0)")
        for uid, username, email, last, deleted, suspended, member_of in users:
            conn.execute("INSERT INTO mdl_user (id, username, email, firstname, lastname, deleted, suspended, "
                         "lastaccess) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                         (uid, username, email, username.title(), "Learner", deleted, suspended, last))
            for dept, cid in enumerate(member_of):
                conn.execute("INSERT INTO mdl_company_users (companyid, userid, departmentid) VALUES (%s, %s, %s)",
                             (cid, uid, dept))
    yield url
    pg_drop(name)


@pytest.fixture
def acme(make_company, moodle_db):
    company = make_company("Acme Learning", sender="noreply@acme.test", provider="smtp")
    companies.configure(company.company, {"moodle_db_url": moodle_db})
    db.session.commit()
    audiences.save_lms_settings(company.id, ACME_IOMAD, "mdl_")
    return company


def test_inactive_audience_is_that_companys_inactive_users_only(acme):
    found = audiences.inactive_users(acme.company, 30)
    assert sorted(r["email"] for r in found) == ["both@lms.test", "idle100@lms.test", "idle40@lms.test",
                                                 "never@lms.test"]
    assert audiences.count_inactive(acme.company, 30) == 4
    assert sorted(r["email"] for r in audiences.inactive_users(acme.company, 90)) == ["idle100@lms.test",
                                                                                    "never@lms.test"]
    idle = next(r for r in found if r["email"] == "idle40@lms.test")
    assert idle["data"]["firstname"] == "Idle40" and idle["data"]["days_inactive"] == 40


def test_the_lms_database_is_read_only(acme):
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    engine = audiences.lms_engine(acme.company.moodle_db_url)
    with pytest.raises(DBAPIError, match="read-only"), engine.connect() as conn:
        conn.execute(text("DELETE FROM mdl_user"))
    engine.dispose()


def test_lms_errors_are_clear_and_hide_the_url(make_company):
    company = make_company("No LMS Co")
    with pytest.raises(audiences.AudienceError, match="no LMS database"):
        audiences.inactive_users(company.company, 30)
    companies.configure(company.company, {"moodle_db_url": "postgresql://lms:S3cretPw@127.0.0.1:1/moodle"})
    db.session.commit()
    with pytest.raises(audiences.AudienceError, match="IOMAD company id"):
        audiences.inactive_users(company.company, 30)
    audiences.save_lms_settings(company.id, 3, "mdl_")
    with pytest.raises(audiences.AudienceError) as err:
        audiences.inactive_users(company.company, 30)
    assert "could not be read" in str(err.value) and "S3cretPw" not in str(err.value)
    with pytest.raises(audiences.AudienceError, match="prefix"):
        audiences.save_lms_settings(company.id, 3, "mdl_; DROP TABLE x")


@pytest.fixture
def manager(acme, make_user, auth):
    tpl = make_template(acme.id, "reengagement", subject="We miss you {{ firstname }}",
                        body_text="Last seen {{ lastaccess }}", body_html=None)
    user, password = make_user("boss@acme.test", "manager", acme.id)
    auth.login(user.email, password)
    return acme, tpl


def preview(client, tpl, **fields):
    token = csrf_from(client.get("/admin/campaigns/reengagement").get_data(as_text=True))
    data = {"csrf_token": token, "template_id": str(tpl.id), **fields}
    return client.post("/admin/campaigns/reengagement", data=data, content_type="multipart/form-data")


def confirm(client, html):
    form = html.split('action="/admin/campaigns/reengagement/confirm"')[1].split("</form>")[0]
    import re

    fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', form))
    return client.post("/admin/campaigns/reengagement/confirm", data=fields)


def test_inactive_campaign_previews_the_count_then_schedules_the_job(client, manager):
    company, tpl = manager
    send_at = (utcnow() + timedelta(days=1)).replace(second=0, microsecond=0)
    resp = preview(client, tpl, audience="inactive", days="30", send_at=send_at.strftime("%Y-%m-%dT%H:%M"))
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert '<strong class="num audience-count">4</strong>' in html and "We miss you" in html
    assert db.session.execute(select(Job)).first() is None  # nothing sent by a preview

    done = confirm(client, html)
    assert done.status_code == 200, done.get_data(as_text=True)
    job = db.session.execute(select(Job).where(Job.company_id == company.id)).scalar_one()
    assert (job.type, job.source, job.email_count, job.send_at) == ("reengagement", "dashboard", 4, send_at)
    emails = db.session.execute(select(Recipient.email).where(Recipient.job_id == job.id)).scalars().all()
    assert sorted(emails) == ["both@lms.test", "idle100@lms.test", "idle40@lms.test", "never@lms.test"]
    assert f"plan-{job.id}" in ScheduledJobRegistry(queue=get_queue(DEFAULT)).get_job_ids()


def test_uploaded_list_campaign_sends_now(client, manager):
    company, tpl = manager
    data = b"email,firstname,lastaccess\nann@example.com,Ann,2026-01-01\nbad-address,Bob,\n"
    resp = preview(client, tpl, audience="upload", file=(io.BytesIO(data), "list.csv"))
    html = resp.get_data(as_text=True)
    assert '<strong class="num audience-count">1</strong>' in html and "We miss you Ann" in html
    assert '<td class="num">3</td><td>invalid email address</td>' in html
    # the preview is the mail as it goes out: with the unsubscribe footer and the learner's own link
    assert "Don&#39;t want these emails? Unsubscribe: " + unsubscribe_url(company.id, "ann@example.com") in html
    assert confirm(client, html).status_code == 200
    job = db.session.execute(select(Job).where(Job.company_id == company.id)).scalar_one()
    assert job.email_count == 1 and job.send_at is None


@pytest.mark.parametrize("fields, message", [
    ({"audience": "inactive", "days": "abc"}, "inactive days must be a whole number"),
    ({"audience": "inactive", "days": "30", "send_at": "2001-01-01T10:00"}, "must be in the future"),
    ({"audience": "upload"}, "choose a CSV file"),
    ({}, "choose an audience"),
])
def test_bad_campaign_forms_are_400_with_the_reason(client, manager, fields, message):
    _, tpl = manager
    resp = preview(client, tpl, **fields)
    assert resp.status_code == 400 and message in resp.get_data(as_text=True)


def test_another_companys_template_is_404(client, manager, make_company):
    other = make_company("Other Co")
    other_tpl = make_template(other.id, "reengagement")
    assert preview(client, other_tpl, audience="inactive", days="30").status_code == 404


def test_a_manager_cannot_set_lms_settings(client, manager):
    company, _ = manager
    html = client.get("/admin/campaigns/").get_data(as_text=True)
    assert 'name="iomad_company_id"' not in html and "An administrator sets the LMS connection" in html
    token = csrf_from(html)
    resp = client.post("/admin/campaigns/lms", data={"csrf_token": token, "iomad_company_id": "42",
                                                     "moodle_prefix": "m_", "company_id": str(company.id)})
    assert resp.status_code == 403
    db.session.expire_all()
    assert audiences.lms_settings(company.id).iomad_company_id == ACME_IOMAD
    assert client.post("/admin/campaigns/lms", data={"iomad_company_id": "1"}).status_code == 400  # no CSRF


def test_an_admin_sets_lms_settings_for_a_chosen_company(client, acme, make_user, auth):
    user, password = make_user("root@offload.test", "admin")
    auth.login(user.email, password)
    token = csrf_from(client.get("/admin/campaigns/").get_data(as_text=True))
    assert client.post("/admin/campaigns/lms", data={"csrf_token": token, "company_id": "999",
                                                     "iomad_company_id": "7"}).status_code == 404
    bad = client.post("/admin/campaigns/lms", data={"csrf_token": token, "company_id": str(acme.id),
                                                    "iomad_company_id": "x"})
    assert bad.status_code == 400 and "whole number" in bad.get_data(as_text=True)
    resp = client.post("/admin/campaigns/lms", data={"csrf_token": token, "company_id": str(acme.id),
                                                     "iomad_company_id": "7", "moodle_prefix": "mdl_"})
    assert resp.status_code == 302
    db.session.expire_all()
    assert audiences.lms_settings(acme.id).iomad_company_id == 7
