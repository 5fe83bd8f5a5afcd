"""``make run``: seed the demo once, make sure a Redis answers (embedded if
none), start the demo's SMTP sink (the Outbox), one worker process with the
scheduler and, when ``OFFLOAD_SMTP_LISTEN`` is set (``make run`` sets
``127.0.0.1:2525``), the SMTP submission server with the Moodle settings that
reach it; serve the web app.

What the demo keeps in ``instance/`` (each file mode 0600): ``demo-login.txt``
(the admin's password, printed at every start), ``secret-key`` (so a restart
keeps everyone signed in) and the captured mail (``outbox/``). The demo
company's API token is printed once, when it is seeded (only its hash is
stored); Settings › API tokens issues another.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
from urllib.parse import urlsplit

from flask import Flask
from sqlalchemy import select
from werkzeug.serving import run_simple

from core import audit, companies, settings
from core.db import db
from core.models import JOB_TYPES, Company, Template, User
from core.queue import redis_answers, start_embedded_redis
from dashboard.outbox import OutboxSink
from providers.smtp import SmtpProvider

DEMO_COMPANY = "Demo Company"
DEMO_ADMIN = "admin@example.com"
DEMO_SENDER = "noreply@demo.example"
#: one template per job type, seeded with the demo company; their variables are the job types' fields
#: (core.fields: a test holds each one to its type's table)
DEMO_TEMPLATES = {
    "csv_import": ("welcome", "Welcome to {{ site | default('the academy') }}, {{ firstname }}",
                   "Hi {{ firstname }},\n\nyour account is ready. Your password is {{ password }}.\n"),
    "license_allocation": ("license-allocated", "A course license for you, {{ firstname }}",
                           "Hi {{ firstname }},\n\nyou have been given a license for {{ course_name }}.\n"),
    "reengagement": ("come-back", "We miss you, {{ firstname }}",
                     "Hi {{ firstname }},\n\nyour courses are waiting: sign in and pick up where you left off.\n"),
    "notification": ("notice", "{{ subject_line | default('A message from the academy') }}",
                     "Hi {{ firstname }},\n\n{{ message | default('You have a new notification.') }}\n"),
    # the certificate's own fields (course_name, learner_name), which the PDF needs anyway
    "certificate": ("certificate", "Your certificate for {{ course_name }}",
                    "Congratulations {{ learner_name }}!\n\nYour certificate: {{ certificate_url }}\n"),
}


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def secret_key(instance_path: str) -> str:
    """The demo's SECRET_KEY, kept in ``instance/secret-key`` (0600) across restarts."""
    path = os.path.join(instance_path, "secret-key")
    if os.path.exists(path):
        with open(path) as fh:
            key = fh.read().strip()
        if key:
            return key
    os.makedirs(instance_path, exist_ok=True)
    key = secrets.token_hex(32)
    _write_private(path, key)
    return key


def seed_templates(company: Company) -> int:
    """One template per job type, for a company that has none of that name yet."""
    made = 0
    for job_type in JOB_TYPES:
        name, subject, body = DEMO_TEMPLATES[str(job_type)]
        if db.session.execute(Template.scoped(company.id).where(Template.name == name)).scalar_one_or_none():
            continue
        html = "<p>" + body.strip().replace("\n\n", "</p><p>").replace("\n", "<br>") + "</p>"
        db.session.add(Template(company_id=company.id, name=name, job_type=str(job_type), subject=subject,
                                body_text=body, body_html=html))
        made += 1
    return made


def seed_demo(instance_path: str) -> tuple[str | None, str | None]:
    """Create the demo company, its templates and the admin once.

    Returns the admin's password (kept in ``instance/demo-login.txt``, mode
    0600, so every start can print it) and, on the run that seeds, the demo
    company's API token (else ``None``)."""
    login_file = os.path.join(instance_path, "demo-login.txt")
    if db.session.execute(select(User).where(User.email == DEMO_ADMIN)).scalar_one_or_none():
        if os.path.exists(login_file):
            with open(login_file) as fh:
                return fh.read().strip(), None
        return None, None
    company = db.session.execute(select(Company).where(Company.name == DEMO_COMPANY)).scalar_one_or_none()
    token = None
    if company is None:
        company, token, _secret = companies.create_company(DEMO_COMPANY)
    seed_templates(company)
    password = secrets.token_urlsafe(12)
    user = companies.create_user(DEMO_ADMIN, password, "admin", None)
    audit.record("demo_seeded", company_id=company.id, object_type="user", object_id=user.id, actor="make run")
    db.session.commit()
    os.makedirs(instance_path, exist_ok=True)
    _write_private(login_file, password)
    return password, token


def point_demo_at_sink(port: int) -> bool:
    """Deliver the demo company's mail to the Outbox sink, unless someone gave
    it other delivery settings (a provider other than SMTP, or another host)."""
    company = db.session.execute(select(Company).where(Company.name == DEMO_COMPANY)).scalar_one_or_none()
    if company is None or company.settings is None:
        return False
    s = company.settings
    if s.provider != SmtpProvider.name or (s.get_setting("smtp_host") not in (None, "127.0.0.1")) or \
            s.get_setting("smtp_username"):
        return False
    companies.configure(company, {"provider": SmtpProvider.name, "mode": "direct", "smtp_host": "127.0.0.1",
                                  "smtp_port": str(port), "smtp_tls": "none",
                                  "sender": s.sender or DEMO_SENDER})
    db.session.commit()
    return True


def ensure_redis(s: settings.Settings) -> str:
    """The REDIS_URL if it answers, else an embedded Redis-compatible server."""
    url = s.redis_url
    if redis_answers(url):
        return url
    if not s.embedded_redis:
        raise SystemExit(f"REDIS_URL: no Redis answers at {url}")
    parts = urlsplit(url)
    embedded = start_embedded_redis(parts.hostname or "127.0.0.1", parts.port or 6379)
    print(f" * No Redis at {url}: serving an embedded one at {embedded}", flush=True)
    return embedded


def development_config(app: Flask, host: str, port: int) -> dict:
    """What the demo changes in a development app's settings, and hands its worker: a kept
    secret key, a public URL on the served port, local endpoints and storage allowed."""
    changes: dict = {"allow_private_endpoints": True, "local_storage": True}
    given = settings.current().given
    if "SECRET_KEY" not in given:
        changes["secret_key"] = secret_key(app.instance_path)
    if "OFFLOAD_PUBLIC_URL" not in given:
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        changes["public_url"] = f"http://{shown}:{port}"
    return changes


def moodle_settings(s: settings.Settings, token: str | None) -> str:
    """The lines to paste into Moodle's outgoing mail settings for the demo company (``make run``)."""
    company = db.session.execute(select(Company).where(Company.name == DEMO_COMPANY)).scalar_one_or_none()
    if company is None or s.smtp_listen is None:
        return ""
    host, port = s.smtp_listen
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    secure = "TLS" if s.smtp_tls_cert else "(none: AUTH in the clear is allowed from loopback only)"
    sender = (company.settings.sender if company.settings else None) or DEMO_SENDER
    password = token or "an API token of the company (Settings › API tokens)"
    return ("\n * Moodle by SMTP: Site administration › Server › Email › Outgoing mail configuration\n"
            f"     smtphosts      {shown}:{port}\n     smtpsecure     {secure}\n     smtpauthtype   LOGIN\n"
            f"     smtpuser       {company.id}\n     smtppass       {password}\n     smtpmaxbulk    50\n"
            f"   and Noreply address (noreplyaddress) at {sender.rpartition('@')[2]}, e.g. {sender}\n")


def start_smtp(env: dict) -> subprocess.Popen | None:
    """The SMTP submission server, a process of its own, when OFFLOAD_SMTP_LISTEN is set."""
    if settings.current().smtp_listen is None:
        return None
    return subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "smtp"], env=env)


def serve(app: Flask, host: str, port: int) -> None:
    if not settings.current().production:
        s = settings.override(**development_config(app, host, port))
        app.config["SECRET_KEY"] = s.secret_key
    settings.configure_outbound(settings.current())
    password, token = seed_demo(app.instance_path)
    sink = OutboxSink(app.instance_path).start()
    point_demo_at_sink(sink.port)
    shown = password or "(see instance/demo-login.txt)"
    token_line = (f" * Demo company API token (shown once): {token}\n" if token else
                  " * Demo company API token: printed at the first start; Settings › API tokens issues another\n")
    print(f"\n * Demo login: {DEMO_ADMIN} / {shown}\n{token_line}"
          f" * Open http://{host}:{port}/login\n * Demo mail goes to the Outbox (Admin › Outbox), "
          f"SMTP sink on 127.0.0.1:{sink.port}\n{moodle_settings(settings.current(), token)}", flush=True)
    s = settings.override(redis_url=ensure_redis(settings.current()))
    env = settings.environment({"REDIS_URL": s.redis_url, "SECRET_KEY": s.secret_key,
                                "OFFLOAD_PUBLIC_URL": s.public_url,
                                "OFFLOAD_ALLOW_PRIVATE_ENDPOINTS": "1" if s.allow_private_endpoints else "0",
                                "OFFLOAD_LOCAL_STORAGE": "1" if s.local_storage else "0"})
    worker = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "worker"], env=env)
    smtp = start_smtp(env)
    try:
        run_simple(host, port, app, use_reloader=False, use_debugger=False, threaded=True)
    finally:
        for child in (worker, smtp):
            if child is not None:
                child.terminate()
                child.wait(timeout=10)
        sink.stop()
