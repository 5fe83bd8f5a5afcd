"""The audit log, read-only: managers see their company's entries, admins
every entry. Details hold field names and counts, never secret values."""
from __future__ import annotations

from flask import abort, g
from markupsafe import Markup, escape
from sqlalchemy import select

from core import delivery_settings, labels
from core.db import db
from core.models import AuditLog, Company
from dashboard.admin.base import TenantModelView


def details_text(details) -> str:
    """``{"section": "aws", "fields": ["a", "b"]}`` as ``section: aws · fields: a, b``."""
    if not details:
        return ""
    if not isinstance(details, dict):
        return str(details)
    parts = []
    for key, value in sorted(details.items()):
        shown = ", ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
        parts.append(f"{key}: {shown}")
    return " · ".join(parts)


#: how a details value is put in words, by its key (any other value: error words)
DETAIL_WORDS = {
    "fields": lambda key: delivery_settings.by_key()[key].label if key in delivery_settings.by_key() else key,
    "section": lambda name: next((g.title for g in delivery_settings.groups() if g.name == name), name),
    "type": lambda value: labels.label("job_type", value),
    "reason": lambda value: labels.label("suppression_list", value),
    "status": lambda value: labels.label("job_status", value),
    "source": lambda value: labels.label("source", value),
}


def details_words(details) -> str:
    """``details_text`` as a person reads it: ``Section: Amazon Web Services (SES, SQS) · Fields: Region``."""
    if not details:
        return ""
    if not isinstance(details, dict):
        return labels.error(str(details))
    parts = []
    for key, value in sorted(details.items()):
        word = DETAIL_WORDS.get(key, lambda v: labels.error(str(v)))
        values = value if isinstance(value, (list, tuple)) else [value]
        parts.append(f"{labels.humanize(key)}: {', '.join(str(word(str(v))) for v in values)}")
    return " · ".join(parts)


def _details(view, context, model, name):
    return Markup('<span class="small">{}</span>').format(escape(details_words(model.details)))


def _action(view, context, model, name):
    return labels.label("audit_action", model.action)


def _object_type(view, context, model, name):
    return labels.humanize(model.object_type or "")


def _company(view, context, model, name):
    if model.company_id is None:
        return "—"
    known = g.get("audit_companies")
    if known is not None and model.company_id in known:
        return known[model.company_id]
    company = db.session.get(Company, model.company_id)
    return company.name if company else model.company_id


class AuditView(TenantModelView):
    """Who did what, to which object, when and from where."""

    can_create = can_edit = can_delete = False
    can_view_details = True
    can_export = True
    export_types = ["csv"]
    column_list = ("created_at", "actor", "action", "object_type", "object_id", "ip", "details", "company_id")
    column_details_list = column_list
    column_export_list = column_list
    column_labels = {"created_at": "When (UTC)", "actor": "Who", "object_type": "Object", "object_id": "Id",
                     "ip": "From", "company_id": "Company"}
    column_default_sort = ("created_at", True)
    column_filters = ("action", "actor", "object_type", "created_at", "company_id")
    column_searchable_list = ("actor", "action")
    column_formatters = {"details": _details, "company_id": _company, "action": _action,
                         "object_type": _object_type}
    column_formatters_export = {"details": lambda v, c, m, n: details_text(m.details),
                                "company_id": lambda v, c, m, n: m.company_id}
    page_size = 50
    simple_list_pager = True  # older and newer, no count of every entry (the log only grows)

    def get_list(self, *args, **kwargs):
        """The page's entries, their companies read in one query (the admin's page shows 50 companies'
        entries: a read per row was most of its time)."""
        count, rows = super().get_list(*args, **kwargs)
        if isinstance(rows, list):
            wanted = {row.company_id for row in rows if row.company_id is not None}
            g.audit_companies = dict(db.session.execute(
                select(Company.id, Company.name).where(Company.id.in_(wanted))).tuples().all()) if wanted else {}
        return count, rows

    def get_one(self, id):
        try:
            wanted = int(id)
        except (TypeError, ValueError):
            abort(404)
        row = self.get_query().filter(AuditLog.id == wanted).one_or_none()
        if row is None:
            abort(404)
        return row


def register(admin) -> None:
    admin.add_view(AuditView(AuditLog, db.session, name="Audit log", endpoint="audit", url="/admin/audit"))
