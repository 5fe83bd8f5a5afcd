"""Error pages: JSON for the API and callbacks, HTML elsewhere; a database
outage is a 503 that clears by itself when the database returns."""
from __future__ import annotations

import logging

from flask import jsonify, render_template, request
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException, NotFound

from core import tenancy
from core.db import db
from core.rendering import RendererUnavailable

log = logging.getLogger(__name__)


def wants_json() -> bool:
    return request.path.startswith(("/api/", "/callbacks/"))


def json_error(status: int, code: str, message: str, details=None):
    body = {"error": code, "message": message}
    if details is not None:
        body["details"] = details
    return jsonify(body), status


#: what a person reads for the common statuses (others: the exception's own description)
MESSAGES = {
    403: "You may not open this page with this account.",
    404: "There is nothing here. The link may be mistyped, or what it pointed at is gone.",
    410: "This is no longer available.",
    500: "Something went wrong on our side. It has been logged; try again in a moment.",
    503: "The service is briefly unavailable; try again in a moment.",
}

#: what a caller reads when no renderer process could start (the machine is short of memory or processes):
#: nothing is wrong with the template or the request, and the same request later will do
RENDERER_UNAVAILABLE = ("Templates cannot be rendered right now (the renderer process did not start); "
                        "nothing is wrong with the request: retry in a moment.")
RENDERER_RETRY_S = "10"


def error_page(status: int, title: str, description: str | None, headers=None):
    """A styled HTML error page; the dashboard's links back to it for signed-in paths."""
    message = MESSAGES.get(status) or description or title
    home = "/admin/" if request.path.startswith("/admin") else None
    return render_template("errors/http.html", code=status, title=title, message=message, home=home), status, \
        headers or {}


def init_app(app) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if wants_json():
            code = (exc.name or "error").lower().replace(" ", "_")
            return json_error(exc.code or 500, code, exc.description or exc.name)
        if exc.code is None or exc.code < 400:
            return exc
        headers = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]
        return error_page(exc.code, exc.name, exc.description, headers)

    @app.errorhandler(tenancy.NotFound)
    def not_this_companys(exc: tenancy.NotFound):
        # core's "no such row for this company": the same 404 as any other, JSON or the error page
        return http_error(NotFound())

    @app.errorhandler(OperationalError)
    @app.errorhandler(DBAPIError)
    def database_unavailable(exc):
        db.session.rollback()
        if not getattr(exc, "connection_invalidated", False) and not isinstance(exc, OperationalError):
            raise exc
        log.warning("database unavailable: %s", type(exc.orig).__name__ if exc.orig else type(exc).__name__)
        if wants_json():
            return json_error(503, "database_unavailable", "The database is unavailable; retry shortly.")
        return error_page(503, "Service Unavailable", None, {"Retry-After": "5"})

    @app.errorhandler(RendererUnavailable)
    def renderer_unavailable(exc: RendererUnavailable):
        # the renderer (core.bounded's child) could not start: a 503 to retry, never a 500
        db.session.rollback()
        log.warning("renderer unavailable: %s", exc)
        headers = {"Retry-After": RENDERER_RETRY_S}
        if wants_json():
            body, status = json_error(503, "renderer_unavailable", RENDERER_UNAVAILABLE)
            return body, status, headers
        home = "/admin/" if request.path.startswith("/admin") else None
        return render_template("errors/http.html", code=503, title="Service Unavailable",
                               message=RENDERER_UNAVAILABLE, home=home), 503, headers
