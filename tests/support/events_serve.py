"""Run the app as a separate OS process for the multi-process tests.

``python -m tests.support.events_serve web PORT`` serves the web app (threaded
werkzeug); ``python -m tests.support.events_serve worker`` runs an RQ worker with
its scheduler. Settings overrides (``core.settings.Settings`` field names) come as JSON in
``OFFLOAD_TEST_SETTINGS``.
"""
from __future__ import annotations

import json
import os
import sys

from service import create_app
from tasks.worker import run_worker


def main(argv: list[str]) -> None:
    app = create_app(json.loads(os.environ.get("OFFLOAD_TEST_SETTINGS", "{}")))
    if argv[0] == "web":
        from werkzeug.serving import make_server

        make_server("127.0.0.1", int(argv[1]), app, threaded=True).serve_forever()
    elif argv[0] == "worker":
        run_worker(app)
    else:
        raise SystemExit(f"unknown mode {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
