"""The LMS-facing JSON API (CONTRACT §3) under ``/api/v1``, authenticated by
company bearer tokens: ``jobs``, ``events``, ``templates`` and ``openapi`` add their routes to one blueprint."""
from __future__ import annotations

from dashboard.api import events, jobs, openapi, templates  # noqa: F401  (their routes join bp)
from dashboard.api.base import bp
from dashboard.extensions import csrf


def init_app(app) -> None:
    csrf.exempt(bp)
    app.register_blueprint(bp)
