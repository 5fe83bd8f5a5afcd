"""The demo Outbox (admins, development only): what the demo's local SMTP
sink captured, with headers and a sandboxed preview, like Mailpit.

The HTML preview is served on its own URL with ``Content-Security-Policy:
sandbox`` (no scripts, no same origin, nothing fetched but inline styles and
data: images) and shown in an ``<iframe sandbox>``: mail HTML is untrusted.
"""
from __future__ import annotations

from datetime import UTC, datetime

from flask import abort, current_app, flash, redirect, request, url_for
from flask_admin import expose

from core import settings
from dashboard import outbox
from dashboard.admin.base import SecureBaseView

#: framed by the Outbox page only (the app's own pages may not be framed at all: dashboard.headers)
PREVIEW_CSP = ("sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
               "form-action 'none'; frame-ancestors 'self'")


#: messages on one page of the Outbox
PAGE_SIZE = 50


def received(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S")


class OutboxView(SecureBaseView):
    admin_only = True

    def is_accessible(self):
        return super().is_accessible() and not settings.current().production

    @expose("/")
    def index(self):
        """The newest messages, or those whose addresses or subject contain ``?q=``; ``?before=`` pages on."""
        q = request.args.get("q", "").strip()[:320]
        before = request.args.get("before", "")
        before = before if outbox.NAME.match(before) else None
        found = outbox.search(current_app.instance_path, q, before, limit=PAGE_SIZE)
        return self.render("admin/outbox/list.html", messages=found.messages, total=found.total, q=q,
                           before=before, older=found.older, received=received)

    @expose("/<message_id>/")
    def details(self, message_id: str):
        found = outbox.read(current_app.instance_path, message_id) or abort(404)
        return self.render("admin/outbox/details.html", m=found, received=received,
                           text=found.part("plain"), has_html=found.part("html") is not None)

    @expose("/<message_id>/preview")
    def preview(self, message_id: str):
        found = outbox.read(current_app.instance_path, message_id) or abort(404)
        html = found.part("html")
        if html is None:
            abort(404)
        return html, 200, {"Content-Type": "text/html; charset=utf-8", "Content-Security-Policy": PREVIEW_CSP,
                           "X-Frame-Options": "SAMEORIGIN", "X-Content-Type-Options": "nosniff",
                           "Cache-Control": "no-store"}

    @expose("/clear", methods=("POST",))
    def clear(self):
        n = outbox.clear(current_app.instance_path)
        flash(f"{n} message(s) removed from the outbox.", "success")
        return redirect(url_for("outbox.index"))


def register(admin) -> None:
    admin.add_view(OutboxView(name="Outbox", endpoint="outbox", url="/admin/outbox", category="Admin"))
