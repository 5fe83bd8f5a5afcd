"""Security headers on every response: the dashboard's pages may not be framed
(clickjacking) and load nothing from elsewhere."""
from __future__ import annotations

#: the dashboard and public pages: own scripts and styles (Flask-Admin writes inline ones), images
#: from here or data: URIs (logos, QR codes, previews), no framing, forms post only here
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; object-src 'none'; "
       "base-uri 'self'; form-action 'self'; frame-ancestors 'none'")


def init_app(app) -> None:
    @app.after_request
    def security_headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if response.mimetype == "text/html":
            response.headers.setdefault("Content-Security-Policy", CSP)
            response.headers.setdefault("X-Frame-Options", "DENY")
        return response
