"""Medium 5: a non-admin without a company sees nothing; roles are a choice and a manager
needs a company."""
from __future__ import annotations

from core.db import db
from core.models import User
from tests.support.app import AuthActions, csrf_from
from tests.support.attack import login_as


def test_a_manager_with_a_blank_company_cannot_sign_in_or_see_any_company(client, make_company, make_user):
    make_company("Alpha")
    make_company("Beta")
    user, password = make_user("drifter@acme.test", company_id=make_company("Gamma").id)
    user.company_id = None  # a row left blank (the old Users form allowed it)
    db.session.commit()
    auth = AuthActions(client)
    assert auth.login("drifter@acme.test", password).status_code == 401
    for url in ("/admin/", "/admin/jobs/", "/admin/settings/", "/admin/audit/"):
        resp = client.get(url)
        assert resp.status_code in (302, 403, 404) and b"Alpha" not in resp.data


def test_a_session_of_a_user_whose_company_was_blanked_stops_working(client, company, make_user):
    user, password = make_user("ann@acme.test", company_id=company.id)
    assert AuthActions(client).login("ann@acme.test", password).status_code == 302
    assert client.get("/admin/jobs/").status_code == 200
    db.session.get(User, user.id).company_id = None
    db.session.commit()
    assert client.get("/admin/jobs/").status_code == 302  # back to the login page
    assert user.scope == 0  # and a scope that matches no company, should anything ask


def test_free_text_roles_and_companyless_managers_are_refused_by_the_users_form(client, company, make_user):
    login_as(client, make_user, "root@acme.test", role="admin")
    target, _ = make_user("ann@acme.test", company_id=company.id)
    url = f"/admin/users/edit/?id={target.id}"
    for fields in ({"role": "superuser", "company": str(company.id)}, {"role": "manager", "company": "__None"},
                   {"role": "manager", "company": ""}):
        page = client.get(url).get_data(as_text=True)
        client.post(url, data={"csrf_token": csrf_from(page), "email": "ann@acme.test", "active": "y", **fields})
        db.session.expire_all()
        row = db.session.get(User, target.id)
        assert (row.role, row.company_id) == ("manager", company.id), fields
    page = client.get(url).get_data(as_text=True)
    assert '<select' in page and 'value="superuser"' not in page and 'value="admin"' in page
