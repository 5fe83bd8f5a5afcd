"""Companies and users: admins only."""
from __future__ import annotations

from dashboard.admin.base import AdminModelView
from core.db import db
from core.models import Company, User


class CompanyView(AdminModelView):
    can_delete = False
    column_list = ("id", "name", "created_at")
    form_columns = ("name",)
    column_searchable_list = ("name",)
    can_export = False


class UserView(AdminModelView):
    can_create = False  # logins are created with `flask user create` (password set there)
    column_list = ("email", "role", "company", "active", "last_login_at", "locked_until")
    form_columns = ("email", "role", "company", "active")
    column_searchable_list = ("email",)


def register(admin) -> None:
    admin.add_view(CompanyView(Company, db.session, name="Companies", endpoint="companies", category="Admin"))
    admin.add_view(UserView(User, db.session, name="Users", endpoint="users", category="Admin"))
