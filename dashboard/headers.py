"""Security headers on every response: the dashboard's pages may not be framed
(clickjacking), load nothing from elsewhere and run no inline script; in
production the browser is told to come back over HTTPS only (HSTS).

No page writes an inline ``<script>``, an ``on*=`` handler or a
``javascript:`` URL: every script is a file under ``static/`` (Flask-Admin's
stock templates are patched as they load, ``dashboard.admin.csp``), so the
policy's ``script-src`` is ``'self'`` alone. ``tests/dashboard/test_pages.py``
renders every page and fails on any inline script.
"""
from __future__ import annotations

from core import settings

#: the dashboard and public pages: scripts only from here, never inline; styles from here (the API
#: viewer and Bootstrap set style attributes); images from here or data: URIs (logos, QR codes,
#: previews), no framing, forms post only here
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; object-src 'none'; "
       "base-uri 'self'; form-action 'self'; frame-ancestors 'none'")
#: a year; no includeSubDomains: the operator's other hosts under the same domain are not ours to pin
HSTS = "max-age=31536000"


def security(s: settings.Settings, mimetype: str | None) -> list[tuple[str, str]]:
    """The security headers of a response of ``mimetype`` (also for responses made without Flask:
    ``dashboard.api.events.FastPath``)."""
    found = [("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "same-origin")]
    if s.production:
        found.append(("Strict-Transport-Security", HSTS))
    if mimetype == "text/html":
        found += [("Content-Security-Policy", CSP), ("X-Frame-Options", "DENY")]
    return found


def init_app(app) -> None:
    @app.after_request
    def security_headers(response):
        for name, value in security(settings.current(), response.mimetype):
            response.headers.setdefault(name, value)
        return response
