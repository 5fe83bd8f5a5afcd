"""Companies and users: admins only."""
from __future__ import annotations

from flask import flash
from flask_admin.actions import action
from wtforms import SelectField

from core import audit, companies
from core.db import db
from core.models import ROLES, Company, User
from dashboard.admin.base import AdminModelView


class CompanyView(AdminModelView):
    can_delete = False
    column_list = ("id", "name", "created_at")
    form_columns = ("name",)
    column_searchable_list = ("name",)
    can_export = False


class UserView(AdminModelView):
    can_create = False  # logins are created with `flask user create` (password set there)
    column_list = ("email", "role", "company", "active", "last_login_at", "failed_logins")
    form_columns = ("email", "role", "company", "active")
    column_searchable_list = ("email",)
    # the role is a choice, never free text: an unknown role must not become a scope
    form_overrides = {"role": SelectField}
    form_args = {"role": {"choices": [(r, r) for r in ROLES]}}

    def on_model_change(self, form, model, is_created):
        """A manager needs a company; an admin has none (fail closed, ``User.scope``)."""
        # the form sets the relationship; company_id still holds the old value until the flush
        companies.check_user_fields(model.role, model.company.id if model.company is not None else None)
        if model.role == "admin":
            model.company = None
            model.company_id = None

    @action("unlock", "Unlock", "Clear the sign-in back-off of the selected users?")
    def action_unlock(self, ids):
        users = db.session.query(User).filter(User.id.in_([int(i) for i in ids])).all()
        for user in users:
            companies.unlock_user(user)
            audit.record("user_unlocked", company_id=user.company_id, object_type="user", object_id=user.id)
        db.session.commit()
        flash(f"Unlocked {len(users)} user(s).", "success")


def register(admin) -> None:
    admin.add_view(CompanyView(Company, db.session, name="Companies", endpoint="companies", category="Admin"))
    admin.add_view(UserView(User, db.session, name="Users", endpoint="users", category="Admin"))
