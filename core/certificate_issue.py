"""Certificate jobs: issue one PDF per learner, then let the send loop mail them.

A job of type ``certificate`` (from the API or ``course_completed`` events)
is not planned into send batches until every learner has a certificate:

1. ``core.delivery.plan.plan_job`` asks :func:`awaiting_issue`; while some
   pending recipient has no certificate it queues the issuing task
   (``core.queue.enqueue_issue``: id ``certs-<job>``, job id only) and plans
   nothing.
2. :func:`issue` (run by that task) walks the learners still without one by id
   (chunks of :data:`ISSUE_CHUNK`, one commit each): renders the company's template
   (else the default), stores the PDF at
   ``certificates/<company>/<job>/<code>.pdf`` in the company's bucket,
   adds a ``Certificate`` row, and puts ``certificate_code``,
   ``certificate_url`` (the stable ``/certificates/<code>/download`` link)
   and ``verify_url`` into the recipient's (encrypted) data for the email
   template. A learner whose fields cannot make a certificate is failed with
   ``certificate_error: ...``. Then it queues the planning again.
3. While sending, ``core.delivery.messages.Composer`` asks :class:`CertificateMail` for each
   recipient's attachments: none for link delivery (the default), the PDF
   from storage for ``certificate_delivery: attachment``.

Re-running is safe: learners who already have a certificate for the job are
skipped, and a Redis lock keeps two workers from issuing the same job.
"""
from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time
from typing import Any

from redis.exceptions import LockError
from sqlalchemy import select

from core import certificate_process, queue, usage
from core.certificate_render import (
    DEFAULT_TEMPLATE_CSS,
    DEFAULT_TEMPLATE_HTML,
    CertificateError,
    checksum,
    new_verification_code,
)
from core.certificates import download_url, object_key, open_storage, verify_url
from core.db import db
from core.delivery import claims, settle
from core.models import (
    PAUSED,
    R_FAILED,
    RECIPIENT_CLAIMABLE,
    Certificate,
    CertificateTemplate,
    Company,
    Job,
    Recipient,
    utcnow,
)
from core.queue import connection
from core.rendering import RenderError
from providers.base import Attachment, PermanentError
from providers.storage import ObjectNotFound, Storage

log = logging.getLogger(__name__)

ISSUE_CHUNK = 25
LOCK_S = 300
DELIVERIES = ("link", "attachment")
PDF_TYPE = "application/pdf"
LINK_TEXT = "\n\nYour certificate: {{ certificate_url }}\nVerify it at: {{ verify_url }}\n"
LINK_HTML = ('<p>Your certificate: <a href="{{ certificate_url }}">download it here</a>.<br>'
             'Verify it at: <a href="{{ verify_url }}">{{ verify_url }}</a></p>')


# --------------------------------------------------------------------------- planning hook


def awaiting_issue(job: Job) -> bool:
    """``plan_job``'s hook: True while a certificate job's learners still lack
    certificates (the issuing job is then queued, once)."""
    if job.type != "certificate" or not unissued_ids(job.id):
        return False
    queue.enqueue_issue(job.id)
    return True


def unissued_ids(job_id: int) -> list[int]:
    """Ids of the job's sendable recipients without a certificate, in order.

    Two id-only queries (certificates are indexed by job, not by recipient),
    compared here; a 50 000-learner job is two lists of integers.
    """
    certified = set(db.session.execute(select(Certificate.recipient_id).where(
        Certificate.job_id == job_id, Certificate.recipient_id.isnot(None))).scalars())
    ids = db.session.execute(select(Recipient.id).where(
        Recipient.job_id == job_id, Recipient.status.in_(RECIPIENT_CLAIMABLE)).order_by(Recipient.id)).scalars()
    return [rid for rid in ids if rid not in certified]


# --------------------------------------------------------------------------- issuing


def issue(job_id: int) -> int:
    """Issue the job's missing certificates, then queue its planning.

    Returns how many were issued. A storage that is not configured, or that
    refuses for good, pauses the job; transient storage errors escape so the
    queue retries.
    """
    job = db.session.get(Job, job_id)
    if job is None or job.is_final or job.status == PAUSED:
        return 0
    lock = connection().lock(f"offload:certs-lock:{job_id}", timeout=LOCK_S)
    if not lock.acquire(blocking=False):
        log.info("Job %s: certificates are being issued by another worker", job_id)
        return 0
    try:
        issued = _issue_all(job, lock)
    finally:
        try:
            lock.release()
        except LockError:
            pass
    if issued is not None:
        queue.enqueue_plan(job_id)
    return issued or 0


def _issue_all(job: Job, lock) -> int | None:
    """Issue chunk by chunk; ``None`` when the job was paused."""
    claims.mark_started(job.id)
    company = db.session.get_one(Company, job.company_id)
    try:
        issuer = Issuer(job, company)
    except PermanentError as exc:
        settle.pause_job(job.id, f"certificates: {exc.reason}")
        return None
    add_link_to_body(job)
    todo, issued = unissued_ids(job.id), 0
    with issuer:
        for start in range(0, len(todo), ISSUE_CHUNK):
            if claims.job_state(job.id)[1] is not None:  # cancel requested: planning finishes the job
                break
            try:
                issued += sum(issuer.issue(recipient) for recipient in _load(todo[start:start + ISSUE_CHUNK]))
            except PermanentError as exc:
                db.session.rollback()
                settle.pause_job(job.id, f"certificates: {exc.reason}")
                return None
            issuer.flush_usage()
            db.session.commit()
            lock.extend(LOCK_S, replace_ttl=True)
    log.info("Job %s: %s certificates issued", job.id, issued)
    return issued


def _load(ids: list[int]) -> list[Recipient]:
    """These recipients, if still sendable, by id."""
    return list(db.session.execute(select(Recipient).where(Recipient.id.in_(ids),
                                                           Recipient.status.in_(RECIPIENT_CLAIMABLE))
                                   .order_by(Recipient.id)).scalars())


def add_link_to_body(job: Job) -> None:
    """A body that does not mention ``certificate_url`` gets the link appended (once)."""
    if job.body_text and "certificate_url" not in job.body_text:
        job.body_text = job.body_text.rstrip("\n") + LINK_TEXT
    if job.body_html and "certificate_url" not in job.body_html:
        html = job.body_html
        end = html.lower().rfind("</body>")
        job.body_html = html + LINK_HTML if end < 0 else html[:end] + LINK_HTML + html[end:]
    db.session.commit()


class Issuer:
    """Renders, stores and records the certificates of one job."""

    def __init__(self, job: Job, company: Company):
        self.job, self.company = job, company
        self.storage: Storage = open_storage(company)
        self._templates: dict[str | None, CertificateTemplate | None] = {}
        #: what the PDFs written since the last ``flush_usage`` used of the bucket (``core.usage``)
        self.used: dict[str, float] = {}

    def flush_usage(self) -> None:
        """Add the writes counted so far to the job's usage, in the caller's transaction."""
        usage.add(self.company.id, self.job.id, self.used)
        self.used = {}

    def __enter__(self) -> Issuer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.storage.close()

    def template(self, name: str | None) -> tuple[str, str, bytes | None]:
        """(html, css, logo): the named company template, else its latest, else the default."""
        if name not in self._templates:
            self._templates[name] = (self._find(name) if name else None) or self._find(None)
        tpl = self._templates[name]
        if tpl is None:
            return DEFAULT_TEMPLATE_HTML, DEFAULT_TEMPLATE_CSS, None
        return tpl.html, tpl.css or "", tpl.logo

    def _find(self, name: str | None) -> CertificateTemplate | None:
        stmt = CertificateTemplate.scoped(self.company.id)
        if name:
            stmt = stmt.where(CertificateTemplate.name == name)
        order = (CertificateTemplate.updated_at.desc(), CertificateTemplate.id.desc())
        return db.session.execute(stmt.order_by(*order).limit(1)).scalar()

    def issue(self, recipient: Recipient) -> bool:
        """Issue one learner's certificate; a learner it cannot be made for is failed. True when issued."""
        data = dict(recipient.data or {})
        code = new_verification_code()
        try:
            fields = learner_fields(data, issuer=self.company.name)
            html, css, logo = self.template(_text(data.get("certificate_template")) or None)
            pdf = certificate_process.render_pdf(html, css, fields, logo=logo, verify_url=verify_url(code), code=code,
                                                 planned=True)
        except CertificateError as exc:
            recipient.status, recipient.error = R_FAILED, f"certificate_error: {exc.reason}"[:1000]
            return False
        key = object_key(self.company.id, self.job.id, code)
        self.storage.put(key, pdf, PDF_TYPE)
        kind = self.storage.kind
        self.used[f"storage:put:{kind}"] = self.used.get(f"storage:put:{kind}", 0) + 1
        self.used[f"storage:bytes:{kind}"] = self.used.get(f"storage:bytes:{kind}", 0) + len(pdf)
        db.session.add(Certificate(
            company_id=self.company.id, code=code, job_id=self.job.id, recipient_id=recipient.id,
            learner_name=fields["learner_name"], learner_email=recipient.email, course_name=fields["course_name"],
            grade=fields["grade"] or None, issued_at=utcnow(), expires_at=_end_of(fields["expiry_date"]),
            storage=self.storage.kind, object_key=key, checksum=checksum(pdf)))
        recipient.data = {**data, "certificate_code": code, "certificate_url": download_url(code),
                          "verify_url": verify_url(code)}
        return True


# --------------------------------------------------------------------------- learner fields


def learner_fields(data: dict[str, Any], *, issuer: str) -> dict[str, Any]:
    """The template fields from a recipient's data; ``CertificateError`` names what is wrong."""
    name = _text(data.get("learner_name")) or " ".join(
        part for part in (_text(data.get("firstname")), _text(data.get("lastname"))) if part)
    if not name:
        raise CertificateError("learner_name (or firstname/lastname) is missing")
    course = _text(data.get("course_name"))
    if not course:
        raise CertificateError("course_name is missing")
    return {"learner_name": name[:255], "course_name": course[:255],
            "completion_date": parse_date(data.get("completion_date"), "completion_date") or utcnow().date(),
            "grade": _text(data.get("grade"))[:64], "expiry_date": parse_date(data.get("expiry_date"), "expiry_date"),
            "issuer": issuer}


def _text(value: Any) -> str:
    """A field as one line of text ("" for missing)."""
    if value is None or isinstance(value, (dict, list)):
        return ""
    return " ".join(str(value).split())


def parse_date(value: Any, field: str) -> date | None:
    """An ISO 8601 date or date-time, or a unix timestamp (Moodle's own format)."""
    if value in (None, ""):
        return None
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if numeric or str(value).strip().isdigit():
        try:
            return datetime.fromtimestamp(float(value), UTC).date()
        except (OverflowError, OSError, ValueError):
            raise CertificateError(f"{field} is not a valid timestamp") from None
    text = str(value).strip()
    try:
        return date.fromisoformat(text[:10]) if len(text) == 10 else \
            datetime.fromisoformat(text.replace("Z", "+00:00")).date()
    except ValueError:
        raise CertificateError(f"{field} is not an ISO 8601 date") from None


def _end_of(day: date | None) -> datetime | None:
    """A certificate valid until ``day`` expires after that day's last second (UTC)."""
    return None if day is None else datetime.combine(day, time(23, 59, 59))


# --------------------------------------------------------------------------- sending hook


class CertificateNotIssued(RenderError):
    """The learner has no usable certificate: the message is not sent, the recipient fails."""

    def __init__(self, message: str):
        super().__init__("certificate", message)


def delivery_of(data: dict | None, job_default: str | None = None) -> str:
    """``link`` (default) or ``attachment``: the recipient's ``certificate_delivery``,
    else the job's option of that name."""
    value = (data or {}).get("certificate_delivery") or job_default
    return value if value in DELIVERIES else "link"


def mail_for(job: Job) -> CertificateMail | None:
    """The sending hook of a certificate job; ``None`` for other jobs."""
    return CertificateMail(job) if job.type == "certificate" else None


class CertificateMail:
    """What ``core.delivery.messages.Composer`` adds to a certificate job's messages."""

    def __init__(self, job: Job):
        self.job_id, self.company_id = job.id, job.company_id
        self.delivery = (job.options or {}).get("certificate_delivery")
        self._storages: dict[str, Storage] = {}

    def attachments(self, recipient_id: int, data: dict | None) -> list[Attachment]:
        """The learner's PDF for attachment delivery, nothing for links.

        Raises:
            CertificateNotIssued: no certificate, a revoked one, or its PDF is
                gone or altered in storage.
        """
        code = (data or {}).get("certificate_code")
        cert = None
        if isinstance(code, str):
            cert = db.session.execute(select(Certificate).where(Certificate.code == code)).scalar()
        if cert is None or (cert.company_id, cert.job_id, cert.recipient_id) != (self.company_id, self.job_id,
                                                                                 recipient_id):
            raise CertificateNotIssued("no certificate was issued for this learner")
        if cert.revoked_at is not None:
            raise CertificateNotIssued("the certificate was revoked")
        if delivery_of(data, self.delivery) != "attachment":
            return []
        if cert.storage is None or cert.object_key is None:
            raise CertificateNotIssued("the certificate's PDF was not stored")
        try:
            pdf = self._storage(cert.storage).get(cert.object_key)
        except ObjectNotFound:
            raise CertificateNotIssued("the certificate PDF is missing from storage") from None
        if checksum(pdf) != cert.checksum:
            raise CertificateNotIssued("the stored PDF does not match its checksum")
        return [Attachment(f"certificate-{cert.code}.pdf", pdf, PDF_TYPE)]

    def _storage(self, kind: str) -> Storage:
        if kind not in self._storages:
            self._storages[kind] = open_storage(db.session.get_one(Company, self.company_id), kind)
        return self._storages[kind]
