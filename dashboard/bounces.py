"""Bounce and complaint reports come in here: ``POST /callbacks/v1/bounces/<path>/<company_id>``.

One route serves every sender with a webhook (``providers.registry.webhook``):
``sns`` (SES notifications through SNS, ``providers.sns``), ``cloudflare``
(the Worker's reports, signed with the company's callback secret),
``sendgrid`` (the Signed Event Webhook) and ``mailgun`` (its HMAC-signed
webhooks). The body is read up to the provider's cap, then the provider
verifies it with the company's settings before anything in it is used
(``Provider.read_webhook``): unsigned, forged or stale requests are a 401,
an authentic body that cannot be read a 400. An authentic delivery is taken
once across every process (``core.replay``, keyed by the provider's delivery id,
else by the body): the same delivery again is a ``200`` with ``"duplicate": true``
and no effect. Each report is applied once (``core.suppressions``), keyed by the
provider's event id.
"""
from __future__ import annotations

import hashlib
import logging
import time

from flask import Blueprint, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from core import audit, metrics, replay
from core.db import db
from core.delivery.results import record_event
from core.delivery_settings import provider_config
from core.models import Company
from core.queue import connection
from core.suppressions import event_key, normalize_email
from dashboard.bodies import read_capped
from dashboard.errors import json_error
from dashboard.extensions import csrf
from providers import WebhookRefused, WebhookReply, WebhookUnavailable, registry

log = logging.getLogger(__name__)
bp = Blueprint("bounces", __name__, url_prefix="/callbacks/v1/bounces")


@bp.post("/<path>/<int:company_id>")
def webhook(path: str, company_id: int):
    """Bounces and complaints from a provider's webhook, verified by that provider."""
    cls = registry.webhook(path)
    if cls is None:
        return json_error(404, "not_found", "no such webhook")
    try:  # read no further than the cap, chunked bodies too, before any verification
        body = read_capped(cls.webhook_max_bytes)
    except RequestEntityTooLarge:
        return json_error(413, "body_too_large", f"a report may have at most {cls.webhook_max_bytes} bytes")
    company = db.session.get(Company, company_id)
    config = {**provider_config(company), "callback_secrets": company.callback_secrets()} if company else {}
    try:
        reply = cls.read_webhook(config, request.headers, body, time.time())
    except WebhookRefused as exc:
        log.warning("Company %s: %s webhook refused: %s", company_id, path, exc)
        metrics.count(connection(), metrics.CALLBACK_VERIFY_FAILURES, "bounces")
        return json_error(401, "unauthorized", "a valid webhook signature is required")
    except WebhookUnavailable as exc:
        log.warning("Company %s: %s webhook not verified now: %s", company_id, path, exc)
        return json_error(502, "verification_unavailable", "the webhook could not be verified now; "
                                                           "deliver it again later")
    except (ValueError, RecursionError) as exc:
        return json_error(400, "invalid_report", str(exc) if isinstance(exc, ValueError) else "unreadable JSON")
    if not isinstance(reply, WebhookReply):
        reply = WebhookReply(reply)
    scope, delivery = f"{cls.name}:{company_id}", reply.delivery_id or "body:" + hashlib.sha256(body).hexdigest()
    try:
        if not replay.claim(scope, delivery, reply.delivery_ttl_s):
            log.info("Company %s: %s webhook delivered again; nothing applied", company_id, path)
            return jsonify({"ok": True, "applied": 0, "duplicate": True})
    except replay.ReplayUnavailable:
        return json_error(503, "retry_later", "the webhook cannot be taken now; deliver it again later")
    try:
        return _apply(cls, path, company, reply)
    except BaseException:
        replay.release(scope, delivery)  # not applied: the sender's next try is taken
        raise


def _apply(cls, path: str, company: Company, reply: WebhookReply):
    """Apply a verified delivery: its audit event and its reports (each once)."""
    company_id = company.id
    if reply.audit is not None:
        action, details = reply.audit
        audit.record(action, company_id=company.id, object_type="company", object_id=company.id, details=details)
        db.session.commit()
        log.info("Company %s: %s webhook: %s", company_id, path, action)
    applied = 0
    for report in reply.reports:
        key = event_key(cls.name, report.event_id, normalize_email(report.email), report.kind)
        applied += record_event(company_id, source=cls.name, key=key, kind=report.kind, email=report.email,
                                message_id=report.message_id, detail=report.detail)
    return jsonify({"ok": True, "applied": applied, **reply.answer})


def init_app(app) -> None:
    csrf.exempt(bp)
    app.register_blueprint(bp)
