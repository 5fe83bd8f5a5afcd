"""``POST /api/v1/events``: one LMS event, stored in its company's window before the ``202`` (CONTRACT §3).

The request does only what must be answered now (the body, the token, the template's fields) and hands
the event to the process's group-commit writer (``core.events.Intake``): no render and, once the token
and the template are known to the process, no database round trip of its own, nor a Redis one (the
writer counts the token's rate limit, a group at a time). Run the web processes with threads
(``gunicorn --threads``) so that the events of concurrent requests share a commit.

The common case does not go through Flask's request machinery (``FastPath``, in front of the app's WSGI
callable): a JSON event with its length, from a token the process knows, to an allowed host, is read,
checked, stored and answered ``202`` with the app's security headers (``bench/events.py --cpu``: 1.08 to
1.16 ms of the web's CPU an event, against 1.31 to 1.41 ms through Flask). Anything else (no length,
another type, a query string, an unknown token, an event the checks refuse, the database or renderer
unavailable) is handed to Flask with its body as it came, where ``post_event`` answers it: the answers
are the same either way, and what is refused is counted against the rate limit as before.
"""
from __future__ import annotations

import io
import logging

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import InternalServerError, RequestEntityTooLarge
from werkzeug.wsgi import get_host

from core import events, settings
from core.db import db
from core.groupcommit import StoreFailed
from core.models import sha256_hex
from dashboard import headers, hosts
from dashboard.api.base import bp, rate_limited
from dashboard.bodies import loads as bounded_loads
from dashboard.bodies import read_capped
from dashboard.errors import json_error

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 128 * 1024
PATH = "/api/v1/events"


def intake(app: Flask | None = None) -> events.Intake:
    """The app's intake, made on its first event (its writer thread starts in each process that uses it)."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    found = app.extensions.get("offload_events")
    if found is None:
        with app.app_context():
            found = app.extensions.setdefault("offload_events", events.Intake(db.engine))
    return found


def _accepted(mode: str) -> dict:
    return {"accepted": True, "mode": mode, "job_id": None}


def _refused(exc: Exception) -> tuple[int, dict, dict]:
    """The answer for what ``Intake.writer.submit`` raised: (status, body, headers)."""
    if isinstance(exc, events.RateLimited):
        return exc.status, _error(exc.code, exc.message), {"Retry-After": str(exc.retry_after)}
    if isinstance(exc, events.EventError):
        return exc.status, _error(exc.code, exc.message, exc.details), {}
    if isinstance(exc, (StoreFailed, TimeoutError)):
        return 503, _error("store_unavailable", "events cannot be stored right now; retry shortly"), {}
    raise exc


def _error(code: str, message: str, details=None) -> dict:
    body = {"error": code, "message": message}  # as dashboard.errors.json_error
    if details is not None:
        body["details"] = details
    return body


class FastPath:
    """``POST /api/v1/events`` for a token this process knows, answered without Flask's request context (see
    the module's doc); every other request goes to ``wsgi_app`` as it came."""

    def __init__(self, app: Flask, wsgi_app):
        self.app, self.wsgi_app = app, wsgi_app

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "POST":
            return self.wsgi_app(environ, start_response)
        raw = self._read(environ)
        if raw is None:
            return self.wsgi_app(environ, start_response)
        scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        token = token.strip()
        with self.app.app_context():  # a template read now and then (TEMPLATE_TTL_S) uses the app's database
            try:
                pending = intake(self.app).prepare(token, bounded_loads(raw), count=True)
            except Exception:  # noqa: BLE001 - refused, or the database unavailable: Flask answers it as always
                return self._to_flask(environ, raw, start_response)
            try:
                status, body, extra = 202, _accepted(intake(self.app).writer.submit(pending).mode), {}
            except Exception as exc:  # noqa: BLE001 - submitted: answered here, never twice
                try:
                    status, body, extra = _refused(exc)
                except Exception:  # as Flask answers an exception it does not handle
                    log.exception("Exception on %s [POST]", PATH)
                    status, body, extra = 500, _error("internal_server_error", InternalServerError.description), {}
        data = self._json(body)
        start_response(f"{status} {_REASONS[status]}", [
            ("Content-Type", "application/json"), ("Content-Length", str(len(data))),
            *headers.security(settings.current(), "application/json"), *extra.items()])
        return [data]

    def _read(self, environ) -> bytes | None:
        """The body of an event this path answers; ``None`` for a request it leaves to Flask (nothing read)."""
        if environ.get("QUERY_STRING") or environ.get("HTTP_TRANSFER_ENCODING"):
            return None
        if environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower() != "application/json":
            return None
        length = environ.get("CONTENT_LENGTH", "")
        if not length.isdigit() or not 0 < int(length) <= MAX_BODY_BYTES:
            return None
        scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() != "bearer" or not intake(self.app).knows(token.strip()):
            return None
        if not hosts.allowed(get_host(environ), settings.current().allowed_hosts):
            return None
        raw = environ["wsgi.input"].read(int(length))
        if len(raw) != int(length):  # the client went away mid-body: Flask sees what came
            environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(raw), str(len(raw))
            return None
        return raw

    def _json(self, body: dict) -> bytes:
        """``body`` as ``jsonify`` writes it."""
        provider = self.app.json
        compact = getattr(provider, "compact", None)
        pretty = (compact is None and self.app.debug) or compact is False
        return (provider.dumps(body, **({"indent": 2} if pretty else {"separators": (",", ":")})) + "\n").encode()

    def _to_flask(self, environ, raw: bytes, start_response):
        environ["wsgi.input"] = io.BytesIO(raw)
        return self.wsgi_app(environ, start_response)


_REASONS = {202: "ACCEPTED", 400: "BAD REQUEST", 401: "UNAUTHORIZED", 413: "REQUEST ENTITY TOO LARGE",
            429: "TOO MANY REQUESTS", 500: "INTERNAL SERVER ERROR", 503: "SERVICE UNAVAILABLE"}


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
    except events.EventError as exc:
        return json_error(exc.status, exc.code, exc.message, exc.details)
    try:
        accepted = intake().writer.submit(pending)
    except Exception as exc:  # noqa: BLE001 - _refused raises what it does not answer
        status, body, extra = _refused(exc)
        return jsonify(body), status, extra
    return jsonify(_accepted(accepted.mode)), 202
