"""The RQ worker: non-forking (``SimpleWorker``, 4x the jobs/s of forking on
this machine), each job in a fresh app context, with RQ's scheduler, and a
small thread that keeps the recovery sweep scheduled even after Redis
lost its data."""
from __future__ import annotations

import logging
import threading
import time

from flask import Flask
from redis import RedisError
from rq import SimpleWorker

from dashboard.queue import HIGH, QUEUE_NAMES, connection, get_queue, warn_if_evicting

log = logging.getLogger(__name__)


class AppWorker(SimpleWorker):
    """Runs every job inside the Flask app's context, with a clean session after."""

    app: Flask | None = None

    def perform_job(self, job, queue, *args, **kwargs):
        from dashboard.extensions import db

        with self.app.app_context():
            try:
                return super().perform_job(job, queue, *args, **kwargs)
            finally:
                db.session.remove()


def schedule_sweep(interval: float) -> None:
    """Queue one sweep per ``interval`` slot (the predictable id dedupes across workers)."""
    slot = int(time.time() // interval)
    rq_id = f"sweep-{slot}"
    from tasks.dispatch import is_live

    if not is_live(rq_id):
        get_queue(HIGH).enqueue("tasks.sweep.sweep", job_id=rq_id, result_ttl=int(interval * 2),
                                failure_ttl=3600)


def _sweeper(app: Flask, interval: float, stop: threading.Event) -> None:
    while not stop.wait(interval / 2):
        with app.app_context():
            try:
                schedule_sweep(interval)
            except (RedisError, OSError) as exc:
                log.warning("sweep not scheduled: %s", type(exc).__name__)


def run_worker(app: Flask, *, burst: bool = False, name: str | None = None) -> None:
    """Work the service's queues (high, default, low) until stopped."""
    with app.app_context():
        conn = connection()
        warn_if_evicting(conn)
        queues = [get_queue(n) for n in QUEUE_NAMES]
    AppWorker.app = app
    worker = AppWorker(queues, connection=conn, name=name)
    stop = threading.Event()
    interval = float(app.config.get("OFFLOAD_SWEEP_S", 15))
    if not burst:
        threading.Thread(target=_sweeper, args=(app, interval, stop), daemon=True, name="sweeper").start()
    try:
        worker.work(burst=burst, with_scheduler=True, logging_level="INFO")
    finally:
        stop.set()
