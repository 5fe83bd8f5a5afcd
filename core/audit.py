"""The audit log: one call records who did what, to what, from where."""
from __future__ import annotations

from flask import g, has_request_context, request
from flask_login import current_user

from core.db import db
from core.models import AuditLog


def record(action: str, *, company_id: int | None = None, object_type: str | None = None,
           object_id=None, details: dict | None = None, actor: str | None = None,
           user_id: int | None = None) -> AuditLog:
    """Add an audit entry to the session (committed with the caller's change).

    ``details`` must hold names and counts only, never secret values.
    """
    ip = None
    if has_request_context():
        # remote_addr only: behind a proxy, OFFLOAD_PROXY_HOPS makes ProxyFix set it from
        # X-Forwarded-For; a header read here directly could be forged by anyone
        ip = (request.remote_addr or "")[:64]
        if actor is None and g.get("audit_actor"):  # an API request: the token's name (dashboard.api)
            actor = g.audit_actor
        if actor is None and current_user and getattr(current_user, "is_authenticated", False):
            actor, user_id = current_user.email, current_user.id
    entry = AuditLog(action=action, company_id=company_id, object_type=object_type,
                     object_id=None if object_id is None else str(object_id), details=details or {},
                     actor=actor or "system", user_id=user_id, ip=ip)
    db.session.add(entry)
    return entry
