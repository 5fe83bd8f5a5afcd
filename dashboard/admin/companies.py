"""Companies and users: admins only.

Creating a company issues its API token and callback secret, shown once on
the page that answers the create (never stored in plain, never flashed into
the session cookie). Users are created with a password and a role; a manager
needs a company. An admin can unlock a locked account and reset a password
(a new random one, shown once).
"""
from __future__ import annotations

import secrets

from flask import abort, flash, g, redirect, request, url_for
from flask_admin import expose
from flask_admin.actions import action
from flask_admin.contrib.sqla.fields import QuerySelectField
from flask_admin.form import BaseForm
from flask_admin.helpers import get_form_data
from flask_wtf.csrf import generate_csrf
from markupsafe import Markup
from sqlalchemy import func, select
from wtforms import BooleanField, PasswordField, SelectField, StringField
from wtforms.validators import DataRequired, Length, Optional

from core import audit, companies, labels
from core.db import db
from core.models import ROLES, Company, User
from core.rendering import valid_email
from dashboard.admin.base import AdminModelView

NO_STORE = {"Cache-Control": "no-store"}


class CompanyView(AdminModelView):
    can_delete = False
    column_list = ("id", "name", "created_at")
    form_columns = ("name",)
    form_args = {"name": {"label": "Name", "validators": [DataRequired(), Length(max=200)]}}
    column_searchable_list = ("name",)
    can_export = False

    def create_model(self, form):
        """``companies.create_company`` (secret, token, settings), not a bare row."""
        name = (form.name.data or "").strip()
        if db.session.execute(select(func.count()).select_from(Company).where(Company.name == name)).scalar():
            form.name.errors = [*form.name.errors, "A company with this name exists."]
            return False
        company, token, secret = companies.create_company(name)
        audit.record("company_created", company_id=company.id, object_type="company", object_id=company.id)
        db.session.commit()
        g.created_company = (company, token, secret)
        return company

    @expose("/new/", methods=("GET", "POST"))
    def create_view(self):
        response = super().create_view()
        created = g.pop("created_company", None)
        if created is None:
            return response
        company, token, secret = created
        page = self.render("admin/companies/created.html", company=company, token=token, secret=secret)
        return page, 200, NO_STORE


def _company_field():
    return QuerySelectField("Company", query_factory=lambda: db.session.query(Company).order_by(Company.name),
                            allow_blank=True, blank_text="— none (admins see every company) —",
                            validators=[Optional()], description="Required for a manager.")


class UserEditForm(BaseForm):
    email = StringField("Email", validators=[DataRequired(), Length(max=320)])
    role = SelectField("Role", choices=[(r, labels.label("role", r)) for r in ROLES], validators=[DataRequired()],
                       default="manager", description="An admin sees every company; a manager sees one company.")
    company = _company_field()
    active = BooleanField("Active", default=True)

    def validate(self, extra_validators=None):
        ok = super().validate(extra_validators)
        if self.email.data and not valid_email(self.email.data.strip()):
            self.email.errors = [*self.email.errors, "Not a valid email address."]
            ok = False
        if self.role.data == "manager" and self.company.data is None:
            self.company.errors = [*self.company.errors, "A manager needs a company."]
            ok = False
        return ok


class UserCreateForm(UserEditForm):
    password = PasswordField("Password", validators=[DataRequired(), Length(min=8, max=200)],
                             description="At least 8 characters.")


def _access_buttons(view, context, model, name):
    """Unlock (after failed sign-ins, which back the account off) and Reset password, as small POST forms."""
    token = generate_csrf()
    parts = []
    if model.failed_logins:
        parts.append(Markup('<form method="post" action="{}" class="d-inline"><input type="hidden" name="csrf_token" '
                            'value="{}"><button class="btn btn-sm btn-warning user-unlock">Unlock</button></form>')
                     .format(url_for("users.unlock", user_id=model.id), token))
    parts.append(Markup('<form method="post" action="{}" class="d-inline" data-confirm="Give {} a new random '
                        'password? Their sessions end."><input type="hidden" name="csrf_token" value="{}">'
                        '<button class="btn btn-sm btn-outline-secondary user-reset">Reset password</button></form>')
                 .format(url_for("users.reset_password", user_id=model.id), model.email, token))
    return Markup(" ").join(parts)


class UserView(AdminModelView):
    column_list = ("email", "role", "company", "active", "last_login_at", "failed_logins", "access")
    column_labels = {"access": "Access", "last_login_at": "Last login", "failed_logins": "Failed sign-ins"}
    column_formatters = {"access": _access_buttons}
    column_searchable_list = ("email",)
    can_delete = False

    def create_form(self, obj=None):
        """A new user is a manager unless the admin says otherwise; ``?company_id=`` (the link on a new
        company's page, "Add a manager") picks the company."""
        form = UserCreateForm(get_form_data(), obj=obj)
        if request.method == "GET":
            form.role.data = request.args.get("role") if request.args.get("role") in ROLES else "manager"
            wanted = request.args.get("company_id", "")
            company = db.session.get(Company, int(wanted)) if wanted.isdigit() else None
            if company is not None:
                form.company.data = company
        return form

    def edit_form(self, obj=None):
        return UserEditForm(get_form_data(), obj=obj)

    def create_model(self, form):
        company = form.company.data
        try:
            user = companies.create_user(form.email.data, form.password.data, form.role.data,
                                         company.id if company is not None else None)
        except ValueError as exc:
            form.email.errors = [*form.email.errors, str(exc)]
            return False
        user.active = bool(form.active.data)
        audit.record("user_created", company_id=user.company_id, object_type="user", object_id=user.id)
        db.session.commit()
        return user

    def update_model(self, form, model):
        email = form.email.data.strip().lower()
        clash = db.session.execute(select(User.id).where(User.email == email, User.id != model.id)).first()
        if clash:
            form.email.errors = [*form.email.errors, "Another user has this email."]
            return False
        company = form.company.data
        try:  # a manager needs a company; an admin has none (fail closed, ``User.scope``)
            companies.check_user_fields(form.role.data, company.id if company is not None else None)
        except ValueError as exc:
            form.company.errors = [*form.company.errors, str(exc)]
            return False
        model.email, model.role, model.active = email, form.role.data, bool(form.active.data)
        model.company_id = None if form.role.data == "admin" else company.id
        audit.record("user_updated", company_id=model.company_id, object_type="user", object_id=model.id,
                     details={"fields": ["email", "role", "company", "active"]})
        db.session.commit()
        return True

    @action("unlock", "Unlock", "Clear the sign-in back-off of the selected users?")
    def action_unlock(self, ids):
        users = db.session.query(User).filter(User.id.in_([int(i) for i in ids])).all()
        for user in users:
            companies.unlock_user(user)
            audit.record("user_unlocked", company_id=user.company_id, object_type="user", object_id=user.id)
        db.session.commit()
        flash(f"Unlocked {len(users)} user(s).", "success")

    @expose("/<int:user_id>/unlock", methods=("POST",))
    def unlock(self, user_id: int):
        user = db.session.get(User, user_id) or abort(404)
        companies.unlock_user(user)
        audit.record("user_unlocked", company_id=user.company_id, object_type="user", object_id=user.id)
        db.session.commit()
        flash(f"{user.email} is unlocked and can sign in again.", "success")
        return redirect(request.referrer if _same_site(request.referrer) else url_for("users.index_view"))

    @expose("/<int:user_id>/reset-password", methods=("POST",))
    def reset_password(self, user_id: int):
        user = db.session.get(User, user_id) or abort(404)
        password = secrets.token_urlsafe(12)
        companies.set_password(user, password)  # also ends the user's sessions and any back-off
        audit.record("user_password_reset", company_id=user.company_id, object_type="user", object_id=user.id)
        db.session.commit()
        return self.render("admin/users/password_reset.html", user=user, password=password), 200, NO_STORE


def _same_site(url: str | None) -> bool:
    return bool(url) and url.startswith(request.host_url)


def register(admin) -> None:
    admin.add_view(CompanyView(Company, db.session, name="Companies", endpoint="companies", category="Admin"))
    admin.add_view(UserView(User, db.session, name="Users", endpoint="users", category="Admin"))
