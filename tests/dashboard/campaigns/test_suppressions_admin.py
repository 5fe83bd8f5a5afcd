"""The suppression list page: search, add, remove, export; tenancy and CSRF."""
from __future__ import annotations

import csv
import io

import pytest
from sqlalchemy import select

from core.db import db
from core.models import Suppression
from core.suppressions import suppress
from tests.support.app import csrf_from

PAGE = "/admin/suppressions/"


@pytest.fixture
def manager(company, make_company, make_user, auth):
    other = make_company("Other Co")
    suppress(company.id, "old@acme.test", "bounce")
    suppress(company.id, "=1+2@acme.test", "manual")
    suppress(other.id, "secret-other@other.test", "complaint")
    user, password = make_user("boss@acme.test", "manager", company.id)
    auth.login(user.email, password)
    return company, other


def token(client) -> str:
    return csrf_from(client.get(PAGE).get_data(as_text=True))


def test_list_and_search_show_only_the_companys_addresses(client, manager):
    html = client.get(PAGE).get_data(as_text=True)
    assert "old@acme.test" in html and "=1+2@acme.test" in html and "secret-other" not in html
    found = client.get(PAGE + "?q=OLD").get_data(as_text=True)
    assert "old@acme.test" in found and "=1+2@acme.test" not in found
    assert "secret-other" not in client.get(PAGE + "?q=other&company_id=2").get_data(as_text=True)
    for wildcard in ("%25", "_"):  # LIKE wildcards are searched for literally
        assert "0 addresses match" in client.get(PAGE + "?q=" + wildcard).get_data(as_text=True)


def test_add_validates_and_keeps_the_input(client, manager):
    company, _ = manager
    resp = client.post(PAGE + "add", data={"csrf_token": token(client), "email": "Ann@Example.COM"})
    assert resp.status_code == 302
    bad = client.post(PAGE + "add", data={"csrf_token": token(client), "email": "not-an-address"})
    assert bad.status_code == 400
    assert 'value="not-an-address"' in bad.get_data(as_text=True)
    assert client.post(PAGE + "add", data={"email": "x@acme.test"}).status_code == 400  # no CSRF token
    rows = db.session.execute(select(Suppression.email, Suppression.reason)
                              .where(Suppression.company_id == company.id)).all()
    assert ("ann@example.com", "manual") in [tuple(r) for r in rows] and len(rows) == 3


def test_remove_own_and_404_for_another_companys(client, manager):
    company, other = manager
    own = db.session.execute(select(Suppression).where(Suppression.email == "old@acme.test")).scalar_one()
    foreign = db.session.execute(select(Suppression).where(Suppression.company_id == other.id)).scalar_one()
    assert client.post(f"{PAGE}{foreign.id}/delete", data={"csrf_token": token(client)}).status_code == 404
    assert client.post(f"{PAGE}{own.id}/delete").status_code == 400  # no CSRF token
    assert client.post(f"{PAGE}{own.id}/delete", data={"csrf_token": token(client)}).status_code == 302
    left = db.session.execute(select(Suppression.email).order_by(Suppression.email)).scalars().all()
    assert left == ["=1+2@acme.test", "secret-other@other.test"]


def test_export_is_the_companys_list_with_formula_safe_cells(client, manager):
    resp = client.get(PAGE + "export.csv")
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(resp.get_data(as_text=True))))
    assert rows[0] == ["email", "reason", "created_at", "company_id"]
    assert sorted(r[0] for r in rows[1:]) == ["'=1+2@acme.test", "old@acme.test"]


def test_admin_sees_every_company_and_filters(client, company, make_company, make_user, auth):
    other = make_company("Other Co")
    suppress(company.id, "a@acme.test", "manual")
    suppress(other.id, "b@other.test", "manual")
    user, password = make_user("root@offload.test", "admin")
    auth.login(user.email, password)
    html = client.get(PAGE).get_data(as_text=True)
    assert "a@acme.test" in html and "b@other.test" in html
    only = client.get(f"{PAGE}?company_id={other.id}").get_data(as_text=True)
    assert "b@other.test" in only and "a@acme.test" not in only
    assert client.get(f"{PAGE}?company_id=999").status_code == 404
    resp = client.post(PAGE + "add", data={"csrf_token": token(client), "email": "c@other.test",
                                           "company_id": str(other.id)})
    assert resp.status_code == 302
    assert db.session.execute(select(Suppression.company_id).where(Suppression.email == "c@other.test")) \
        .scalar_one() == other.id


def test_signed_out_users_are_sent_to_the_login(client, company):
    resp = client.get(PAGE)
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]
