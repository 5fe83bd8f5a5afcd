"""Settings checks ("Test connection", "Send test email"): the web side's half.

``start_connection_test`` / ``start_test_email`` write a ``pending`` marker
under a random check id and queue a job (``tasks.checks``) whose only
arguments are the company id and that check id. What the job needs beyond
that (the address to write to, a template id, sample data) waits in Redis
under the check id with a TTL, never in the job's arguments. The job stores
a secret-free result under the check id; the page polls ``read_result``.
"""
from __future__ import annotations

import json
import re
import secrets

from core.queue import connection, enqueue_check

RESULT_TTL_S = 15 * 60
CHECK_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def result_key(company_id: int, check_id: str) -> str:
    return f"offload:check:{company_id}:{check_id}"


def request_key(company_id: int, check_id: str) -> str:
    return f"offload:check-request:{company_id}:{check_id}"


def _begin(company_id: int, kind: str) -> str:
    check_id = secrets.token_urlsafe(18)
    connection().set(result_key(company_id, check_id), json.dumps({"status": "pending", "kind": kind}),
                     ex=RESULT_TTL_S)
    return check_id


def start_connection_test(company_id: int, section: str | None = None) -> str:
    """Queue a connection test of the company's settings (only the backends of the provider settings
    group ``section``, when given: a settings section's own test); returns its check id."""
    check_id = _begin(company_id, "connection")
    if section:
        connection().set(request_key(company_id, check_id), json.dumps({"section": section}), ex=RESULT_TTL_S)
    enqueue_check("connection", company_id, check_id)
    return check_id


def read_request(company_id: int, check_id: str) -> dict:
    """What a check was asked to do beyond its id (``start_test_email``'s address, a test's section)."""
    raw = connection().get(request_key(company_id, check_id))
    return json.loads(raw) if raw else {}


def start_test_email(company_id: int, to: str, template_id: int | None = None,
                     sample: dict | None = None) -> str:
    """Queue one test message to ``to`` (kept in Redis, not in the job's arguments)."""
    check_id = _begin(company_id, "email")
    payload = {"to": to, "template_id": template_id, "sample": sample or {}}
    connection().set(request_key(company_id, check_id), json.dumps(payload), ex=RESULT_TTL_S)
    enqueue_check("email", company_id, check_id)
    return check_id


def read_result(company_id: int, check_id: str) -> dict | None:
    """The stored state of a check of ``company_id``, or ``None`` (unknown, expired, other company)."""
    if not CHECK_ID.match(check_id or ""):
        return None
    raw = connection().get(result_key(company_id, check_id))
    return None if raw is None else json.loads(raw)
