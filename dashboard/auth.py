"""Logins: Flask-Login with a fresh session at login, lockout after repeated
failures, and logout. Every login and failure is audited."""
from __future__ import annotations

import secrets
from datetime import timedelta

from flask import Blueprint, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user
from flask_wtf import FlaskForm
from sqlalchemy import func, select
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, Length

from core import audit
from core.db import db
from dashboard.extensions import login_manager
from core.models import User, utcnow

bp = Blueprint("auth", __name__, template_folder="templates")
LOCK_MINUTES = 15
GENERIC_ERROR = "Invalid email or password, or the account is temporarily locked."


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
    if user is None or not secrets.compare_digest(user.session_token, token):
        return None
    return user


def _is_locked(user: User) -> bool:
    return user.locked_until is not None and user.locked_until > utcnow()


def _register_failure(user: User | None, email: str, max_failures: int) -> None:
    if user is not None:
        user.failed_logins += 1
        if user.failed_logins >= max_failures:
            # each further failure while over the limit extends the lock
            user.locked_until = utcnow() + timedelta(minutes=LOCK_MINUTES)
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
    if form.validate_on_submit():
        email = form.email.data.strip().lower()
        user = db.session.execute(select(User).where(func.lower(User.email) == email)).scalar_one_or_none()
        ok = user is not None and user.is_active and not _is_locked(user) and user.check_password(form.password.data)
        if ok:
            user.failed_logins, user.locked_until, user.last_login_at = 0, None, utcnow()
            session.clear()  # no pre-login state survives: prevents session fixation
            session["sid"] = secrets.token_urlsafe(16)
            login_user(user)
            audit.record("login", company_id=user.company_id, object_type="user", object_id=user.id,
                         actor=user.email, user_id=user.id)
            db.session.commit()
            return redirect(_safe_next(request.args.get("next")))
        _register_failure(user, email, _max_failures())
        error = GENERIC_ERROR
    elif request.method == "POST":
        error = "Please fill in both fields."
    status = 401 if error and request.method == "POST" else 200
    return render_template("auth/login.html", form=form, error=error), status


def _max_failures() -> int:
    from flask import current_app

    return current_app.config["OFFLOAD_LOGIN_MAX_FAILURES"]


def _safe_next(target: str | None) -> str:
    """Only same-site relative paths are followed after login."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("admin.index")


@bp.route("/logout", methods=["POST"])
@login_required
def logout():
    audit.record("logout", company_id=current_user.company_id, object_type="user", object_id=current_user.id)
    db.session.commit()
    logout_user()
    session.clear()
    return redirect(url_for("auth.login"))


@bp.route("/")
def home():
    return redirect(url_for("admin.index"))


def init_app(app) -> None:
    app.register_blueprint(bp)
    login_manager.login_view = "auth.login"
    login_manager.session_protection = "strong"
