"""providers.webhooks against the Standard Webhooks spec and its reference library."""
from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from providers import webhooks
from providers.webhooks import BadSignature, MissingHeaders, TimestampOutOfRange, WebhookError
from tests.support.webhooks import VECTOR_BODY, VECTOR_ID, VECTOR_SECRET, VECTOR_SIGNATURE, VECTOR_TS

BODY = b'{"job_id": 1, "batch_number": 1, "status": "sent", "results": []}'


def headers_for(secret: str, body: bytes = BODY, *, timestamp: int | None = None,
                msg_id: str = "msg_1") -> dict[str, str]:
    return webhooks.sign_headers(secret, msg_id, body, timestamp=timestamp)


def test_known_answer_vector():
    assert webhooks.sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIGNATURE
    headers = {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TS),
               "webhook-signature": VECTOR_SIGNATURE}
    webhooks.verify([VECTOR_SECRET], headers, VECTOR_BODY, now=VECTOR_TS)


def test_bare_base64_secret_is_the_same_key():
    bare = VECTOR_SECRET.removeprefix("whsec_")
    assert webhooks.sign(bare, VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIGNATURE


def test_generated_secret_has_the_whsec_form():
    secret = webhooks.generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert secret != webhooks.generate_secret()


def test_reference_library_verifies_our_signature():
    secret = webhooks.generate_secret()
    headers = headers_for(secret)
    assert Webhook(secret).verify(BODY, headers) == {"job_id": 1, "batch_number": 1,
                                                     "status": "sent", "results": []}


def test_we_verify_the_reference_librarys_signature():
    secret = webhooks.generate_secret()
    now = int(time.time())
    signature = Webhook(secret).sign("msg_ref", datetime.fromtimestamp(now, tz=UTC), BODY.decode())
    headers = {"Webhook-Id": "msg_ref", "Webhook-Timestamp": str(now), "Webhook-Signature": signature}
    webhooks.verify([secret], headers, BODY)


def test_reference_library_rejects_what_we_reject():
    secret = webhooks.generate_secret()
    headers = headers_for(secret)
    with pytest.raises(WebhookVerificationError):
        Webhook(webhooks.generate_secret()).verify(BODY, headers)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header(missing):
    secret = webhooks.generate_secret()
    headers = headers_for(secret)
    del headers[missing]
    with pytest.raises(MissingHeaders, match=missing):
        webhooks.verify([secret], headers, BODY)


def test_non_numeric_timestamp_is_a_header_error():
    secret = webhooks.generate_secret()
    headers = headers_for(secret) | {"webhook-timestamp": "yesterday"}
    with pytest.raises(MissingHeaders):
        webhooks.verify([secret], headers, BODY)


def test_wrong_secret():
    headers = headers_for(webhooks.generate_secret())
    with pytest.raises(BadSignature):
        webhooks.verify([webhooks.generate_secret()], headers, BODY)


def test_garbage_signature():
    secret = webhooks.generate_secret()
    headers = headers_for(secret) | {"webhook-signature": "v1,not-base64!! v2,abc nonsense"}
    with pytest.raises(BadSignature):
        webhooks.verify([secret], headers, BODY)


def test_one_byte_body_change():
    secret = webhooks.generate_secret()
    headers = headers_for(secret)
    tampered = BODY.replace(b'"sent"', b'"senT"')
    assert len(tampered) == len(BODY)
    with pytest.raises(BadSignature):
        webhooks.verify([secret], headers, tampered)


def test_changed_id_breaks_the_signature():
    secret = webhooks.generate_secret()
    headers = headers_for(secret) | {"webhook-id": "msg_2"}
    with pytest.raises(BadSignature):
        webhooks.verify([secret], headers, BODY)


@pytest.mark.parametrize("offset", [-301, 301])
def test_timestamp_outside_five_minutes(offset):
    secret = webhooks.generate_secret()
    now = 1_800_000_000
    headers = headers_for(secret, timestamp=now + offset)
    with pytest.raises(TimestampOutOfRange) as info:
        webhooks.verify([secret], headers, BODY, now=now)
    assert info.value.timestamp == now + offset
    assert isinstance(info.value, WebhookError)


@pytest.mark.parametrize("offset", [-300, 300])
def test_timestamp_at_the_edge_is_accepted(offset):
    secret = webhooks.generate_secret()
    now = 1_800_000_000
    webhooks.verify([secret], headers_for(secret, timestamp=now + offset), BODY, now=now)


def test_rotation_accepts_any_configured_secret():
    old, new = webhooks.generate_secret(), webhooks.generate_secret()
    webhooks.verify([old, new], headers_for(old), BODY)
    webhooks.verify([old, new], headers_for(new), BODY)
    with pytest.raises(BadSignature):
        webhooks.verify([new], headers_for(old), BODY)


def test_several_signatures_in_one_header():
    old, new = webhooks.generate_secret(), webhooks.generate_secret()
    now = int(time.time())
    both = " ".join([webhooks.sign(old, "msg_1", now, BODY), webhooks.sign(new, "msg_1", now, BODY)])
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now), "webhook-signature": both}
    webhooks.verify([new], headers, BODY)
    webhooks.verify([old], headers, BODY)


def test_no_secrets_configured_refuses():
    secret = webhooks.generate_secret()
    with pytest.raises(BadSignature):
        webhooks.verify([], headers_for(secret), BODY)


def test_invalid_secret_is_a_value_error():
    with pytest.raises(ValueError):
        webhooks.sign("whsec_***", "msg", 1, b"")
    with pytest.raises(ValueError):
        webhooks.sign("whsec_", "msg", 1, b"")
