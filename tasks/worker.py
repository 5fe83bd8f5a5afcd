"""The RQ worker: non-forking (``SimpleWorker``, 4x the jobs/s of forking on
this machine), each job in a fresh app context, with RQ's scheduler, and a
small thread that keeps the recovery sweep scheduled even after Redis
lost its data.

RQ's ``SimpleWorker`` runs a job in the thread that would beat, so it gives
each execution the job's timeout plus 60 s to live (four minutes by default):
a worker SIGKILLed while planning a job would leave that plan looking alive,
and the sweep waiting, for that long. ``AppWorker`` beats a running job's
execution from a thread instead, every ``EXECUTION_BEAT_S``, with a TTL of
``EXECUTION_TTL_S``; a dead worker's execution lapses within that TTL
(``tasks.rq_queue.still_running``).

RQ's work loop quits on a Redis error met outside its dequeue (say, while
recording a job's end) and RQ cannot start while Redis is down. ``run_worker``
rides such outages out: it waits, with back-off, for Redis to answer and
starts a fresh worker, until it is asked to stop (SIGTERM/SIGINT).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

from flask import Flask
from redis import RedisError
from rq import SimpleWorker
from rq.job import JobStatus
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from core import metrics, queue, settings
from core.db import db
from core.queue import QUEUE_NAMES, connection, warn_if_evicting
from providers import registry
from tasks.rq_queue import get_queue

log = logging.getLogger(__name__)
#: how often a running job's execution is refreshed, and how long it lives without a refresh
EXECUTION_BEAT_S = 5
EXECUTION_TTL_S = 30


class AppWorker(SimpleWorker):
    """Runs every job inside the Flask app's context, with a clean session after."""

    app: Flask | None = None
    #: the running execution's beat: its stop event and its thread
    _beating: tuple[threading.Event, threading.Thread] | None = None
    #: set by SIGTERM/SIGINT: run_worker then ends instead of starting a fresh worker
    stop_requested = False

    #: when this worker's last wake-up ended (or it started): urgent work since then is counted against it
    _last_send: float | None = None
    _sending = False

    def reorder_queues(self, reference_queue) -> None:
        """The order of the next dequeue (RQ calls this with the queue of the job it is about to run):
        high, default, send, low; but once urgent jobs have had this worker for ``core.queue.URGENT_TURN_S``
        since its last wake-up ended, a waiting wake-up goes first (the others follow in their order: with
        no wake-up queued nothing changes). Strict order let a backlog of plans hold every send back, the
        planned transactional batches' too."""
        now = time.monotonic()
        if self._last_send is None or self._sending:  # the wake-up before this job has just ended
            self._last_send = now
        self._sending = reference_queue.name == queue.SEND
        send_turn = not self._sending and now - self._last_send >= queue.URGENT_TURN_S
        self._ordered_queues = sorted(self.queues, key=lambda q: (not (send_turn and q.name == queue.SEND),
                                                                  QUEUE_NAMES.index(q.name)))

    def _app(self) -> Flask:
        if self.app is None:
            raise RuntimeError("AppWorker.app is not set (run_worker sets it)")
        return self.app

    def _set_ip_address(self, connection) -> None:
        """The embedded demo Redis (fakeredis) lacks CLIENT SETNAME/INFO: tolerate it."""
        try:
            super()._set_ip_address(connection)
        except (RedisError, ValueError):
            self.ip_address = "unknown"

    def request_stop(self, signum, frame):
        AppWorker.stop_requested = True
        super().request_stop(signum, frame)

    def request_force_stop(self, signum, frame):
        AppWorker.stop_requested = True
        super().request_force_stop(signum, frame)

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        """The TTL of a running job's execution (and of the worker meanwhile): ``_beat`` refreshes it."""
        return EXECUTION_TTL_S

    def prepare_execution(self, job):
        execution = super().prepare_execution(job)
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, execution, stop), daemon=True, name="execution-beat")
        beat.start()
        self._beating = (stop, beat)
        return execution

    def _beat(self, job, execution, stop: threading.Event) -> None:
        """While ``job`` runs: keep its execution in the started registry, and this worker registered."""
        while not stop.wait(EXECUTION_BEAT_S):
            try:
                with self.connection.pipeline() as pipe:
                    self.heartbeat(EXECUTION_TTL_S, pipeline=pipe)
                    execution.heartbeat(job.started_job_registry, EXECUTION_TTL_S, pipeline=pipe)
                    pipe.execute()
            except (RedisError, OSError) as exc:  # Redis away: the job goes on; the next beat tries again
                log.debug("execution beat missed: %s", type(exc).__name__)

    def cleanup_execution(self, job, pipeline, execution=None):
        """RQ's end of every execution (success, failure, retry): the beat stops first, so no beat
        writes the execution's hash back after RQ deleted it, nor shortens the idle worker's TTL."""
        self._stop_beat()
        super().cleanup_execution(job, pipeline, execution)

    def _stop_beat(self) -> None:
        beating, self._beating = getattr(self, "_beating", None), None
        if beating is not None:
            beating[0].set()
            beating[1].join(timeout=EXECUTION_BEAT_S)

    def perform_job(self, job, queue, *args, **kwargs):
        with self._app().app_context():
            try:
                return super().perform_job(job, queue, *args, **kwargs)
            finally:
                db.remove()

    def execute_job(self, job, queue):
        try:
            super().execute_job(job, queue)
        finally:
            self._stop_beat()  # normally stopped by cleanup_execution; this covers an end RQ did not reach
        if job.get_status(refresh=False) != JobStatus.FINISHED:
            self.wait_for_database()

    def wait_for_database(self) -> None:
        """After a failed job: while the database is unreachable, take no more
        jobs (each would fail and spend a retry); probe it with back-off."""
        delay = 1.0
        while not AppWorker.stop_requested:
            with self._app().app_context():
                try:
                    db.session.execute(text("SELECT 1"))
                    return
                except DBAPIError as exc:
                    log.warning("database unavailable (%s); next job in %.0f s", type(exc.orig).__name__, delay)
                finally:
                    db.remove()
            time.sleep(delay)  # SIGTERM here raises StopRequested: the work loop ends cleanly
            delay = min(30.0, delay * 2)
            try:
                self.heartbeat()
            except RedisError:
                pass


def _sweeper(app: Flask, interval: float, stop: threading.Event, name: str) -> None:
    """Keep the sweep and the LMS polls scheduled, and say this worker is alive (``/readyz``)."""
    lms_interval = float(settings.current().lms_poll_s)
    with app.app_context():
        metrics.beat(connection(), name)
    while not stop.wait(min(interval / 2, lms_interval / 2, metrics.WORKER_FRESH_S / 4)):
        with app.app_context():
            metrics.beat(connection(), name)
            try:
                queue.schedule_sweep(interval)
                queue.schedule_lms_polls(lms_interval)  # the LMS connector's pollers (tasks.lms)
            except (RedisError, OSError) as exc:
                log.warning("sweep not scheduled: %s", type(exc).__name__)


def run_worker(app: Flask, *, burst: bool = False, name: str | None = None) -> None:
    """Work the service's queues (high, default, low) until stopped."""
    # the operator's timeout of one provider call, else the longest any sender declares
    s = settings.current()
    provider_timeout = s.provider_timeout_s or registry.call_timeout()
    if s.lease_s < provider_timeout * 2:
        log.warning("OFFLOAD_LEASE_S=%s is shorter than twice a provider call's timeout (%s s): a slow call "
                    "can lose its batch to another worker and send its chunk twice",
                    s.lease_s, provider_timeout)
    settings.configure_outbound(s)  # the endpoint guard and STS endpoint hold in this process too
    with app.app_context():
        conn = connection()
        warn_if_evicting(conn)
        queues = [get_queue(n) for n in QUEUE_NAMES]
    AppWorker.app = app
    AppWorker.stop_requested = False
    stop = threading.Event()
    interval = float(s.sweep_s)
    if not burst:
        beat_name = name or f"{socket.gethostname()}:{os.getpid()}"
        threading.Thread(target=_sweeper, args=(app, interval, stop, beat_name), daemon=True, name="sweeper").start()
    run = restarts = 0
    try:
        while True:
            started = time.monotonic()
            worker = None
            try:  # a restarted worker gets a new name: the old one may still be registered
                worker = AppWorker(queues, connection=conn, name=f"{name}.{restarts}" if name and restarts else name)
                worker.work(burst=burst, with_scheduler=True, logging_level="INFO")
            except (RedisError, OSError) as exc:
                log.warning("worker stopped by a Redis error: %s", type(exc).__name__)
            finally:
                _stop_pubsub(worker)
            if burst or AppWorker.stop_requested:
                return
            run = 0 if time.monotonic() - started > 60 else run + 1
            if not _wait_for_redis(conn, min(30.0, 2.0 ** max(0, run - 1))):
                return
            restarts += 1
            log.warning("worker restarting after its loop ended (Redis outage?)")
    finally:
        stop.set()


def _stop_pubsub(worker: AppWorker | None) -> None:
    """RQ's teardown skips this when Redis is gone; don't leave the thread behind."""
    thread = getattr(worker, "pubsub_thread", None)
    if thread is not None and thread.is_alive():
        thread.stop()
        thread.join(timeout=2)


def _wait_for_redis(conn, delay: float) -> bool:
    """Sleep ``delay``, then until Redis answers PING (backing off up to 30 s);
    False when SIGTERM/SIGINT arrived meanwhile."""
    stopping = threading.Event()

    def on_signal(signum, frame):
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stopping.wait(delay):
            try:
                if conn.ping():
                    return True
            except (RedisError, OSError) as exc:
                log.warning("Redis unavailable (%s); retrying in %.0f s", type(exc).__name__, delay)
            delay = min(30.0, delay * 2)
        return False
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
