"""The LMS API's blueprint and its bearer-token authentication (CONTRACT §3)."""
from __future__ import annotations

from functools import wraps

from flask import Blueprint, g, request

from core import api_rate, audit, settings
from core.companies import authenticate_token
from core.db import db
from core.models import utcnow
from dashboard.errors import json_error

bp = Blueprint("api", __name__, url_prefix="/api/v1")


def rate_limited(token_hash: str):
    """The 429 for a token past ``OFFLOAD_API_RATE_PER_MIN`` this minute, else ``None``."""
    wait = api_rate.take(token_hash)
    if wait is None:
        return None
    body, status = json_error(429, "rate_limited", f"more than {settings.current().api_rate_per_min} requests "
                                                   f"this minute with this token; retry in {wait} s")
    return body, status, {"Retry-After": str(wait)}


def token_required(view):
    """Resolve ``Authorization: Bearer <token>`` to ``g.company_id`` or answer 401."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        row = authenticate_token(token.strip()) if scheme.lower() == "bearer" else None
        if row is None:
            return json_error(401, "unauthorized", "a valid bearer token is required")
        limited = rate_limited(row.token_hash)
        if limited is not None:
            return limited
        g.company_id = row.company_id
        # the audit log names the token (it outranks a dashboard session the client may also carry)
        audit.act_as(audit.current_actor(), name=f"API token {row.name} ({row.prefix}…)", user_id=None)
        if row.last_used_at is None or (utcnow() - row.last_used_at).total_seconds() > 60:
            row.last_used_at = utcnow()
            db.session.commit()
        return view(*args, **kwargs)

    return wrapper
