"""ManiReports Cloud Offload: the composition root.

``create_app`` is the web app (``wsgi.py`` serves it) with every CLI command
(``flask --app wsgi ...``: ``service.cli``, the worker's among them). The
worker runs its jobs in an app of its own (``create_worker_app``): the
settings and core's handles, none of the web side. Logging is the process's
business (``core.logs``): the worker and the dev server configure it when they
start, gunicorn with its own flags.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from service import cli
from service.app import DEV_KEY_WARNING, create_worker_app, web_app

__all__ = ["DEV_KEY_WARNING", "create_app", "create_worker_app"]


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    """The web app and every CLI command: settings from the environment, then ``overrides``
    (``Settings`` field names)."""
    app = web_app(overrides)
    cli.init_app(app)
    return app
