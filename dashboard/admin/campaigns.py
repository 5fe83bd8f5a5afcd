"""Campaign pages: CSV import (upload, map columns, preview, send) and
re-engagement campaigns (template + uploaded list or LMS inactive users,
count preview, optional schedule).

Uploads are parsed in memory (``InMemoryFormDataParser``: werkzeug would
spool files over 500 KB to a temporary file) and kept encrypted in Redis
between steps; previews mask password-like fields. Those two upload views
check their CSRF token themselves, after choosing the in-memory parser
(the global check would parse the body first).
"""
from __future__ import annotations

import io
from datetime import datetime

from flask import abort, redirect, request, url_for
from flask_admin import expose
from flask_login import current_user
from flask_wtf.csrf import validate_csrf
from sqlalchemy import select
from werkzeug.formparser import FormDataParser
from wtforms.validators import ValidationError

from core import audiences, labels, settings, unsubscribe
from core.db import db
from core.jobs import JobError, create_job
from core.models import (
    CampaignSettings,  # noqa: F401  (tables in the metadata)
    Company,
    Job,
    Template,
    utcnow,
)
from core.queue import connection, enqueue_job
from core.rendering import PREVIEW_BUDGET_S, CompiledTemplate, RenderError
from core.tenancy import get_or_404
from dashboard.admin.base import SecureBaseView, scope
from dashboard.admin.suppressions import company_or_404
from dashboard.extensions import csrf

PREVIEW_COUNT = 3


class InMemoryFormDataParser(FormDataParser):
    """A form parser that keeps uploaded files in memory, never on disk."""

    def __init__(self, *args, **kwargs):
        kwargs["stream_factory"] = lambda *a, **k: io.BytesIO()
        super().__init__(*args, **kwargs)


def read_upload_form() -> None:
    """Parse this request's multipart body in memory, then check its CSRF token."""
    request.max_content_length = audiences.MAX_UPLOAD_BYTES + 256 * 1024
    request.form_data_parser_class = InMemoryFormDataParser
    try:
        validate_csrf(request.form.get("csrf_token"))
    except ValidationError:
        abort(400, "The CSRF token is missing or invalid.")


def visible_templates(job_type: str | None = None) -> list[Template]:
    """The templates the user may pick; with ``job_type``, that type's first, then the untyped ones."""
    stmt = Template.scoped(scope()).order_by(Template.company_id, Template.name)
    found = list(db.session.execute(stmt).scalars())
    if job_type is None:
        return found
    return sorted(found, key=lambda t: (t.job_type != job_type, t.job_type is not None))


def default_template(templates: list[Template], job_type: str) -> int | None:
    """The template a form starts on: the first of ``job_type``, else the first for any type; none else
    (the user picks: never a template of another type, such as the certificate's)."""
    chosen = next((t for t in templates if t.job_type == job_type), None) or \
        next((t for t in templates if t.job_type is None), None)
    return chosen.id if chosen else None


def chosen_template(raw) -> Template:
    """The template named by a form field, if the user may see it (else 404)."""
    return get_or_404(Template, raw, scope())


def render_preview(tpl: Template, recipients: list[dict], secret_fields=(), *, bulk: bool = False) -> list[dict]:
    """The first messages, rendered with password-like fields masked (one preview budget for them all);
    ``bulk`` mail as it goes out: with the company's unsubscribe footer and each recipient's link."""
    text, html = tpl.body_text, tpl.body_html
    if bulk:
        text, html = unsubscribe.with_footer(tpl.company_id, text, html)
    compiled = CompiledTemplate(tpl.subject, text, html)
    first = recipients[:PREVIEW_COUNT]
    datas = []
    for rcpt in first:
        data = audiences.masked(rcpt["data"])
        data.update({k: audiences.MASK for k in secret_fields if data.get(k) not in (None, "")})
        if bulk:
            data[unsubscribe.VARIABLE] = unsubscribe.unsubscribe_url(tpl.company_id, rcpt["email"])
        datas.append(data)
    shown = []
    for rcpt, msg in zip(first, compiled.render_many(datas, budget_s=PREVIEW_BUDGET_S), strict=True):
        if isinstance(msg, RenderError):
            raise msg
        if msg is None:  # the budget went to the ones before: the preview shows those
            break
        shown.append({"to": rcpt["email"], "subject": msg.subject, "text": msg.text, "html": msg.html})
    return shown


def unmapped_fields(mapping: dict, required: tuple[str, ...] | None = None) -> list[str]:
    """Template fields no CSV column fills; with ``required``, only those the template has no default for
    (a message cannot be made without them: nothing is sent with a blank)."""
    return sorted(f for f, column in mapping["fields"].items() if not column and (required is None or f in required))


def parse_send_at(raw: str | None) -> datetime | None:
    """A ``datetime-local`` value (UTC) in the future, or ``None``."""
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise audiences.AudienceError("the send time is not a date and time") from None
    if moment.tzinfo is not None:
        raise audiences.AudienceError("give the send time in UTC without a zone")
    if moment <= utcnow():
        raise audiences.AudienceError("the send time must be in the future (UTC)")
    return moment


def queue_job(company_id: int, jtype: str, tpl: Template, recipients: list[dict],
              send_at: datetime | None = None) -> Job:
    """Create the job through ``create_job`` (source dashboard) and queue it."""
    # a row whose data lacks a field the mail needs is a failed recipient with the reason; the rest are sent
    payload = {"type": jtype, "template": tpl.name, "recipients": recipients, "on_missing": "fail_recipient",
               "send_at": send_at.isoformat() if send_at else None}
    job, _ = create_job(company_id, payload, source="dashboard", user_id=current_user.id,
                        max_recipients=settings.current().max_recipients)

    enqueue_job(job)
    return job


class CampaignsView(SecureBaseView):
    """CSV imports and re-engagement campaigns."""

    def store(self) -> audiences.UploadStore:
        s = settings.current()
        return audiences.UploadStore(connection(), s.max_uploads_per_user, s.max_uploads_per_company,
                                     s.max_upload_bytes)

    def load_upload(self, upload_id: str) -> audiences.Upload:
        upload = self.store().load(upload_id, current_user.id)
        if upload is None or scope() not in (None, upload.company_id):
            abort(404)
        return upload

    @expose("/")
    def index(self):
        stmt = Job.scoped(scope()).where(Job.source == "dashboard", Job.type.in_(("csv_import", "reengagement"))) \
            .order_by(Job.id.desc()).limit(50)
        jobs = list(db.session.execute(stmt).scalars())
        companies = list(db.session.execute(select(Company).order_by(Company.name)).scalars()) \
            if scope() is None else []
        settings = audiences.lms_settings(scope()) if scope() is not None else None
        return self.render("campaigns/index.html", jobs=jobs, companies=companies, lms=settings,
                           error=request.args.get("error"))

    @expose("/lms", methods=["POST"])
    def lms_settings(self):
        if scope() is not None:  # the LMS connection is the admins' (CONTRACT §7), never a manager's
            abort(403)
        company_id = company_or_404(request.form.get("company_id")).id
        try:
            audiences.save_lms_settings(company_id, request.form.get("iomad_company_id", ""),
                                       request.form.get("moodle_prefix", "mdl_"))
        except audiences.AudienceError as exc:
            return self.render("campaigns/message.html", title="LMS settings not saved", message=str(exc)), 400
        return redirect(url_for(".index"))

    # -- CSV import ----------------------------------------------------------------
    @expose("/import", methods=["GET", "POST"])
    def import_upload(self):
        if request.method == "GET":
            return self.import_form(None)
        read_upload_form()
        tpl = chosen_template(request.form.get("template_id"))
        file = request.files.get("file")
        try:
            if file is None or not file.filename:
                raise audiences.AudienceError("choose a CSV file")
            upload = audiences.parse_csv(file.read(), company_id=tpl.company_id, user_id=current_user.id,
                                        filename=file.filename,
                                        max_rows=settings.current().max_recipients)
            upload_id = self.store().save(upload)
        except audiences.BufferFull as exc:
            return self.import_form(str(exc)), 503, {"Retry-After": str(exc.retry_after)}
        except audiences.AudienceError as exc:
            return self.import_form(str(exc)), 400
        return redirect(url_for(".import_review", upload_id=upload_id, template_id=tpl.id))

    def import_form(self, error):
        templates = visible_templates("csv_import")
        chosen = request.form.get("template_id") or default_template(templates, "csv_import")
        return self.render("campaigns/import.html", templates=templates, selected=chosen, error=error)

    @expose("/import/<upload_id>", methods=["GET", "POST"])
    def import_review(self, upload_id: str):
        upload = self.load_upload(upload_id)
        tpl = chosen_template(request.values.get("template_id"))
        if tpl.company_id != upload.company_id:
            abort(404)
        fields = audiences.template_fields(tpl.subject, tpl.body_text, tpl.body_html)
        mapping = self.mapping(upload, fields)
        try:
            built = audiences.build_audience(upload, mapping)
        except audiences.AudienceError as exc:
            return self.review(upload, tpl, fields, mapping, None, str(exc)), 400
        if request.method == "POST":
            unmapped = unmapped_fields(mapping, audiences.template_required(tpl.subject, tpl.body_text,
                                                                            tpl.body_html))
            if unmapped:
                return self.review(upload, tpl, fields, mapping, built,
                                   f"Not sent: the template uses {', '.join(unmapped)}, which no CSV column fills. "
                                   "Map a column, or give the template a default "
                                   f"({{{{ {unmapped[0]} | default('...') }}}}): nothing is sent with a blank."), 400
            return self.import_confirm(upload, tpl, built)
        return self.review(upload, tpl, fields, mapping, built, None)

    @staticmethod
    def mapping(upload: audiences.Upload, fields: list[str]) -> dict:
        guess = audiences.default_mapping(upload.columns, fields)
        if "email_column" not in request.values:
            return guess
        return {"email": request.values.get("email_column"),
                "fields": {f: request.values.get(f"field_{f}", "") for f in fields}}

    def review(self, upload, tpl, fields, mapping, built, error):
        secret = [f for f, c in mapping["fields"].items() if audiences.SECRET_FIELD.search(c or "")]
        required = audiences.template_required(tpl.subject, tpl.body_text, tpl.body_html)
        unmapped = unmapped_fields(mapping, required)
        preview, lacking = [], {}
        if built is not None and not unmapped:
            lacking = audiences.lacking_rows("csv_import", required, built.recipients)
            try:
                preview = render_preview(tpl, [r for r in built.recipients if r["email"] not in lacking], secret)
            except RenderError as exc:
                error = f"the template cannot render: {labels.template_error(exc.part, exc.message)}"
        return self.render("campaigns/import_review.html", upload=upload, tpl=tpl, fields=fields,
                           mapping=mapping, built=built, preview=preview, error=error, unmapped=unmapped,
                           lacking=lacking)

    def import_confirm(self, upload, tpl, built):
        if not built.recipients:
            return self.render("campaigns/message.html", title="Nothing to send",
                               message="no row has a valid email address"), 400
        try:
            job = queue_job(upload.company_id, "csv_import", tpl, built.recipients)
        except JobError as exc:
            return self.render("campaigns/message.html", title="The job was not created", message=exc.message), 400
        self.store().delete(upload.id)
        return self.render("campaigns/result.html", job=job, bad_rows=built.bad_rows, filename=upload.filename)

    # -- re-engagement -----------------------------------------------------------------
    @expose("/reengagement", methods=["GET", "POST"])
    def reengagement(self):
        if request.method == "GET":
            return self.reengagement_form(None)
        read_upload_form()
        tpl = chosen_template(request.form.get("template_id"))
        try:
            send_at = parse_send_at(request.form.get("send_at"))
            choice, recipients, bad_rows, upload_id = self.reengagement_audience(tpl)
            preview = render_preview(tpl, recipients, bulk=True)
        except RenderError as exc:
            return self.reengagement_form(labels.template_error(exc.part, exc.message)), 400
        except audiences.BufferFull as exc:
            return self.reengagement_form(str(exc)), 503, {"Retry-After": str(exc.retry_after)}
        except audiences.AudienceError as exc:
            return self.reengagement_form(str(exc)), 400
        return self.render("campaigns/reengagement_preview.html", tpl=tpl, choice=choice, count=len(recipients),
                           bad_rows=bad_rows, preview=preview, upload_id=upload_id, send_at=send_at,
                           days=request.form.get("days", ""))

    def reengagement_form(self, error):
        templates = visible_templates("reengagement")
        chosen = request.form.get("template_id") or default_template(templates, "reengagement")
        return self.render("campaigns/reengagement.html", templates=templates, selected=chosen, error=error,
                           values=request.form)

    def reengagement_audience(self, tpl: Template):
        """(choice, recipients, bad rows, upload id) from the form."""
        choice = request.form.get("audience")
        if choice == "inactive":
            company = db.session.get(Company, tpl.company_id)
            return choice, audiences.inactive_users(company, self.days()), [], None
        if choice != "upload":
            raise audiences.AudienceError("choose an audience")
        file = request.files.get("file")
        if file is None or not file.filename:
            raise audiences.AudienceError("choose a CSV file with the list")
        upload = audiences.parse_csv(file.read(), company_id=tpl.company_id, user_id=current_user.id,
                                    filename=file.filename, max_rows=settings.current().max_recipients)
        built = audiences.build_audience(upload, self.list_mapping(upload))
        return choice, built.recipients, built.bad_rows, self.store().save(upload)

    @staticmethod
    def list_mapping(upload: audiences.Upload) -> dict:
        """An uploaded list: every column is a template field of its own name."""
        return {"email": audiences.default_mapping(upload.columns, [])["email"],
                "fields": {c: c for c in upload.columns}}

    @staticmethod
    def days() -> int:
        raw = (request.form.get("days") or "").strip()
        if not raw.isdigit():
            raise audiences.AudienceError("inactive days must be a whole number from 1 to 3650")
        return int(raw)

    @expose("/reengagement/confirm", methods=["POST"])
    def reengagement_confirm(self):
        tpl = chosen_template(request.form.get("template_id"))
        try:
            send_at = parse_send_at(request.form.get("send_at"))
            if request.form.get("audience") == "inactive":
                recipients = audiences.inactive_users(db.session.get(Company, tpl.company_id), self.days())
                bad_rows, upload = [], None
            else:
                upload = self.load_upload(request.form.get("upload_id", ""))
                if upload.company_id != tpl.company_id:
                    abort(404)
                built = audiences.build_audience(upload, self.list_mapping(upload))
                recipients, bad_rows = built.recipients, built.bad_rows
            if not recipients:
                raise audiences.AudienceError("the audience is empty: nobody to send to")
            job = queue_job(tpl.company_id, "reengagement", tpl, recipients, send_at)
        except audiences.AudienceError as exc:
            return self.render("campaigns/message.html", title="The campaign was not created", message=str(exc)), 400
        except JobError as exc:
            return self.render("campaigns/message.html", title="The campaign was not created",
                               message=exc.message), 400
        if upload is not None:
            self.store().delete(upload.id)
        return self.render("campaigns/result.html", job=job, bad_rows=bad_rows, filename=None)


def register(admin) -> None:
    view = CampaignsView(name="Campaigns", endpoint="campaigns", url="/admin/campaigns")
    admin.add_view(view)
    # the upload views check CSRF themselves after choosing the in-memory parser
    csrf.exempt(f"{__name__}.import_upload")
    csrf.exempt(f"{__name__}.reengagement")
