"""Certificates in the dashboard.

- Certificate templates per company: HTML and CSS edited beside a live
  preview (the first PDF page as a PNG, ``render_preview_png``), a logo upload.
- Issued certificates: list and details, revocation with a reason (audited),
  one PDF's download, and a job's PDFs as a ZIP streamed from storage.

Every read goes through ``core.tenancy`` with the user's scope, so
another company's template, certificate or job is a 404. Forms are
Flask-WTF forms: the app-wide ``CSRFProtect`` checks every POST.
"""
from __future__ import annotations

import math
from datetime import timedelta

from flask import Response, abort, flash, redirect, request, stream_with_context, url_for
from flask_admin import expose
from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from sqlalchemy import func, or_, select
from wtforms import BooleanField, SelectField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, Optional

from core import audit, certificate_process
from core import certificates as service
from core.certificate_render import (
    DEFAULT_TEMPLATE_CSS,
    DEFAULT_TEMPLATE_HTML,
    CertificateError,
    PreviewUnavailable,
    logo_data_uri,
    new_verification_code,
    render_preview_png,
)
from core.db import db
from core.models import Certificate, CertificateTemplate, Company, Job, utcnow
from core.tenancy import get_or_404, get_scoped
from dashboard.admin.base import SecureBaseView, scope
from providers.base import ProviderError

PAGE_SIZE = 50
MAX_LOGO_BYTES = 512 * 1024
STATUSES = (service.VALID, service.EXPIRED, service.REVOKED)


# --------------------------------------------------------------------------- templates


class TemplateForm(FlaskForm):
    company_id = SelectField("Company", coerce=int, validators=[Optional()])
    name = StringField("Name", validators=[DataRequired(), Length(max=100)])
    html = TextAreaField("HTML", validators=[DataRequired(), Length(max=200_000)])
    css = TextAreaField("CSS", validators=[Length(max=100_000)])
    logo = FileField("Logo (PNG, JPEG or GIF, at most 512 KB)")
    remove_logo = BooleanField("Remove the logo")


def read_logo(upload) -> bytes | None:
    """The uploaded logo's bytes, ``None`` when none was chosen; ``CertificateError`` when unusable."""
    if upload is None or not getattr(upload, "filename", ""):
        return None
    data = upload.read(MAX_LOGO_BYTES + 1)
    if len(data) > MAX_LOGO_BYTES:
        raise CertificateError("the logo may be at most 512 KB")
    logo_data_uri(data)  # raises for anything but PNG, JPEG and GIF
    return data


def sample_pdf(html: str, css: str, logo: bytes | None, issuer: str) -> bytes:
    """The template rendered for a made-up learner."""
    today = utcnow().date()
    code = new_verification_code()
    fields = {"learner_name": "Ada Lovelace", "course_name": "Sample Course: Analytical Engines",
              "completion_date": today, "grade": "96%", "expiry_date": today + timedelta(days=730),
              "issuer": issuer}
    return certificate_process.render_pdf(html, css, fields, logo=logo, verify_url=service.verify_url(code),
                                          code=code, preview=True)


def _png(data: bytes) -> Response:
    return Response(data, mimetype="image/png", headers={"Cache-Control": "no-store"})


def _problem(status: int, message: str) -> Response:
    """A plain-text error for the preview pane (shown with textContent)."""
    return Response(message, status=status, mimetype="text/plain")


class CertificateTemplatesView(SecureBaseView):
    """The company's certificate templates (an admin's: every company's)."""

    @expose("/")
    def index(self):
        rows = db.session.execute(CertificateTemplate.scoped(scope()).order_by(
            CertificateTemplate.company_id, CertificateTemplate.name)).scalars().all()
        return self.render("certificates/admin_templates.html", templates=rows, companies=_company_names())

    @expose("/new", methods=("GET", "POST"))
    def create(self):
        form = TemplateForm()
        if request.method == "GET":
            form.html.data, form.css.data = DEFAULT_TEMPLATE_HTML, DEFAULT_TEMPLATE_CSS
        return self._edit(form, None)

    @expose("/<int:template_id>/edit", methods=("GET", "POST"))
    def edit(self, template_id: int):
        tpl = get_or_404(CertificateTemplate, template_id, scope())
        return self._edit(TemplateForm(obj=tpl), tpl)

    def _edit(self, form: TemplateForm, tpl: CertificateTemplate | None):
        names = _company_names()
        if tpl is None and names is not None:
            form.company_id.choices = list(names.items())
        else:
            del form.company_id
        if form.validate_on_submit() and self._save(form, tpl):
            return redirect(url_for(".index"))
        # a template that does not compile or render is a 400 with the reason on the form
        status = 400 if request.method == "POST" else 200
        return self.render("certificates/admin_template_form.html", form=form, tpl=tpl), status

    def _save(self, form: TemplateForm, tpl: CertificateTemplate | None) -> bool:
        """Check the template renders, then store it (audited); False with form errors otherwise."""
        company_id = tpl.company_id if tpl else scope() or form.company_id.data
        company = db.session.get(Company, company_id) if company_id else None
        if company is None:
            form.name.errors.append("Choose a company.")
            return False
        try:
            logo = read_logo(form.logo.data)
        except CertificateError as exc:
            form.logo.errors.append(exc.reason)
            return False
        if logo is None and tpl is not None and not form.remove_logo.data:
            logo = tpl.logo
        try:
            sample_pdf(form.html.data, form.css.data or "", logo, company.name)
        except CertificateError as exc:
            form.html.errors.append(exc.reason)
            return False
        clash = db.session.execute(CertificateTemplate.scoped(company.id).where(
            CertificateTemplate.name == form.name.data.strip())).scalar()
        if clash is not None and clash is not tpl:
            form.name.errors.append("The company has a template with this name.")
            return False
        if tpl is None:
            tpl = CertificateTemplate(company_id=company.id)
            db.session.add(tpl)
        tpl.name, tpl.html, tpl.css, tpl.logo = form.name.data.strip(), form.html.data, form.css.data or "", logo
        db.session.flush()
        audit.record("certificate_template_saved", company_id=company.id, object_type="certificate_template",
                     object_id=tpl.id, details={"logo": logo is not None})
        db.session.commit()
        flash(f"Certificate template {tpl.name!r} saved.", "success")
        return True

    @expose("/<int:template_id>/delete", methods=("POST",))
    def delete(self, template_id: int):
        tpl = get_or_404(CertificateTemplate, template_id, scope())
        audit.record("certificate_template_deleted", company_id=tpl.company_id,
                     object_type="certificate_template", object_id=tpl.id)
        db.session.delete(tpl)
        db.session.commit()
        flash("Certificate template deleted.", "success")
        return redirect(url_for(".index"))

    @expose("/preview", methods=("POST",))
    def preview(self):
        """The posted (unsaved) HTML and CSS as a PNG; the logo is the uploaded one or the saved one's."""
        tpl = None
        if request.form.get("template_id"):
            tpl = get_or_404(CertificateTemplate, request.form["template_id"], scope())
        company = db.session.get(Company, tpl.company_id if tpl else scope() or 0)
        try:
            logo = read_logo(request.files.get("logo"))
            if logo is None and tpl is not None and not request.form.get("remove_logo"):
                logo = tpl.logo
            html = request.form.get("html", "")[:200_000]
            css = request.form.get("css", "")[:100_000]
            return self._preview(html, css, logo, company)
        except CertificateError as exc:
            return _problem(400, exc.reason)

    @expose("/<int:template_id>/preview.png")
    def preview_saved(self, template_id: int):
        tpl = get_or_404(CertificateTemplate, template_id, scope())
        try:
            return self._preview(tpl.html, tpl.css or "", tpl.logo, db.session.get(Company, tpl.company_id))
        except CertificateError as exc:
            return _problem(400, exc.reason)

    @staticmethod
    def _preview(html: str, css: str, logo: bytes | None, company: Company | None) -> Response:
        pdf = sample_pdf(html, css, logo, company.name if company else "Your organisation")
        try:
            return _png(render_preview_png(pdf))
        except PreviewUnavailable as exc:
            return _problem(503, str(exc))


# --------------------------------------------------------------------------- certificates


class RevokeForm(FlaskForm):
    reason = TextAreaField("Reason", validators=[DataRequired(), Length(max=service.MAX_REASON)])


def _company_names() -> dict[int, str] | None:
    """Every company's name for an admin, ``None`` for a company's user."""
    if scope() is not None:
        return None
    return dict(db.session.execute(select(Company.id, Company.name).order_by(Company.name)).all())


def _filtered(stmt, args):
    """The list's filters: job, status and a search over code, learner, email and course."""
    now = utcnow()
    if args.get("job", "").isdigit():
        stmt = stmt.where(Certificate.job_id == int(args["job"]))
    status = args.get("status")
    if status == service.REVOKED:
        stmt = stmt.where(Certificate.revoked_at.isnot(None))
    elif status == service.EXPIRED:
        stmt = stmt.where(Certificate.revoked_at.is_(None), Certificate.expires_at <= now)
    elif status == service.VALID:
        stmt = stmt.where(Certificate.revoked_at.is_(None),
                          or_(Certificate.expires_at.is_(None), Certificate.expires_at > now))
    q = (args.get("q") or "").strip()[:200]
    if q:
        like = f"%{q}%"
        stmt = stmt.where(or_(Certificate.code == q.upper(), Certificate.learner_name.ilike(like),
                              Certificate.learner_email.ilike(like), Certificate.course_name.ilike(like)))
    return stmt


class CertificatesView(SecureBaseView):
    """Issued certificates: list, details, revoke, downloads."""

    @expose("/")
    def index(self):
        stmt = _filtered(Certificate.scoped(scope()), request.args)
        total = db.session.execute(select(func.count()).select_from(stmt.subquery())).scalar()
        pages = max(1, math.ceil(total / PAGE_SIZE))
        page = min(max(request.args.get("page", 1, type=int) or 1, 1), pages)
        rows = db.session.execute(stmt.order_by(Certificate.issued_at.desc(), Certificate.id.desc())
                                  .limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)).scalars().all()
        job = None
        if request.args.get("job", "").isdigit():
            job = get_scoped(Job, request.args["job"], scope())
        return self.render("certificates/admin_list.html", certificates=rows, total=total, page=page, pages=pages,
                           job=job, statuses=STATUSES, status_of=service.status_of, companies=_company_names(),
                           args=request.args)

    @expose("/<int:cert_id>/")
    def details(self, cert_id: int):
        cert = get_or_404(Certificate, cert_id, scope())
        return self.render("certificates/admin_details.html", cert=cert, form=RevokeForm(),
                           status=service.status_of(cert), verify_url=service.verify_url(cert.code),
                           company=db.session.get(Company, cert.company_id), show_company=scope() is None)

    @expose("/<int:cert_id>/revoke", methods=("POST",))
    def revoke(self, cert_id: int):
        cert = get_or_404(Certificate, cert_id, scope())
        form = RevokeForm()
        if not form.validate_on_submit():
            flash("A reason (at most 255 characters) is required to revoke a certificate.", "error")
        elif service.revoke(cert, form.reason.data):
            flash(f"Certificate {cert.code} revoked.", "success")
        else:
            flash("The certificate was already revoked.", "info")
        return redirect(url_for(".details", cert_id=cert.id))

    @expose("/<int:cert_id>/download")
    def download(self, cert_id: int):
        cert = get_or_404(Certificate, cert_id, scope())
        if not cert.object_key:
            abort(404)
        try:
            return redirect(service.presigned_link(cert))
        except ProviderError as exc:
            flash(f"The certificate could not be fetched from storage: {exc.reason}", "error")
            return redirect(url_for(".details", cert_id=cert.id))

    @expose("/job/<int:job_id>.zip")
    def job_zip(self, job_id: int):
        """Every stored certificate of the job, zipped while it streams from storage."""
        job = get_or_404(Job, job_id, scope())
        audit.record("certificates_downloaded", company_id=job.company_id, object_type="job", object_id=job.id)
        db.session.commit()
        body = stream_with_context(service.stream_zip(service.zip_entries(job)))
        return Response(body, mimetype="application/zip", headers={
            "Content-Disposition": f'attachment; filename="certificates-job-{job.id}.zip"',
            "Cache-Control": "no-store"})


def register(admin) -> None:
    admin.add_view(CertificatesView(name="Certificates", endpoint="certificates", url="/admin/certificates",
                                    category="Certificates"))
    admin.add_view(CertificateTemplatesView(name="Templates", endpoint="certificate_templates",
                                            url="/admin/certificate-templates", category="Certificates"))
