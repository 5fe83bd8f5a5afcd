"""Medium 7: a render error stored on a recipient names the template line and the name or
exception type, never a value from the recipient's data."""
from __future__ import annotations

import json

from core.db import db
from core.models import Job
from tests.support.app import AuthActions, run_worker_burst


def test_a_data_value_never_becomes_the_stored_error(app, client, make_company, make_user, smtp_sink):
    company = make_company(provider="smtp", sender="noreply@acme.test", smtp_host="127.0.0.1",
                           smtp_port=str(smtp_sink.port), smtp_tls="none")
    recipients = [{"email": "first@acme.test", "data": {"password": "ok"}}] + \
        [{"email": f"u{i}@acme.test", "data": {"password": f"Hunter2-S3cret-{i}"}} for i in range(3)]
    resp = client.post("/api/v1/jobs", headers=company.auth, json={
        "type": "csv_import", "subject": "Welcome", "recipients": recipients,
        # renders for the sample (the first recipient), then fails on each other's password
        "body_text": "Hello\n{{ '' if password == 'ok' else {}[password].x }}"})
    assert resp.status_code == 202
    job_id = resp.get_json()["id"]
    run_worker_burst(app)
    rows = client.get(f"/api/v1/jobs/{job_id}/recipients?status=failed", headers=company.auth).get_json()
    assert len(rows["recipients"]) == 3
    for row in rows["recipients"]:
        assert row["error"].startswith("render_error:") and "line 2" in row["error"]
        assert "UndefinedError" in row["error"]
    make_user("mgr@acme.test", company_id=company.id)
    AuthActions(client).login("mgr@acme.test", "correct horse battery")
    csv = client.get(f"/admin/jobs/{job_id}/errors.csv").get_data(as_text=True)
    job = db.session.get(Job, job_id)
    everything = json.dumps(rows) + csv + (job.error_log or "")
    assert "line 2" in csv and "Hunter2" not in everything and "S3cret" not in everything


def test_a_sample_render_error_at_creation_does_not_echo_the_sample(client, company):
    resp = client.post("/api/v1/jobs", headers=company.auth, json={
        "type": "csv_import", "subject": "{{ {}[token].x }}", "body_text": "x",
        "recipients": [{"email": "a@acme.test", "data": {"token": "tok-LEAKME-991"}}]})
    assert resp.status_code == 400
    assert "LEAKME" not in resp.get_data(as_text=True) and "line 1" in resp.get_json()["message"]


def test_an_undefined_name_the_template_spells_is_named(client, company):
    resp = client.post("/api/v1/jobs", headers=company.auth, json={
        "type": "csv_import", "subject": "Hi", "body_text": "Dear {{ customer.name }}",
        "recipients": [{"email": "a@acme.test", "data": {}}]})
    assert resp.status_code == 400 and "lacks customer" in resp.get_json()["message"]  # before any render
    assert resp.get_json()["details"]["fields"] == ["customer"]
    inside = client.post("/api/v1/jobs", headers=company.auth, json={
        "type": "csv_import", "subject": "Hi", "body_text": "Dear {{ customer.name }}",
        "recipients": [{"email": "a@acme.test", "data": {"customer": {}}}]})
    assert inside.status_code == 400 and "no attribute or key 'name'" in inside.get_json()["message"]
