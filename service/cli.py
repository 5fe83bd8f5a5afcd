"""The Flask CLI of CONTRACT §1, §7 and §9, every command of it: worker, smtp, db upgrade
(Flask-Migrate, registered by the web app), company, user, keys rotate, lms poll /
lms test, and run-demo (the ``make run`` quick start)."""
from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import select

from core import audit, companies, logs, settings
from core.db import db
from core.lms.connection import LmsError, describe_connection
from core.lms.poller import poll_once
from core.models import ROLES, Company, User
from core.rotation import reencrypt_all
from service.app import create_worker_app
from service.devserver import serve
from submission import serve as serve_smtp
from tasks.worker import run_worker

lms_cli = AppGroup("lms", help="The Moodle/IOMAD connector.")

company_cli = AppGroup("company", help="Create and configure companies.")
user_cli = AppGroup("user", help="Create logins, unlock them, reset their passwords.")
keys_cli = AppGroup("keys", help="Encryption key maintenance.")


@company_cli.command("create")
@click.argument("name")
def company_create(name: str) -> None:
    """Create a company; print its id, API token and callback secret."""
    company, token, secret = companies.create_company(name)
    audit.record("company_created", company_id=company.id, object_type="company", object_id=company.id,
                 actor="cli")
    db.session.commit()
    click.echo(f"id: {company.id}\napi_token: {token}\ncallback_secret: {secret}")


@company_cli.command("configure")
@click.argument("company_id", type=int)
@click.argument("pairs", nargs=-1, required=True)
def company_configure(company_id: int, pairs: tuple[str, ...]) -> None:
    """Set delivery settings: KEY=VALUE ... (secrets stored encrypted)."""
    company = db.session.get(Company, company_id)
    if company is None:
        raise click.ClickException(f"no company with id {company_id}")
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.ClickException(f"expected KEY=VALUE, got {pair!r}")
        values[key.strip()] = value
    try:
        changed = companies.configure(company, values)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    audit.record("settings_changed", company_id=company.id, object_type="company", object_id=company.id,
                 actor="cli", details={"fields": sorted(changed)})
    db.session.commit()
    click.echo(f"updated: {', '.join(sorted(changed)) or 'nothing'}")


@lms_cli.command("poll")
@click.argument("company_id", type=int)
def lms_poll(company_id: int) -> None:
    """Poll company ID's LMS now: IOMAD's email queue and course completions."""
    try:
        found = poll_once(company_id)
    except LmsError as exc:
        raise click.ClickException(str(exc)) from None
    for key, value in found.items():
        click.echo(f"{key}: {value}")
    if any(key.endswith("_error") for key in found):
        raise SystemExit(1)


@lms_cli.command("test")
@click.argument("company_id", type=int)
def lms_test(company_id: int) -> None:
    """Connect to company ID's LMS database and print what it sees."""
    company = db.session.get(Company, company_id)
    if company is None:
        raise click.ClickException(f"no company with id {company_id}")
    try:
        found = describe_connection(company)
    except LmsError as exc:
        raise click.ClickException(str(exc)) from None
    for key, value in found.items():
        click.echo(f"{key}: {value}")


@user_cli.command("create")
@click.argument("email")
@click.option("--password", required=True, help="The login password.")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--company", "company_id", type=int, help="The company a manager belongs to.")
def user_create(email: str, password: str, role: str, company_id: int | None) -> None:
    """Create a login; a manager belongs to exactly one company."""
    try:
        user = companies.create_user(email, password, role, company_id)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    audit.record("user_created", company_id=user.company_id, object_type="user", object_id=user.id, actor="cli")
    db.session.commit()
    click.echo(f"id: {user.id}\nemail: {user.email}\nrole: {user.role}")


def _user_or_fail(email: str) -> User:
    user = find_user(email.strip())
    if user is None:
        raise click.ClickException(f"no user with email {email.strip().lower()}")
    return user


@user_cli.command("unlock")
@click.argument("email")
def user_unlock(email: str) -> None:
    """Clear a login's sign-in back-off."""
    user = _user_or_fail(email)
    companies.unlock_user(user)
    audit.record("user_unlocked", company_id=user.company_id, object_type="user", object_id=user.id, actor="cli")
    db.session.commit()
    click.echo(f"unlocked: {user.email}")


@user_cli.command("set-password")
@click.argument("email")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True, help="The new password.")
def user_set_password(email: str, password: str) -> None:
    """Set a new password (ends the login's sessions, clears its back-off)."""
    user = _user_or_fail(email)
    try:
        companies.set_password(user, password)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    audit.record("password_set", company_id=user.company_id, object_type="user", object_id=user.id, actor="cli")
    db.session.commit()
    click.echo(f"password set: {user.email}")


@keys_cli.command("rotate")
def keys_rotate() -> None:
    """Re-encrypt every stored secret and recipient datum under the newest key."""

    counts = reencrypt_all()
    for table, n in counts.items():
        click.echo(f"{table}: {n}")


@click.command("run-demo")
@click.option("--host", default="127.0.0.1")
@click.option("--port", default=5000, type=int)
def run_demo(host: str, port: int) -> None:
    """Seed the demo once, start one worker and serve the web app (``make run``)."""

    logs.configure()
    serve(current_app._get_current_object(), host, port)


@click.command("worker")
@click.option("--burst", is_flag=True, help="Exit when the queues are empty.")
@click.option("--name", default=None, help="Worker name (default: host and pid).")
def worker_command(burst: bool, name: str | None) -> None:
    """Run an RQ worker on the service's queues, with the scheduler."""
    logs.configure()
    run_worker(create_worker_app(settings.current()), burst=burst, name=name)


@click.command("smtp")
def smtp_command() -> None:
    """Serve SMTP submission on OFFLOAD_SMTP_LISTEN: any Moodle's mail becomes jobs (CONTRACT §9)."""
    logs.configure()
    serve_smtp(settings.current())


def init_app(app) -> None:
    for command in (worker_command, smtp_command, company_cli, user_cli, keys_cli, lms_cli, run_demo):
        app.cli.add_command(command)


def find_user(email: str) -> User | None:
    return db.session.execute(select(User).where(User.email == email.lower())).scalar_one_or_none()
