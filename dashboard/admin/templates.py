"""Email templates per company and job type: list, create, edit, delete
(Flask-Admin, scoped by ``TenantModelView``), a preview rendered with
sample data (the HTML in a sandboxed iframe), and a test send through the
company's provider (``tasks.checks``)."""
from __future__ import annotations

import json

from flask import flash, jsonify, redirect, request, url_for
from flask_admin import expose
from flask_admin.model.template import EndpointLinkRowAction
from redis import RedisError
from sqlalchemy import func, select
from wtforms import SelectField

from core import audit, fields, labels, templates
from core.checks import start_test_email
from core.db import db
from core.models import JOB_TYPES, Company, Template
from core.rendering import PREVIEW_BUDGET_S, CompiledTemplate, RenderError, valid_email
from core.tenancy import get_or_404
from dashboard.admin.base import TenantModelView, scope

PARTS = ("subject", "body_text", "body_html")
SAMPLE_VALUES = {"email": "learner@example.com", "firstname": "Ann", "lastname": "Example",
                 "password": "Sample-Pa55", "username": "ann.example", "coursename": "Sample course"}


def template_variables(tpl: Template) -> list[str]:
    """The names the template's parts use, sorted (from the renderer, which compiles them)."""
    try:
        return sorted(CompiledTemplate(tpl.subject, tpl.body_text, tpl.body_html).variables)
    except RenderError:
        return []


def sample_data(tpl: Template) -> dict:
    """Made-up values for each variable the template uses."""
    return {name: SAMPLE_VALUES.get(name.lower(), f"Sample {name}") for name in template_variables(tpl)}


def parse_sample(raw: str) -> tuple[dict | None, str | None]:
    """The sample data a user typed (a JSON object), or an error message."""
    try:
        value = json.loads(raw or "{}")
    except ValueError as exc:
        return None, f"sample data is not valid JSON: {exc.msg} (line {exc.lineno})"
    if not isinstance(value, dict):
        return None, "sample data must be a JSON object"
    return value, None


class TemplateView(TenantModelView):
    """A company's templates; admins choose the company when creating one."""

    column_list = ("name", "job_type", "subject", "company_id", "updated_at")
    column_labels = {"job_type": "Job type", "company_id": "Company", "updated_at": "Updated (UTC)",
                     "body_text": "Text body", "body_html": "HTML body"}
    column_searchable_list = ("name", "subject")
    column_filters = ("job_type",)
    column_default_sort = ("name", False)
    column_details_list = ("name", "job_type", "subject", "body_text", "body_html", "created_at", "updated_at")
    column_extra_row_actions = [EndpointLinkRowAction("fa fa-eye", ".preview", title="Preview", id_arg="template_id")]
    can_view_details = True
    can_export = False
    form_columns = ("owner_company", "name", "job_type", "subject", "body_text", "body_html")
    form_choices = {"job_type": [("", "Any job type"), *[(t, labels.label("job_type", t)) for t in JOB_TYPES]]}
    form_extra_fields = {"owner_company": SelectField("Company", coerce=int, choices=[])}
    form_widget_args = {"body_text": {"rows": 10}, "body_html": {"rows": 12, "spellcheck": "false"},
                        "subject": {"spellcheck": "false"}}
    # Flask-Admin renders descriptions as HTML: the angle brackets are written as entities
    form_args = {"name": {"description": "The LMS names it in a job: "
                                         "<code>{&quot;template&quot;: &quot;&lt;name&gt;&quot;}</code>"},
                 "subject": {"description": "Jinja syntax: {{ firstname }}"}}
    list_template = "admin/email_templates/list.html"
    details_template = "admin/email_templates/details.html"

    column_formatters = {"company_id": lambda v, c, m, n: _company_name(m.company_id),
                         "job_type": lambda v, c, m, n: labels.label("job_type", m.job_type) or "Any"}

    def _with_company_field(self, form, creating: bool):
        if scope() is None and creating:
            rows = db.session.execute(select(Company.id, Company.name).order_by(Company.name)).all()
            form.owner_company.choices = [(cid, name) for cid, name in rows]
        else:
            del form.owner_company
        return form

    def create_form(self, obj=None):
        return self._with_company_field(super().create_form(obj), True)

    def edit_form(self, obj=None):
        return self._with_company_field(super().edit_form(obj), False)

    def validate_form(self, form):
        """Flask-Admin's checks, then: the parts compile, and the name is free in the company."""
        ok = super().validate_form(form)
        if not ok or not hasattr(form, "subject"):
            return ok
        try:
            compiled = CompiledTemplate(form.subject.data, form.body_text.data, form.body_html.data)
        except RenderError as exc:
            target = getattr(form, exc.part, None) if exc.part in PARTS else form.body_text
            target.errors = [*target.errors, labels.template_error(exc.part, exc.message)]
            return False
        check = templates.check_fields(form.job_type.data or None, compiled.variables)
        if check.errors:  # the type's field the mail must deliver (core.fields)
            form.job_type.errors = [*form.job_type.errors, *check.errors]
            return False
        if self._name_taken(form):
            form.name.errors = [*form.name.errors, "a template with this name exists in the company"]
            return False
        return True

    def _name_taken(self, form) -> bool:
        """Another template of the same company already has the form's name."""
        editing = self.get_one(request.args["id"]) if request.args.get("id") else None
        if editing is not None:
            company_id = editing.company_id
        else:
            chosen = getattr(form, "owner_company", None)
            company_id = chosen.data if chosen is not None else scope()
        stmt = Template.scoped(company_id).where(Template.name == (form.name.data or "").strip())
        if editing is not None:
            stmt = stmt.where(Template.id != editing.id)
        return bool(db.session.execute(select(func.count()).select_from(stmt.subquery())).scalar())

    def on_model_change(self, form, model, is_created):
        chosen = getattr(form, "owner_company", None)
        if is_created and scope() is None and chosen is not None:
            model.company_id = chosen.data
        super().on_model_change(form, model, is_created)
        model.name = (model.name or "").strip()
        model.job_type = model.job_type or None

    def after_model_change(self, form, model, is_created):
        for warning in templates.check_fields(model.job_type, template_variables(model)).warnings:
            flash(f"Saved, but: {warning}", "warning")
        audit.record("template_created" if is_created else "template_updated", company_id=model.company_id,
                     object_type="template", object_id=model.id, details={"name": model.name})
        db.session.commit()

    def after_model_delete(self, model):
        audit.record("template_deleted", company_id=model.company_id, object_type="template", object_id=model.id,
                     details={"name": model.name})
        db.session.commit()

    # -- preview and test send --------------------------------------------------

    @expose("/preview/<int:template_id>/", methods=("GET", "POST"))
    def preview(self, template_id: int):
        tpl = get_or_404(Template, template_id, scope())
        sample, error = sample_data(tpl), None
        raw = json.dumps(sample, indent=2, ensure_ascii=False)
        if request.method == "POST":
            raw = request.form.get("sample", "")
            parsed, error = parse_sample(raw)
            sample = parsed if parsed is not None else sample
        rendered = None
        if error is None:
            error = _lacking_words(tpl, sample)
        if error is None:
            try:
                _, rendered = CompiledTemplate.checked(tpl.subject, tpl.body_text, tpl.body_html, sample,
                                                       PREVIEW_BUDGET_S)
            except RenderError as exc:
                error = labels.template_error(exc.part, exc.message)
        page = self.render("admin/email_templates/preview.html", tpl=tpl, sample_json=raw, rendered=rendered,
                           error=error, variables=template_variables(tpl), srcdoc=_srcdoc(rendered),
                           check_id=request.args.get("check", ""))
        # a sample that cannot render (bad JSON, a missing variable, a limit) is the request's fault
        return (page, 400) if error and request.method == "POST" else page

    @expose("/send-test/<int:template_id>/", methods=("POST",))
    def send_test(self, template_id: int):
        tpl = get_or_404(Template, template_id, scope())
        wants_json = request.accept_mimetypes.best == "application/json"
        to = request.form.get("to", "").strip()
        sample, error = parse_sample(request.form.get("sample", ""))
        if error is None and not valid_email(to):
            error = "to: not a valid email address"
        check_id = None
        if error is None:
            try:
                check_id = start_test_email(tpl.company_id, to, template_id=tpl.id, sample=sample)
            except (RedisError, OSError):
                error = "The job queue is unavailable; try again shortly."
        if error is None:
            audit.record("test_email_requested", company_id=tpl.company_id, object_type="template",
                         object_id=tpl.id)
            db.session.commit()
        result_url = check_id and url_for("settings.check_result", company_id=tpl.company_id, check_id=check_id)
        if wants_json:
            if error:
                return jsonify({"error": error}), 400
            return jsonify({"check_id": check_id, "result_url": result_url}), 202
        if error:
            flash(error, "error")
            return redirect(url_for(".preview", template_id=tpl.id))
        return redirect(url_for(".preview", template_id=tpl.id, check=check_id) + "#checks")


def _lacking_words(tpl: Template, sample) -> str | None:
    """The fields the sample lacks or leaves blank (``core.fields``), in words: a recipient like it is not
    sent, so the preview shows this instead of a message with a blank. None when it has them all."""
    try:
        required = CompiledTemplate(tpl.subject, tpl.body_text, tpl.body_html).required
    except RenderError:
        return None  # the render says what is wrong
    lacking = fields.missing(tpl.job_type, required, sample)
    if not lacking:
        return None
    undefined = "; ".join(f"'{name}' is undefined" for name in lacking if name not in (sample or {}))
    return (f"The sample data has no {', '.join(lacking)}, which this mail needs: a recipient without "
            f"{'it' if len(lacking) == 1 else 'them'} is not sent (nothing is sent with a blank)"
            + (f" ({undefined})." if undefined else "."))


def _company_name(company_id: int) -> str:
    company = db.session.get(Company, company_id)
    return company.name if company else ""


def _srcdoc(rendered) -> str | None:
    """The rendered HTML body for ``<iframe srcdoc>``, a plain ``str`` so Jinja escapes it into the attribute."""
    return None if rendered is None or rendered.html is None else str(rendered.html)


def register(admin) -> None:
    admin.add_view(TemplateView(Template, db.session, name="Templates", endpoint="templates",
                                url="/admin/templates"))
