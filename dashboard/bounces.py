"""Bounce and complaint reports come in here, both under ``/callbacks/v1/bounces/``:

* ``sns/<company_id>``: Amazon SES notifications delivered by SNS; only the
  company's ``sns_topic_arn`` is accepted, and a ``SubscriptionConfirmation``
  is confirmed by fetching its ``SubscribeURL`` (an allowed SNS URL).
* ``cloudflare/<company_id>``: the Cloudflare worker's reports, signed with
  the company's callback secret (Standard Webhooks, ``core.webhooks``)::

      {"events": [{"type": "bounce", "bounce_type": "hard", "email": "a@example.com",
                   "message_id": "...", "reason": "550 5.1.1 no such user"}]}

  ``type`` is ``bounce`` or ``complaint``; ``bounce_type`` ``hard`` or ``soft``.
* ``<provider>/<company_id>``: the webhook of a provider that has one
  (``sendgrid``: the Signed Event Webhook; ``mailgun``: its HMAC-signed
  webhooks), verified by the provider (``Provider.read_webhook``) with the
  key in the company's settings before anything of the body is used.

Verification and parsing live in ``core.bounce_reports``, their effect in
``core.suppressions``.
"""
from __future__ import annotations

import logging
import time

from flask import Blueprint, jsonify, request

from core import audit, metrics
from core.bounce_reports import (MAX_BODY_BYTES, SNS_SIGNED_KEYS, SnsError, allowed_sns_url, cloudflare_reports,
                                 fetch, ses_reports, verify_sns)
from core.db import db
from core.models import Company
from core.queue import connection
from core.suppressions import event_key, normalize_email, record_event
from core.webhooks import WebhookError, verify
from dashboard.bodies import loads as bounded_loads
from dashboard.bodies import read_capped
from dashboard.errors import json_error
from dashboard.extensions import csrf
from providers import WebhookRefused, registry
from werkzeug.exceptions import RequestEntityTooLarge

log = logging.getLogger(__name__)
bp = Blueprint("bounces", __name__, url_prefix="/callbacks/v1/bounces")


def _sns_envelope(company: Company | None) -> dict:
    try:  # read no further than the cap, chunked bodies too
        body = read_capped(MAX_BODY_BYTES)
    except RequestEntityTooLarge:
        raise SnsError(413, "body_too_large", "the message is too large") from None
    try:
        message = bounded_loads(body)
    except ValueError:
        raise SnsError(400, "invalid_json", "the body must be an SNS JSON message") from None
    if not isinstance(message, dict) or message.get("Type") not in SNS_SIGNED_KEYS:
        raise SnsError(400, "invalid_message", "not an SNS message")
    if company is None or not company.sns_topic_arn or message.get("TopicArn") != company.sns_topic_arn:
        raise SnsError(403, "topic_not_allowed", "the topic is not this company's SNS topic")
    if not all(isinstance(message.get(k, ""), str) for k in SNS_SIGNED_KEYS[message["Type"]]):
        raise SnsError(400, "invalid_message", "SNS fields must be strings")
    verify_sns(message)
    return message


@bp.post("/sns/<int:company_id>")
def sns(company_id: int):
    """SES notifications through SNS (and the subscription handshake)."""
    company = db.session.get(Company, company_id)
    try:
        message = _sns_envelope(company)
        if message["Type"] == "SubscriptionConfirmation":
            return _confirm_subscription(company, message)
        if message["Type"] == "UnsubscribeConfirmation":
            log.info("Company %s: SNS unsubscribe confirmation for %s", company_id, message["TopicArn"])
            return jsonify({"ok": True})
        try:
            notification = bounded_loads(message["Message"])
        except ValueError:
            raise SnsError(400, "invalid_message", "Message is not an SES notification") from None
    except SnsError as exc:
        log.warning("Company %s: SNS message refused: %s", company_id, exc.code)
        return json_error(exc.status, exc.code, exc.message)
    applied = 0
    for kind, email, message_id, detail in ses_reports(notification if isinstance(notification, dict) else {}):
        key = event_key("ses", message["MessageId"], normalize_email(email), kind)
        applied += record_event(company_id, source="ses", key=key, kind=kind, email=email,
                                message_id=message_id, detail=detail)
    return jsonify({"ok": True, "applied": applied})


def _confirm_subscription(company: Company, message: dict):
    url = message.get("SubscribeURL")
    if not allowed_sns_url(url):
        raise SnsError(403, "untrusted_subscribe_url", "SubscribeURL is not an allowed SNS URL")
    fetch(url, MAX_BODY_BYTES)
    audit.record("sns_subscription_confirmed", company_id=company.id, object_type="company",
                 object_id=company.id, details={"topic": message["TopicArn"]})
    db.session.commit()
    log.info("Company %s: SNS subscription confirmed for %s", company.id, message["TopicArn"])
    return jsonify({"ok": True, "confirmed": True})


@bp.post("/cloudflare/<int:company_id>")
def cloudflare(company_id: int):
    """The Cloudflare worker's bounce and complaint reports (Standard Webhooks)."""
    company = db.session.get(Company, company_id)
    if company is None:
        return json_error(401, "unauthorized", "a valid webhook signature is required")
    try:  # read no further than the cap, chunked bodies too, before any signature work
        body = read_capped(MAX_BODY_BYTES)
    except RequestEntityTooLarge:
        return json_error(413, "body_too_large", f"a report may have at most {MAX_BODY_BYTES} bytes")
    try:
        verify(company.callback_secrets(), request.headers, body)
    except (WebhookError, ValueError):
        metrics.count(connection(), metrics.CALLBACK_VERIFY_FAILURES, "bounces")
        return json_error(401, "unauthorized", "a valid webhook signature is required")
    try:
        reports = cloudflare_reports(bounded_loads(body))
    except ValueError as exc:
        return json_error(400, "invalid_report", str(exc))
    webhook_id = request.headers.get("webhook-id", "")
    applied = 0
    for kind, email, message_id, detail in reports:
        key = event_key("cf", webhook_id, normalize_email(email), kind)
        applied += record_event(company_id, source="cloudflare", key=key, kind=kind, email=email,
                                message_id=message_id, detail=detail)
    return jsonify({"ok": True, "applied": applied})


@bp.post("/<provider>/<int:company_id>")
def provider_webhook(provider: str, company_id: int):
    """Bounces and complaints from a provider's own webhook (SendGrid, Mailgun)."""
    cls = registry.find(registry.SENDER, provider)
    if cls is None or not cls.webhook_max_bytes:
        return json_error(404, "not_found", "no such webhook")
    try:  # read no further than the cap, chunked bodies too
        body = read_capped(cls.webhook_max_bytes)
    except RequestEntityTooLarge:
        return json_error(413, "body_too_large", "the report is too large")
    company = db.session.get(Company, company_id)
    config = company.settings.provider_config() if company is not None and company.settings else {}
    try:
        reports = cls.read_webhook(config, request.headers, body, time.time())
    except WebhookRefused as exc:
        log.warning("Company %s: %s webhook refused: %s", company_id, provider, exc)
        return json_error(401, "unauthorized", "a valid webhook signature is required")
    except ValueError as exc:
        return json_error(400, "invalid_report", str(exc))
    applied = 0
    for report in reports:
        key = event_key(provider, report.event_id, normalize_email(report.email), report.kind)
        applied += record_event(company_id, source=provider, key=key, kind=report.kind, email=report.email,
                                message_id=report.message_id, detail=report.detail)
    return jsonify({"ok": True, "applied": applied})


def init_app(app) -> None:
    csrf.exempt(bp)
    app.register_blueprint(bp)
