"""A fake Amazon SNS: a signing key, its certificate served over HTTP, and SNS-format messages
signed with it (the bounce tests, and the web processes of the replay test, trust its URL)."""
from __future__ import annotations

import base64
import datetime
import json
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.support.servers import StubHttpServer

TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-bounces"
CERT_PATH = "/SimpleNotificationService-0000000000000000000000.pem"
# The canonical strings of the SNS documentation ("Verifying the signatures of Amazon SNS messages")
SIGNED = {"Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
          "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn",
                                       "Type")}


class FakeSns:
    """A signing key, its certificate served over HTTP, and SNS-format messages signed with it."""

    def __init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1)).sign(self.key, hashes.SHA256()))
        self.pem = cert.public_bytes(serialization.Encoding.PEM)
        self.server = StubHttpServer(self.respond)

    def respond(self, request):
        if request.path == CERT_PATH:
            return 200, {"Content-Type": "application/x-pem-file"}, self.pem
        if request.path.startswith("/confirm"):
            return 200, {"Content-Type": "text/xml"}, "<ConfirmSubscriptionResponse/>"
        return 404, {}, "no"

    @property
    def cert_url(self) -> str:
        return self.server.url + CERT_PATH

    def message(self, body, *, kind="Notification", topic=TOPIC, version="1", key=None, **extra) -> dict:
        msg = {"Type": kind, "MessageId": str(uuid.uuid4()), "TopicArn": topic,
               "Message": body if isinstance(body, str) else json.dumps(body),
               "Timestamp": "2026-11-24T10:00:00.000Z", "SignatureVersion": version,
               "SigningCertURL": self.cert_url, **extra}
        canonical = "".join(f"{k}\n{msg[k]}\n" for k in SIGNED[kind] if k in msg)
        digest = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = (key or self.key).sign(canonical.encode(), padding.PKCS1v15(), digest)
        msg["Signature"] = base64.b64encode(signature).decode()
        return msg

    @property
    def url_pattern(self) -> str:
        """The ``OFFLOAD_SNS_URL_PATTERN`` that trusts this fake's URLs."""
        return rf"^http://127\.0\.0\.1:{self.server._server.server_address[1]}/"
