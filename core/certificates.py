"""Certificates: where a company's PDFs are stored, public lookup by code,
status, revocation and the streamed ZIP of a job's certificates.

Shared by the public verification blueprint (``dashboard.verify``), the
dashboard (``dashboard.admin.certificates``) and the certificate job
(``tasks.certificates``). Storage is chosen from the company's delivery
settings (:func:`storage_kind`) and built with ``providers.storage``.
"""
from __future__ import annotations

import hmac
import io
import logging
import os
import re
import zipfile
from collections.abc import Iterable, Iterator
from datetime import datetime

from sqlalchemy import select

from core import audit, settings
from core.certificate_render import CODE_ALPHABET, CODE_LENGTH
from core.db import db
from core.models import Certificate, Company, Job, utcnow
from providers import registry
from providers.base import OPERATOR_ENDPOINT, PermanentError, guarded_url
from providers.storage import ObjectNotFound, Storage, get_storage

log = logging.getLogger(__name__)

#: lifetime of the presigned link ``/certificates/<code>/download`` redirects to
LINK_TTL_S = 300
VALID, EXPIRED, REVOKED = "valid", "expired", "revoked"
CODE_PATTERN = re.compile(f"[{CODE_ALPHABET}]{{{CODE_LENGTH}}}")
#: looked up instead of a malformed code, so every lookup costs the same query
_PROBE_CODE = "0" * CODE_LENGTH
MAX_REASON = 255


class StorageNotConfigured(PermanentError):
    """The company has no bucket and no Worker to keep certificates in."""


# --------------------------------------------------------------------------- storage


def storage_kind(config: dict, local: bool = False) -> str:
    """The ``providers.storage`` kind for a company's delivery settings (``registry.choose_storage``).

    A Cloudflare sender: its Worker (``cloudflare_worker_url``, signed with
    the callback secret), else R2's S3 API (``s3_bucket``). Any other
    sender: S3 (``s3_bucket``), else a Worker when one is configured.
    Nothing configured: this machine's disk when ``local``
    (``OFFLOAD_LOCAL_STORAGE``, the development default).
    """
    kind = registry.choose_storage(config, last_resort=local)
    if kind is not None:
        return kind
    raise StorageNotConfigured("no certificate storage: set s3_bucket or cloudflare_worker_url",
                               code="misconfigured")


def storage_config(company: Company, kind: str) -> dict:
    """The plain config ``get_storage(kind, ...)`` needs, secrets included (never logged).

    For ``s3`` the company's ``s3_endpoint_url`` (else boto3's
    ``AWS_ENDPOINT_URL_S3``) wins over its ``aws_endpoint_url``, which names
    its SES/SQS endpoint.
    """
    config = company.settings.provider_config() if company.settings else {}
    if registry.backend(registry.STORAGE, kind).last_resort:  # this machine's disk: the service's own settings
        return local_storage_config()
    if kind == "worker_r2":
        return {"worker_url": config.get("cloudflare_worker_url"), "callback_secret": company.callback_secret}
    s3_endpoint = config.get("s3_endpoint_url") or settings.current().aws_endpoint_url_s3
    if kind == "s3" and s3_endpoint:
        config["aws_endpoint_url"] = s3_endpoint
        if not config.get("s3_endpoint_url"):  # the operator's variable, not the tenant's choice
            config[OPERATOR_ENDPOINT] = True
    return config


def local_storage_config() -> dict:
    """``LocalStorage``'s config: ``instance/certificates`` (or OFFLOAD_LOCAL_STORAGE_PATH), links on the
    public URL signed with a key derived from SECRET_KEY (web and workers share it)."""
    s = settings.current()
    if not s.local_storage:
        raise StorageNotConfigured("local certificate storage is off (OFFLOAD_LOCAL_STORAGE=1 enables it on a "
                                   "single-machine install)", code="misconfigured")
    secret = hmac.new(s.secret_key.encode(), b"offload-local-storage", "sha256").hexdigest()
    return {"local_path": s.local_storage_path or os.path.join(s.instance_path or "instance", "certificates"),
            "base_url": s.public_url, "signing_secret": secret}


def configured_kind(company: Company) -> str:
    """The storage kind the company's settings choose now (raises ``StorageNotConfigured``)."""
    config = company.settings.provider_config() if company.settings else {}
    return storage_kind(config, local=settings.current().local_storage)


def open_storage(company: Company, kind: str | None = None) -> Storage:
    """The company's certificate storage: ``kind`` (as recorded on a certificate) or the configured one."""
    if kind is None:
        kind = configured_kind(company)
    return get_storage(kind, storage_config(company, kind))


def object_key(company_id: int, job_id: int, code: str) -> str:
    """``certificates/<company>/<job>/<code>.pdf``."""
    return f"certificates/{company_id}/{job_id}/{code}.pdf"


# --------------------------------------------------------------------------- public links


def public_url(path: str) -> str:
    return settings.current().public_url.rstrip("/") + path


def verify_url(code: str) -> str:
    """The public verification page of ``code``."""
    return public_url(f"/verify/{code}")


def download_url(code: str) -> str:
    """The stable download link mailed to the learner; it redirects to a fresh presigned URL."""
    return public_url(f"/certificates/{code}/download")


def presigned_link(cert: Certificate, expires_in: int = LINK_TTL_S) -> str:
    """A short-lived link straight to the PDF in the company's storage.

    The link is a redirect target on a public page: it must name a host the
    endpoint guard allows for that storage's cloud (AWS for S3, Cloudflare
    for R2 and the Worker, or the operator's list), else ``EndpointRefused``."""
    if cert.storage is None or cert.object_key is None:
        raise ObjectNotFound("the certificate has no stored PDF")
    company = db.session.get_one(Company, cert.company_id)
    with open_storage(company, cert.storage) as storage:
        url = storage.presigned_url(cert.object_key, expires_in)
    config = storage_config(company, cert.storage)
    link = guarded_url(config, url, registry.cloud(registry.STORAGE, cert.storage))
    if link is None:
        raise PermanentError("the storage gave no link")
    return link


# --------------------------------------------------------------------------- lookup and status


def normalise_code(code: str) -> str:
    return (code or "").strip().upper()


def find_by_code(code: str) -> Certificate | None:
    """The certificate with ``code``, or ``None``.

    Every call runs the same indexed query (a malformed code looks up a
    probe value instead) and compares the result with
    ``hmac.compare_digest``, so how far a guess matched never shows.
    """
    wanted = normalise_code(code)[:64]
    probe = wanted if CODE_PATTERN.fullmatch(wanted) else _PROBE_CODE
    row = db.session.execute(select(Certificate).where(Certificate.code == probe)).scalar_one_or_none()
    stored = row.code if row is not None else _PROBE_CODE
    matched = hmac.compare_digest(stored.encode(), wanted.encode())
    return row if matched and row is not None else None


def status_of(cert: Certificate, now: datetime | None = None) -> str:
    """``revoked``, ``expired`` or ``valid``."""
    if cert.revoked_at is not None:
        return REVOKED
    if cert.expires_at is not None and cert.expires_at <= (now or utcnow()):
        return EXPIRED
    return VALID


def _day(moment: datetime | None) -> str | None:
    return None if moment is None else moment.date().isoformat()


def public_view(cert: Certificate) -> dict:
    """What anyone holding the code may see: holder, course, dates, validity. Nothing else."""
    status = status_of(cert)
    view = {"code": cert.code, "status": status, "valid": status == VALID, "holder": cert.learner_name,
            "course": cert.course_name, "issued_on": _day(cert.issued_at), "expires_on": _day(cert.expires_at)}
    if status == REVOKED:
        view["revoked_on"] = _day(cert.revoked_at)
    return view


# --------------------------------------------------------------------------- revocation


def revoke(cert: Certificate, reason: str) -> bool:
    """Revoke ``cert`` with ``reason`` (audited); False when it was already revoked."""
    reason = " ".join((reason or "").split())
    if not reason:
        raise ValueError("a reason is required")
    if len(reason) > MAX_REASON:
        raise ValueError(f"the reason may have at most {MAX_REASON} characters")
    if cert.revoked_at is not None:
        return False
    cert.revoked_at, cert.revoked_reason = utcnow(), reason
    audit.record("certificate_revoked", company_id=cert.company_id, object_type="certificate",
                 object_id=cert.id, details={"job_id": cert.job_id})
    db.session.commit()
    log.info("Certificate %s: revoked", cert.id)
    return True


# --------------------------------------------------------------------------- ZIP of a job


class _ZipSink(io.RawIOBase):
    """A write-only stream that hands what ``zipfile`` wrote to the response."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


def zip_entries(job: Job) -> Iterator[tuple[str, Iterable[bytes]]]:
    """(file name, chunks) of each of the job's stored certificates, read lazily from storage."""
    rows = db.session.execute(
        select(Certificate.code, Certificate.learner_name, Certificate.storage, Certificate.object_key)
        .where(Certificate.company_id == job.company_id, Certificate.job_id == job.id,
               Certificate.object_key.isnot(None))
        .order_by(Certificate.id)).all()
    company = db.session.get_one(Company, job.company_id)
    storages: dict[str | None, Storage] = {}  # None: whichever the settings choose
    try:
        for code, learner, kind, key in rows:
            if key is None:  # never: the query takes stored ones only
                continue
            if kind not in storages:
                storages[kind] = open_storage(company, kind)
            yield f"{_file_stem(learner)}-{code}.pdf", storages[kind].iter_chunks(key)
    finally:
        for storage in storages.values():
            storage.close()


def _file_stem(name: str) -> str:
    """An ASCII file name part from a learner's name."""
    return re.sub(r"[^A-Za-z0-9]+", "_", name or "").strip("_")[:60] or "certificate"


def stream_zip(entries: Iterable[tuple[str, Iterable[bytes]]]) -> Iterator[bytes]:
    """Yield a ZIP of ``entries`` piece by piece; no file is held whole.

    An object missing from storage is skipped and named in ``missing.txt``.
    """
    sink = _ZipSink()
    missing: list[str] = []
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, chunks in entries:
            source = iter(chunks)
            try:
                first = next(source, b"")
            except ObjectNotFound:
                missing.append(name)
                continue
            with archive.open(name, "w") as entry:
                entry.write(first)
                for chunk in source:
                    entry.write(chunk)
                    if out := sink.drain():
                        yield out
            if out := sink.drain():
                yield out
        if missing:
            log.warning("ZIP of certificates: %s object(s) missing from storage", len(missing))
            archive.writestr("missing.txt", "Not found in storage:\n" + "\n".join(missing) + "\n")
    yield sink.drain()
