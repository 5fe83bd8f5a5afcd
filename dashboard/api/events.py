"""``POST /api/v1/events``: one LMS event, stored in its company's window before the ``202`` (CONTRACT §3).

The request does only what must be answered now (the body, the token, the template's fields) and hands
the event to the process's group-commit writer (``core.events.Intake``): no render and, once the token
and the template are known to the process, no database round trip of its own, nor a Redis one (the
writer counts the token's rate limit, a group at a time). Run the web processes with threads
(``gunicorn --threads``) so that the events of concurrent requests share a commit.
"""
from __future__ import annotations

from flask import current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from core import events
from core.db import db
from core.groupcommit import StoreFailed
from core.models import sha256_hex
from dashboard.api.base import bp, rate_limited
from dashboard.bodies import loads as bounded_loads
from dashboard.bodies import read_capped
from dashboard.errors import json_error

MAX_BODY_BYTES = 128 * 1024


def intake() -> events.Intake:
    """The app's intake, made on its first event (its writer thread starts in each process that uses it)."""
    found = current_app.extensions.get("offload_events")
    if found is None:
        found = current_app.extensions.setdefault("offload_events", events.Intake(db.engine))
    return found


@bp.post("/events")
def post_event():
    """Validate the event and store it in its window; 202 says bulk or single."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return json_error(401, "unauthorized", "a valid bearer token is required")
    token = token.strip()
    # a token this process knows to be live is counted against its rate limit by the writer, with the
    # other requests of its group (one Redis round trip a group); any other is counted here, first, by the
    # token presented: a stranger's guesses spend its own
    writer_counts = intake().knows(token)
    counted = False

    def count_here():
        nonlocal counted
        if counted or not 0 < len(token) <= 200:
            return None
        counted = True
        return rate_limited(sha256_hex(token))

    if not writer_counts:
        limited = count_here()
        if limited is not None:
            return limited
    try:  # read no further than the cap, chunked bodies too
        raw = read_capped(MAX_BODY_BYTES)
    except RequestEntityTooLarge:
        return count_here() or json_error(413, "body_too_large", f"an event may have at most {MAX_BODY_BYTES} bytes")
    try:
        payload = bounded_loads(raw) if request.is_json else None
    except (ValueError, UnicodeDecodeError) as exc:
        payload = exc
    try:
        if isinstance(payload, Exception) or payload is None:
            intake().authenticate(token)  # a bad token is a 401 before a bad body is a 400
            limited = count_here()
            if limited is not None:
                return limited
            if payload is None:
                return json_error(400, "invalid_json", "the body must be JSON (Content-Type: application/json)")
            return json_error(400, "invalid_json", str(payload) if "nested" in str(payload) else "the body is not JSON")
        try:
            pending = intake().prepare(token, payload, count=not counted)
        except events.EventError:
            limited = count_here()  # refused before the writer: counted here
            if limited is not None:
                return limited
            raise
        accepted = intake().writer.submit(pending)
    except events.RateLimited as exc:
        body, status = json_error(exc.status, exc.code, exc.message)
        return body, status, {"Retry-After": str(exc.retry_after)}
    except events.EventError as exc:
        return json_error(exc.status, exc.code, exc.message, exc.details)
    except (StoreFailed, TimeoutError):
        return json_error(503, "store_unavailable", "events cannot be stored right now; retry shortly")
    return jsonify({"accepted": True, "mode": accepted.mode, "job_id": None}), 202
