"""Signed callbacks from cloud workers (CONTRACT §4).

Which secret? A callback is signed with its company's ``callback_secret``,
and the body must not be trusted (or parsed) before it verifies. The
service therefore names the company in the callback URL it puts in every
batch message (``/callbacks/v1/batches?company=<id>``, CONTRACT §5): the
query string is read, that company's secrets (current, and previous while a
rotation overlaps) verify the raw body, and only then is the body parsed.
The job and batch it names must belong to that company, else 404.

A callback to the bare path (no ``company``) is still accepted: the
``job_id`` is read from the body only to choose whose secrets to try first
(a read-only lookup; nothing is acted upon), and the body is used only once
it verifies. When the job's company's secrets do not verify it, the other
companies' secrets are tried (decrypted secrets are cached for a minute, so
this costs an HMAC per company): a signature by another company is that
company's callback for a job it does not own, a 404; no match is a 401.

Each ``webhook-id`` applies once (``core.delivery.results.record_callback``).
"""
from __future__ import annotations

import logging
from datetime import datetime

from flask import Blueprint, jsonify, request
from sqlalchemy import text
from werkzeug.exceptions import RequestEntityTooLarge

from core import crypto, metrics
from core.db import db
from core.delivery.results import record_callback
from core.models import Batch, Company, Job, utcnow
from core.queue import connection
from core.tenancy import get_scoped
from dashboard.bodies import loads as bounded_loads
from dashboard.bodies import read_capped
from dashboard.errors import json_error
from dashboard.extensions import csrf
from providers import webhooks

log = logging.getLogger(__name__)
bp = Blueprint("callbacks", __name__, url_prefix="/callbacks/v1")

#: a batch's results, with room to spare (OFFLOAD_BATCH_SIZE is at most 10,000)
MAX_BODY_BYTES = 8 * 1024 * 1024
#: the bare path (no ``?company=``) tries every company's secret: only small bodies, before any
BARE_MAX_BODY_BYTES = 4 * 1024
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


class CallbackError(ValueError):
    """A verified body that is not a CONTRACT §4 callback; the message says why."""


def _row_id(value) -> int | None:
    """``value`` when it can be a row id (a positive 32-bit integer), else ``None``."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**31:
        return value
    return None


def _company_from_hint(raw: str) -> Company | None:
    company_id = _row_id(int(raw)) if raw.isascii() and raw.isdigit() and len(raw) < 11 else None
    return None if company_id is None else db.session.get(Company, company_id)


def _company_from_body(body: bytes) -> Company | None:
    """The company owning the job the (unverified) body names: only a candidate
    signer, looked up read-only; nothing in the body is used otherwise."""
    try:
        job_id = bounded_loads(body).get("job_id")
    except (ValueError, AttributeError, RecursionError):
        return None
    if _row_id(job_id) is None:
        return None
    job = db.session.get(Job, job_id)
    return None if job is None else db.session.get(Company, job.company_id)


def verified_company(body: bytes) -> Company:
    """The company whose secret signed ``body``; raises ``webhooks.WebhookError``."""
    for name in HEADERS:
        if not request.headers.get(name):
            raise webhooks.MissingHeaders(f"missing {name} header")
    hint = request.args.get("company")
    company = _company_from_hint(hint) if hint is not None else _company_from_body(body)
    if company is not None:
        try:
            webhooks.verify(company.callback_secrets(), request.headers, body)
            return company
        except webhooks.BadSignature:
            if hint is not None:
                raise
    if hint is None:  # the bare path: was it signed by some other company?
        for other_id, secrets in _all_company_secrets():
            if company is not None and other_id == company.id:
                continue
            try:
                webhooks.verify(secrets, request.headers, body)
            except webhooks.BadSignature:
                continue
            return db.session.get(Company, other_id)
    raise webhooks.BadSignature("no matching webhook signature")


_plaintexts: dict[str, str] = {}  # ciphertext -> secret: decrypt each stored secret once


def _all_company_secrets() -> list[tuple[int, list[str]]]:
    """Every company's live callback secrets (current, and previous while its
    overlap lasts), read fresh; decryption is cached by ciphertext."""

    rows = db.session.execute(text(
        "SELECT id, callback_secret, callback_secret_previous, callback_secret_previous_until "
        "FROM companies ORDER BY id")).all()
    now, found = utcnow(), []
    for company_id, current, previous, until in rows:
        tokens = [current] + ([previous] if previous and until and _as_datetime(until) > now else [])
        found.append((company_id, [_plaintext(crypto, t) for t in tokens]))
    return found


def _plaintext(crypto, token: str) -> str:
    if token not in _plaintexts:
        if len(_plaintexts) > 10_000:
            _plaintexts.clear()
        _plaintexts[token] = crypto.decrypt(token)
    return _plaintexts[token]


def _as_datetime(value):
    """SQLite hands back text for a raw DATETIME column."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def parse_callback(body: bytes) -> dict:
    """Check a verified body's shape; raise ``CallbackError``."""
    try:
        payload = bounded_loads(body)
    except (ValueError, RecursionError) as exc:
        raise CallbackError("the body is not JSON" if "nested" not in str(exc) else str(exc)) from None
    if not isinstance(payload, dict):
        raise CallbackError("the body must be a JSON object")
    for key in ("job_id", "batch_number"):
        if not isinstance(payload.get(key), int) or _row_id(payload[key]) is None:
            raise CallbackError(f"{key} must be a positive integer")
    results = payload.get("results")
    if not isinstance(results, list):
        raise CallbackError("results must be a list")
    for i, result in enumerate(results):
        if not isinstance(result, dict) or not isinstance(result.get("email"), str) \
                or not isinstance(result.get("status"), str):
            raise CallbackError(f"results[{i}] needs an email and a status")
        for key in ("message_id", "error"):
            if result.get(key) is not None and not isinstance(result[key], str):
                raise CallbackError(f"results[{i}].{key} must be a string")
        if result.get("message_id") and len(result["message_id"]) > 255:
            raise CallbackError(f"results[{i}].message_id is too long")
    reported = payload.get("usage")
    if reported is not None:  # optional: what the delivery used of the worker (its time, its memory)
        if not isinstance(reported, dict):
            raise CallbackError("usage must be an object")
        for key, top in (("duration_ms", 900_000), ("memory_mb", 10_240)):
            value = reported.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or
                                      not 0 <= value <= top):
                raise CallbackError(f"usage.{key} must be a whole number from 0 to {top}")
    return payload


@bp.post("/batches")
def batches():
    """A cloud worker's report on one batch: verify, then apply once."""

    bare = request.args.get("company") is None
    try:  # a larger body is a 413, read no further than the cap (chunked bodies too)
        body = read_capped(BARE_MAX_BODY_BYTES if bare else MAX_BODY_BYTES)
    except RequestEntityTooLarge as exc:
        hint = " on the bare path: name the company (?company=<id>, CONTRACT §5)" if bare else ""
        return json_error(413, "body_too_large", f"{exc.description}{hint}")
    try:
        company = verified_company(body)
    except webhooks.WebhookError as exc:
        db.session.rollback()
        log.warning("Callback refused: %s", exc)
        metrics.count(connection(), metrics.CALLBACK_VERIFY_FAILURES, "batches")
        return json_error(401, "invalid_signature", str(exc))
    try:
        payload = parse_callback(body)
    except CallbackError as exc:
        return json_error(400, "invalid_callback", str(exc))
    webhook_id = request.headers["webhook-id"]
    if len(webhook_id) > 255:
        return json_error(400, "invalid_callback", "webhook-id is longer than 255 characters")
    job = get_scoped(Job, payload["job_id"], company.id)
    batch = None if job is None else db.session.execute(Batch.scoped(company.id).where(
        Batch.job_id == job.id, Batch.batch_number == payload["batch_number"])).scalar_one_or_none()
    if batch is None:
        return json_error(404, "not_found", "no such batch for this company")
    counts = record_callback(batch, webhook_id, payload["results"], reported=payload.get("usage"))
    if counts is None:
        return jsonify({"ok": True, "duplicate": True})
    log.info("Job %s: callback for batch %s: %s sent, %s failed, %s ignored", job.id, batch.batch_number,
             counts["sent"], counts["failed"], counts["ignored"])
    return jsonify({"ok": True})


def init_app(app) -> None:
    csrf.exempt(bp)
    app.register_blueprint(bp)
