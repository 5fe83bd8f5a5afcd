"""High 3: templates cannot freeze or exhaust a process.

Each attack of the review, sent through the API (and the certificate template
form), is a quick 400 with a reason at creation, never a 500 or a long CPU
burn; a template that only blows up for later recipients fails those
recipients with a short reason in the worker, which carries on."""
from __future__ import annotations

import pytest

from core.db import db
from core.models import Job
from tests.support.app import csrf_from, run_worker_burst
from tests.support.attack import login_as, people

ATTACKS = [
    ("subject", "{{ 9**(9**7) }}", "exponent"),
    ("subject", "{{ 9**(9**8) }}", "exponent"),
    ("body_text", "{% set s = 'a' * 400000000 %}{{ s }}", "too large"),
    ("body_text", "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}", "loops"),
    ("body_text", "{% for i in range(100000000) %}x{% endfor %}", "range"),
    ("body_text", "{{ 'a'|center(999999999) }}", "width"),
    ("body_text", "{{ '%0999999999d' % 1 }}", "width"),
    ("body_text", "{{ '{:>999999999}'.format(1) }}", "width"),
    ("body_text", "{% set s = 'x' * 99999 %}{{ s.replace('', s) }}", "too large"),
    ("body_text", "{% set x = 99999999 %}{% set y = x * x * x * x * x * x * x * x %}{{ y ** 60 }}", "large"),
    ("body_html", "{{ x" + "+x" * 10 + " }}" + "y" * 300_000, "longer than"),
    ("body_text", "{% for %}", "syntax error"),
]


@pytest.mark.parametrize("part,source,reason", ATTACKS)
def test_each_template_attack_is_a_400_with_a_reason(client, company, part, source, reason):
    body = {"type": "csv_import", "subject": "Hello", "body_text": "Hi", "recipients": people(1), part: source}
    resp = client.post("/api/v1/jobs", headers=company.auth, json=body)
    assert resp.status_code == 400, resp.get_data(as_text=True)[:300]
    answer = resp.get_json()
    assert answer["error"] == "template_error" and reason in answer["message"]
    assert db.session.query(Job).count() == 0


def test_a_template_that_fails_only_for_later_recipients_fails_them_in_the_worker(app, client, make_company,
                                                                                 smtp_sink):
    company = make_company(provider="smtp", sender="noreply@acme.test", smtp_host="127.0.0.1",
                           smtp_port=str(smtp_sink.port), smtp_tls="none")
    recipients = [{"email": "ok@acme.test", "data": {"n": 1}}] + \
        [{"email": f"big{i}@acme.test", "data": {"n": 10 ** 6}} for i in range(3)]
    resp = client.post("/api/v1/jobs", headers=company.auth, json={
        "type": "csv_import", "subject": "Hi", "recipients": recipients,
        "body_text": "{% for i in range(n) %}.{% endfor %}"})
    assert resp.status_code == 202
    run_worker_burst(app)
    rows = client.get(f"/api/v1/jobs/{resp.get_json()['id']}/recipients?status=failed",
                      headers=company.auth).get_json()["recipients"]
    assert sorted(r["email"] for r in rows) == [f"big{i}@acme.test" for i in range(3)]
    assert all("range is limited" in r["error"] and "line 1" in r["error"] for r in rows)
    assert smtp_sink.recipients() == ["ok@acme.test"]


@pytest.mark.parametrize("html", [
    "{% for i in range(10000) %}{% for j in range(10000) %}<p>x</p>{% endfor %}{% endfor %}",
    "<p>{{ 9**(9**7) }}</p>",
    "{% set s = 'a' * 400000000 %}<p>{{ s }}</p>",
])
def test_certificate_templates_are_bounded_too(client, company, make_user, html):
    login_as(client, make_user, "mgr@acme.test", company_id=company.id)
    token = csrf_from(client.get("/admin/certificate-templates/new").get_data(as_text=True))
    resp = client.post("/admin/certificate-templates/new", data={"csrf_token": token, "name": "Evil", "html": html})
    assert resp.status_code == 400 and "template does not render" in resp.get_data(as_text=True)
    preview = client.post("/admin/certificate-templates/preview", data={"csrf_token": token, "html": html, "css": ""})
    assert preview.status_code == 400
