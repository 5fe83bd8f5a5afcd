"""Base classes for every dashboard view: login required, CSRF-protected
forms, and tenancy enforced in ``get_query``, ``get_count_query`` and
``get_one`` together, so another company's row is a 404 everywhere
(list, details, edit, delete, export, actions).

CSRF: the app-wide ``CSRFProtect`` checks every POST, Flask-Admin's
included, against the ``csrf_token`` Flask-Admin's templates render from
Flask-WTF. Model forms therefore use ``BaseForm`` (no token of its own):
with ``SecureForm`` a page carried two different ``csrf_token`` fields and
a browser's POST of both failed one check or the other.
"""
from __future__ import annotations

from datetime import datetime

from flask import abort, redirect, request, url_for
from flask_admin import AdminIndexView, BaseView
from flask_admin.contrib.sqla import ModelView
from flask_admin.form import BaseForm
from flask_admin.model import typefmt
from flask_login import current_user

from core.tenancy import get_scoped
from dashboard.csvexport import neutralise


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


def _datetime(view, value: datetime, name: str) -> str:
    """Timestamps to the second (UTC), never with microseconds."""
    return value.strftime("%Y-%m-%d %H:%M:%S")


#: list and detail cells of every model view
TYPE_FORMATTERS = {**typefmt.BASE_FORMATTERS, datetime: _datetime}
DETAIL_TYPE_FORMATTERS = {**typefmt.DETAIL_FORMATTERS, datetime: _datetime}

#: Flask-Admin model views and the flag that turns each on
VIEW_FLAGS = {"create_view": "can_create", "edit_view": "can_edit", "delete_view": "can_delete",
              "details_view": "can_view_details", "export": "can_export"}


class DisabledIs404Mixin:
    """A model view that is turned off (``can_edit = False``...) answers 404, not a redirect."""

    def _handle_view(self, name, **kwargs):
        response = super()._handle_view(name, **kwargs)
        if response is not None:
            return response
        flag = VIEW_FLAGS.get(name)
        if flag and not getattr(self, flag):
            abort(404)
        return None


class SecureIndexView(SecureMixin, AdminIndexView):
    pass


class SecureBaseView(SecureMixin, BaseView):
    pass


class TenantModelView(SecureMixin, DisabledIs404Mixin, ModelView):
    """A ModelView over a tenant-owned model, limited to the user's company."""

    form_base_class = BaseForm
    column_type_formatters = TYPE_FORMATTERS
    column_type_formatters_detail = DETAIL_TYPE_FORMATTERS
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

    def handle_action(self, return_view=None):
        """Mass actions: any row id the user may not see is a 404, like ``get_one``."""
        ids = request.form.getlist("rowid")
        if ids:
            try:
                wanted = {int(i) for i in ids}
            except ValueError:
                abort(404)
            visible = self.get_query().filter(self.model.id.in_(wanted)).count()
            if visible != len(wanted):
                abort(404)
        return super().handle_action(return_view)

    def get_export_value(self, model, name):
        """CSV export cells with formula-like text neutralised."""
        return neutralise(super().get_export_value(model, name))

    def on_model_change(self, form, model, is_created):
        company = scope()
        if company is not None:
            model.company_id = company
        elif model.company_id is None:
            abort(400, "choose a company")


class AdminModelView(SecureMixin, DisabledIs404Mixin, ModelView):
    """Global objects (companies, users): admins only."""

    admin_only = True
    form_base_class = BaseForm
    column_type_formatters = TYPE_FORMATTERS
    column_type_formatters_detail = DETAIL_TYPE_FORMATTERS
