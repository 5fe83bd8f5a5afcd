"""Bounces, complaints and the suppression list.

Two signed ways in, both under ``/callbacks/v1/bounces/``:

* ``sns/<company_id>``: Amazon SES notifications delivered by SNS. The SNS
  signature (SignatureVersion 1: SHA1, 2: SHA256, RSA PKCS#1 v1.5) is
  checked with the certificate at ``SigningCertURL``, fetched only from a
  URL matching ``OFFLOAD_SNS_URL_PATTERN`` (default: ``https://sns.<region>
  .amazonaws.com/...``) and cached; only the company's ``sns_topic_arn`` is
  accepted; a ``SubscriptionConfirmation`` is confirmed by fetching its
  ``SubscribeURL`` (same pattern).
* ``cloudflare/<company_id>``: the Cloudflare worker's reports, signed with
  the company's callback secret (Standard Webhooks, ``dashboard.webhooks``)::

      {"events": [{"type": "bounce", "bounce_type": "hard", "email": "a@example.com",
                   "message_id": "...", "reason": "550 5.1.1 no such user"}]}

  ``type`` is ``bounce`` or ``complaint``; ``bounce_type`` ``hard`` or ``soft``.

A hard bounce or a complaint suppresses the address (reason ``bounce`` /
``complaint``); a soft bounce is only counted. The matching recipient (by
message id, else the latest one sent to the address) becomes ``bounced`` on a
hard bounce and its job's counters move. Each report applies once
(``BounceEvent.event_key``). ``rates`` gives the bounce and complaint rates
the dashboard shows, with the warning thresholds.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import threading
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from urllib.parse import urlsplit

import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from flask import Blueprint, current_app, jsonify, request
from sqlalchemy import func, update
from sqlalchemy.exc import IntegrityError

from dashboard import audit
from dashboard.campaign_models import COMPLAINT, HARD, SOFT, BounceEvent
from dashboard.errors import json_error
from dashboard.extensions import db
from dashboard.models import Company, Job, Recipient, Suppression, utcnow
from dashboard.rendering import valid_email
from dashboard.webhooks import WebhookError, verify

log = logging.getLogger(__name__)
bp = Blueprint("bounces", __name__, url_prefix="/callbacks/v1/bounces")

BOUNCE_WARN = 0.02      # warn past 2 % hard bounces
COMPLAINT_WARN = 0.001  # warn past 0.1 % complaints
DEFAULT_SNS_URL_PATTERN = r"^https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/"
MAX_BODY_BYTES = 256 * 1024
MAX_CERT_BYTES = 64 * 1024
SNS_SIGNED_KEYS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}
SNS_HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}


# -- the suppression list -----------------------------------------------------
def normalize_email(address: str) -> str:
    return parseaddr(address or "")[1].strip().lower()


def is_suppressed(company_id: int, email: str) -> bool:
    stmt = Suppression.scoped(company_id).where(Suppression.email == normalize_email(email))
    return db.session.execute(stmt).first() is not None


def suppress(company_id: int, email: str, reason: str) -> bool:
    """Add the address to the company's suppression list and commit; False if it was there."""
    email = normalize_email(email)
    if is_suppressed(company_id, email):
        return False
    db.session.add(Suppression(company_id=company_id, email=email, reason=reason))
    try:
        db.session.commit()
    except IntegrityError:  # added concurrently
        db.session.rollback()
        return False
    return True


# -- applying a report ------------------------------------------------------------
def event_key(source: str, *parts: str) -> str:
    return f"{source}:" + hashlib.sha256("|".join(parts).encode()).hexdigest()


def match_recipient(company_id: int, email: str, message_id: str | None):
    """(id, job_id, status, email) of the recipient a report is about, or ``None``."""
    base = Recipient.scoped(company_id).with_only_columns(Recipient.id, Recipient.job_id, Recipient.status,
                                                          Recipient.email)
    if message_id:
        rows = db.session.execute(base.where(Recipient.message_id == message_id)).all()
        for row in rows:
            if len(rows) == 1 or normalize_email(row.email) == email:
                return row
    return db.session.execute(
        base.where(func.lower(Recipient.email) == email, Recipient.status.in_(("sent", "bounced")))
        .order_by(Recipient.id.desc()).limit(1)).first()


def record_event(company_id: int, *, source: str, key: str, kind: str, email: str,
                 message_id: str | None = None, detail: str | None = None) -> bool:
    """Apply one bounce/complaint report once; True when it was new."""
    email = normalize_email(email)
    if not valid_email(email):
        return False
    for _ in range(2):  # a concurrent delivery of the same report or address: look again
        try:
            applied = _apply(company_id, source, key, kind, email, message_id, detail)
            db.session.commit()
            return applied
        except IntegrityError:
            db.session.rollback()
    return False


def _apply(company_id, source, key, kind, email, message_id, detail) -> bool:
    seen = BounceEvent.scoped(company_id).with_only_columns(BounceEvent.id).where(BounceEvent.event_key == key)
    if db.session.execute(seen).first() is not None:
        return False
    found = match_recipient(company_id, email, message_id)
    db.session.add(BounceEvent(company_id=company_id, event_key=key, source=source, kind=kind, email=email,
                               message_id=(message_id or None) and message_id[:255],
                               job_id=found.job_id if found else None, recipient_id=found.id if found else None,
                               detail=(detail or "")[:255] or None))
    if kind == HARD and found is not None:
        res = db.session.execute(update(Recipient).where(Recipient.id == found.id, Recipient.status == "sent")
                                 .values(status="bounced", error=f"bounce: {detail or 'hard'}"[:2000]))
        if res.rowcount:
            db.session.execute(update(Job).where(Job.id == found.job_id).values(
                emails_bounced=Job.emails_bounced + 1, emails_sent=Job.emails_sent - 1))
    if kind in (HARD, COMPLAINT) and not is_suppressed(company_id, email):
        db.session.add(Suppression(company_id=company_id, email=email,
                                   reason="bounce" if kind == HARD else "complaint"))
    db.session.flush()
    return True


# -- rates ------------------------------------------------------------------------
def rates(company_id: int | None, job_id: int | None = None, *, days: int = 30) -> dict:
    """Bounce and complaint rates of one job, or of a company over the last ``days``.

    ``company_id`` ``None`` means every company (admins). Keys: ``sent``
    (messages delivered to the provider, bounced ones included), ``bounces``
    (hard), ``soft_bounces``, ``complaints``, ``bounce_rate``,
    ``complaint_rate`` (fractions), ``bounce_warning`` (> 2 %),
    ``complaint_warning`` (> 0.1 %), ``period_days`` (``None`` for a job).
    Raises ``LookupError`` for a job the company cannot see.
    """
    events = BounceEvent.scoped(company_id).with_only_columns(BounceEvent.kind, func.count()) \
        .group_by(BounceEvent.kind)
    if job_id is not None:
        job = db.session.execute(Job.scoped(company_id).where(Job.id == job_id)).scalar_one_or_none()
        if job is None:
            raise LookupError(f"no job {job_id}")
        counts = dict(db.session.execute(events.where(BounceEvent.job_id == job_id)).all())
        sent, bounces, period = job.emails_sent + job.emails_bounced, job.emails_bounced, None
    else:
        since = utcnow() - timedelta(days=days)
        counts = dict(db.session.execute(events.where(BounceEvent.created_at >= since)).all())
        stmt = Recipient.scoped(company_id).with_only_columns(func.count()) \
            .where(Recipient.status.in_(("sent", "bounced")), Recipient.sent_at >= since)
        sent, bounces, period = db.session.execute(stmt).scalar(), counts.get(HARD, 0), days
    complaints = counts.get(COMPLAINT, 0)
    bounce_rate = bounces / sent if sent else 0.0
    complaint_rate = complaints / sent if sent else 0.0
    return {"sent": sent, "bounces": bounces, "soft_bounces": counts.get(SOFT, 0), "complaints": complaints,
            "bounce_rate": bounce_rate, "complaint_rate": complaint_rate,
            "bounce_warning": bounce_rate > BOUNCE_WARN, "complaint_warning": complaint_rate > COMPLAINT_WARN,
            "period_days": period}


# -- SNS --------------------------------------------------------------------------
class SnsError(Exception):
    """An SNS message that is refused; ``status`` and ``code`` go into the answer."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


_certs: OrderedDict[str, x509.Certificate] = OrderedDict()
_certs_lock = threading.Lock()
CERT_CACHE_SIZE = 32


def allowed_sns_url(url) -> bool:
    """True for an SNS URL we may fetch: matches OFFLOAD_SNS_URL_PATTERN, no user info."""
    if not isinstance(url, str) or len(url) > 2000:
        return False
    pattern = current_app.config.get("OFFLOAD_SNS_URL_PATTERN") or DEFAULT_SNS_URL_PATTERN
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return bool(re.match(pattern, url)) and parts.username is None and parts.password is None \
        and "\\" not in url


def _fetch(url: str, limit: int) -> bytes:
    verify_tls = current_app.config.get("OFFLOAD_SNS_CA_BUNDLE") or True
    try:
        with requests.get(url, timeout=10, allow_redirects=False, stream=True, verify=verify_tls) as resp:
            if resp.status_code != 200:
                raise SnsError(502, "sns_fetch_failed", f"SNS answered HTTP {resp.status_code}")
            body = resp.raw.read(limit + 1, decode_content=True)
    except requests.RequestException as exc:
        raise SnsError(502, "sns_fetch_failed", f"SNS could not be reached: {type(exc).__name__}") from None
    if len(body) > limit:
        raise SnsError(502, "sns_fetch_failed", "SNS answer too large")
    return body


def signing_certificate(url: str) -> x509.Certificate:
    """The certificate at ``url`` (an allowed SNS URL), fetched once and cached."""
    with _certs_lock:
        cert = _certs.get(url)
        if cert is not None:
            _certs.move_to_end(url)
            return cert
    try:
        cert = x509.load_pem_x509_certificate(_fetch(url, MAX_CERT_BYTES))
    except ValueError:
        raise SnsError(403, "invalid_certificate", "SigningCertURL does not hold a PEM certificate") from None
    with _certs_lock:
        _certs[url] = cert
        while len(_certs) > CERT_CACHE_SIZE:
            _certs.popitem(last=False)
    return cert


def sns_string_to_sign(message: dict) -> bytes:
    keys = SNS_SIGNED_KEYS[message["Type"]]
    lines = []
    for key in keys:
        if key in message and message[key] is not None:
            lines.append(f"{key}\n{message[key]}\n")
        elif key != "Subject":
            raise SnsError(400, "invalid_message", f"SNS message without {key}")
    return "".join(lines).encode()


def verify_sns(message: dict) -> None:
    """Raise ``SnsError`` unless the message carries a valid SNS signature."""
    digest = SNS_HASHES.get(str(message.get("SignatureVersion")))
    if digest is None:
        raise SnsError(403, "invalid_signature", "unsupported SignatureVersion")
    cert_url = message.get("SigningCertURL")
    if not allowed_sns_url(cert_url) or not urlsplit(cert_url).path.endswith(".pem"):
        raise SnsError(403, "untrusted_certificate_url", "SigningCertURL is not an allowed SNS URL")
    try:
        signature = base64.b64decode(message.get("Signature") or "", validate=True)
    except (binascii.Error, ValueError):
        raise SnsError(403, "invalid_signature", "Signature is not base64") from None
    data = sns_string_to_sign(message)
    cert = signing_certificate(cert_url)
    now = datetime.now(UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise SnsError(403, "invalid_certificate", "the signing certificate is not valid now")
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise SnsError(403, "invalid_certificate", "the signing certificate has no RSA key")
    try:
        key.verify(signature, data, padding.PKCS1v15(), digest())
    except InvalidSignature:
        raise SnsError(403, "invalid_signature", "the SNS signature does not match") from None


def _sns_envelope(company: Company | None) -> dict:
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise SnsError(413, "body_too_large", "the message is too large")
    try:
        message = json.loads(request.get_data())
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


def ses_reports(notification: dict) -> list[tuple[str, str, str | None, str]]:
    """(kind, email, message id, detail) of an SES bounce/complaint notification
    (``notificationType`` or event publishing's ``eventType``)."""
    ntype = notification.get("notificationType") or notification.get("eventType")
    mail = notification.get("mail") if isinstance(notification.get("mail"), dict) else {}
    message_id = mail.get("messageId") if isinstance(mail.get("messageId"), str) else None
    found = []
    if ntype == "Bounce" and isinstance(notification.get("bounce"), dict):
        bounce = notification["bounce"]
        kind = HARD if bounce.get("bounceType") == "Permanent" else SOFT
        detail = f"{bounce.get('bounceType')}/{bounce.get('bounceSubType')}"
        for item in bounce.get("bouncedRecipients") or []:
            if isinstance(item, dict) and isinstance(item.get("emailAddress"), str):
                found.append((kind, item["emailAddress"], message_id, detail))
    elif ntype == "Complaint" and isinstance(notification.get("complaint"), dict):
        complaint = notification["complaint"]
        detail = str(complaint.get("complaintFeedbackType") or "complaint")
        for item in complaint.get("complainedRecipients") or []:
            if isinstance(item, dict) and isinstance(item.get("emailAddress"), str):
                found.append((COMPLAINT, item["emailAddress"], message_id, detail))
    return found


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
            notification = json.loads(message["Message"])
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
    _fetch(url, MAX_BODY_BYTES)
    audit.record("sns_subscription_confirmed", company_id=company.id, object_type="company",
                 object_id=company.id, details={"topic": message["TopicArn"]})
    db.session.commit()
    log.info("Company %s: SNS subscription confirmed for %s", company.id, message["TopicArn"])
    return jsonify({"ok": True, "confirmed": True})


# -- Cloudflare ---------------------------------------------------------------------
def _cloudflare_reports(payload) -> list[tuple[str, str, str | None, str]]:
    items = payload.get("events") if isinstance(payload, dict) and "events" in payload else [payload]
    if not isinstance(items, list) or not items:
        raise ValueError("events must be a non-empty list")
    found = []
    for n, item in enumerate(items):
        if not isinstance(item, dict) or item.get("type") not in ("bounce", "complaint"):
            raise ValueError(f"events[{n}].type must be bounce or complaint")
        email = item.get("email")
        if not isinstance(email, str) or not valid_email(normalize_email(email)):
            raise ValueError(f"events[{n}].email is not a valid address")
        if item["type"] == "complaint":
            kind = COMPLAINT
        elif item.get("bounce_type", "hard") in ("hard", "soft"):
            kind = HARD if item.get("bounce_type", "hard") == "hard" else SOFT
        else:
            raise ValueError(f"events[{n}].bounce_type must be hard or soft")
        message_id = item.get("message_id") if isinstance(item.get("message_id"), str) else None
        found.append((kind, email, message_id, str(item.get("reason") or item["type"])))
    return found


@bp.post("/cloudflare/<int:company_id>")
def cloudflare(company_id: int):
    """The Cloudflare worker's bounce and complaint reports (Standard Webhooks)."""
    company = db.session.get(Company, company_id)
    body = request.get_data()
    if company is None:
        return json_error(401, "unauthorized", "a valid webhook signature is required")
    try:
        verify(company.callback_secrets(), request.headers, body)
    except (WebhookError, ValueError):
        return json_error(401, "unauthorized", "a valid webhook signature is required")
    try:
        reports = _cloudflare_reports(json.loads(body))
    except ValueError as exc:
        return json_error(400, "invalid_report", str(exc))
    webhook_id = request.headers.get("webhook-id", "")
    applied = 0
    for kind, email, message_id, detail in reports:
        key = event_key("cf", webhook_id, normalize_email(email), kind)
        applied += record_event(company_id, source="cloudflare", key=key, kind=kind, email=email,
                                message_id=message_id, detail=detail)
    return jsonify({"ok": True, "applied": applied})


def init_app(app) -> None:
    from dashboard.extensions import csrf

    csrf.exempt(bp)
    app.register_blueprint(bp)
