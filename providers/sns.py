"""SES bounce and complaint notifications delivered by Amazon SNS: the SES
provider's webhook (``providers.ses.SesProvider.read_webhook``).

An SNS message is verified before anything in it is used: its ``TopicArn``
must be the company's ``sns_topic_arn``, and its signature must check with
the certificate at ``SigningCertURL``, which is fetched (and cached) only
from a URL matching the operator's pattern (``OFFLOAD_SNS_URL_PATTERN``,
installed with ``configure``; default: ``https://sns.<region>.amazonaws.com``).
A ``SubscriptionConfirmation`` is confirmed by fetching its ``SubscribeURL``,
an allowed SNS URL too.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from providers import pinning
from providers.base import BounceReport, WebhookRefused, WebhookReply, WebhookUnavailable

DEFAULT_URL_PATTERN = r"^https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/"
MAX_BODY_BYTES = 256 * 1024
MAX_CERT_BYTES = 64 * 1024
SIGNED_KEYS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}
HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}
CERT_CACHE_SIZE = 32

#: the operator's SNS URL pattern and CA bundle (``configure``)
_url_pattern: str | None = None
_ca_bundle: str | None = None
_certs: OrderedDict[str, x509.Certificate] = OrderedDict()
_certs_lock = threading.Lock()


def configure(*, url_pattern: str | None, ca_bundle: str | None = None) -> None:
    """Set the operator's SNS URL pattern and CA bundle (from the app factory)."""
    global _url_pattern, _ca_bundle
    _url_pattern, _ca_bundle = url_pattern or None, ca_bundle or None


def allowed_url(url: Any) -> bool:
    """True for an SNS URL we may fetch: matches the pattern, no user info."""
    if not isinstance(url, str) or len(url) > 2000:
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return bool(re.match(_url_pattern or DEFAULT_URL_PATTERN, url)) and parts.username is None \
        and parts.password is None and "\\" not in url


def fetch(url: str, limit: int) -> bytes:
    """GET an allowed SNS URL, at most ``limit`` bytes; ``WebhookUnavailable`` when SNS does not answer."""
    try:
        with pinning.session() as http, http.get(url, timeout=10, allow_redirects=False, stream=True,
                                                 verify=_ca_bundle or True) as resp:
            if resp.status_code != 200:
                raise WebhookUnavailable(f"SNS answered HTTP {resp.status_code}")
            body = resp.raw.read(limit + 1, decode_content=True)
    except requests.RequestException as exc:
        raise WebhookUnavailable(f"SNS could not be reached: {type(exc).__name__}") from None
    if len(body) > limit:
        raise WebhookUnavailable("SNS answer too large")
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
        raise WebhookRefused("SigningCertURL does not hold a PEM certificate") from None
    with _certs_lock:
        _certs[url] = cert
        while len(_certs) > CERT_CACHE_SIZE:
            _certs.popitem(last=False)
    return cert


def string_to_sign(message: dict) -> bytes:
    lines = []
    for key in SIGNED_KEYS[message["Type"]]:
        if key in message and message[key] is not None:
            lines.append(f"{key}\n{message[key]}\n")
        elif key != "Subject":
            raise WebhookRefused(f"SNS message without {key}")
    return "".join(lines).encode()


def verify_signature(message: dict) -> None:
    """Raise ``WebhookRefused`` unless the message carries a valid SNS signature."""
    digest = HASHES.get(str(message.get("SignatureVersion")))
    if digest is None:
        raise WebhookRefused("unsupported SignatureVersion")
    cert_url = message.get("SigningCertURL")
    if not isinstance(cert_url, str) or not allowed_url(cert_url) or not urlsplit(cert_url).path.endswith(".pem"):
        raise WebhookRefused("SigningCertURL is not an allowed SNS URL")
    try:
        signature = base64.b64decode(message.get("Signature") or "", validate=True)
    except (binascii.Error, ValueError):
        raise WebhookRefused("Signature is not base64") from None
    data = string_to_sign(message)
    cert = signing_certificate(cert_url)
    now = datetime.now(UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise WebhookRefused("the signing certificate is not valid now")
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise WebhookRefused("the signing certificate has no RSA key")
    try:
        key.verify(signature, data, padding.PKCS1v15(), digest())
    except InvalidSignature:
        raise WebhookRefused("the SNS signature does not match") from None


def verified_message(topic_arn: str | None, body: bytes) -> dict:
    """The SNS message of ``body`` once its topic and signature check; only the
    envelope's strings are read before that. A body that is no SNS message at all
    is a ``ValueError``."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        raise ValueError("the body must be an SNS JSON message") from None
    if not isinstance(message, dict) or message.get("Type") not in SIGNED_KEYS:
        raise ValueError("not an SNS message")
    if not topic_arn or message.get("TopicArn") != topic_arn:
        raise WebhookRefused("the topic is not this company's SNS topic")
    if not all(isinstance(message.get(k, ""), str) for k in SIGNED_KEYS[message["Type"]]):
        raise ValueError("SNS fields must be strings")
    verify_signature(message)
    return message


def ses_reports(notification: Any, event_id: str) -> list[BounceReport]:
    """The bounces and complaints of an SES notification (``notificationType``, or event
    publishing's ``eventType``); ``event_id`` is the SNS message's id."""
    if not isinstance(notification, dict):
        return []
    ntype = notification.get("notificationType") or notification.get("eventType")
    mail = notification["mail"] if isinstance(notification.get("mail"), dict) else {}
    message_id = mail.get("messageId") if isinstance(mail.get("messageId"), str) else None
    found = []
    if ntype == "Bounce" and isinstance(notification.get("bounce"), dict):
        bounce = notification["bounce"]
        kind = "hard" if bounce.get("bounceType") == "Permanent" else "soft"
        detail = f"{bounce.get('bounceType')}/{bounce.get('bounceSubType')}"
        for item in bounce.get("bouncedRecipients") or []:
            if isinstance(item, dict) and isinstance(item.get("emailAddress"), str):
                found.append(BounceReport(kind, item["emailAddress"], message_id, detail, event_id))
    elif ntype == "Complaint" and isinstance(notification.get("complaint"), dict):
        complaint = notification["complaint"]
        detail = str(complaint.get("complaintFeedbackType") or "complaint")
        for item in complaint.get("complainedRecipients") or []:
            if isinstance(item, dict) and isinstance(item.get("emailAddress"), str):
                found.append(BounceReport("complaint", item["emailAddress"], message_id, detail, event_id))
    return found


def read(topic_arn: str | None, body: bytes) -> WebhookReply:
    """Verify an SNS delivery for ``topic_arn``, then act on it: a notification's
    reports, or a subscription confirmed (its ``SubscribeURL`` fetched); an
    unsubscription needs nothing done."""
    message = verified_message(topic_arn, body)
    if message["Type"] == "SubscriptionConfirmation":
        url = message.get("SubscribeURL")
        if not isinstance(url, str) or not allowed_url(url):
            raise WebhookRefused("SubscribeURL is not an allowed SNS URL")
        fetch(url, MAX_BODY_BYTES)
        return WebhookReply(answer={"confirmed": True},
                            audit=("sns_subscription_confirmed", {"topic": message["TopicArn"]}),
                            delivery_id=f"message:{message['MessageId']}")
    if message["Type"] == "UnsubscribeConfirmation":
        return WebhookReply(delivery_id=f"message:{message['MessageId']}")
    try:
        notification = json.loads(message["Message"])
    except (ValueError, RecursionError):
        raise ValueError("Message is not an SES notification") from None
    return WebhookReply(ses_reports(notification, message["MessageId"]), delivery_id=f"message:{message['MessageId']}")
