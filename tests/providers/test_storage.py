"""providers.storage against moto's S3 and against R2 behind certificates.js in miniflare.

One module-wide batch of 100 rendered certificates goes to both backends;
every expiring link is downloaded over real HTTP and compared by SHA-256.
"""
from __future__ import annotations

import hashlib
import io
import json
import socketserver
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import urllib3
from PIL import Image, ImageDraw
from pypdf import PdfReader

from core.certificate_render import (
    DEFAULT_TEMPLATE_CSS,
    DEFAULT_TEMPLATE_HTML,
    checksum,
    new_verification_code,
    render_certificate_pdf,
)
from providers.base import ConnectionFailure, PermanentError
from providers.storage import (
    ObjectNotFound,
    R2Storage,
    S3Storage,
    WorkerR2Storage,
    get_storage,
    sign,
)
from tests.support.servers import CertificateGateway, MotoServer, free_port

SECRET = "cert-signing-secret-for-tests"
BUCKET = "certificates"
COUNT = 100
FIRST = ["Ann", "Bo", "Chidi", "Dana", "Émile", "Farah", "Gus", "Hana", "Ivo", "Jun"]
LAST = ["Okafor", "Li", "Müller", "Novak", "Silva", "Tanaka", "Weiß", "Haddad", "Kowalski", "Ortiz"]
COURSES = ["Fire Safety", "Data Protection Essentials", "Manual Handling", "First Aid at Work"]


@dataclass(frozen=True)
class Certificate:
    key: str
    learner: str
    pdf: bytes

    @property
    def sha256(self) -> str:
        return checksum(self.pdf)


def make_logo() -> bytes:
    img = Image.new("RGB", (300, 100), "white")
    ImageDraw.Draw(img).ellipse([10, 10, 90, 90], fill="#b8912f")
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def learner_fields(i: int) -> dict:
    """Fields that differ for each of the 100 learners."""
    completed = date(2026, 1, 1) + timedelta(days=i)
    return {"learner_name": f"{FIRST[i % 10]} {LAST[i // 10]} #{i:03d}",
            "course_name": COURSES[i % len(COURSES)],
            "completion_date": completed, "grade": f"{50 + i // 2}%",
            "expiry_date": completed + timedelta(days=730) if i % 3 else None}


@pytest.fixture(scope="module")
def certificates() -> list[Certificate]:
    """100 certificates of the default template with a logo, one per learner."""
    logo = make_logo()
    made = []
    for i in range(COUNT):
        code = new_verification_code()
        fields = learner_fields(i)
        pdf = render_certificate_pdf(DEFAULT_TEMPLATE_HTML, DEFAULT_TEMPLATE_CSS, fields, logo=logo,
                                     verify_url=f"https://lms.example.com/verify/{code}", code=code)
        made.append(Certificate(f"company-1/job-7/{code}.pdf", fields["learner_name"], pdf))
    return made


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Storage]:
    with MotoServer() as moto:
        storage = get_storage("s3", {"aws_access_key": "AKIATEST", "aws_secret_key": "secret",
                                     "aws_region": "eu-west-1", "aws_endpoint_url": moto.url,
                                     "s3_bucket": BUCKET})
        storage.client.create_bucket(Bucket=BUCKET,
                                     CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        yield storage
        storage.close()


@pytest.fixture(scope="module")
def gateway() -> Iterator[CertificateGateway]:
    with CertificateGateway(SECRET) as server:
        yield server


@pytest.fixture(scope="module")
def r2(gateway: CertificateGateway) -> Iterator[WorkerR2Storage]:
    storage = get_storage("worker_r2", {"worker_url": gateway.url, "signing_secret": SECRET})
    yield storage
    storage.close()


def download(url: str) -> tuple[int, dict[str, str], bytes]:
    """GET ``url`` the way a learner's browser would; errors come back as their status."""
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def upload_and_download_all(storage: S3Storage | WorkerR2Storage, certificates: list[Certificate]) -> None:
    for cert in certificates:
        storage.put(cert.key, cert.pdf, "application/pdf")
    for cert in certificates:
        status, headers, body = download(storage.presigned_url(cert.key, 600))
        assert status == 200, cert.key
        assert hashlib.sha256(body).hexdigest() == cert.sha256
        assert headers["content-type"] == "application/pdf"
        assert headers["content-disposition"] == f'attachment; filename="{cert.key.rsplit("/", 1)[1]}"'


# --------------------------------------------------------------------------- the 100 certificates


def test_hundred_certificates_are_valid_one_page_pdfs(certificates: list[Certificate]) -> None:
    assert len(certificates) == COUNT
    assert len({cert.sha256 for cert in certificates}) == COUNT
    assert len({cert.key for cert in certificates}) == COUNT
    for cert in certificates:
        reader = PdfReader(io.BytesIO(cert.pdf))
        assert len(reader.pages) == 1
        assert cert.learner in reader.pages[0].extract_text()


# --------------------------------------------------------------------------- S3 (moto)


def test_s3_hundred_uploads_and_expiring_links(s3: S3Storage, certificates: list[Certificate]) -> None:
    upload_and_download_all(s3, certificates)
    sample = certificates[7]
    assert s3.get(sample.key) == sample.pdf
    assert b"".join(s3.iter_chunks(sample.key, chunk_size=4096)) == sample.pdf


def test_s3_links_are_sigv4_presigned_for_their_lifetime(s3: S3Storage) -> None:
    """moto does not check query signatures, so the refusal of an expired or altered
    S3 link is AWS's; what we own is that the link is signed and carries its lifetime."""
    query = parse_qs(urlsplit(s3.presigned_url("company-1/a.pdf", 900)).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == ["900"]
    assert query["X-Amz-Credential"][0].startswith("AKIATEST/")
    assert len(query["X-Amz-Signature"][0]) == 64
    with pytest.raises(ValueError):
        s3.presigned_url("company-1/a.pdf", 0)
    with pytest.raises(ValueError):
        s3.presigned_url("company-1/a.pdf", 8 * 24 * 3600)


def test_s3_missing_delete_and_connection(s3: S3Storage) -> None:
    with pytest.raises(ObjectNotFound):
        s3.get("company-1/never-stored.pdf")
    s3.put("company-1/temp.pdf", b"%PDF-1.4 temp", "application/pdf")
    s3.delete("company-1/temp.pdf")
    s3.delete("company-1/temp.pdf")  # again: not an error
    with pytest.raises(ObjectNotFound):
        s3.get("company-1/temp.pdf")
    assert s3.test_connection()["bucket"] == BUCKET
    other = S3Storage({**s3.config, "s3_bucket": "no-such-bucket"})
    with pytest.raises(PermanentError, match="does not exist"):
        other.test_connection()


def test_s3_unreachable_endpoint_is_a_connection_failure() -> None:
    storage = S3Storage({"aws_access_key": "a", "aws_secret_key": "b", "aws_region": "us-east-1",
                         "aws_endpoint_url": f"http://127.0.0.1:{free_port()}", "s3_bucket": BUCKET})
    with pytest.raises(ConnectionFailure):
        storage.put("company-1/x.pdf", b"x", "application/pdf")


def test_r2_s3_endpoint_and_region_come_from_the_account() -> None:
    account = "0123456789abcdef0123456789abcdef"
    storage = get_storage("r2", {"cloudflare_account_id": account, "aws_access_key": "k",
                                 "aws_secret_key": "s", "s3_bucket": BUCKET})
    assert isinstance(storage, R2Storage)
    assert storage.client.meta.endpoint_url == f"https://{account}.r2.cloudflarestorage.com"
    assert storage.client.meta.region_name == "auto"
    url = storage.presigned_url("company-1/a.pdf", 60)
    assert url.startswith(f"https://{account}.r2.cloudflarestorage.com/{BUCKET}/company-1/a.pdf?")
    assert "%2Fauto%2Fs3%2Faws4_request" in url


# --------------------------------------------------------------------------- R2 behind the Worker (miniflare)


def test_worker_r2_hundred_uploads_and_expiring_links(r2: WorkerR2Storage,
                                                      certificates: list[Certificate]) -> None:
    upload_and_download_all(r2, certificates)
    sample = certificates[42]
    assert r2.get(sample.key) == sample.pdf
    assert b"".join(r2.iter_chunks(sample.key, chunk_size=4096)) == sample.pdf


def test_worker_r2_expired_link_is_refused(gateway: CertificateGateway, r2: WorkerR2Storage) -> None:
    r2.put("company-1/expiring.pdf", b"%PDF-1.4 expiring", "application/pdf")
    an_hour_ago = WorkerR2Storage(r2.config, clock=lambda: time.time() - 3600)
    status, _, body = download(an_hour_ago.presigned_url("company-1/expiring.pdf", 60))
    assert (status, json.loads(body)) == (403, {"error": "expired"})
    assert download(r2.presigned_url("company-1/expiring.pdf", 60))[0] == 200


def tampered_links(link: str, other_key: str) -> dict[str, str]:
    parts = urlsplit(link)
    query = parse_qs(parts.query)
    expires, sig = query["expires"][0], query["sig"][0]
    base = f"{parts.scheme}://{parts.netloc}"
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    return {
        "signature changed": f"{base}{parts.path}?expires={expires}&sig={flipped}",
        "expiry extended": f"{base}{parts.path}?expires={int(expires) + 3600}&sig={sig}",
        "other key, same signature": f"{base}/certificates/{other_key}?expires={expires}&sig={sig}",
        "no signature": f"{base}{parts.path}?expires={expires}",
        "no expiry": f"{base}{parts.path}?sig={sig}",
        "signed by another secret": link.replace(sig, sign("not-the-secret", "GET", parts.path[14:],
                                                                int(expires))),
    }


@pytest.mark.parametrize("tamper", ["signature changed", "expiry extended", "other key, same signature",
                                    "no signature", "no expiry", "signed by another secret"])
def test_worker_r2_tampered_link_is_refused(r2: WorkerR2Storage, tamper: str) -> None:
    r2.put("company-1/mine.pdf", b"%PDF-1.4 mine", "application/pdf")
    r2.put("company-2/theirs.pdf", b"%PDF-1.4 theirs", "application/pdf")
    link = r2.presigned_url("company-1/mine.pdf", 600)
    status, _, body = download(tampered_links(link, "company-2/theirs.pdf")[tamper])
    assert status == 403
    assert b"theirs" not in body and b"mine" not in body


def test_worker_r2_download_link_cannot_write_or_delete(r2: WorkerR2Storage) -> None:
    r2.put("company-1/keep.pdf", b"%PDF-1.4 keep", "application/pdf")
    link = r2.presigned_url("company-1/keep.pdf", 600)
    http = urllib3.PoolManager()
    assert http.request("PUT", link, body=b"overwritten").status == 403
    assert http.request("DELETE", link).status == 403
    assert r2.get("company-1/keep.pdf") == b"%PDF-1.4 keep"


def test_worker_r2_put_body_must_match_its_signed_hash(r2: WorkerR2Storage) -> None:
    signed_for = hashlib.sha256(b"%PDF-1.4 the real one").hexdigest()
    url = r2.signed_url("PUT", "company-1/swapped.pdf", 60, signed_for)
    response = urllib3.PoolManager().request(
        "PUT", url, body=b"%PDF-1.4 something else",
        headers={"content-type": "application/pdf", "x-content-sha256": signed_for})
    assert (response.status, response.json()) == (400, {"error": "content_sha256_mismatch"})
    with pytest.raises(ObjectNotFound):
        r2.get("company-1/swapped.pdf")


def test_worker_r2_wrong_secret_stores_nothing(gateway: CertificateGateway, r2: WorkerR2Storage) -> None:
    wrong = WorkerR2Storage({"worker_url": gateway.url, "signing_secret": "wrong"})
    with pytest.raises(PermanentError, match="403 bad_signature"):
        wrong.put("company-1/forged.pdf", b"%PDF forged", "application/pdf")
    with pytest.raises(PermanentError, match="403"):
        wrong.test_connection()
    with pytest.raises(ObjectNotFound):
        r2.get("company-1/forged.pdf")


def test_worker_r2_missing_delete_and_connection(r2: WorkerR2Storage) -> None:
    with pytest.raises(ObjectNotFound):
        r2.get("company-1/never-stored.pdf")
    r2.put("company-1/temp.pdf", b"%PDF-1.4 temp", "application/pdf")
    r2.delete("company-1/temp.pdf")
    r2.delete("company-1/temp.pdf")  # again: not an error
    with pytest.raises(ObjectNotFound):
        r2.get("company-1/temp.pdf")
    assert r2.test_connection() == {"kind": "worker_r2", "worker_url": r2.worker_url, "signature": "accepted"}


class _DropsKeptAliveRequests(socketserver.ThreadingTCPServer):
    """Answers the first request on a connection with a 404 and keep-alive, then closes the connection
    on the next request without answering: the race a Worker's close after a refused PUT can cause."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), self._Handler)

    class _Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for served in range(2):
                line = self.rfile.readline().decode()
                while self.rfile.readline() not in (b"\r\n", b""):
                    pass
                self.server.requests.append(line.split(" ")[0])
                if served:
                    return  # close without an answer
                body = b'{"error": "not_found"}'
                self.wfile.write(b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(body), body))
                self.wfile.flush()


def test_worker_r2_sends_again_when_a_kept_alive_connection_was_closed() -> None:
    with _DropsKeptAliveRequests() as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        storage = WorkerR2Storage({"worker_url": f"http://127.0.0.1:{server.server_address[1]}",
                                   "signing_secret": SECRET})
        try:
            with pytest.raises(ObjectNotFound):
                storage.get("company-1/a.pdf")
            # the pooled connection is dropped under this request; it goes again on a new one
            assert storage.test_connection()["signature"] == "accepted"
        finally:
            storage.close()
            server.shutdown()
    assert server.requests == ["GET", "GET", "GET"]


def test_worker_r2_rejects_keys_that_escape(gateway: CertificateGateway) -> None:
    http = urllib3.PoolManager()
    for path in ("/certificates/%2e%2e/secret.pdf", "/certificates/a/%2e%2e/%2e%2e/x.pdf",
                 "/certificates/%2Fetc%2Fpasswd", "/certificates/a//b.pdf"):
        assert http.request("GET", f"{gateway.url}{path}?expires=9999999999&sig={'0' * 64}").status == 400


def test_worker_r2_unreachable_or_not_a_gateway() -> None:
    storage = WorkerR2Storage({"worker_url": f"http://127.0.0.1:{free_port()}", "signing_secret": SECRET})
    with pytest.raises(ConnectionFailure):
        storage.put("company-1/x.pdf", b"x", "application/pdf")
    with MotoServer() as moto:  # answers 404 to /certificates/..., but not as the gateway does
        with pytest.raises(PermanentError, match="not as Cloudflare Worker .R2. does"):
            WorkerR2Storage({"worker_url": moto.url, "signing_secret": SECRET}).test_connection()


# --------------------------------------------------------------------------- interface


@pytest.mark.parametrize("key", ["../x.pdf", "/abs.pdf", "a//b.pdf", "a/./b.pdf", ".hidden", "a/../b",
                                 "a b.pdf", "a\\b.pdf", "", "x" * 513, "é.pdf"])
def test_unsafe_keys_are_refused_before_any_request(key: str) -> None:
    storage = WorkerR2Storage({"worker_url": f"http://127.0.0.1:{free_port()}", "signing_secret": SECRET})
    with pytest.raises(ValueError):
        storage.put(key, b"x", "application/pdf")
    with pytest.raises(ValueError):
        storage.presigned_url(key, 60)


def test_get_storage_refuses_unknown_kinds_and_missing_settings() -> None:
    with pytest.raises(PermanentError, match="unknown storage kind"):
        get_storage("ftp", {})
    with pytest.raises(PermanentError, match="s3_bucket"):
        get_storage("s3", {})
    with pytest.raises(PermanentError, match="signing_secret"):
        get_storage("worker_r2", {"worker_url": "https://certs.example.workers.dev"})
    with pytest.raises(PermanentError, match="worker_url"):
        get_storage("worker_r2", {"worker_url": "file:///etc", "signing_secret": SECRET})
    fallback = get_storage("worker_r2", {"worker_url": "https://w.example", "callback_secret": "whsec_x"})
    assert fallback.secret == "whsec_x"
