"""One-click unsubscribe for campaign mail (RFC 8058): ``/u/<token>``.

The token (``core.unsubscribe``) names the company and the address. A GET shows a confirm
page (mail scanners follow links; they must not unsubscribe anyone); a
POST, with or without cookies, suppresses the address. Both are
idempotent.
"""
from __future__ import annotations

from flask import Blueprint, abort, render_template

from core import audit
from core.db import db
from core.models import Company, Suppression
from core.suppressions import suppress
from core.unsubscribe import read_token
from dashboard.extensions import csrf

bp = Blueprint("unsubscribe", __name__)


def _target(token: str) -> tuple[Company, str]:
    found = read_token(token)
    if found is None:
        abort(404)
    company = db.session.get(Company, found[0])
    if company is None:
        abort(404)
    return company, found[1]


def _page(company: Company, email: str, done: bool, status: int = 200):
    html = render_template("campaigns/unsubscribe.html", company=company.name, email=email, done=done)
    return html, status, {"Cache-Control": "no-store", "X-Robots-Tag": "noindex", "Referrer-Policy": "no-referrer"}


@bp.get("/u/<token>")
def confirm(token: str):
    """The confirm page: a button that POSTs back here."""
    company, email = _target(token)
    done = db.session.execute(Suppression.scoped(company.id).where(Suppression.email == email)).first() is not None
    return _page(company, email, done)


@bp.post("/u/<token>")
def unsubscribe(token: str):
    """RFC 8058 one-click (``List-Unsubscribe=One-Click``) and the confirm button."""
    company, email = _target(token)
    if suppress(company.id, email, "unsubscribe"):
        audit.record("unsubscribed", company_id=company.id, object_type="suppression", actor="recipient")
        db.session.commit()
    return _page(company, email, True)


def init_app(app) -> None:
    csrf.exempt(bp)
    app.register_blueprint(bp)
