"""``POST /api/v1/events``: one LMS event into its company's window (CONTRACT §3)."""
from __future__ import annotations

from flask import g, jsonify, request
from redis import RedisError

from core import events, settings
from dashboard.api.base import bp, token_required
from dashboard.bodies import loads as bounded_loads
from dashboard.bodies import read_capped
from dashboard.errors import json_error
from werkzeug.exceptions import RequestEntityTooLarge
from core.queue import connection

MAX_BODY_BYTES = 128 * 1024


@bp.post("/events")
@token_required
def post_event():
    """Validate the event, hold it in its window; 202 says bulk or single."""
    try:  # read no further than the cap, chunked bodies too
        raw = read_capped(MAX_BODY_BYTES)
    except RequestEntityTooLarge:
        return json_error(413, "body_too_large", f"an event may have at most {MAX_BODY_BYTES} bytes")
    try:
        payload = bounded_loads(raw) if request.is_json else None
    except (ValueError, UnicodeDecodeError) as exc:
        return json_error(400, "invalid_json", str(exc) if "nested" in str(exc) else "the body is not JSON")
    if payload is None:
        return json_error(400, "invalid_json", "the body must be JSON (Content-Type: application/json)")
    cfg = settings.current()
    try:
        event = events.parse_event(payload)
        events.check_template(g.company_id, event)
        accepted = events.accept(connection(), g.company_id, event, threshold=cfg.bulk_threshold,
                                 window_s=cfg.bulk_window_s, max_buffered=cfg.max_buffered_events)
    except events.EventError as exc:
        if exc.code == "too_many_events":
            return json_error(429, exc.code, exc.message)
        return json_error(400, exc.code, exc.message, exc.details)
    except (RedisError, OSError):
        return json_error(503, "queue_unavailable", "the event queue is unavailable; retry shortly")
    return jsonify({"accepted": True, "mode": accepted.mode, "job_id": None}), 202
