"""Error pages: JSON for the API and callbacks, HTML elsewhere; a database
outage is a 503 that clears by itself when the database returns."""
from __future__ import annotations

import logging

from flask import jsonify, request
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

from core.db import db

log = logging.getLogger(__name__)


def wants_json() -> bool:
    return request.path.startswith(("/api/", "/callbacks/"))


def json_error(status: int, code: str, message: str, details=None):
    body = {"error": code, "message": message}
    if details is not None:
        body["details"] = details
    return jsonify(body), status


def init_app(app) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if wants_json():
            code = (exc.name or "error").lower().replace(" ", "_")
            return json_error(exc.code or 500, code, exc.description or exc.name)
        return exc

    @app.errorhandler(OperationalError)
    @app.errorhandler(DBAPIError)
    def database_unavailable(exc):
        db.session.rollback()
        if not getattr(exc, "connection_invalidated", False) and not isinstance(exc, OperationalError):
            raise exc
        log.warning("database unavailable: %s", type(exc.orig).__name__ if exc.orig else type(exc).__name__)
        if wants_json():
            return json_error(503, "database_unavailable", "The database is unavailable; retry shortly.")
        return "The service is temporarily unavailable; retry shortly.", 503, {"Retry-After": "5"}
