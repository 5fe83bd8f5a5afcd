"""``make run``: seed the demo once, make sure a Redis answers (embedded if
none), start one worker process with the scheduler, serve the web app."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
from urllib.parse import urlsplit

from flask import Flask
from sqlalchemy import select

from core import audit, companies
from core.db import db
from core.models import Company, User
from core.queue import redis_answers, start_embedded_redis

DEMO_COMPANY = "Demo Company"
DEMO_ADMIN = "admin@example.com"


def seed_demo(instance_path: str) -> str | None:
    """Create the demo company and admin once; the demo password is kept in
    ``instance/demo-login.txt`` (mode 0600) so every ``make run`` can print it."""
    login_file = os.path.join(instance_path, "demo-login.txt")
    if db.session.execute(select(User).where(User.email == DEMO_ADMIN)).scalar_one_or_none():
        if os.path.exists(login_file):
            with open(login_file) as fh:
                return fh.read().strip()
        return None
    company = db.session.execute(select(Company).where(Company.name == DEMO_COMPANY)).scalar_one_or_none()
    if company is None:
        company, _token, _secret = companies.create_company(DEMO_COMPANY)
    password = secrets.token_urlsafe(12)
    user = companies.create_user(DEMO_ADMIN, password, "admin", None)
    audit.record("demo_seeded", company_id=company.id, object_type="user", object_id=user.id, actor="make run")
    db.session.commit()
    os.makedirs(instance_path, exist_ok=True)
    fd = os.open(login_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password)
    return password


def ensure_redis(app: Flask) -> str:
    """The REDIS_URL if it answers, else an embedded Redis-compatible server."""
    url = app.config["REDIS_URL"]
    if redis_answers(url):
        return url
    if not app.config["OFFLOAD_EMBEDDED_REDIS"]:
        raise SystemExit(f"REDIS_URL: no Redis answers at {url}")
    parts = urlsplit(url)
    embedded = start_embedded_redis(parts.hostname or "127.0.0.1", parts.port or 6379)
    print(f" * No Redis at {url}: serving an embedded one at {embedded}", flush=True)
    return embedded


def serve(app: Flask, host: str, port: int) -> None:
    password = seed_demo(app.instance_path)
    shown = password or "(see instance/demo-login.txt)"
    print(f"\n * Demo login: {DEMO_ADMIN} / {shown}\n * Open http://{host}:{port}/login\n", flush=True)
    redis_url = ensure_redis(app)
    app.config["REDIS_URL"] = redis_url
    env = {**os.environ, "REDIS_URL": redis_url}
    if "SECRET_KEY" not in env:
        env["SECRET_KEY"] = app.config["SECRET_KEY"]
    worker = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "worker"], env=env)
    from werkzeug.serving import run_simple

    try:
        run_simple(host, port, app, use_reloader=False, use_debugger=False, threaded=True)
    finally:
        worker.terminate()
        worker.wait(timeout=10)
