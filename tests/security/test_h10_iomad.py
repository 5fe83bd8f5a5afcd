"""Medium 10: the IOMAD company id and the LMS database URL are an admin's to set."""
from __future__ import annotations

from core import audiences
from core.db import db
from core.models import Company
from tests.support.app import csrf_from
from tests.support.attack import login_as


def test_a_manager_cannot_choose_the_iomad_company_id(client, company, make_user):
    audiences.save_lms_settings(company.id, 3, "mdl_")
    login_as(client, make_user, "mgr@acme.test", company_id=company.id)
    token = csrf_from(client.get("/admin/campaigns/import").get_data(as_text=True))
    resp = client.post("/admin/campaigns/lms", data={"csrf_token": token, "iomad_company_id": "77",
                                                     "moodle_prefix": "mdl_"})
    assert resp.status_code == 403
    db.session.expire_all()
    assert audiences.lms_settings(company.id).iomad_company_id == 3


def test_a_manager_cannot_set_the_lms_database_url(client, company, make_user):
    login_as(client, make_user, "mgr@acme.test", company_id=company.id)
    page = client.get(f"/admin/settings/{company.id}/").get_data(as_text=True)
    assert 'name="moodle_db_url"' not in page and 'name="fallback_relay"' not in page
    client.post(f"/admin/settings/{company.id}/save", data={
        "csrf_token": csrf_from(page), "section": "advanced", "uncertain_policy": "resend",
        "moodle_db_url": "postgresql://postgres@db.example.com/moodle", "fallback_relay": "y"})
    db.session.expire_all()
    row = db.session.get(Company, company.id)
    assert row.moodle_db_url is None and not row.fallback_relay


def test_an_admin_can(client, company, make_user):
    login_as(client, make_user, "root@acme.test", role="admin")
    token = csrf_from(client.get("/admin/campaigns/").get_data(as_text=True))
    assert client.post("/admin/campaigns/lms", data={"csrf_token": token, "company_id": str(company.id),
                                                     "iomad_company_id": "9"}).status_code == 302
    page = client.get(f"/admin/settings/{company.id}/").get_data(as_text=True)
    resp = client.post(f"/admin/settings/{company.id}/save", data={
        "csrf_token": csrf_from(page), "section": "lms", "lms_prefix": "mdl_", "iomad_company_id": "9",
        "lms_url": "postgresql://lms:pw@lms-db.invalid/moodle"})
    assert resp.status_code == 302
    db.session.expire_all()
    assert db.session.get(Company, company.id).moodle_db_url.startswith("postgresql://")
    assert audiences.lms_settings(company.id).iomad_company_id == 9
