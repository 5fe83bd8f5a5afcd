"""Core speaks no HTTP: another company's row is ``tenancy.NotFound`` (the web side's 404), and the audit
log's actor comes from the caller or the context the web side sets."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from core import audit, tenancy
from core.db import db
from core.models import AuditLog, Job


def test_another_companys_row_and_a_missing_one_are_the_same_not_found(app, client, make_company):
    acme, other = make_company("Acme"), make_company("Other")
    resp = client.post("/api/v1/jobs", headers=acme.auth, json={
        "type": "notification", "subject": "Hi", "body_text": "x", "recipients": [{"email": "a@example.com"}]})
    job_id = resp.json["id"]
    assert tenancy.get_or_404(Job, job_id, acme.id).id == job_id
    assert tenancy.get_or_404(Job, job_id, None).id == job_id  # an admin sees every company
    for company_id, object_id in ((other.id, job_id), (acme.id, job_id + 1000), (acme.id, "not a number")):
        with pytest.raises(tenancy.NotFound):
            tenancy.get_or_404(Job, object_id, company_id)
    assert client.get(f"/api/v1/jobs/{job_id}", headers=other.auth).status_code == 404  # the web side's answer


def test_the_actor_is_the_callers_else_the_contexts_else_the_system(app):
    assert audit.current_actor() == audit.NOBODY  # outside a request
    assert audit.record("a").actor == "system" and audit.record("a").ip is None
    audit.act_as(name="ann@acme.test", user_id=7, ip="192.0.2.1")
    try:
        entry = audit.record("b")
        assert (entry.actor, entry.user_id, entry.ip) == ("ann@acme.test", 7, "192.0.2.1")
        explicit = audit.record("c", actor="cli", user_id=None)  # the caller's actor wins; the address stays
        assert (explicit.actor, explicit.user_id, explicit.ip) == ("cli", None, "192.0.2.1")
    finally:
        audit.act_as()
    assert audit.current_actor() == audit.NOBODY


def test_a_request_sets_the_address_and_the_next_work_is_the_systems_again(client, company):
    resp = client.post("/api/v1/jobs", headers=company.auth, environ_base={"REMOTE_ADDR": "198.51.100.7"}, json={
        "type": "notification", "subject": "Hi", "body_text": "x", "recipients": [{"email": "a@example.com"}]})
    assert resp.status_code == 202
    entry = db.session.execute(select(AuditLog).where(AuditLog.action == "job_created")).scalar_one()
    assert entry.ip == "198.51.100.7" and entry.actor.startswith("API token ") and entry.user_id is None
    assert audit.current_actor() == audit.NOBODY  # the request's actor ended with it
