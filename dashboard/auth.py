"""Logins: Flask-Login with a fresh session at login, back-off after repeated
failures (``core.login_throttle``: per address, per account, per known device, no
lock anyone can set), and logout, which ends the session everywhere. Every login
and failure is audited. An unknown account costs the same password-hash work as a
real one.

A successful sign-in leaves a *device cookie* (``offload_device``: signed with the
secret key, HttpOnly, Secure in production, sent to ``/login`` only, 180 days) naming
the account and a random device id; it holds up to five accounts. A browser that
carries it for the account it signs in to is exempt from the account-wide back-off
an attack from elsewhere builds up: only its own failures slow it down."""
from __future__ import annotations

import re
import secrets
import unicodedata
from urllib.parse import urlsplit

from flask import Blueprint, current_app, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user
from flask_wtf import FlaskForm
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import func, select
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, Length

from core import audit, login_throttle, settings
from core.db import db
from core.models import User, utcnow
from core.models.companies import check_dummy_password
from dashboard.extensions import login_manager

bp = Blueprint("auth", __name__, template_folder="templates")
GENERIC_ERROR = "Invalid email or password."
_ENCODED_UNSAFE = re.compile(r"%(?:[01][0-9a-f]|7f|5c|20)", re.IGNORECASE)
DEVICE_COOKIE = "offload_device"
DEVICE_MAX_AGE_S = 180 * 86400
DEVICE_SALT = "offload-login-device"
MAX_DEVICE_ACCOUNTS = 5
_DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=320)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=512)])


@login_manager.user_loader
def load_user(user_id: str):
    """Session value is ``<id>:<session_token>``; a changed password ends old sessions."""
    uid, _, token = user_id.partition(":")
    if not uid.isdigit():
        return None
    user = db.session.get(User, int(uid))
    if user is None or not secrets.compare_digest(user.session_token, token) or not may_sign_in(user):
        return None
    audit_as(user)
    return user


def audit_as(user: User) -> None:
    """The signed-in user acts in this request (``core.audit``), unless an API token already does."""
    if not audit.current_actor().name:
        audit.act_as(audit.current_actor(), name=user.email, user_id=user.id)


def may_sign_in(user: User) -> bool:
    """Fail closed: an active admin, or an active non-admin of a company; no one else."""
    return bool(user.is_active and (user.is_admin or user.company_id is not None))


def _password_ok(user: User | None, password: str) -> bool:
    """Check the password; an unknown account is checked against a dummy hash (same work)."""
    if user is None:
        return check_dummy_password(password)
    return user.check_password(password)


def _device_signer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key, salt=DEVICE_SALT)


def known_devices() -> dict[str, str]:
    """The device cookie's accounts (``login_throttle.account_id``) and their device ids; ``{}``
    when there is none or it is not ours (unsigned, expired, malformed)."""
    raw = request.cookies.get(DEVICE_COOKIE, "")
    if not raw or len(raw) > 4096:
        return {}
    try:
        pairs = _device_signer().loads(raw, max_age=DEVICE_MAX_AGE_S)
    except (BadSignature, ValueError, TypeError):
        return {}
    if not isinstance(pairs, list):
        return {}
    return {a: d for a, d in (p for p in pairs if isinstance(p, list) and len(p) == 2)
            if isinstance(a, str) and isinstance(d, str) and _DEVICE_ID.fullmatch(d)}


def device_for(email: str) -> str | None:
    """This browser's device id for ``email``'s account, when it signed in to it before."""
    return known_devices().get(login_throttle.account_id(email))


def remember_device(response, email: str, device: str | None) -> None:
    """Put (or keep) ``email``'s account in the device cookie, newest first."""
    account = login_throttle.account_id(email)
    others = [[a, d] for a, d in known_devices().items() if a != account]
    pairs = [[account, device or secrets.token_urlsafe(18)], *others][:MAX_DEVICE_ACCOUNTS]
    response.set_cookie(DEVICE_COOKIE, _device_signer().dumps(pairs), max_age=DEVICE_MAX_AGE_S, path="/login",
                        httponly=True, secure=settings.current().production, samesite="Lax")


def _register_failure(user: User | None, email: str, device: str | None) -> None:
    login_throttle.record_failure(email, request.remote_addr or "-", device)
    if user is not None:
        user.failed_logins += 1
    # the actor is the account's own address, never the typed text (a password typed there by mistake)
    audit.record("login_failed", company_id=user.company_id if user else None,
                 object_type="user", object_id=user.id if user else None,
                 actor=user.email if user else "unknown account")
    db.session.commit()


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Show the login form; on success start a brand-new session."""
    if current_user.is_authenticated:
        return redirect(url_for("admin.index"))
    form = LoginForm()
    error = None
    status = 200
    if form.validate_on_submit():
        email = form.email.data.strip().lower()
        ip = request.remote_addr or "-"
        device = device_for(email)
        wait = login_throttle.wait_seconds(email, ip, device)
        if wait > 0:  # before any lookup or hash: known and unknown accounts answer alike
            error = f"Too many failed sign-ins from here. Try again in {int(wait) + 1} seconds."
            return render_template("auth/login.html", form=form, error=error), 429
        user = db.session.execute(select(User).where(func.lower(User.email) == email)).scalar_one_or_none()
        password_ok = _password_ok(user, form.password.data)
        ok = password_ok and user is not None and may_sign_in(user)
        if ok:
            login_throttle.record_success(email, ip, device)
            user.failed_logins, user.locked_until, user.last_login_at = 0, None, utcnow()
            session.clear()  # no pre-login state survives: prevents session fixation
            session["sid"] = secrets.token_urlsafe(16)
            login_user(user)
            audit_as(user)
            audit.record("login", company_id=user.company_id, object_type="user", object_id=user.id,
                         actor=user.email, user_id=user.id)
            db.session.commit()
            response = redirect(_safe_next(request.args.get("next")))
            remember_device(response, email, device)
            return response
        _register_failure(user, email, device)
        error = GENERIC_ERROR
    elif request.method == "POST":
        error = "Please fill in both fields."
    if error and request.method == "POST":
        status = 401
    return render_template("auth/login.html", form=form, error=error), status


def safe_next(target: str | None) -> str | None:
    """``target`` when it is a plain local path, else ``None``.

    A plain local path starts with one ``/``, holds no control or whitespace
    character (browsers drop a tab or newline, turning ``/\t/evil`` into
    ``//evil``), no backslash, and parses with neither a scheme nor a host.
    """
    if not target or len(target) > 2000 or not target.startswith("/") or target.startswith("//"):
        return None
    if "\\" in target or any(unicodedata.category(c)[0] in ("C", "Z") for c in target):
        return None
    if _ENCODED_UNSAFE.search(target):  # %09, %0d, %5c...: decoded by some hop on the way
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/") or parts.path.startswith("//"):
        return None
    return target


def _safe_next(target: str | None) -> str:
    """Only plain local paths are followed after login."""
    return safe_next(target) or url_for("admin.index")


@bp.route("/logout", methods=["POST"])
@login_required
def logout():
    audit.record("logout", company_id=current_user.company_id, object_type="user", object_id=current_user.id)
    # a new session token: a copy of the old session cookie no longer signs anyone in
    current_user.session_token = secrets.token_hex(16)
    db.session.commit()
    logout_user()
    session.clear()
    return redirect(url_for("auth.login"))


@bp.route("/")
def home():
    return redirect(url_for("admin.index"))


def init_app(app) -> None:
    app.register_blueprint(bp)

    @app.before_request
    def audit_from_this_address():
        # remote_addr only: behind a proxy, OFFLOAD_PROXY_HOPS makes ProxyFix set it from
        # X-Forwarded-For; a header read here directly could be forged by anyone
        audit.act_as(ip=(request.remote_addr or "")[:64])

    @app.teardown_request
    def audit_as_nobody(exc):
        audit.act_as()  # work after the request (a worker run in this thread) is the system's
    login_manager.login_view = "auth.login"
    login_manager.session_protection = "strong"
