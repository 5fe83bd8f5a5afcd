"""Operations endpoints (CONTRACT §8): ``/healthz`` (the process serves),
``/readyz`` (database, Redis and a live worker; 503 naming what fails) and
``/metrics`` (Prometheus text format).

``/metrics`` is computed at scrape time: job figures from the database (the
truth), recipients sent and failed from the counts kept as they were sent
(``core.sendstats``: no scrape counts recipient rows), queue depths from Redis, and what the workers counted
(rate-limit waits, callback verification failures, provider call latency)
from ``core.metrics``. In production it answers only a bearer token
(``OFFLOAD_METRICS_TOKEN``) or a client in ``OFFLOAD_METRICS_NETWORKS``
(default: loopback).
"""
from __future__ import annotations

import hmac
import ipaddress
import logging

from flask import Blueprint, Response, jsonify, request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from redis import RedisError
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from core import metrics, scheduler, sendstats, settings
from core.db import db
from core.models import Job
from core.queue import QUEUE_NAMES, connection, port
from dashboard.errors import json_error

log = logging.getLogger(__name__)
bp = Blueprint("ops", __name__)
redis_errors = (RedisError, OSError)


@bp.get("/healthz")
def healthz():
    """Liveness: the process answers."""
    return jsonify({"status": "ok"})


def readiness() -> dict[str, str]:
    """Each part's state: ``ok`` or a short reason (never a remote message)."""
    checks = {}
    try:
        db.session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except SQLAlchemyError as exc:
        db.session.rollback()
        checks["database"] = f"unavailable ({type(getattr(exc, 'orig', None) or exc).__name__})"
    try:
        connection().ping()
        checks["redis"] = "ok"
        alive = metrics.live_workers(connection())
        checks["worker"] = "ok" if alive else f"no worker seen in the last {metrics.WORKER_FRESH_S} s"
    except redis_errors as exc:
        checks["redis"] = f"unavailable ({type(exc).__name__})"
        checks["worker"] = "unknown (Redis unavailable)"
    return checks


@bp.get("/readyz")
def readyz():
    """Ready when the database, Redis and at least one worker are fine; else 503 naming the part."""
    checks = readiness()
    failing = [part for part, state in checks.items() if state != "ok"]
    body = {"status": "ok" if not failing else "unavailable", "checks": checks}
    if failing:
        body["failing"] = failing
        return jsonify(body), 503
    return jsonify(body)


def metrics_allowed() -> bool:
    """Outside production always; in production a matching token or an allowed client address."""
    cfg = settings.current()
    if not cfg.production:
        return True
    token = cfg.metrics_token
    given = request.headers.get("Authorization", "")
    if token and hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return True
    try:
        client = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False
    return any(client in net for net in cfg.metrics_networks)


class OffloadCollector:
    """Collects every family at scrape time (a fresh registry per scrape)."""

    def collect(self):
        yield from self.database_families()
        try:
            conn = connection()
            families = list(self.redis_families(conn))
        except redis_errors as exc:
            log.warning("metrics: Redis unavailable (%s)", type(exc).__name__)
            families = []
        up = GaugeMetricFamily("offload_redis_up", "1 when Redis answered this scrape")
        up.add_metric([], 1 if families else 0)
        yield up
        yield from families

    @staticmethod
    def database_families():
        jobs = GaugeMetricFamily("offload_jobs", "Jobs by status", labels=["status"])
        for status, n in db.session.execute(select(Job.status, func.count()).group_by(Job.status)).all():
            jobs.add_metric([status], n)
        yield jobs
        recipients = CounterMetricFamily("offload_recipients", "Recipients sent and failed, per provider and route",
                                         labels=["provider", "route", "outcome"])
        totals: dict[tuple, int] = {}
        for route, sent, failed, bounced, _suppressed in sendstats.by_route():
            kind, _, provider = (route or "none:none").partition(":")
            for outcome, n in (("sent", sent), ("failed", failed + bounced)):
                key = (provider or "none", kind, outcome)
                totals[key] = totals.get(key, 0) + int(n)
        for labels, n in sorted(totals.items()):
            if n:
                recipients.add_metric(list(labels), n)
        yield recipients

    @staticmethod
    def redis_families(conn):
        depth = GaugeMetricFamily("offload_queue_depth", "Work waiting per service class (RQ queue), "
                                  "scheduled included", labels=["queue", "state"])
        tasks = port()
        for name, queued in zip(QUEUE_NAMES, tasks.queued(QUEUE_NAMES), strict=True):
            depth.add_metric([name, "queued"], queued)
            depth.add_metric([name, "scheduled"], tasks.scheduled(name))
        yield depth
        ready = GaugeMetricFamily("offload_ready_batches", "Batches waiting to be sent or submitted, per service "
                                  "class (transactional before bulk)", labels=["class"])
        for klass, n in scheduler.class_depths(conn).items():
            ready.add_metric([klass], n)
        yield ready
        workers = GaugeMetricFamily("offload_workers_alive", "Workers that beat within the freshness window")
        workers.add_metric([], metrics.live_workers(conn))
        yield workers
        counted = metrics.counters(conn)
        waits = CounterMetricFamily("offload_rate_limit_waits", "Waits for a company's send rate",
                                    labels=["company_id"])
        for label, n in sorted(counted.get(metrics.RATE_LIMIT_WAITS, {}).items()):
            waits.add_metric([label], n)
        yield waits
        refused = CounterMetricFamily("offload_callback_verification_failures",
                                      "Signed callbacks refused (bad or missing signature)", labels=["endpoint"])
        for label, n in sorted(counted.get(metrics.CALLBACK_VERIFY_FAILURES, {}).items()):
            refused.add_metric([label], n)
        yield refused
        hist = HistogramMetricFamily("offload_provider_call_seconds", "Provider send call latency",
                                     labels=["provider"])
        for provider, figures in sorted(metrics.latency(conn).items()):
            buckets = [(str(bound), n) for bound, n in figures["buckets"]] + [("+Inf", figures["count"])]
            hist.add_metric([provider], buckets, figures["sum"])
        yield hist


@bp.get("/metrics")
def metrics_endpoint():
    if not metrics_allowed():
        return json_error(403, "forbidden", "metrics need the metrics token or an allowed network")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OffloadCollector())
    return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4; charset=utf-8")


def init_app(app) -> None:
    app.register_blueprint(bp)
