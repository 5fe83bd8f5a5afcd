"""Signed callbacks from cloud workers (CONTRACT §4)."""
from __future__ import annotations

from flask import Blueprint

bp = Blueprint("callbacks", __name__, url_prefix="/callbacks/v1")


def init_app(app) -> None:
    from dashboard.extensions import csrf

    csrf.exempt(bp)
    app.register_blueprint(bp)
