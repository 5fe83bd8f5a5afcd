"""Reading bounce and complaint reports: SES notifications delivered by SNS
(signature checked with the certificate at ``SigningCertURL``, fetched only
from a URL matching ``OFFLOAD_SNS_URL_PATTERN`` and cached) and the
Cloudflare worker's reports. Each reader returns ``(kind, email, message id,
detail)`` tuples for ``core.suppressions.record_event``.
"""
from __future__ import annotations

import base64
import binascii
import re
import threading
from collections import OrderedDict
from datetime import UTC, datetime
from urllib.parse import urlsplit

import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from flask import current_app

from core.models import COMPLAINT, HARD, SOFT
from core.rendering import valid_email
from core.suppressions import normalize_email

DEFAULT_SNS_URL_PATTERN = r"^https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/"
MAX_BODY_BYTES = 256 * 1024
MAX_CERT_BYTES = 64 * 1024
SNS_SIGNED_KEYS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}
SNS_HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}


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


def fetch(url: str, limit: int) -> bytes:
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
        cert = x509.load_pem_x509_certificate(fetch(url, MAX_CERT_BYTES))
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


# -- Cloudflare ---------------------------------------------------------------------
def cloudflare_reports(payload) -> list[tuple[str, str, str | None, str]]:
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
