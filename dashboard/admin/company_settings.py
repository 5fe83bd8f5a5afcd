"""A company's delivery settings, API tokens and callback secret.

One form per settings group (``core.delivery_settings``: general, each
provider's declared group, advanced), applied and validated by
``core.companies.configure``. Secrets are write-only: the
page says whether one is set, a blank field keeps it, a "clear" box removes
it, and no value is ever rendered back, logged or audited (the audit entry
lists field names). A new API token or callback secret is shown once, in the
response to the POST that made it, and never again.

"Test connection" and "Send test email" run as RQ jobs
(``tasks.checks``) whose arguments are the company id and a random
check id; the page polls ``check_result`` for the outcome.
"""
from __future__ import annotations

from flask import abort, flash, get_flashed_messages, jsonify, make_response, redirect, request, session, url_for
from flask_admin import expose
from redis import RedisError
from sqlalchemy import select

from core import audit, delivery_settings
from core import labels as words
from core.checks import read_result, start_connection_test, start_test_email
from core.companies import configure, rotate_callback_secret
from core.db import db
from core.jobs import resume_reputation
from core.lms.connection import LmsError, describe_connection
from core.models import ApiToken, Company, utcnow
from core.rendering import valid_email
from core.tenancy import get_or_404
from dashboard import results
from dashboard.admin.base import SecureBaseView, scope
from providers import registry
from providers.registry import Setting, SettingsGroup


def sections() -> tuple[SettingsGroup, ...]:
    """The form's sections the signed-in user may edit: the settings groups of
    ``core.delivery_settings``, less the admins' own (the LMS connection) for a manager."""
    return tuple(s for s in delivery_settings.groups()
                 if scope() is None or s.name not in delivery_settings.ADMIN_ONLY)


def section_named(name: str) -> SettingsGroup | None:
    return next((s for s in sections() if s.name == name), None)


def current_values(company: Company) -> dict:
    """Every non-secret setting as a string for the form; secrets only as set / not set."""
    values: dict = {}
    for section in sections():
        for f in section.fields:
            value = delivery_settings.read(company, f.key)
            if f.secret:
                values[f.key] = bool(value)
            elif f.kind == "checkbox":
                values[f.key] = bool(value) if f.key in delivery_settings.LMS_COLUMNS or f.key == "fallback_relay" \
                    else (value is None or bool(value))
            else:
                values[f.key] = "" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))
    return values


def submitted_values(section: SettingsGroup, form) -> dict:
    """The ``configure`` input of one section's form: blank secrets keep, "clear" removes."""
    values = {}
    for f in section.fields:
        if f.secret:
            if form.get(f"clear_{f.key}"):
                values[f.key] = ""
            elif form.get(f.key, ""):
                values[f.key] = form[f.key]
        elif f.kind == "checkbox":
            values[f.key] = "1" if form.get(f.key) else "0"
        else:
            values[f.key] = form.get(f.key, "")
    return values


def visible_section(section: SettingsGroup) -> SettingsGroup:
    """``section`` as the current user may see it: admin-only settings only for admins."""
    if scope() is None:
        return section
    return SettingsGroup(section.name, section.title, section.intro,
                         tuple(f for f in section.fields if f.key not in delivery_settings.admin_only_keys()))


def error_field(message: str) -> str | None:
    """The setting a ``configure`` error names (``"smtp_port: ..."``)."""
    key = message.partition(":")[0].strip()
    return key if key in delivery_settings.by_key() else None


def labels() -> dict[str, str]:
    """Each setting's form label, by key (every section's: labels are no secret)."""
    return {f.key: f.label for s in delivery_settings.groups() for f in s.fields}


def labelled(message: str) -> str:
    """``"smtp_port: out of range"`` as the form shows it: ``"Port: out of range"``."""
    key, sep, rest = message.partition(":")
    found = labels()
    return f"{found[key.strip()]}:{rest}" if sep and key.strip() in found else message


def provider_groups() -> dict[str, list[str]]:
    """Each provider settings group (a form section of its own) and the senders that read it, by name."""
    found: dict[str, list[str]] = {g.name: [] for g in registry.settings_groups()}
    for name in registry.names(registry.SENDER):
        group = getattr(registry.backend(registry.SENDER, name), "settings", None)
        if group is not None:
            found[group.name].append(name)
    return found


#: what each kind of backend does for a company, in words
ROLES = {registry.SENDER: "sends this company's mail", registry.TRANSPORT: "carries its offload batches",
         registry.STORAGE: "keeps its certificates"}


def in_use(company: Company) -> dict[str, str]:
    """The provider groups the company's settings use now, each with what uses it in words
    (``{"aws": "Amazon SES sends this company's mail · Amazon SQS queue carries its offload batches"}``)."""
    s = company.settings
    if s is None:
        return {}
    config = s.provider_config()
    used = [(registry.SENDER, s.provider or registry.fallback_sender())]
    if s.mode == "offload" and registry.offload_transport(config):
        used.append((registry.TRANSPORT, registry.offload_transport(config)))
    if registry.choose_storage(config):
        used.append((registry.STORAGE, registry.choose_storage(config)))
    found: dict[str, list[str]] = {}
    for kind, name in used:
        group = getattr(registry.find(kind, name), "settings", None)
        if group is not None:
            found.setdefault(group.name, []).append(f"{registry.label(kind, name)} {ROLES[kind]}")
    return {name: " · ".join(parts) for name, parts in found.items()}


def choice_words(setting: Setting, choice: str) -> str:
    """What a select shows for ``choice``: its declared label, else the label table's words for its key."""
    if setting.choice_labels or setting.key not in words.TABLES:
        return setting.choice_label(choice)
    return words.label(setting.key, choice)


def targeted_sections() -> set[str]:
    """The sections this response's results are for (``dashboard.results``): they are shown open."""
    targets = {results.split(category)[1] for category, _ in get_flashed_messages(with_categories=True)}
    return {t.removeprefix("section-") for t in targets} | ({"lms"} if "test-lms" in targets else set())


#: the session key a failed save is kept under between its POST and the GET it redirects to
FAILED_SAVE = "settings_failed_save"


class CompanySettingsView(SecureBaseView):
    """Managers: their own company; admins: any company, picked from a list."""

    def _company(self, company_id: int) -> Company:
        if scope() is not None and company_id != scope():
            abort(404)
        company = db.session.get(Company, company_id)
        if company is None:
            abort(404)
        return company

    def _page(self, company: Company, status: int = 200, **extra):
        tokens = db.session.execute(ApiToken.scoped(company.id)
                                    .order_by(ApiToken.revoked_at.is_not(None), ApiToken.created_at.desc())).scalars()
        failed = extra.get("failed_section")
        context = {"company": company, "sections": [visible_section(s) for s in sections()],
                   "values": current_values(company), "provider_groups": provider_groups(),
                   "in_use": in_use(company), "opened": targeted_sections() | ({failed} if failed else set()),
                   "choice_words": choice_words,
                   "settings": company.settings, "tokens": list(tokens), "errors": {}, "failed_section": None,
                   "submitted": {}, "check_id": request.args.get("check", ""), "now": utcnow(), **extra}
        response = make_response(self.render("admin/settings/company.html", **context), status)
        response.headers["Cache-Control"] = "no-store"
        return response

    @expose("/")
    def index(self):
        if scope() is not None:
            return redirect(url_for("settings.company", company_id=scope()))
        companies = db.session.execute(select(Company).order_by(Company.name)).scalars().all()
        return self.render("admin/settings/pick.html", companies=companies)

    @expose("/<int:company_id>/")
    def company(self, company_id: int):
        company = self._company(company_id)
        failed = session.pop(FAILED_SAVE, None)
        if failed and failed.get("company_id") == company.id:  # the GET after a failed save (PRG)
            return self._page(company, errors=failed["errors"], failed_section=failed["section"],
                              submitted=failed["submitted"])
        return self._page(company)

    @expose("/<int:company_id>/save", methods=("POST",))
    def save(self, company_id: int):
        company = self._company(company_id)
        name = request.form.get("section", "")
        if name in delivery_settings.ADMIN_ONLY and scope() is not None:
            abort(403)
        section = section_named(name)
        if section is None:
            abort(400)
        try:
            changed = configure(company, submitted_values(visible_section(section), request.form),
                                admin=scope() is None)
        except ValueError as exc:
            db.session.rollback()
            message = str(exc)
            key = error_field(message) or "_form"
            # never a secret: those fields are not kept, the others go back into the form
            submitted = {f.key: request.form.get(f.key, "")[:500] for f in section.fields if not f.secret}
            session[FAILED_SAVE] = {"company_id": company.id, "section": section.name,
                                    "errors": {key: labelled(message)}, "submitted": submitted}
            anchor = f"f-{key}" if key != "_form" else f"section-{section.name}"
            return redirect(url_for("settings.company", company_id=company.id) + f"#{anchor}", 303)
        if changed:
            audit.record("settings_changed", company_id=company.id, object_type="company", object_id=company.id,
                         details={"section": section.name, "fields": changed})
            db.session.commit()
            found = labels()
            results.flash_at(f"section-{section.name}",
                             f"{section.title}: saved ({', '.join(found.get(k, k) for k in changed)}).", "success")
            if getattr(company, "role_check_note", None):
                results.flash_at(f"section-{section.name}", f"Role ARN saved, but {company.role_check_note}: "
                                 "it is not used until a check confirms that its trust policy requires the "
                                 "external id (the check runs again at its first use).", "warning")
        else:
            results.flash_at(f"section-{section.name}", f"{section.title}: nothing changed.", "info")
        return redirect(url_for("settings.company", company_id=company.id) + f"#section-{section.name}")

    def _started(self, company: Company, check_id: str | None, error: str | None):
        """Answer a check request: JSON for the page's script, else back to the page."""
        if request.accept_mimetypes.best == "application/json":
            if error:
                return jsonify({"error": error}), 503
            return jsonify({"check_id": check_id,
                            "result_url": url_for("settings.check_result", company_id=company.id,
                                                  check_id=check_id)}), 202
        if error:
            results.flash_at("checks", error, "error")
            return redirect(url_for("settings.company", company_id=company.id))
        return redirect(url_for("settings.company", company_id=company.id, check=check_id) + "#checks")

    @expose("/<int:company_id>/test-connection", methods=("POST",))
    def test_connection(self, company_id: int):
        """Test everything the company's mail uses, or one provider section's backends (``section``)."""
        company = self._company(company_id)
        section = request.form.get("section") or None
        if section is not None and section not in provider_groups():
            abort(400)
        try:
            check_id = start_connection_test(company.id, section)
        except (RedisError, OSError):
            return self._started(company, None, "The job queue is unavailable; try again shortly.")
        audit.record("connection_test_requested", company_id=company.id, object_type="company",
                     object_id=company.id)
        db.session.commit()
        return self._started(company, check_id, None)

    @expose("/<int:company_id>/test-lms", methods=("POST",))
    def test_lms(self, company_id: int):
        """Admins: connect to the company's LMS database now and show what it sees."""
        if scope() is not None:
            abort(403)
        company = self._company(company_id)
        try:
            found = describe_connection(company)
        except LmsError as exc:
            results.flash_at("test-lms", f"LMS connection: {labelled(str(exc))}", "error")
        else:
            results.flash_at("test-lms", "LMS connection works: " + ", ".join(
                f"{words.humanize(k).lower()} {v}" for k, v in found.items()), "success")
        audit.record("lms_connection_tested", company_id=company.id, object_type="company", object_id=company.id)
        db.session.commit()
        return redirect(url_for("settings.company", company_id=company.id) + "#section-lms")

    @expose("/<int:company_id>/reputation/resume", methods=("POST",))
    def resume_reputation(self, company_id: int):
        """The banner's Resume: bulk sending goes on, judged again from now (``core.reputation``)."""
        company = self._company(company_id)
        resumed = resume_reputation(company)
        if resumed is None:
            flash("Bulk sending was not paused.", "info")
        else:
            flash(f"Bulk sending resumed: {resumed} paused job{'' if resumed == 1 else 's'} queued again. The "
                  "reputation guard now judges only the sends from here on.", "success")
        return redirect(url_for("jobs.index"))

    @expose("/<int:company_id>/test-email", methods=("POST",))
    def test_email(self, company_id: int):
        company = self._company(company_id)
        to = request.form.get("to", "").strip()
        if not valid_email(to):
            if request.accept_mimetypes.best == "application/json":
                return jsonify({"error": "to: not a valid email address"}), 400
            return self._page(company, 400, errors={"to": "to: not a valid email address"})
        try:
            check_id = start_test_email(company.id, to)
        except (RedisError, OSError):
            return self._started(company, None, "The job queue is unavailable; try again shortly.")
        audit.record("test_email_requested", company_id=company.id, object_type="company", object_id=company.id)
        db.session.commit()
        return self._started(company, check_id, None)

    @expose("/<int:company_id>/checks/<check_id>.json")
    def check_result(self, company_id: int, check_id: str):
        company = self._company(company_id)
        result = read_result(company.id, check_id)
        if result is None:
            abort(404)
        response = jsonify(result)
        response.headers["Cache-Control"] = "no-store"
        return response

    @expose("/<int:company_id>/tokens", methods=("POST",))
    def create_token(self, company_id: int):
        company = self._company(company_id)
        name = (request.form.get("name") or "LMS").strip()[:100] or "LMS"
        row, plain = ApiToken.issue(company.id, name)
        db.session.add(row)
        db.session.flush()
        audit.record("api_token_created", company_id=company.id, object_type="api_token", object_id=row.id,
                     details={"name": name})
        db.session.commit()
        return self._page(company, 201, new_token=plain, new_token_name=name)

    @expose("/<int:company_id>/tokens/<int:token_id>/revoke", methods=("POST",))
    def revoke_token(self, company_id: int, token_id: int):
        company = self._company(company_id)
        row = get_or_404(ApiToken, token_id, company.id)
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            audit.record("api_token_revoked", company_id=company.id, object_type="api_token", object_id=row.id)
            db.session.commit()
            results.flash_at("tokens", f"Token {row.prefix}… revoked.", "success")
        return redirect(url_for("settings.company", company_id=company.id) + "#tokens")

    @expose("/<int:company_id>/callback-secret/rotate", methods=("POST",))
    def rotate_secret(self, company_id: int):
        company = self._company(company_id)
        secret = rotate_callback_secret(company)
        audit.record("callback_secret_rotated", company_id=company.id, object_type="company", object_id=company.id)
        db.session.commit()
        return self._page(company, 200, new_secret=secret)


def register(admin) -> None:
    admin.add_view(CompanySettingsView(name="Settings", endpoint="settings", url="/admin/settings"))
