"""``flask worker``: the RQ worker command (CONTRACT §1), registered by the app factory."""
from __future__ import annotations

import click
from flask import current_app

from core import logs
from tasks.worker import run_worker


@click.command("worker")
@click.option("--burst", is_flag=True, help="Exit when the queues are empty.")
@click.option("--name", default=None, help="Worker name (default: host and pid).")
def worker_command(burst: bool, name: str | None) -> None:
    """Run an RQ worker on the service's queues, with the scheduler."""
    logs.configure()
    run_worker(current_app._get_current_object(), burst=burst, name=name)
