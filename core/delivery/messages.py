"""Each recipient's message, made the same way for a provider here and for a cloud worker.

``Composer.compose`` renders a chunk of a job's recipients in one call to
the renderer (one time budget, ``core.rendering``), adds what the job's kind
of mail brings (a certificate job's PDF, ``core.certificate_issue``; the LMS
hook of a job taken from IOMAD's queue: Reply-To, the row's attachment,
``core.lms.mail_hook``) and the headers every message of its class carries
(``extra_headers``; bulk mail: the List-Unsubscribe fields and the unsubscribe
footer at the end of each body, ``core.unsubscribe.with_footer``). A job taken by SMTP submission
renders nothing: each recipient's message is the MIME the LMS wrote, as stored
(``core.submissions.raw_for``), sent from its own envelope sender. The send loop hands the result to a provider as
``providers.Message``s, an offload submission puts it in its batch messages:
a cloud worker sends exactly what direct mode would.

A recipient that cannot be rendered (or whose certificate or attachment is
not there) fails alone, with the reason; recipients the render budget did
not reach are returned apart and wait for the next run.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from core import certificate_issue, submissions, unsubscribe
from core.lms import mail_hook
from core.models import Job, is_bulk
from core.rendering import CompiledTemplate, RenderError
from core.unsubscribe import unsubscribe_url
from providers import Message
from providers.base import Attachment


def extra_headers(company, job_type: str, priority: str | None, recipient_id: int, email: str) -> dict[str, str]:
    """Headers to add to one recipient's message; none for transactional mail.

    Bulk and re-engagement mail carries a one-click unsubscribe link (RFC 2369
    + RFC 8058); transactional mail (passwords, accounts, licences,
    certificates, notifications, IOMAD's queue) never does.
    """
    if not is_bulk(job_type, priority):
        return {}
    return {"List-Unsubscribe": f"<{unsubscribe_url(company.id, email)}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


@dataclass
class Composed:
    """One recipient's message: the rendered parts, its attachments and extra headers."""

    recipient_id: int
    email: str
    data: dict | None
    subject: str
    text: str | None
    html: str | None
    attachments: list[Attachment] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    #: SMTP submission: the message as the LMS wrote it, its envelope sender, and the stored message's id
    raw: bytes | None = None
    envelope_from: str | None = None
    smtp_message_id: int | None = None
    storage_key: str | None = None

    def message(self) -> Message:
        """As a provider takes it."""
        return Message(key=self.recipient_id, to=self.email, subject=self.subject, text=self.text, html=self.html,
                       headers=self.headers, attachments=self.attachments, raw=self.raw,
                       envelope_from=self.envelope_from)


class Composer:
    """Makes the messages of one job's recipients."""

    def __init__(self, job: Job, company):
        self.company = company  # anything with an ``id``
        self.job_type, self.priority = job.type, job.priority
        self.smtp = job.source == submissions.SOURCE  # the LMS's own MIME: no template to render
        #: bulk and re-engagement mail: the company's unsubscribe footer ends each body, and each
        #: recipient's data gets its link (``unsubscribe_url``), which the footer and the template may show
        self.bulk = is_bulk(job.type, job.priority)
        text, html = job.body_text, job.body_html
        if self.bulk and not self.smtp:
            text, html = unsubscribe.with_footer(company.id, text, html)
        self.template = None if self.smtp else CompiledTemplate(job.subject, text, html)
        self.certificates = certificate_issue.mail_for(job)  # None unless a certificate job
        self.lms = mail_hook.mail_for(job)  # None unless a job taken from IOMAD's email queue

    def compose(self, rows) -> tuple[list[Composed], list[tuple[int, str]], set[int]]:
        """``rows`` are ``(id, email, data, attempts)``; returns the messages, the failures
        ``(id, reason)`` and the ids the render budget did not reach."""
        if self.template is None:  # SMTP submission: nothing to render
            return self.as_received(rows)
        composed, failures, unrendered = [], [], set()
        datas = [row[2] for row in rows]
        if self.bulk:
            datas = [{**(d if isinstance(d, dict) else {}),
                      unsubscribe.VARIABLE: unsubscribe_url(self.company.id, row[1])}
                     for row, d in zip(rows, datas, strict=True)]
        for (rid, email, data, _attempts), r in zip(rows, self.render_many(datas), strict=True):
            if r is None:
                unrendered.add(rid)
                continue
            try:
                attachments = self.certificates.attachments(rid, data) if self.certificates else []
                if isinstance(r, RenderError):
                    raise r
                if self.lms:
                    attachments = attachments + self.lms.attachments(data)
                    r = self.lms.adjust(r)
            except RenderError as exc:
                failures.append((rid, f"render_error: {exc}"))
                continue
            headers = extra_headers(self.company, self.job_type, self.priority, rid, email)
            if self.lms:
                headers.update(self.lms.headers(data))
            composed.append(Composed(rid, email, data, r.subject, r.text, r.html, attachments, headers))
        return composed, failures, unrendered

    def render_many(self, datas: list) -> list:
        """The template's ``render_many``; an LMS job's fixed template renders without the engine
        where its hook can (``core.lms.mail_hook.LmsMail.render``), the rest in one engine call."""
        template = self.template
        if template is None:
            raise RuntimeError("an SMTP job has no template")
        if self.lms is None or not self.lms.fixed or self.bulk:
            return template.render_many(datas)
        out: list = [self.lms.render(d) for d in datas]
        slow = [i for i, r in enumerate(out) if r is None]
        if slow:
            for i, r in zip(slow, template.render_many([datas[i] for i in slow]), strict=True):
                out[i] = r
        return out

    def as_received(self, rows) -> tuple[list[Composed], list[tuple[int, str]], set[int]]:
        """An SMTP job's messages: each recipient's stored MIME with this class's headers (none on
        transactional mail); a recipient whose message is gone (purged) fails with the reason."""
        stored, failures = submissions.raw_for(self.company.id, rows)
        composed = []
        for rid, email, data, _attempts in rows:
            found = stored.get(rid)
            if found is None:
                continue
            composed.append(Composed(rid, email, data, found.subject, None, None,
                                     headers=extra_headers(self.company, self.job_type, self.priority, rid, email),
                                     raw=found.raw, envelope_from=found.mail_from,
                                     smtp_message_id=(data or {}).get("smtp_message_id"),
                                     storage_key=found.storage_key))
        return composed, failures, set()
