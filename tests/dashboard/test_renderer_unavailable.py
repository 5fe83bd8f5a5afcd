"""When no renderer process can start, the API and the dashboard answer 503 with Retry-After and words,
never a 500: nothing is wrong with the request. The renderer really fails to start here (its pool runs a
module that does not exist), so the path is the one a machine out of processes or memory takes."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from core import rendering
from core.db import db
from core.models import Job, Template


@pytest.fixture
def no_renderer(monkeypatch):
    pool = rendering.pool()
    for child in list(pool._idle):
        child.kill()
    pool._idle.clear()
    rendering._engines.clear()  # a template not seen before compiles in a renderer
    monkeypatch.setattr(pool, "module", "core.no_such_renderer_module")
    monkeypatch.setattr(pool, "spawn_timeout_s", 5.0)
    yield
    rendering._engines.clear()


def test_a_job_is_503_with_retry_after_when_the_renderer_cannot_start(client, company, no_renderer):
    body = {"type": "notification", "subject": "Hello {{ firstname }} {{ 7 * 6 }}",
            "body_text": "{% for x in items %}{{ x }}{% endfor %}",
            "recipients": [{"email": "ann@acme.test", "data": {"firstname": "Ann", "items": [1]}}]}
    resp = client.post("/api/v1/jobs", json=body, headers=company.auth)
    assert resp.status_code == 503
    assert resp.headers["Retry-After"].isdigit()
    assert resp.json["error"] == "renderer_unavailable"
    assert "retry" in resp.json["message"] and "nothing is wrong with the request" in resp.json["message"]
    assert db.session.execute(select(Job)).first() is None


def test_a_template_save_is_503_too(client, company, no_renderer):
    resp = client.put("/api/v1/templates/promo", headers=company.auth,
                      json={"type": "notification", "subject": "Hi {{ firstname }}", "body_text": "{{ a ~ b }}"})
    assert resp.status_code == 503 and resp.headers["Retry-After"].isdigit()
    assert resp.json["error"] == "renderer_unavailable"


def test_the_dashboard_preview_shows_a_503_page_in_words(client, company, auth, make_user, no_renderer):
    db.session.add(Template(company_id=company.id, name="t", job_type="notification",
                            subject="Hi {{ firstname }}", body_text="{% if x %}{{ x }}{% endif %}"))
    db.session.commit()
    tpl = db.session.execute(select(Template)).scalar_one()
    user, password = make_user("boss@acme.test", "manager", company.id)
    auth.login(user.email, password)
    resp = client.get(f"/admin/templates/preview/{tpl.id}/")
    assert resp.status_code == 503 and resp.headers["Retry-After"].isdigit()
    page = resp.get_data(as_text=True)
    assert "Templates cannot be rendered right now" in page and "Traceback" not in page
