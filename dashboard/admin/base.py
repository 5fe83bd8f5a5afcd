"""Base classes for every dashboard view: login required, CSRF-protected
forms, and tenancy enforced in ``get_query``, ``get_count_query`` and
``get_one`` together, so another company's row is a 404 everywhere
(list, details, edit, delete, export, actions)."""
from __future__ import annotations

from flask import abort, redirect, request, url_for
from flask_admin import AdminIndexView, BaseView
from flask_admin.contrib.sqla import ModelView
from flask_admin.form import SecureForm
from flask_login import current_user

from dashboard.tenancy import get_scoped


def scope() -> int | None:
    """The company the signed-in user may see (``None``: admin, all)."""
    return current_user.scope


class SecureMixin:
    """Views for signed-in users; ``admin_only`` views for admins alone."""

    admin_only = False

    def is_accessible(self):
        if not current_user.is_authenticated:
            return False
        return current_user.is_admin or not self.admin_only

    def is_visible(self):
        return self.is_accessible()

    def inaccessible_callback(self, name, **kwargs):
        if not current_user.is_authenticated:
            return redirect(url_for("auth.login", next=request.full_path))
        abort(404)


class SecureIndexView(SecureMixin, AdminIndexView):
    pass


class SecureBaseView(SecureMixin, BaseView):
    pass


class TenantModelView(SecureMixin, ModelView):
    """A ModelView over a tenant-owned model, limited to the user's company."""

    form_base_class = SecureForm
    page_size = 50
    can_set_page_size = True
    form_excluded_columns = ("company_id",)

    def get_query(self):
        company = scope()
        query = super().get_query()
        return query if company is None else query.filter(self.model.company_id == company)

    def get_count_query(self):
        company = scope()
        query = super().get_count_query()
        return query if company is None else query.filter(self.model.company_id == company)

    def get_one(self, id):
        row = get_scoped(self.model, id, scope())
        if row is None:
            abort(404)
        return row

    def on_model_change(self, form, model, is_created):
        company = scope()
        if company is not None:
            model.company_id = company
        elif model.company_id is None:
            abort(400, "choose a company")


class AdminModelView(SecureMixin, ModelView):
    """Global objects (companies, users): admins only."""

    admin_only = True
    form_base_class = SecureForm
