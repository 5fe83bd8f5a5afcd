"""The two apps: the web app (``web_app``) and the app a worker runs its jobs in
(``create_worker_app``: the settings and core's handles, none of the web side).
Nothing runs at import time."""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from flask import Flask, current_app, has_app_context
from flask.globals import app_ctx
from flask_migrate import Migrate
from sqlalchemy import Engine
from werkzeug.middleware.proxy_fix import ProxyFix

from core import crypto, logs, settings, taskqueue
from core.db import db
from dashboard import admin, api, auth, bodies, bounces, callbacks, errors, headers, hosts, ops
from dashboard.api import events as events_api
from dashboard.bodies import BoundedJSONProvider, BoundedRequest
from dashboard.extensions import csrf, login_manager
from dashboard.public import unsubscribe, verify
from providers import registry
from tasks.registry import TASKS
from tasks.rq_queue import RqTaskQueue

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
log = logging.getLogger(__name__)
DEV_KEY_WARNING = ("OFFLOAD_ENCRYPTION_KEYS is not set: secrets and recipient data are encrypted with the PUBLIC "
                   "development key, which anyone can derive from the source. Never use this outside development.")
migrate = Migrate()


def web_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    """The web app: settings from the environment, then ``overrides`` (``Settings`` field names);
    its templates and static files are the web side's (``dashboard``)."""
    app = _app("dashboard", replace(settings.load(), **(overrides or {})), static_folder="../static",
               static_url_path="/static")
    app.json = BoundedJSONProvider(app)  # nesting deeper than bodies.MAX_JSON_DEPTH is a 400
    app.request_class = BoundedRequest  # form bodies capped before anything parses them
    s = settings.current()
    app.config.update(flask_config(s))
    # LMS events for a token the process knows skip Flask's request machinery (it sees the rest as it came)
    app.wsgi_app = events_api.FastPath(app, app.wsgi_app)  # type: ignore[method-assign]
    if s.proxy_hops:  # behind N trusted proxies: their X-Forwarded-* headers count
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=s.proxy_hops, x_proto=s.proxy_hops, x_host=s.proxy_hops)
    migrate.init_app(app, db, directory=os.path.join(ROOT, "migrations"), render_as_batch=True,
                     compare_type=True)
    csrf.init_app(app)
    login_manager.init_app(app)
    for part in (hosts, bodies, auth, admin, api, callbacks, bounces, unsubscribe, verify, ops, errors, headers):
        part.init_app(app)
    return app


def create_worker_app(loaded: settings.Settings | None = None) -> Flask:
    """The app a worker runs its jobs in (``tasks.worker``): ``loaded`` (default: the settings
    from the environment) and core's handles only."""
    return _app(__name__, loaded or settings.load())


def _app(import_name: str, loaded: settings.Settings, **flask_options) -> Flask:
    """An app with ``loaded`` installed as the settings (``core.settings.current()``) and core's
    handles configured: keys, outbound policy, providers, the database, the task queue."""
    app = Flask(import_name, instance_path=loaded.instance_path or os.path.join(ROOT, "instance"),
                **flask_options)
    s = settings.install(replace(loaded, instance_path=app.instance_path,
                                 database_url=_sqlite_folder(loaded.database_url)))
    logs.silence_credential_loggers()
    crypto.configure(s.encryption_keys)
    if s.dev_key_in_use:
        log.warning(DEV_KEY_WARNING)
    settings.configure_outbound(s)
    registry.configure(api_bases=s.provider_api_bases)
    _init_database(app, s.database_url)
    taskqueue.install(RqTaskQueue(TASKS))  # refuses a task without a function, naming it
    return app


def flask_config(s: settings.Settings) -> dict[str, Any]:
    """Flask's and its extensions' own keys, from the settings."""
    return {"SECRET_KEY": s.secret_key, "MAX_CONTENT_LENGTH": s.max_content_length, "WTF_CSRF_TIME_LIMIT": None,
            "SESSION_COOKIE_HTTPONLY": True, "SESSION_COOKIE_SAMESITE": "Lax", "SESSION_COOKIE_SECURE": s.production}


def _init_database(app: Flask, url: str) -> None:
    """Core's database handle, as Flask-SQLAlchemy kept it: each app context has its own
    session, bound to its app's engine, and removed when the context tears down."""
    app.extensions["core.db"] = db.configure(url)
    db.install_scope(_app_context_scope, engine=_app_engine)
    app.teardown_appcontext(_remove_session)


def _app_context_scope() -> int | None:
    return id(app_ctx._get_current_object()) if has_app_context() else None


def _app_engine() -> Engine | None:
    return current_app.extensions.get("core.db") if has_app_context() else None


def _remove_session(exc: BaseException | None) -> None:
    db.remove()


def _sqlite_folder(url: str) -> str:
    """Relative SQLite paths are relative to the project folder; create their folder."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        path = url[len("sqlite:///"):]
        if not os.path.isabs(path):
            path = os.path.join(ROOT, path)
            url = "sqlite:///" + path
        os.makedirs(os.path.dirname(path), exist_ok=True)
    return url
