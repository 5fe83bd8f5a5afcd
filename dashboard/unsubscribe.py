"""One-click unsubscribe for campaign mail (RFC 8058): ``/u/<token>``.

The token is an itsdangerous signature of ``[company_id, email]`` keyed by
a key derived from each OFFLOAD_ENCRYPTION_KEYS key, so it needs no
database row, cannot be guessed, survives restarts and keeps working
through a key rotation while the old key is listed. A GET shows a confirm
page (mail scanners follow links; they must not unsubscribe anyone); a
POST, with or without cookies, suppresses the address. Both are
idempotent.
"""
from __future__ import annotations

import hashlib
import hmac

from flask import Blueprint, abort, current_app, render_template
from itsdangerous import BadSignature, URLSafeSerializer

from dashboard import audit
from dashboard.bounces import suppress
from dashboard.extensions import db
from dashboard.models import Company, Suppression

bp = Blueprint("unsubscribe", __name__)
SALT = "offload-unsubscribe"
#: job types whose mail carries an unsubscribe link (not passwords, licenses, certificates)
CAMPAIGN_TYPES = ("reengagement", "notification")
_serializers: dict[tuple, URLSafeSerializer] = {}


def _serializer() -> URLSafeSerializer:
    keys = tuple(current_app.config["OFFLOAD_ENCRYPTION_KEYS"])  # newest first
    found = _serializers.get(keys)
    if found is None:
        # itsdangerous wants oldest to newest; it signs with the last one
        secrets = [hmac.new(k, SALT.encode(), hashlib.sha256).hexdigest() for k in reversed(keys)]
        found = _serializers[keys] = URLSafeSerializer(secrets, salt=SALT,
                                                         signer_kwargs={"digest_method": hashlib.sha256})
    return found


def make_token(company_id: int, email: str) -> str:
    return _serializer().dumps([int(company_id), email.strip().lower()])


def read_token(token: str) -> tuple[int, str] | None:
    """(company id, email) of a genuine token, else ``None``."""
    if len(token) > 1000:
        return None
    try:
        value = _serializer().loads(token)
    except BadSignature:
        return None
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int)
            and isinstance(value[1], str)):
        return None
    return value[0], value[1]


def unsubscribe_url(company_id: int, email: str) -> str:
    return f"{current_app.config['OFFLOAD_PUBLIC_URL']}/u/{make_token(company_id, email)}"


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
    from dashboard.extensions import csrf

    csrf.exempt(bp)
    app.register_blueprint(bp)
