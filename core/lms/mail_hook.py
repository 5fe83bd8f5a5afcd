"""The sending hook of jobs made from IOMAD's queue (``core.delivery.messages.Composer``): each
recipient's Reply-To and the attachment its row names (read from Moodle's
dataroot at send time), and no empty HTML part for rows IOMAD wrote as text.

Every such job has one fixed template (``SUBJECT``, ``BODY_TEXT``, ``BODY_HTML``): each
recipient's data carries its row, rendered by IOMAD. ``LmsMail.render`` gives what the
template engine gives for it without the engine (the values as they are, the subject on
one line), for data of plain strings within the engine's value limit; anything else
(a missing or non-string value, a value over the limit) goes through the engine."""
from __future__ import annotations

import mimetypes
import os
import re

from sqlalchemy import select

from core.db import db
from core.lms.connection import config_for
from core.models import Company, Job
from core.rendering import MAX_VALUE, Rendered, RenderError, single_line, valid_email
from providers.base import Attachment

#: a file of Moodle's file store: ``filedir/ab/cd/<sha1>``
ATTACHMENT_PATH = re.compile(r"filedir/[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{40}$")
MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024
#: the one template of every job made from IOMAD's queue: each recipient's data carries its own rendered row
SUBJECT, BODY_TEXT, BODY_HTML = "{{ lms_subject }}", "{{ lms_text }}", "{{ lms_html | safe }}"
_FIXED_NAMES = ("lms_subject", "lms_text", "lms_html")


class LmsMail:
    """What ``core.delivery.messages.Composer`` adds to an LMS job's messages: Reply-To, the attachment,
    no empty HTML part for rows IOMAD wrote as plain text."""

    def __init__(self, job: Job):
        row = db.session.execute(select(Company).where(Company.id == job.company_id)).scalar_one()
        self.dataroot = config_for(row).dataroot
        #: the job has the fixed template (``render`` may stand in for the engine)
        self.fixed = (job.subject, job.body_text, job.body_html) == (SUBJECT, BODY_TEXT, BODY_HTML)

    def render(self, data) -> Rendered | None:
        """What the fixed template renders for ``data``, or ``None`` when the engine must decide (not
        the fixed template; a value missing, not a string or over the engine's limit). ``{{ x }}`` and
        ``{{ x | safe }}`` print a string as it is; the subject is made one line as the engine does."""
        if not self.fixed or not isinstance(data, dict):
            return None
        subject, text, html = (data.get(name) for name in _FIXED_NAMES)
        if not all(type(v) is str and len(v) <= MAX_VALUE for v in (subject, text, html)):
            return None
        return Rendered(single_line(str(subject)), str(text), str(html))

    def headers(self, data: dict | None) -> dict[str, str]:
        reply_to = (data or {}).get("reply_to")
        return {"Reply-To": reply_to} if reply_to and valid_email(reply_to) else {}

    def attachments(self, data: dict | None) -> list[Attachment]:
        found = (data or {}).get("attachment")
        if not found:
            return []
        if not self.dataroot:
            raise RenderError("attachment", "no Moodle dataroot is configured (lms_dataroot)")
        relative = str(found.get("path", ""))
        if not ATTACHMENT_PATH.fullmatch(relative):
            raise RenderError("attachment", "not a file of Moodle's file store")
        try:
            with open(os.path.join(self.dataroot, relative), "rb") as fh:
                content = fh.read(MAX_ATTACHMENT_BYTES + 1)
        except OSError as exc:
            raise RenderError("attachment", f"cannot be read from the Moodle dataroot ({type(exc).__name__})") \
                from None
        if len(content) > MAX_ATTACHMENT_BYTES:
            raise RenderError("attachment", "larger than 10 MiB")
        return [Attachment(found.get("filename") or "attachment", content, _content_type(found.get("filename")))]

    @staticmethod
    def adjust(rendered):
        if rendered.html is not None and not rendered.html.strip():
            rendered.html = None
        return rendered


def _content_type(name: str | None) -> str:
    return mimetypes.guess_type(name or "")[0] or "application/octet-stream"


def mail_for(job: Job) -> LmsMail | None:
    """The sending hook of a job made from IOMAD's queue; ``None`` for other jobs."""
    return LmsMail(job) if job.source == "lms" and job.type != "certificate" else None
