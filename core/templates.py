"""A company's stored email templates, as the templates API (CONTRACT §8)
sees them: ``name``, ``type``, ``subject``, ``body_text``, ``body_html``.
Saving compiles every part first: a template error is refused with its reason."""
from __future__ import annotations

import re

from core import audit, fields, labels
from core.db import db
from core.models import JOB_TYPES, Template, utcnow
from core.rendering import CompiledTemplate, RenderError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,99}$")
FIELDS = ("type", "subject", "body_text", "body_html")


class TemplateError(ValueError):
    """The template cannot be saved; ``code``, ``message`` and ``details`` go into the 400."""

    def __init__(self, code: str, message: str, details=None):
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


def to_dict(tpl: Template) -> dict:
    return {"name": tpl.name, "type": tpl.job_type, "subject": tpl.subject, "body_text": tpl.body_text,
            "body_html": tpl.body_html, "created_at": _iso(tpl.created_at), "updated_at": _iso(tpl.updated_at)}


def _iso(moment) -> str | None:
    return None if moment is None else moment.replace(microsecond=0).isoformat() + "Z"


def list_templates(company_id: int) -> list[Template]:
    return list(db.session.execute(Template.scoped(company_id).order_by(Template.name)).scalars())


def find(company_id: int, name: str) -> Template | None:
    return db.session.execute(Template.scoped(company_id).where(Template.name == name)).scalar_one_or_none()


def parse(payload) -> dict:
    """Check a PUT body's shape and compile its parts; raise ``TemplateError``."""
    if not isinstance(payload, dict):
        raise TemplateError("invalid_json", "the body must be a JSON object")
    unknown = sorted(set(payload) - set(FIELDS) - {"name"})
    if unknown:
        raise TemplateError("invalid_field", f"unknown field(s): {', '.join(unknown)}", {"fields": unknown})
    for key in FIELDS:
        if payload.get(key) is not None and not isinstance(payload[key], str):
            raise TemplateError("invalid_field", f"{key} must be a string")
    jtype = payload.get("type")
    if jtype is not None and jtype not in JOB_TYPES:
        raise TemplateError("invalid_type", f"type must be one of {', '.join(JOB_TYPES)}")
    try:
        compiled = CompiledTemplate(payload.get("subject") or "", payload.get("body_text"), payload.get("body_html"))
    except RenderError as exc:
        raise TemplateError("template_error", str(exc), {"part": exc.part}) from None
    check = check_fields(jtype, compiled.variables)
    if check.errors:
        raise TemplateError("template_fields", " ".join(check.errors), {"fields": check.not_used})
    return {"job_type": jtype, "subject": payload["subject"], "body_text": payload.get("body_text"),
            "body_html": payload.get("body_html"), "warnings": check.warnings}


def check_fields(job_type: str | None, variables) -> fields.TemplateCheck:
    """A template's variables against its job type's fields (``core.fields``), in words."""
    return fields.check_template(job_type, variables, labels.label("job_type", job_type) if job_type else "")


def save(company_id: int, name: str, payload) -> tuple[Template, bool]:
    """Create or replace the company's template ``name``; returns (template, created). A template that
    does not use a field its type must deliver is refused; names its type does not know are
    ``tpl.warnings`` (words)."""
    if not NAME_RE.match(name or ""):
        raise TemplateError("invalid_name", "a template name has 1 to 100 letters, digits, spaces, _ . or -")
    values = parse(payload)
    warnings = values.pop("warnings")
    tpl = find(company_id, name)
    created = tpl is None
    if tpl is None:
        tpl = Template(company_id=company_id, name=name)
        db.session.add(tpl)
    for key, value in values.items():
        setattr(tpl, key, value)
    tpl.updated_at = utcnow()
    db.session.flush()
    audit.record("template_created" if created else "template_changed", company_id=company_id,
                 object_type="template", object_id=tpl.id, details={"name": name})
    db.session.commit()
    tpl.warnings = warnings  # not stored: what the save answers
    return tpl, created


def delete(company_id: int, tpl: Template) -> None:
    audit.record("template_deleted", company_id=company_id, object_type="template", object_id=tpl.id,
                 details={"name": tpl.name})
    db.session.delete(tpl)
    db.session.commit()

